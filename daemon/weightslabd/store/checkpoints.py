"""What the daemon keeps of a run's checkpoints, names and notes: its run book, rebuilt from the journal.

The trainer writes checkpoint files (weightslab_shim.checkpoints); the daemon never holds weights. It
journals each one the trainer reports (path, step, size, experiment hash), each one the trainer pruned,
each restore, and the user's names, notes and plot notes, all in the run's edits.journal (fsynced),
so they survive a restart. The manifest carries a summary, so runs that are not open can be listed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from weightslab_shim.runtime import is_run_id
from weightslabd.store.experiment_hash import experiment_hash, is_hash

if TYPE_CHECKING:
    from weightslabd.store.run import Run
    from weightslabd.store.runs import RunRegistry

log = structlog.get_logger("weightslabd.store.checkpoints")
BOOK_KINDS = frozenset({"checkpoint", "checkpoint_removed", "restored", "run_name", "run_notes", "plot_note"})
NAME_MAX = 200
NOTES_MAX = 10_000
PATH_MAX = 4096
KEY = re.compile(r"(?P<key>[^@]*)(?:@(?P<step>-?\d+))?")


@dataclass
class Checkpoint:
    hash: str
    step: int
    path: str
    bytes: int
    created: float
    reason: str
    model_hash: str
    last_used: float = 0.0


@dataclass
class RunBook:
    checkpoints: list[Checkpoint] = field(default_factory=list)  # the files that exist, oldest first
    names: dict[str, str] = field(default_factory=dict)  # run id or experiment hash -> the user's name
    notes: dict[str, str] = field(default_factory=dict)
    plot_notes: dict[tuple[str, int], str] = field(default_factory=dict)  # (curve, model age) -> note
    used: dict[str, float] = field(default_factory=dict)  # experiment hash -> last saved or restored
    first: dict[str, float] = field(default_factory=dict)  # experiment hash -> first saved
    model_hash: str | None = None
    current_hash: str | None = None  # the hash of the state last saved or restored
    last_used: float = 0.0

    def apply(self, entry: dict[str, Any]) -> None:
        kind, ts = entry.get("kind"), float(entry.get("ts", 0.0))
        self.last_used = max(self.last_used, ts)
        if kind == "checkpoint":
            ckpt = Checkpoint(str(entry["hash"]), int(entry["step"]), str(entry["path"]), int(entry.get("bytes", 0)),
                              ts, str(entry.get("reason", "")), str(entry.get("model_hash", "")), ts)
            self.checkpoints = [c for c in self.checkpoints if c.path != ckpt.path] + [ckpt]
            self.model_hash, self.current_hash = ckpt.model_hash, ckpt.hash
            self.used[ckpt.hash] = ts
            self.first.setdefault(ckpt.hash, ts)
        elif kind == "checkpoint_removed":
            gone = set(entry.get("paths") or ())
            self.checkpoints = [c for c in self.checkpoints if c.path not in gone]
        elif kind == "restored":
            self.current_hash = str(entry["hash"])
            self.used[self.current_hash] = ts
            for c in self.checkpoints:
                if c.path == entry.get("path"):
                    c.last_used = ts
        elif kind == "run_name":
            self.names[str(entry["key"])] = str(entry["name"])
        elif kind == "run_notes":
            self.notes[str(entry["key"])] = str(entry["notes"])
        elif kind == "plot_note":
            key = (str(entry["metric"]), int(entry["age"]))
            if entry.get("note"):
                self.plot_notes[key] = str(entry["note"])
            else:
                self.plot_notes.pop(key, None)

    def latest(self) -> Checkpoint | None:
        return max(self.checkpoints, key=lambda c: (c.step, c.created), default=None)

    def newest(self) -> Checkpoint | None:
        """The last one written (after a restore to an earlier step, not the highest step)."""
        return max(self.checkpoints, key=lambda c: (c.created, c.step), default=None)

    def find(self, key: str, step: int | None, run_id: str) -> Checkpoint | None:
        """The newest checkpoint named by `key` (this run's id, an experiment hash, or '' for any), at
        `step` when given."""
        found = [c for c in self.checkpoints if key in ("", run_id, c.hash) and (step is None or c.step == step)]
        return max(found, key=lambda c: (c.created, c.step), default=None)

    def summary(self) -> dict[str, Any]:
        """What the manifest keeps, for listing a run without opening it."""
        return {"checkpoints": [asdict(c) for c in self.checkpoints], "names": dict(self.names),
                "notes": dict(self.notes), "used": dict(self.used), "first": dict(self.first),
                "current_hash": self.current_hash, "model_hash": self.model_hash, "last_used": self.last_used}

    @classmethod
    def from_summary(cls, data: dict[str, Any]) -> RunBook:
        book = cls()
        book.checkpoints = [Checkpoint(**c) for c in data.get("checkpoints") or ()]
        book.names, book.notes = dict(data.get("names") or {}), dict(data.get("notes") or {})
        book.used, book.first = dict(data.get("used") or {}), dict(data.get("first") or {})
        book.current_hash, book.model_hash = data.get("current_hash"), data.get("model_hash")
        book.last_used = float(data.get("last_used") or 0.0)
        return book


def journal(run: Run, entry: dict[str, Any]) -> None:
    """Journal (fsync) a run-book entry, then refresh the manifest's summary. Raises OSError."""
    run.journal_edit(entry)
    with run.lock:
        run.manifest["book"] = run.book.summary()
        run.changed.notify_all()
    run.save_manifest()


def record_written(run: Run, msg: dict[str, Any]) -> None:
    """A checkpoint message from the trainer: journal the file it wrote (and those it pruned)."""
    if msg.get("error"):
        log.error("the trainer could not write a checkpoint", run=run.run_id, step=msg.get("step"),
                  error=str(msg["error"])[:300])
        return
    path, step = msg.get("path"), msg.get("step")
    if not (isinstance(path, str) and os.path.isabs(path) and len(path) <= PATH_MAX and isinstance(step, int)):
        raise ValueError("a checkpoint message needs an absolute path and an integer step")
    reported = msg.get("hparams")
    hparams: dict[str, Any] = reported if isinstance(reported, dict) else {}
    model = str(msg.get("model_hash") or "")
    with run.lock:
        ehash = experiment_hash(hparams, model, run.samples)
    journal(run, {"kind": "checkpoint", "hash": ehash, "step": step, "path": path,
                  "bytes": int(msg.get("bytes") or 0), "reason": str(msg.get("reason", ""))[:40],
                  "model_hash": model})
    removed = [p for p in msg.get("removed") or () if isinstance(p, str)]
    if removed:
        journal(run, {"kind": "checkpoint_removed", "paths": removed})
    log.info("checkpoint journaled", run=run.run_id, step=step, hash=ehash, bytes=msg.get("bytes"),
             pruned=len(removed))


def record_loaded(run: Run, path: str) -> None:
    """The trainer loaded one of the run's checkpoints (a resume, or a restore): journal it."""
    with run.lock:
        ckpt = next((c for c in run.book.checkpoints if c.path == path), None)
    if ckpt is not None:
        journal(run, {"kind": "restored", "hash": ckpt.hash, "step": ckpt.step, "path": ckpt.path})


def parse_key(text: str) -> tuple[str, int | None]:
    """`KEY` or `KEY@STEP`: KEY is a run id, an experiment hash, or empty (the current run)."""
    m = KEY.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not HASH, RUN_ID, HASH@STEP or RUN_ID@STEP")
    key, step = m.group("key"), m.group("step")
    if key and not (is_hash(key) or is_run_id(key)):
        raise ValueError(f"{key!r} is neither an experiment hash (24 hex) nor a run id")
    return key, int(step) if step is not None else None


def find(registry: RunRegistry, text: str) -> tuple[Run, Checkpoint]:
    """The current run's checkpoint `text` names (ValueError: why none; a checkpoint of another run is
    looked up in that run's manifest, never opened, and refused: only its own trainer can load it)."""
    key, step = parse_key(text)
    current = registry.current()
    if current is not None and (key in ("", current.run_id) or is_hash(key)):
        with current.lock:
            ckpt = current.book.find(key, step, current.run_id)
        if ckpt is not None:
            return current, ckpt
    at = f" at step {step}" if step is not None else ""
    for run_id, (manifest, _) in listing(registry).items():
        if (current is not None and run_id == current.run_id) or not (is_hash(key) or key == run_id):
            continue
        other = RunBook.from_summary(manifest.get("book") or {}).find(key, step, run_id)
        if other is not None:
            raise ValueError(f"checkpoint {other.hash}@{other.step} belongs to run {run_id}, not the current run: "
                             "restart that run's script with WEIGHTSLAB_RESUME=1 to continue it")
    raise ValueError(f"no checkpoint {key or 'of the current run'}{at} is on record")


def holders(registry: RunRegistry, key: str) -> list[str]:
    """Runs whose book names `key` (a hash or a run id), read from their manifests."""
    out = []
    for run_id, (manifest, _) in listing(registry).items():
        book = RunBook.from_summary(manifest.get("book") or {})
        if run_id == key or key in book.used or key in book.names or key in book.notes:
            out.append(run_id)
    return out


def listing(registry: RunRegistry) -> dict[str, tuple[dict[str, Any], float]]:
    """Every known run's manifest (from memory when held) and its manifest file's time."""
    out: dict[str, tuple[dict[str, Any], float]] = {}
    for run_id, folder in dict(registry.known).items():
        held = registry.runs.get(run_id)
        try:
            mtime = (folder / "manifest.json").stat().st_mtime
            if held is None:
                manifest = json.loads((folder / "manifest.json").read_text())
            else:
                with held.lock:
                    manifest = dict(held.manifest, book=held.book.summary())
        except (OSError, ValueError):
            continue
        out[run_id] = (manifest, mtime)
    return out


def resume_target(registry: RunRegistry, hello: dict[str, Any]) -> str | None:
    """The run a resuming trainer continues: the one it names (a re-hello), else the newest run of
    its name. None when it does not resume, or no such run exists (it starts a new one)."""
    wanted = hello.get("resume")
    if not wanted:
        return None
    if isinstance(wanted, str):
        if not is_run_id(wanted):
            raise ValueError(f"resume names {wanted!r}, not a run id")
        return wanted if wanted in registry.known else None
    name = str(hello.get("run_name", ""))
    best: tuple[float, str] | None = None
    for run_id, (manifest, _) in listing(registry).items():
        if manifest.get("run_name") == name and run_id != hello.get("run_id"):
            created = float(manifest.get("created") or 0)
            if best is None or created > best[0]:
                best = (created, run_id)
    return best[1] if best else None


def resume_from(run: Run) -> dict[str, Any] | None:
    """The checkpoint a resumed trainer, or a restarted worker group, loads: the run's newest."""
    with run.lock:
        latest = run.book.newest()
    return {"path": latest.path, "step": latest.step, "hash": latest.hash} if latest else None


def check_text(value: str, what: str, limit: int) -> str:
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters; at most {limit}")
    if any(ord(ch) < 32 and ch not in "\n\t" for ch in value):
        raise ValueError(f"{what} holds control characters")
    return value
