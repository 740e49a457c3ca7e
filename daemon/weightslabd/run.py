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
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from PIL import Image

from weightslab_shim import records, wire
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType

from .framedlog import FramedLog
from .history import SignalHistory
from .predictions_h5 import FILE_NAME as H5_FILE
from .predictions_h5 import PredictionsH5
from .previews import PreviewCache
from .sample_signals import SampleSignals, fold_per_sample
from .samples import SampleTable
from .watchdog import WatchedLock

STORED = struct.Struct("<Hqqq")  # record type, step, arrival unix ms, ring position
log = structlog.get_logger("weightslabd.run")
SIGNAL_RECORDS = frozenset({RecordType.STEP, RecordType.EVAL})
RECENT_PREVIEW_FRAMES = 16
H5_FLUSH_ROWS = 65536


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


class StateBusy(Exception):
    """The run's state lock could not be had in time."""


@dataclass(frozen=True)
class RunOptions:
    """The settings that shape what a run keeps and serves (from Settings; defaults as documented)."""
    save_predictions_h5: bool = True
    instance_aggregation: str = "mean"
    max_points_per_sample: int = 200
    preview_cache_size: int = 2000
    preload_previews: bool = True
    thumbnail_size: int = 720
    batch_chunk_size: int = 0
    preview_warmup_wait_ms: int = 100

    @classmethod
    def from_settings(cls, settings: Any) -> RunOptions:
        return cls(save_predictions_h5=bool(settings.weightslab_save_predictions_in_h5),
                   instance_aggregation=str(settings.wl_instance_aggregation),
                   max_points_per_sample=int(settings.wl_max_points_per_sample),
                   preview_cache_size=int(settings.wl_max_preview_cache_size),
                   preload_previews=bool(settings.wl_preload_image_overview),
                   thumbnail_size=int(settings.wl_default_thumbnail_size),
                   batch_chunk_size=int(settings.wl_batch_chunk_size),
                   preview_warmup_wait_ms=int(settings.wl_preview_cache_warmup_wait_ms))


@dataclass
class PendingCommand:
    cmd_id: str
    op: str
    args: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    ack: dict[str, Any] | None = None


class Run:
    def __init__(self, folder: Path, manifest: dict[str, Any], options: RunOptions | None = None) -> None:
        self.folder = folder
        self.options = options or RunOptions()
        self.edits_version = 0  # bumps on every applied deny or tag edit: views filtered on them re-evaluate
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
        # per split, where each sample's preview is in previews.log (-1: none yet); 8 bytes a sample
        self.preview_offsets: dict[str, np.ndarray] = {}
        self._signal_home: dict[str, str] = {}
        self._frames_lock = threading.Lock()
        self._unreadable_paths = 0
        self._recent_frames: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._seq = 0
        o = self.options
        self.preview_cache = PreviewCache(self.preview_array, max_entries=o.preview_cache_size,
                                          default_longest=o.thumbnail_size, warmup_wait_ms=o.preview_warmup_wait_ms,
                                          chunk_size=o.batch_chunk_size, preload=o.preload_previews)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for split, size in (manifest.get("splits") or {}).items():
            self.samples.ensure_split(split, int(size))
        self.sample_signals = SampleSignals()
        # Large flushes: h5py's cost is per call, not per row, and rows lost in a crash come back from
        # signals.log at the next start.
        self.predictions = PredictionsH5(folder / H5_FILE, flush_rows=H5_FLUSH_ROWS) if o.save_predictions_h5 else None
        saved = {s: self.predictions.max_step(s) for s in self.samples.splits} if self.predictions else {}
        self._h5_saved_upto: dict[str, int] = {s: step for s, step in saved.items() if step is not None}
        self.signals = FramedLog(folder / "signals.log")
        self.previews = FramedLog(folder / "previews.log")
        self.journal = FramedLog(folder / "edits.journal")
        self._replay()
        self.preview_cache.start()  # the previews replayed above are offered: preloading starts now

    @contextmanager
    def holding(self, timeout: float) -> Iterator[None]:
        """The state lock, or StateBusy after `timeout` (GRPC_WATCHDOG_STUCK_SECONDS): never a hang."""
        if not self.lock.acquire(timeout=timeout):
            raise StateBusy(f"the daemon's state for run {self.run_id} stayed busy for {timeout:g}s; try again")
        try:
            yield
        finally:
            self.lock.release()

    # -- persistence -----------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: Path, options: RunOptions | None = None) -> Run:
        manifest = json.loads((folder / "manifest.json").read_text())
        return cls(folder, manifest, options)

    @classmethod
    def create(cls, folder: Path, manifest: dict[str, Any], options: RunOptions | None = None) -> Run:
        run = cls(folder, manifest, options)
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
        self.preview_cache.stop()
        if self.predictions is not None:
            self.predictions.close()
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
                table = self.samples.get(split)  # only registered splits: never sized from a record's ids
                if table is None:
                    continue
                flat_ids, values = ids.reshape(-1), arr.reshape(-1)
                if len(flat_ids) != len(values):
                    raise records.MalformedPayload(f"signal {name!r}: {len(flat_ids)} ids for {len(values)} values")
                self.sample_signals.store(split, name).append(step, flat_ids, values)
                # several values of one sample are its instances (annotations): one value per sample here
                sample_ids, per_sample = flat_ids, values
                if _repeats(flat_ids):
                    sample_ids, per_sample = fold_per_sample(flat_ids, values, self.instance_aggregation())
                table.set_signal(name, sample_ids, per_sample, step)
                curves.setdefault(self._curve_name(name, split), []).append(per_sample)
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
                self._save_predictions(split, step, ids.reshape(-1), batch.get("pred"))
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

    def _save_predictions(self, split: str, step: int, ids: np.ndarray, preds: np.ndarray | None) -> None:
        if self.predictions is None or preds is None or len(preds) != len(ids):
            return
        if step <= self._h5_saved_upto.get(split, -1):
            return  # replaying what the HDF5 file already holds
        self.predictions.append(split, step, ids, preds)

    def instance_aggregation(self) -> str:
        """How a sample's instances fold into one value: the run's `instance_aggregation`
        hyperparameter if it names one, else WL_INSTANCE_AGGREGATION."""
        how = self.hparams.get("instance_aggregation")
        return how if how in ("mean", "max") else self.options.instance_aggregation

    def home_split(self, signal: str) -> str | None:
        """The split whose curve of `signal` carries the bare name (see _curve_name)."""
        return self._signal_home.get(signal)

    def _curve_name(self, signal: str, split: str) -> str:
        """A signal keeps its own name on the first split it is seen on; other splits add theirs."""
        home = self._signal_home.setdefault(signal, split)
        return signal if home == split else f"{signal}/{split}"

    def _index_previews(self, offset: int, payload: bytes | memoryview,
                        fields: dict[str, np.ndarray] | None = None) -> None:
        for key, arr in (records.decode(payload) if fields is None else fields).items():
            parts = key.split(SEP)
            if parts[0] == "pids" and len(parts) == 3:
                offsets = self._offsets_of(parts[1])
                if offsets is None:
                    continue  # previews only of registered splits: never sized from a record's ids
                ids = arr.reshape(-1).astype(np.int64)
                ids = ids[(ids >= 0) & (ids < len(offsets))]
                offsets[ids] = offset
                self.preview_cache.offer(parts[1], ids.tolist())

    def _offsets_of(self, split: str) -> np.ndarray | None:
        table = self.samples.get(split)
        if table is None:
            return None
        offsets = self.preview_offsets.get(split)
        if offsets is None or len(offsets) < table.size:  # new, or the split grew
            grown = np.full(table.size, -1, dtype=np.int64)
            if offsets is not None:
                grown[:len(offsets)] = offsets
            offsets = self.preview_offsets[split] = grown
        return offsets

    def preview_array(self, split: str, sample_id: int) -> np.ndarray | None:
        """The input the trainer sent for one sample (None if it has sent none yet)."""
        with self.lock:
            offsets = self.preview_offsets.get(split)
            offset = int(offsets[sample_id]) if offsets is not None and 0 <= sample_id < len(offsets) else -1
        if offset < 0:
            return None
        fields = self._preview_frame(offset)
        for key, ids in fields.items():
            parts = key.split(SEP)
            if parts[0] != "pids" or len(parts) != 3 or parts[1] != split:
                continue
            hits = np.flatnonzero(ids.reshape(-1) == sample_id)
            if not hits.size:
                continue
            original = self._original_image(fields.get(f"xpath{SEP}{split}{SEP}{parts[2]}"), int(hits[0]))
            if original is not None:
                return original
            inputs = fields.get(f"x{SEP}{split}{SEP}{parts[2]}")
            if inputs is not None and len(inputs) > hits[0]:
                return np.asarray(inputs[hits[0]])
        return None

    def _original_image(self, paths_field: np.ndarray | None, index: int) -> np.ndarray | None:
        """The sample's image file, when the trainer named one and this daemon can read it: full
        resolution and before augmentation, so a better picture than the training tensor."""
        if paths_field is None:
            return None
        try:
            path = records.as_json(paths_field)["paths"][index]
            if not path:
                return None
            with Image.open(path) as image:
                return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
        except (OSError, ValueError, KeyError, IndexError, TypeError, Image.DecompressionBombError) as exc:
            if self._unreadable_paths < 3:  # the tensor serves instead; say why, a few times
                log.warning("sample image file unreadable, using the training tensor", run=self.run_id,
                            error=f"{type(exc).__name__}: {exc}"[:300])
            self._unreadable_paths += 1
            return None

    def _preview_frame(self, offset: int) -> dict[str, np.ndarray]:
        """Decoded preview records, a few kept: a page of thumbnails mostly reads neighbours."""
        with self._frames_lock:
            fields = self._recent_frames.get(offset)
            if fields is not None:
                self._recent_frames.move_to_end(offset)
                return fields
        fields = records.decode(self.previews.read_at(offset))
        with self._frames_lock:
            self._recent_frames[offset] = fields
            while len(self._recent_frames) > RECENT_PREVIEW_FRAMES:
                self._recent_frames.popitem(last=False)
        return fields

    def thumbnails(self, keys: list[tuple[str, int]], width: int, height: int) -> list[bytes | None]:
        """Encoded images for the grid, from the preview cache (Studio resize rules)."""
        return self.preview_cache.get_many(keys, width, height)

    def preview_masks(self) -> dict[str, str]:
        """Per split, which samples the daemon has a preview of, packed for the welcome message."""
        with self.lock:
            out = {}
            for split in self.preview_offsets:
                offsets = self._offsets_of(split)
                if offsets is not None:
                    out[split] = wire.pack_mask(offsets >= 0)
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
            self.edits_version += 1
        elif kind == "tags":
            table = self.samples.get(entry["split"])
            if table is not None:
                table.edit_tags(np.asarray(entry["ids"], dtype=np.int64), list(entry["tags"]), entry["mode"])
            self.edits_version += 1
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


def _repeats(ids: np.ndarray) -> bool:
    """Whether a batch names a sample twice (sorting 256 ids is a few µs; np.unique is ten times that)."""
    if len(ids) < 2:
        return False
    ordered = np.sort(ids)
    return bool((ordered[1:] == ordered[:-1]).any())


def _column(values: np.ndarray | None) -> np.ndarray | None:
    if values is None:
        return None
    return values.reshape(values.shape[0], -1)[:, 0] if values.ndim > 1 and values.shape[1:] == (1,) else values
