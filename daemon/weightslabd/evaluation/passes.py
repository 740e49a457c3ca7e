"""The record of a run's evaluation passes: `evaluation.json` in the run folder, replaced atomically.

A pass is a flat dict: id, state (requested / running / done / cancelled / timed out / error), split,
tags, use_full_set, periodic, step (the model age it ran at), current and total batches, timeout_s,
avg_batch_seconds, message, error, partial, pid (its trainer), and wall-clock times requested_at,
started_at, finished_at, deadline (started_at + timeout_s + the daemon's grace). The newest pass is the
status; finished ones also mark their plot points as evaluation points.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import structlog

from weightslabd.store.run import Run, write_durably

log = structlog.get_logger("weightslabd.evaluation")
FILE = "evaluation.json"
KEEP = 500  # passes kept (the oldest go first)
ACTIVE = ("requested", "running")
TERMINAL = ("done", "cancelled", "timed out", "error")
SAVE_PROGRESS_EVERY = 1.0  # seconds between writes that only move `current`
_FIELDS = ("state", "split", "tags", "use_full_set", "periodic", "step", "current", "total", "timeout_s",
           "avg_batch_seconds", "message", "error", "partial")


class Passes:
    def __init__(self, folder: Path) -> None:
        self.path = folder / FILE
        self.lock = threading.Lock()
        self.passes: list[dict[str, Any]] = self._load()
        self._saved_at = 0.0
        self._marks: dict[tuple[str, int], dict[str, Any]] | None = None

    def _load(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("evaluation record unreadable; starting a new one", path=str(self.path), error=str(exc))
            return []
        passes = data.get("passes") if isinstance(data, dict) else None
        return [dict(p) for p in passes if isinstance(p, dict) and p.get("id")] if isinstance(passes, list) else []

    def save(self, *, progress_only: bool = False) -> None:
        """Call under `lock`."""
        now = time.monotonic()
        if progress_only and now - self._saved_at < SAVE_PROGRESS_EVERY:
            return
        self._saved_at = now
        self._marks = None
        try:
            write_durably(self.path, json.dumps({"passes": self.passes[-KEEP:]}, default=str).encode())
        except OSError as exc:  # the status in memory still answers; the next write tries again
            log.error("evaluation record not saved", path=str(self.path), error=exc.strerror or str(exc))

    def latest(self) -> dict[str, Any] | None:
        return self.passes[-1] if self.passes else None

    def active(self) -> dict[str, Any] | None:
        last = self.latest()
        return last if last is not None and last.get("state") in ACTIVE else None

    def find(self, pass_id: str) -> dict[str, Any] | None:
        return next((p for p in reversed(self.passes) if p.get("id") == pass_id), None)

    def add(self, entry: dict[str, Any]) -> None:
        self.passes.append(entry)
        del self.passes[:-KEEP]
        self.save()

    def finish(self, entry: dict[str, Any], state: str, **values: Any) -> None:
        entry.update(values, state=state, finished_at=time.time())
        self.save()

    def merge(self, report: dict[str, Any], pid: int = 0) -> bool:
        """A pass as the trainer reports it. Its terminal state is the truth and wins; a daemon-declared
        end (timeout, cancel) is not undone by a late progress report. True when the pass is new."""
        entry = self.find(str(report["id"]))
        new = entry is None
        if entry is None:
            entry = {"id": str(report["id"]), "requested_at": time.time(), "pid": pid}
            self.passes.append(entry)
            del self.passes[:-KEEP]
        before = entry.get("state")
        state = str(report.get("state", ""))
        for key in _FIELDS:
            if key in report and not (key in ("state", "message", "error") and before in TERMINAL
                                      and state in ACTIVE):
                entry[key] = report[key]
        if state == "running" and "deadline" not in entry:
            entry["started_at"] = time.time()
            entry["deadline"] = entry["started_at"] + float(report.get("timeout_s") or 0) + GRACE
        if state in TERMINAL and before != state:
            entry["finished_at"] = time.time()
        self.save(progress_only=entry.get("state") == before and not new)
        return new

    def marks(self) -> dict[tuple[str, int], dict[str, Any]]:
        """(split, model age) -> the finished pass there: which plot points are evaluation points."""
        with self.lock:
            if self._marks is None:
                self._marks = {(str(p.get("split")), int(p.get("step", -1))): p for p in self.passes
                               if p.get("state") in TERMINAL and int(p.get("current") or 0) > 0}
            return self._marks


GRACE = 1.0  # seconds the daemon adds to the trainer's timeout: heartbeats come every 0.25 s
_BOOKS: weakref.WeakKeyDictionary[Run, Passes] = weakref.WeakKeyDictionary()
_BOOKS_LOCK = threading.Lock()


def of(run: Run) -> Passes:
    """The run's record of passes, read from its folder once."""
    with _BOOKS_LOCK:
        found = _BOOKS.get(run)
        if found is None:
            found = _BOOKS[run] = Passes(run.folder)
        return found


def curve_split(run: Run, name: str) -> str | None:
    """The split a plotted curve belongs to: `loss/eval` -> eval; `loss` -> the split it was first seen on."""
    head, _, tail = name.rpartition("/")
    if head and tail in run.samples.splits:
        return tail
    return run.home_split(name)


def mark(run: Run, name: str, points: Any) -> None:
    """Flag the plot points of one curve that a finished pass produced (LoggerDataPoint fields)."""
    marks = of(run).marks()
    split = curve_split(run, name) if marks else None
    if split is None:
        return
    for point in points:
        found = marks.get((split, int(point.model_age)))
        if found is None:
            continue
        point.is_evaluation_marker = True
        point.split_name = split
        point.evaluation_tags.extend(str(t) for t in found.get("tags") or [])
        if found.get("partial") and not point.point_note:
            point.point_note = f"partial evaluation ({found.get('state')}): {found.get('message', '')}"
