"""One training run as the daemon knows it: its folder, its stores, and the state rebuilt from them.

    <root>/<run id>/manifest.json    who and what (atomic replace on change)
                    signals.log      every ring record as received (framed; replayed at start)
                    previews.log     input tensors of samples, for the preview cache
                    edits.journal    the user's edits, fsynced before they are acknowledged

Live records and replayed ones go through the same `apply_record`, so a restarted daemon rebuilds
exactly the state it served before.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from weightslab_shim import records, wire
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType

from .framedlog import FramedLog
from .history import SignalHistory
from .samples import SampleTable
from .watchdog import WatchedLock

STORED = struct.Struct("<Hqqq")  # record type, step, arrival unix ms, ring position
log = structlog.get_logger("weightslabd.run")
SIGNAL_RECORDS = frozenset({RecordType.STEP, RecordType.EVAL})


def write_durably(path: Path, data: bytes) -> None:
    """Replace a small file so that a crash leaves the old or the new content, never an empty file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class PendingCommand:
    cmd_id: str
    op: str
    args: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    ack: dict[str, Any] | None = None


class Run:
    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.run_id: str = manifest["run_id"]
        self.manifest = manifest
        self.lock = WatchedLock(f"run {self.run_id}")  # the watchdog sees who holds it, and for how long
        self.samples = SampleTable()
        self.history = SignalHistory()
        self.hparams: dict[str, Any] = dict(manifest.get("hparams") or {})
        self.desired: dict[str, Any] = {}  # journaled hyperparameter edits the trainer has not acked yet
        self.step = int(manifest.get("step", 0))
        self.paused = bool(manifest.get("paused", False))
        self.dropped = 0
        self.changed = threading.Condition(self.lock)  # type: ignore[arg-type]  # WatchedLock speaks its protocol
        self.last_position = -1
        self.pending: dict[str, PendingCommand] = {}
        self.unacked_edits: dict[int, dict[str, Any]] = {}
        self.preview_index: dict[str, dict[int, int]] = {}
        self._signal_home: dict[str, str] = {}
        self._seq = 0
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for split, size in (manifest.get("splits") or {}).items():
            self.samples.ensure_split(split, int(size))
        self.signals = FramedLog(folder / "signals.log")
        self.previews = FramedLog(folder / "previews.log")
        self.journal = FramedLog(folder / "edits.journal")
        self._replay()

    # -- persistence -----------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: Path) -> Run:
        manifest = json.loads((folder / "manifest.json").read_text())
        return cls(folder, manifest)

    @classmethod
    def create(cls, folder: Path, manifest: dict[str, Any]) -> Run:
        run = cls(folder, manifest)
        run.save_manifest()
        return run

    def save_manifest(self) -> None:
        with self.lock:
            self.manifest.update(step=self.step, paused=self.paused, hparams=self.hparams,
                                 splits={n: t.size for n, t in self.samples.splits.items()}, dropped=self.dropped)
            data = json.dumps(self.manifest, indent=1, default=str)
        write_durably(self.folder / "manifest.json", data.encode())

    def _replay(self) -> None:
        """Rebuild the state: edits first, then the trainer's records, whose reported
        hyperparameters are the truth of what was applied and so come last."""
        for store, apply in ((self.journal, self._replay_edit), (self.signals, self._replay_record),
                             (self.previews, self._index_previews)):
            for offset, frame in store.frames():
                try:
                    apply(offset, frame)
                except Exception as exc:  # noqa: BLE001 - one unreadable entry must not cost the whole run
                    log.error("stored entry skipped", run=self.run_id, store=store.path.name, offset=offset,
                              error=f"{type(exc).__name__}: {exc}")

    def _replay_edit(self, offset: int, frame: bytes) -> None:
        self._apply_edit(json.loads(frame))

    def _replay_record(self, offset: int, frame: bytes) -> None:
        rtype, step, stamp, position = STORED.unpack_from(frame)
        fields = records.decode(memoryview(frame)[STORED.size:]) if rtype in SIGNAL_RECORDS else {}
        self._apply(rtype, step, fields, stamp, position)

    def close(self) -> None:
        self.save_manifest()
        for log in (self.signals, self.previews, self.journal):
            log.close()

    # -- records from the trainer --------------------------------------------------------------------

    def apply_record(self, rtype: int, step: int, payload: memoryview, position: int) -> bool:
        """Check, persist, then apply one ring record; False for one already applied (re-read after a
        restart). Raises MalformedPayload (nothing stored) or OSError (nothing stored: retry later)."""
        fields = records.decode(payload)  # a record that does not decode is never stored
        with self.lock:
            if position <= self.last_position:
                return False
            stamp = int(time.time() * 1000)
            if rtype == RecordType.PREVIEW:
                offset = self.previews.append(payload)
                self.signals.append(STORED.pack(rtype, step, stamp, position))
                self._index_previews(offset, payload, fields)
                self.last_position = position
                return True
            self.signals.append(STORED.pack(rtype, step, stamp, position) + bytes(payload))
            self._apply(rtype, step, fields, stamp, position)
            self.changed.notify_all()
            return True

    def _apply(self, rtype: int, step: int, fields: dict[str, np.ndarray], stamp: int, position: int) -> None:
        self.last_position = max(self.last_position, position)
        if rtype not in SIGNAL_RECORDS:
            return
        curves: dict[str, list[np.ndarray]] = {}
        batches: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        ids_of: dict[str, np.ndarray] = {}  # serial -> sample ids: a signal's ids serve its batch values too
        for key, arr in fields.items():
            parts = key.split(SEP)
            kind = parts[0]
            if kind == "ids" and len(parts) == 4:
                ids_of[parts[3]] = arr
            elif kind == "bids" and len(parts) == 3:
                ids_of[parts[2]] = arr
            elif kind == "sig" and len(parts) == 4:
                _, split, name, serial = parts
                ids = fields.get(f"ids{SEP}{split}{SEP}{name}{SEP}{serial}")
                if ids is None:
                    continue
                values = arr.reshape(-1)
                table = self.samples.get(split)  # only registered splits: never sized from a record's ids
                if table is not None:
                    table.set_signal(name, ids.reshape(-1), values, step)
                curves.setdefault(self._curve_name(name, split), []).append(values)
            elif kind == "scalar" and len(parts) == 3:
                curves.setdefault(parts[1], []).append(arr.reshape(-1).astype(np.float64))
            elif kind in ("tgt", "pred", "praw") and len(parts) == 3:
                batches.setdefault((parts[1], parts[2]), {})[kind] = arr
            elif kind == "hp":
                self.hparams.update(records.as_json(arr))
        for (split, serial), batch in batches.items():
            ids = ids_of.get(serial)
            table = self.samples.get(split)
            if ids is not None and table is not None:
                table.set_labels(ids.reshape(-1), _column(batch.get("tgt")), _column(batch.get("pred")))
        seen: dict[str, list[np.ndarray]] = {}
        for key, arr in fields.items():
            parts = key.split(SEP)
            if parts[0] in ("ids", "bids"):
                seen.setdefault(parts[1], []).append(arr.reshape(-1))
        for split, id_arrays in seen.items():
            table = self.samples.get(split)
            if table is not None:  # once per step, however many signals named the sample
                table.count_encounters(np.unique(np.concatenate(id_arrays)))
        for name, parts_ in curves.items():
            values = np.concatenate(parts_) if len(parts_) > 1 else parts_[0]
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                continue
            self.history.append(name, step, float(finite.mean()), float(finite.min()), float(finite.max()), stamp)
        # Model age: training steps completed, as far as the records applied so far tell (it follows
        # ingest, like the curves). A training record's step is its index; an evaluation's the count.
        self.step = max(self.step, step + 1 if rtype == RecordType.STEP else step)

    def _curve_name(self, signal: str, split: str) -> str:
        """A signal keeps its own name on the first split it is seen on; other splits add theirs."""
        home = self._signal_home.setdefault(signal, split)
        return signal if home == split else f"{signal}/{split}"

    def _index_previews(self, offset: int, payload: bytes | memoryview,
                        fields: dict[str, np.ndarray] | None = None) -> None:
        for key, arr in (records.decode(payload) if fields is None else fields).items():
            parts = key.split(SEP)
            if parts[0] == "pids" and len(parts) == 3:
                index = self.preview_index.setdefault(parts[1], {})
                index.update(dict.fromkeys(arr.reshape(-1).tolist(), offset))

    def preview_masks(self) -> dict[str, str]:
        """Per split, which samples the daemon has a preview of, packed for the welcome message."""
        with self.lock:
            out = {}
            for split, index in self.preview_index.items():
                table = self.samples.get(split)
                if table is None:
                    continue
                mask = np.zeros(table.size, dtype=bool)
                ids = np.fromiter(index, dtype=np.int64, count=len(index))
                mask[ids[(ids >= 0) & (ids < table.size)]] = True
                out[split] = wire.pack_mask(mask)
            return out

    # -- the user's edits --------------------------------------------------------------------------

    def journal_edit(self, edit: dict[str, Any]) -> int:
        """Make an edit durable (fsync), then apply it to the daemon's state. Raises OSError if the
        disk refuses it: then nothing changed and nothing may be acknowledged."""
        with self.lock:
            seq = self._seq + 1
            entry = dict(edit, seq=seq, ts=time.time())
            self.journal.append(json.dumps(entry, separators=(",", ":")).encode(), sync=True)
            self._apply_edit(entry)
            return seq

    def _apply_edit(self, entry: dict[str, Any]) -> None:
        self._seq = max(self._seq, int(entry.get("seq", 0)))
        kind = entry.get("kind")
        if kind == "hparams":
            self.desired.update(entry["values"])
            self.unacked_edits[entry["seq"]] = entry
        elif kind == "deny":
            table = self.samples.get(entry["split"])
            if table is not None:
                table.set_denied(np.asarray(entry["ids"], dtype=np.int64), bool(entry["deny"]))
            self.unacked_edits[entry["seq"]] = entry
        elif kind == "tags":
            table = self.samples.get(entry["split"])
            if table is not None:
                table.edit_tags(np.asarray(entry["ids"], dtype=np.int64), list(entry["tags"]), entry["mode"])
        elif kind == "applied":
            done = self.unacked_edits.pop(int(entry["edit"]), None)
            if done is not None and done.get("kind") == "hparams":
                for key, value in done["values"].items():
                    if self.desired.get(key) == value:
                        del self.desired[key]  # applied, or refused by the trainer: no longer wanted
                    if entry.get("ok", True):
                        self.hparams[key] = value

    def record_applied(self, seq: int, step: int, ok: bool, message: str = "") -> None:
        """The trainer applied (or refused) journaled edit `seq` at `step`."""
        with self.lock:
            if seq not in self.unacked_edits:
                return
            entry = {"kind": "applied", "edit": seq, "step": step, "ok": ok, "message": message}
            self.journal.append(json.dumps(entry, separators=(",", ":")).encode())
            self._apply_edit(entry)

    def effective_hparams(self) -> dict[str, Any]:
        with self.lock:
            hp = dict(self.hparams)
            hp.update(self.desired)
            hp.setdefault("is_training", not self.paused)
            if "is_training" not in self.desired:
                hp["is_training"] = not self.paused
            return hp

    def commands_to_resend(self) -> list[tuple[int, str, dict[str, Any]]]:
        """What a (re)attached trainer must be told: the unacked hyperparameter edits, in order, and
        the full deny state of every split (idempotent, so a repeat is harmless)."""
        with self.lock:
            out: list[tuple[int, str, dict[str, Any]]] = []
            for seq, entry in sorted(self.unacked_edits.items()):
                if entry["kind"] == "hparams":
                    out.append((seq, "set_hparams", dict(entry["values"])))
            for split, table in self.samples.splits.items():
                out.append((0, "set_denied", {"split": split, "mask": wire.pack_mask(table.denied)}))
            return out


def _column(values: np.ndarray | None) -> np.ndarray | None:
    if values is None:
        return None
    return values.reshape(values.shape[0], -1)[:, 0] if values.ndim > 1 and values.shape[1:] == (1,) else values
