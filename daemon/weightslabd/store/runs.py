"""Every run the daemon knows: found on disk at start, created or resumed when a trainer says hello.

A run is held in memory (opened: its state replayed) only while it is of use: the current one, the runs
whose trainers are attached, and one the Studio reads until the next trainer attaches or leaves. The
others are known by their folder alone, and opened again when asked for (`get`), so the daemon's memory
does not grow with the number of runs it has seen.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from weightslab_shim.runtime import is_run_id
from weightslabd.store.run import Run, RunOptions

log = structlog.get_logger("weightslabd.store.runs")
INDEX = "runs.json"


def _return_free_memory() -> None:
    """Hand the freed heap back to the system (glibc keeps it otherwise: a released run's large arrays
    would still count in the daemon's RSS). Nothing where the C library has no malloc_trim."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RunRegistry:
    def __init__(self, root_log_dir: Path | None, state_dir: Path, options: RunOptions | None = None) -> None:
        self.root_log_dir = root_log_dir
        self.options = options or RunOptions()
        self.index_path = state_dir / INDEX
        self.runs: dict[str, Run] = {}  # the runs held in memory
        self.known: dict[str, Path] = {}  # every run's folder, held or not
        self.current_id: str | None = None
        self._lock = threading.RLock()
        self._closing: set[str] = set()  # released runs whose close (snapshot write) is under way
        self._closed = threading.Condition(self._lock)

    def load(self) -> None:
        """Learn every run listed in the index and every run folder under an explicit root (their manifests
        only), and open the newest, which the Studio shows first."""
        folders: list[Path] = []
        try:
            folders += [Path(p) for p in json.loads(self.index_path.read_text()).values()]
        except (FileNotFoundError, ValueError):
            pass
        if self.root_log_dir is not None and self.root_log_dir.is_dir():
            folders += [p for p in self.root_log_dir.iterdir() if (p / "manifest.json").is_file()]
        newest = 0.0
        seen = {f.resolve() for f in self.known.values()}
        for folder in dict.fromkeys(folders):
            if folder.resolve() in seen:
                continue
            try:
                manifest = json.loads((folder / "manifest.json").read_text())
                run_id = str(manifest["run_id"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("run folder unreadable, skipped", folder=str(folder), error=str(exc))
                continue
            self.known[run_id] = folder
            created = float(manifest.get("created", 0))
            if created >= newest:
                newest, self.current_id = created, run_id
        if self.current_id is not None and self._open(self.current_id) is None:
            self.current_id = None
        if self.known:
            log.info("runs found", count=len(self.known), held=len(self.runs), current=self.current_id)

    def _open(self, run_id: str) -> Run | None:
        """The run in memory, opened from its folder (its state replayed) if it was not."""
        with self._lock:
            while run_id in self._closing:  # reopening it now would read a half-written snapshot
                self._closed.wait()
            run = self.runs.get(run_id)
            folder = self.known.get(run_id)
            if run is not None or folder is None:
                return run
            try:
                run = Run.open(folder, self.options)
            except (OSError, ValueError, KeyError) as exc:
                log.error("run folder unreadable, skipped", folder=str(folder), error=str(exc))
                self.known.pop(run_id, None)
                return None
            if run.manifest.get("status") in ("running", "paused"):
                run.manifest["status"] = "detached"  # its trainer may come back and say hello
            self.runs[run_id] = run
            return run

    def release_idle(self, keep: set[str]) -> None:
        """Close the runs held in memory that are neither current nor in `keep` (attached): they are read
        again from their folders when asked for. The close (a snapshot write) runs outside the registry's
        lock, so the Studio's calls never wait for it; only a reopen of that very run waits."""
        with self._lock:
            idle = [run for rid, run in self.runs.items() if rid != self.current_id and rid not in keep]
            for run in idle:
                self.runs.pop(run.run_id, None)
                self._closing.add(run.run_id)
        for run in idle:
            try:
                run.close()
            finally:
                with self._lock:
                    self._closing.discard(run.run_id)
                    self._closed.notify_all()
            log.info("run released from memory", run=run.run_id, held=len(self.runs))
        if idle:
            _return_free_memory()

    def folder_for(self, hello: dict[str, Any]) -> Path:
        run_id = hello["run_id"]
        if not is_run_id(run_id):  # the control server checked already: never a folder outside the root
            raise ValueError(f"run id {run_id!r} is not a plain run folder name")
        root = self.root_log_dir or Path(str(hello.get("script_dir") or ".")) / "root_log_dir"
        return root / str(run_id)

    def attach(self, hello: dict[str, Any]) -> Run:
        """The run a hello names: the loaded one if known, else a new folder."""
        run_id = str(hello["run_id"])
        with self._lock:
            run = self._open(run_id) if run_id in self.known else None
            if run is None:
                folder = self.folder_for(hello)
                if (folder / "manifest.json").is_file():
                    run = Run.open(folder, self.options)
                else:
                    run = Run.create(folder, {
                        "run_id": run_id, "run_name": hello.get("run_name", run_id), "created": time.time(),
                        "script_dir": hello.get("script_dir"), "host": hello.get("host"),
                        "rank": hello.get("rank", 0), "world_size": hello.get("world_size", 1),
                        "job": hello.get("job"),  # a torchrun job: its ranks' records share this run
                    }, self.options)
                self.runs[run_id] = run
                self.known[run_id] = run.folder
                self._save_index()
        run.manifest.update(pid=hello.get("pid"), status="paused" if hello.get("paused") else "running",
                            ring=(hello.get("ring") or {}).get("name"))
        with run.lock:
            for split, size in (hello.get("splits") or {}).items():
                run.samples.ensure_split(split, int(size))
            run.hparams.update(hello.get("hparams") or {})
            run.paused = bool(hello.get("paused", False))
        run.save_manifest()
        return run

    def make_current(self, run_id: str) -> None:
        """The run the UI sees: set once its trainer is reachable, so an edit never finds it missing."""
        with self._lock:
            if run_id in self.runs:
                self.current_id = run_id

    def current(self) -> Run | None:
        with self._lock:
            return self._open(self.current_id) if self.current_id else None

    def get(self, run_id: str) -> Run | None:
        """A run by id, opened from its folder when it is not held in memory."""
        return self._open(run_id)

    def _save_index(self) -> None:
        data = json.dumps({rid: str(folder.resolve()) for rid, folder in self.known.items()}, indent=1)
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(data)
        os.replace(tmp, self.index_path)

    def close(self) -> None:
        with self._lock:
            while self._closing:  # after any release under way
                self._closed.wait()
            for run in self.runs.values():
                run.close()
