"""One training run as the daemon knows it: its folder, its stores, and the state rebuilt from them.

    <root>/<run id>/manifest.json    who and what (atomic replace on change)
                    signals.log      every ring record as received (framed; replayed at start; the prefix
                                     a snapshot covers is given back to the disk: log_trim.py, + signals.trim)
                    previews.log     one encoded preview per sample (preview_store.py; + previews.index)
                    edits.journal    the user's edits, fsynced before they are acknowledged
                    snapshot/        the records' state as of a position in signals.log (snapshot.py)
                    history/         full per-sample history chunks in Parquet (compactor.py; + history-by-sample/)
                    curves/          full chunks of the step curves in Parquet (compactor.py, parquet_curves.py)

Live records and replayed ones go through the same `apply_record`, so a restarted daemon rebuilds
exactly the state it served before. A snapshot only shortens that: opening loads it, replays the
journal, and replays the records after the positions it covers; the state is the full replay's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from weightslab_shim import records, wire
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType
from weightslabd.store import log_trim, preview_encoder, snapshot
from weightslabd.store.checkpoints import BOOK_KINDS, RunBook
from weightslabd.store.compactor import HistoryCompactor, chunk_values
from weightslabd.store.framedlog import FramedLog
from weightslabd.store.history import SignalHistory
from weightslabd.store.locks import WatchedLock
from weightslabd.store.parquet_history import pause_point
from weightslabd.store.predictions_h5 import FILE_NAME as H5_FILE
from weightslabd.store.predictions_h5 import PredictionsH5
from weightslabd.store.preview_store import PreviewStore
from weightslabd.store.previews import PreviewCache
from weightslabd.store.private import make_private_dirs
from weightslabd.store.ranks import LANE_BITS, RankGroups, group_of, groups_of, lane, next_slot
from weightslabd.store.sample_signals import SampleSignals, fold_per_sample
from weightslabd.store.samples import RECORD_COLUMNS, SampleTable, SplitTable, TableImage

STORED = struct.Struct("<Hqqq")  # record type, step, arrival unix ms, ring position
log = structlog.get_logger("weightslabd.store.run")
SIGNAL_RECORDS = frozenset({RecordType.STEP, RecordType.EVAL})
H5_FLUSH_ROWS = 65536
FOLD_KEY = "instance_aggregation"
RESTARTS_KEPT = 100  # a job's worker-group restarts listed in the manifest (the newest)
_MANIFEST_WRITES = threading.Lock()


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
    snapshots: bool = True  # write snapshots (at close, and in the background) and open from them
    snapshot_every_records: int = snapshot.EVERY_RECORDS  # 0: only at close
    snapshot_every_bytes: int = snapshot.EVERY_BYTES
    snapshot_every_s: float = snapshot.EVERY_SECONDS
    compact_history: bool = True  # full history chunks go to Parquet in the background (compactor.py)
    trim_signals_log: bool = False  # give back signals.log's prefix a durable snapshot covers (log_trim.py)

    @classmethod
    def from_settings(cls, settings: Any) -> RunOptions:
        return cls(save_predictions_h5=bool(settings.weightslab_save_predictions_in_h5),
                   instance_aggregation=str(settings.wl_instance_aggregation),
                   max_points_per_sample=int(settings.wl_max_points_per_sample),
                   preview_cache_size=int(settings.wl_max_preview_cache_size),
                   preload_previews=bool(settings.wl_preload_image_overview),
                   thumbnail_size=int(settings.wl_default_thumbnail_size),
                   batch_chunk_size=int(settings.wl_batch_chunk_size),
                   preview_warmup_wait_ms=int(settings.wl_preview_cache_warmup_wait_ms),
                   trim_signals_log=not os.environ.get(log_trim.KEEP_ENV))


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
        self.book = RunBook()  # checkpoints, names, notes, plot notes (store/checkpoints.py), from the journal
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
        self._lanes: dict[int, int] = {}  # per rank of a job, its last ring position applied (store/ranks.py)
        # A job's curves: the mean over the ranks of each worker group (store/ranks.py); `group`: the current one.
        merge, self.group = groups_of(manifest)
        self._rank_merge: RankGroups | None = merge if manifest.get("job") else None
        self.pending: dict[str, PendingCommand] = {}
        self.unacked_edits: dict[int, dict[str, Any]] = {}
        # Per hyperparameter, the seq of the last journaled edit that set it: an older edit no longer owns it
        # (not re-sent, and its late ack changes nothing), whether or not the newer one was acknowledged.
        self._hp_owner: dict[str, int] = {}
        self._signal_home: dict[str, str] = {}
        self._seq = 0
        # What the records alone made, kept apart so a snapshot holds it exactly (see _capture):
        self._record_hparams: dict[str, Any] = {}  # every "hp" field, in order
        self._records_step: int | None = None  # the step the records give, before the manifest's
        self._folds: set[tuple[str, str]] = set()  # (where the fold came from, fold) of records with instances
        self._ids_top: dict[str, int] = {}  # per split named in a record, its highest sample id
        self._pred_upto: dict[str, int] = {}  # per split, the last step with predictions for the HDF5 file
        o = self.options
        make_private_dirs(folder)  # the root log dir too, when this makes it: runs are private (0700)
        for split, size in (manifest.get("splits") or {}).items():
            self.samples.ensure_split(split, int(size))
        # A split added or grown after records named it makes the state differ from a replay (which sees
        # the final sizes from the start): snapshots stop until the next open (see _note_layout).
        self._layout_seen = self.samples.layout
        self._layout_sizes = {name: t.size for name, t in self.samples.splits.items()}
        # previews at rest, kept apart from the records' state and snapshots (preview_store.py)
        self.preview_store = PreviewStore(folder, self._split_size, self._previews_stored)
        self.preview_cache = PreviewCache(self.preview_store.source, max_entries=o.preview_cache_size,
                                          default_longest=o.thumbnail_size, warmup_wait_ms=o.preview_warmup_wait_ms,
                                          chunk_size=o.batch_chunk_size, preload=o.preload_previews)
        self._exact = True
        # Full history chunks go to Parquet under history/ (compactor.py): the run's memory stays flat.
        self.compactor = HistoryCompactor(folder, self.run_id, lambda: self.sample_signals, lambda: self.signals.sync(),
                                          lambda: self.history)  # the step curves' full chunks too
        self._chunk_full = self.compactor.kick if o.compact_history else None
        self.sample_signals = SampleSignals(chunk_values(), self._chunk_full)
        self.history.on_full = self._chunk_full
        # Large flushes: h5py's cost is per call, not per row, and rows lost in a crash come back from
        # signals.log at the next start.
        self.predictions = PredictionsH5(folder / H5_FILE, flush_rows=H5_FLUSH_ROWS) if o.save_predictions_h5 else None
        saved = {s: self.predictions.max_step(s) for s in self.samples.splits} if self.predictions else {}
        self._h5_saved_upto: dict[str, int] = {s: step for s, step in saved.items() if step is not None}
        loaded = self._load_snapshot()  # first: the logs need not scan again what it covers
        self._trim = log_trim.read(folder)  # the prefix of signals.log given up, if any: never scanned
        self._punched = 0  # bytes of it this process has seen given back
        self.signals = FramedLog(folder / "signals.log", _known(loaded.cut.signals) if loaded else None,
                                 _known(self._trim) if self._trim else None)
        self.journal = FramedLog(folder / "edits.journal")
        self._snapshot_lock = threading.Lock()  # one snapshot write at a time
        self._snapshot: snapshot.Written | None = None  # the current one: what the next write links chunks from
        self._snapshot_failing = False
        self._closed = False
        self.opened_from_snapshot = False  # how this open went (see _replay), for status and tests
        self.replayed_records = 0
        self._periodic = snapshot.Periodic(self.write_snapshot, self.run_id,
                                           o.snapshot_every_records if o.snapshots else 0, o.snapshot_every_bytes,
                                           o.snapshot_every_s)
        self._replay(loaded)
        if o.trim_signals_log and self._snapshot is not None:  # a run from before trimming, or a crash mid-trim
            self._trim_log(snapshot.mark_of(self._snapshot))
        if o.compact_history:
            self.compactor.kick_if_due()
        for split, held in self.preview_store.masks().items():  # what preloading may fill the cache with
            self.preview_cache.offer(split, np.flatnonzero(held)[:o.preview_cache_size].tolist())
        self.preview_cache.start()
        self.preview_store.start()

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
                                 splits={n: t.size for n, t in self.samples.splits.items()}, dropped=self.dropped,
                                 book=self.book.summary())
            data = json.dumps(self.manifest, indent=1, default=str)
            self._manifest_seq = seq = getattr(self, "_manifest_seq", 0) + 1
        with _MANIFEST_WRITES:  # writers share the temporary file's name; the newest state is written last
            if seq >= getattr(self, "_manifest_written", 0):
                write_durably(self.folder / "manifest.json", data.encode())
                self._manifest_written = seq

    def _replay(self, loaded: snapshot.Loaded | None) -> None:
        """Rebuild the state: edits first, then the trainer's records, whose reported
        hyperparameters are the truth of what was applied and so come last. A usable snapshot stands
        for the records it covers; only those after it are replayed."""
        began = time.monotonic()
        self._replay_log(self.journal, self._replay_edit, 0)
        if loaded is not None:
            try:
                reason = self._unusable(loaded.cut)
                if reason is None:
                    self._adopt(loaded.cut)
            except Exception as exc:  # noqa: BLE001 - a damaged snapshot costs a full replay, nothing else
                reason = f"{type(exc).__name__}: {exc}"
            if reason:
                log.warning("snapshot ignored, replaying the whole log", run=self.run_id, reason=reason[:300])
                loaded = None
            else:
                self._snapshot = loaded.written
        start = loaded.cut.signals.end if loaded else self._trim.end if self._trim else 0
        if loaded is None and self._trim is not None:
            log.error("signals.log is trimmed and no usable snapshot covers its prefix: only the records after it "
                      "are replayed", run=self.run_id, trimmed_to=self._trim.end)
        records = self._replay_log(self.signals, self._replay_record, start)
        self.opened_from_snapshot, self.replayed_records = loaded is not None, records
        log.info("run opened", run=self.run_id, from_snapshot=loaded is not None, replayed_records=records,
                 seconds=round(time.monotonic() - began, 3))

    def _replay_log(self, store: FramedLog, apply: Any, start: int) -> int:
        count = 0
        for offset, frame in store.frames(start):
            count += 1
            try:
                apply(offset, frame)
            except Exception as exc:  # noqa: BLE001 - one unreadable entry must not cost the whole run
                log.error("stored entry skipped", run=self.run_id, store=store.path.name, offset=offset,
                          error=f"{type(exc).__name__}: {exc}")
        return count

    # -- snapshots (snapshot.py) -------------------------------------------------------------------

    def _load_snapshot(self) -> snapshot.Loaded | None:
        if not self.options.snapshots:
            return None
        root = self.folder / snapshot.DIR
        try:
            snapshot.prune(root)  # what a crash in the middle of a write left
            return snapshot.load(root)
        except Exception as exc:  # noqa: BLE001 - unreadable in any way: replay everything instead
            log.warning("snapshot ignored, replaying the whole log", run=self.run_id,
                        reason=f"{type(exc).__name__}: {exc}"[:300])
            return None

    def _unusable(self, cut: snapshot.Cut) -> str | None:
        """Why the snapshot would not give the full replay's state here (None: it would). After the
        journal's replay: the hyperparameters are then those the records were replayed over."""
        if cut.run_id != self.run_id:
            return f"it is of run {cut.run_id!r}"
        if self._trim is not None:  # the only record of the trimmed prefix: taken as it was served
            return _trimmed_unusable(cut, self._trim, self.signals, {n: t.size for n, t in self.samples.splits.items()})
        if cut.state["layout"] != [[name, t.size] for name, t in self.samples.splits.items()]:
            return "the run's splits are not those it was taken with"
        # (a snapshot of an older daemon also covers preview offsets in previews.log: ignored, see _adopt)
        if not self.signals.ends_frame(cut.signals.end, cut.signals.last_frame):
            return f"signals.log ({self.signals.size} bytes) no longer holds the {cut.signals.end} bytes it covers"
        if self.predictions is not None:
            for split, upto in cut.state["pred_upto"].items():
                if upto > self._h5_saved_upto.get(split, -1):
                    return f"{H5_FILE} lacks predictions of split {split!r} it covers (to step {upto})"
        for source, how in cut.state["folds"]:
            value = self.hparams.get(FOLD_KEY) if source == "" else json.loads(source)
            if self._fold_of(value) != how:
                return f"records it covers were folded with {how!r}; a replay now would not"
        return None

    def _adopt(self, cut: snapshot.Cut) -> None:
        """Take a usable snapshot's state: everything fallible first, then the assignments."""
        st = cut.state
        tables = {split: _grown_image(split, image, self.samples.splits[split].size)
                  for split, image in cut.tables.items()}  # a trimmed run's splits may have grown since
        for split, image in tables.items():
            self.samples.splits[split].check_records(image)
        history = SignalHistory(self._chunk_full)
        history.adopt(cut.history_version, cut.curves)
        sample_signals = SampleSignals(chunk_values(), self._chunk_full)
        sample_signals.adopt(cut.stores)
        record_hparams = dict(st["hparams"])
        folds = {(str(source), str(how)) for source, how in st["folds"]}
        ids_top = {str(k): int(v) for k, v in st["ids_top"].items()}
        pred_upto = {str(k): int(v) for k, v in st["pred_upto"].items()}
        signal_home = {str(k): str(v) for k, v in st["signal_home"].items()}
        records_step = None if st["step"] is None else int(st["step"])
        last_position = int(st["last_position"])
        # Nothing below fails.
        for split, image in tables.items():
            self.samples.splits[split].adopt_records(image)
        self.history, self.sample_signals = history, sample_signals
        self.hparams.update(record_hparams)  # over the journal's: the trainer's reports come last
        self._record_hparams, self._folds, self._ids_top, self._pred_upto = record_hparams, folds, ids_top, pred_upto
        self._signal_home = signal_home
        self._records_step = records_step
        if records_step is not None:
            self.step = max(self.step, records_step)
        self.last_position = last_position
        self._lanes = {lane(last_position): last_position}

    def _capture(self) -> snapshot.Cut | None:
        """The records' state now, under the run lock (None: nothing new, or snapshots are off for now)."""
        with self.lock:
            self._periodic.cut()  # whatever comes of it: the background thread waits for as much again
            self._note_layout()
            if not self._exact and self._trim is None:  # a trimmed run's snapshot is its state as served
                return None
            layout = [[name, t.size] for name, t in self.samples.splits.items()]
            last = self._snapshot
            if (last is not None and last.signals_end == self.signals.size
                    and last.meta["state"]["layout"] == layout):
                return None
            state = {"step": self._records_step, "last_position": self.last_position,
                     "hparams": dict(self._record_hparams), "signal_home": dict(self._signal_home),
                     "folds": sorted(self._folds), "ids_top": dict(self._ids_top), "pred_upto": dict(self._pred_upto),
                     "layout": layout}
            version, curves = self.history.image()
            return snapshot.Cut(self.run_id, snapshot.LogMark(self.signals.size, self.signals.last_frame),
                                snapshot.LogMark(0, None), state,  # previews: none (previews.index is theirs)
                                {name: t.record_image() for name, t in self.samples.splits.items()},
                                {}, version, curves, self.sample_signals.images())

    def write_snapshot(self) -> snapshot.Written | None:
        """Write a snapshot of the records' state now: at close, and from the background (Periodic).
        None when there is nothing new, snapshots are off, or it failed (logged once; the logs still
        hold everything, so nothing is lost)."""
        if not self.options.snapshots:
            return None
        with self._snapshot_lock:
            began = time.monotonic()
            cut = self._capture()  # the only part under the run lock
            if cut is None:
                return None
            try:
                if self.predictions is not None and not self.predictions.flush():
                    raise OSError(f"{H5_FILE} could not be written, and the snapshot would cover its rows")
                self.signals.sync()  # never cover what the log might still lose
                written = snapshot.write(self.folder / snapshot.DIR, cut, self._snapshot)
            except Exception as exc:  # noqa: BLE001 - ENOSPC and the like: keep running on the logs
                if not self._snapshot_failing:
                    log.error("snapshot not written; the logs still hold everything", run=self.run_id,
                              error=f"{type(exc).__name__}: {exc}"[:300])
                self._snapshot_failing = True
                return None
            if self._snapshot_failing:
                log.info("snapshots written again", run=self.run_id)
            self._snapshot_failing = False
            self._snapshot = written = dataclasses.replace(written, seconds=time.monotonic() - began)
            log.info("snapshot written", run=self.run_id, covers=cut.signals.end, bytes_written=written.bytes_written,
                     bytes_linked=written.bytes_linked, seconds=round(written.seconds, 3))
            if self.options.trim_signals_log:
                self._trim_log(cut.signals)
            return written

    def _trim_log(self, mark: snapshot.LogMark) -> None:
        """Give back signals.log's prefix the snapshot just made current covers (log_trim.py): mark first,
        then punch. A failure leaves the log whole (or partly trimmed under a durable mark): logged only."""
        end = log_trim.hole_end(mark)
        if end <= self._punched:
            return
        try:
            if self._trim is None or mark.end > self._trim.end:
                log_trim.write(self.folder, mark)
                self._trim = mark
            pause_point("trim-marked", self.folder)
            if log_trim.punch(self.signals.path, end):
                self._punched = end
            pause_point("trimmed", self.folder)
        except OSError as exc:
            log.error("signals.log not trimmed", run=self.run_id, error=f"{type(exc).__name__}: {exc}"[:300])

    def _note_layout(self) -> None:
        """Under the lock, once the splits changed: if a record before named samples a split only now has
        (a new split, or ids past its old size), the state is no longer a replay's: stop snapshots."""
        sizes = {name: t.size for name, t in self.samples.splits.items()}
        for split, top in self._ids_top.items():
            before = self._layout_sizes.get(split, 0)
            if self._exact and sizes.get(split, 0) > before and top >= before:
                self._exact = False
                if self._trim is None:  # a trimmed run's snapshots go on: its state as served
                    log.info("snapshots off until the run is opened again: a split grew after records named its "
                             "new samples", run=self.run_id, split=split)
        self._layout_sizes = sizes
        self._layout_seen = self.samples.layout

    def _replay_edit(self, offset: int, frame: bytes) -> None:
        self._apply_edit(json.loads(frame))

    def _replay_record(self, offset: int, frame: bytes) -> None:
        rtype, step, stamp, position = STORED.unpack_from(frame)
        fields = records.decode(memoryview(frame)[STORED.size:]) if rtype in SIGNAL_RECORDS else {}
        self._apply(rtype, step, fields, stamp, position)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._periodic.stop()
        self.compactor.stop(finish=self.options.compact_history)  # the snapshot below names the files
        self.preview_cache.stop()
        self.preview_store.close()  # encodes what is queued, then indexes the log
        if self.predictions is not None:
            self.predictions.close()  # first: the snapshot may cover only rows the file holds
        self.save_manifest()
        if self.options.snapshots:
            with self.lock:
                self._note_layout()
            if self._exact or self._trim is not None:
                self.write_snapshot()
            else:
                snapshot.remove(self.folder / snapshot.DIR)  # taken before the change: no longer usable
        for framed in (self.signals, self.journal):
            framed.close()

    # -- records from the trainer --------------------------------------------------------------------

    def apply_record(self, rtype: int, step: int, payload: memoryview, position: int) -> bool:
        """Check, persist, then apply one ring record; False for one already applied (re-read after a
        restart). Raises MalformedPayload (nothing stored) or OSError (nothing stored: retry later)."""
        fields = records.decode(payload)  # a record that does not decode is never stored
        with self.lock:
            if position <= self._lanes.get(lane(position), -1):
                return False
            if self.samples.layout != self._layout_seen:
                self._note_layout()
            stamp = int(time.time() * 1000)
            if rtype == RecordType.PREVIEW:
                self.signals.append(STORED.pack(rtype, step, stamp, position))
                self.preview_store.ingest(fields)  # queued for the encoder: never encoded here
                self.last_position = position
                self._periodic.arrived(len(payload))
                return True
            self.signals.append(STORED.pack(rtype, step, stamp, position) + bytes(payload))
            self._periodic.arrived(len(payload))  # stored: a snapshot now covers it, applied or not
            self._apply(rtype, step, fields, stamp, position)
            self.changed.notify_all()
            return True

    def _apply(self, rtype: int, step: int, fields: dict[str, np.ndarray], stamp: int, position: int) -> None:
        self.last_position = max(self.last_position, position)
        self._lanes[lane(position)] = max(self._lanes.get(lane(position), -1), position)
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
                    how = self.instance_aggregation()
                    # where the fold came from: a snapshot is usable only while a replay would fold alike
                    self._folds.add((json.dumps(self._record_hparams[FOLD_KEY], sort_keys=True)
                                     if FOLD_KEY in self._record_hparams else "", how))
                    sample_ids, per_sample = fold_per_sample(flat_ids, values, how)
                table.set_signal(name, sample_ids, per_sample, step)
                curves.setdefault(self._curve_name(name, split), []).append(per_sample)
            elif kind == "scalar" and len(parts) == 3:
                curves.setdefault(parts[1], []).append(arr.reshape(-1).astype(np.float64))
            elif kind in ("tgt", "pred", "praw") and len(parts) == 3:
                batches.setdefault((parts[1], parts[2]), {})[kind] = arr
            elif kind == "hp":
                reported = records.as_json(arr)
                self.hparams.update(reported)
                self._record_hparams.update(reported)
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
            named = np.concatenate(id_arrays)
            if named.size:
                self._ids_top[split] = max(self._ids_top.get(split, -1), int(named.max()))
            table = self.samples.get(split)
            if table is not None:  # once per step, however many signals named the sample
                table.count_encounters(np.unique(named))
        for name, parts_ in curves.items():
            values = np.concatenate(parts_) if len(parts_) > 1 else parts_[0]
            if self._rank_merge is None:
                self._append_point(name, step, values, None, stamp)
                continue
            for curve, at, merged, spread in self._rank_merge.add(name, step, values, position):
                self._append_point(curve, at, merged, spread, stamp)
        # Model age: training steps completed, as far as the records applied so far tell (it follows
        # ingest, like the curves). A training record's step is its index; an evaluation's the count.
        reached = step + 1 if rtype == RecordType.STEP else step
        self._records_step = reached if self._records_step is None else max(self._records_step, reached)
        self.step = max(self.step, reached)

    def _append_point(self, curve: str, step: int, values: np.ndarray, spread: np.ndarray | None,
                      stamp: int) -> None:
        """A curve point: the mean of the finite values; its range theirs, or in a job the ranks' means'."""
        finite = values[np.isfinite(values)]
        if not finite.size:
            return
        band = finite if spread is None or not spread.size else spread
        self.history.append(curve, step, float(finite.mean()), float(band.min()), float(band.max()), stamp)

    def _save_predictions(self, split: str, step: int, ids: np.ndarray, preds: np.ndarray | None) -> None:
        if preds is None or len(preds) != len(ids):
            return
        self._pred_upto[split] = max(self._pred_upto.get(split, step), step)
        if self.predictions is None:
            return
        if step <= self._h5_saved_upto.get(split, -1):
            return  # replaying what the HDF5 file already holds
        self.predictions.append(split, step, ids, preds)

    def instance_aggregation(self) -> str:
        """How a sample's instances fold into one value: the run's `instance_aggregation`
        hyperparameter if it names one, else WL_INSTANCE_AGGREGATION."""
        return self._fold_of(self.hparams.get(FOLD_KEY))

    def _fold_of(self, value: Any) -> str:
        return value if value in ("mean", "max") else self.options.instance_aggregation

    def home_split(self, signal: str) -> str | None:
        """The split whose curve of `signal` carries the bare name (see _curve_name)."""
        return self._signal_home.get(signal)

    def _curve_name(self, signal: str, split: str) -> str:
        """A signal keeps its own name on the first split it is seen on; other splits add theirs."""
        home = self._signal_home.setdefault(signal, split)
        return signal if home == split else f"{signal}/{split}"

    def _split_size(self, split: str) -> int | None:
        table = self.samples.get(split)
        return None if table is None else table.size

    def _previews_stored(self, split: str, ids: list[int], renewed: list[int]) -> None:
        """New previews at rest (from the encoder's thread): thumbnails of older ones are stale. They
        are not preloaded: a sample arriving while training runs gets its thumbnail when the Studio
        asks for it, never before (preloading is for what is at rest when the run opens)."""
        self.preview_cache.forget(split, renewed)

    def preview_array(self, split: str, sample_id: int) -> np.ndarray | None:
        """The sample's picture as an array (its image file, else its preview at rest); None if none yet."""
        picture = self.preview_store.source(split, sample_id)
        if picture is None or isinstance(picture, np.ndarray):
            return picture
        return np.asarray(preview_encoder.decode(picture))

    def thumbnails(self, keys: list[tuple[str, int]], width: int, height: int) -> list[bytes | None]:
        """Encoded images for the grid, from the preview cache (Studio resize rules)."""
        self.preview_store.looked(keys)  # a newer input of these is worth encoding again
        return self.preview_cache.get_many(keys, width, height)

    def preview_masks(self) -> dict[str, str]:
        """Per split, which samples the daemon has a preview of, packed for the welcome message."""
        return {split: wire.pack_mask(held) for split, held in self.preview_store.masks().items()}

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
            self._hp_owner.update(dict.fromkeys(entry["values"], entry["seq"]))
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
        elif kind in BOOK_KINDS:
            self.book.apply(entry)
        elif kind == "restart":  # torchrun restarted the job's workers (ipc/jobs.py)
            same = (entry.get("job"), entry["restart"])
            kept = [e for e in self.manifest.get("restarts", ()) if (e.get("job"), e.get("restart")) != same]
            kept.append({k: entry[k] for k in ("job", "restart", "world_size", "slot", "rank", "step", "from_step",
                                               "resumed_from", "ts") if k in entry})
            self.manifest["restarts"] = kept[-RESTARTS_KEPT:]
            self._start_group(group_of(entry, self.manifest))
        elif kind == "applied":
            done = self.unacked_edits.pop(int(entry["edit"]), None)
            if done is not None and done.get("kind") == "hparams":
                for key, value in self._owned(done).items():
                    if self.desired.get(key) == value:
                        del self.desired[key]  # applied, or refused by the trainer: no longer wanted
                    if entry.get("ok", True):
                        self.hparams[key] = value

    def lane_next(self, rank: int) -> int:
        """The first position after what a job's rank has fed the run (store/ranks.py)."""
        with self.lock:
            return self._lanes.get(rank, (rank << LANE_BITS) - 1) + 1

    def new_worker_group(self, job: str | None, restart: int, world_size: int) -> dict[str, Any]:
        """A new worker group of the job (torchrun restarted its workers, or a re-launch continues the run,
        maybe with another world size): its rings start at a slot of their own in every lane, and its
        curves merge over its own world size (store/ranks.py). The journal's restart entry records it."""
        with self.lock:
            # from_step: where the group counts on from without a checkpoint, past every step a record named
            top = self._rank_merge.top if self._rank_merge is not None else -1
            group = {"job": job, "restart": restart, "world_size": world_size,
                     "slot": next_slot(int(self.group.get("slot", 0)), self._lanes),
                     "from_step": max(self.step, top + 1)}
            self._start_group(group)
            return dict(group)

    def _start_group(self, group: dict[str, Any]) -> None:
        if self._rank_merge is None:
            self._rank_merge = RankGroups(1)  # a run that was not a job's until now
        self._rank_merge.start(int(group["slot"]), int(group["world_size"]))
        if int(group["slot"]) > int(self.group.get("slot", 0)):
            self.group = dict(group)
            self.manifest["group"] = dict(group)

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

    def _owned(self, edit: dict[str, Any]) -> dict[str, Any]:
        """The values of hyperparameter edit `edit` that no later edit has set again."""
        return {k: v for k, v in edit["values"].items() if self._hp_owner.get(k) == edit["seq"]}

    def commands_to_resend(self) -> list[tuple[int, str, dict[str, Any]]]:
        """What a (re)attached trainer must be told: the unacked hyperparameter edits, in order, and
        the full deny state of every split (idempotent, so a repeat is harmless)."""
        with self.lock:
            out: list[tuple[int, str, dict[str, Any]]] = []
            for seq, entry in sorted(self.unacked_edits.items()):
                owned = self._owned(entry) if entry["kind"] == "hparams" else None
                if owned:  # what a later edit set again is that edit's: re-sent, this one would undo it
                    out.append((seq, "set_hparams", owned))
            for split, table in self.samples.splits.items():
                out.append((0, "set_denied", {"split": split, "mask": wire.pack_mask(table.denied)}))
            return out


def _known(mark: snapshot.LogMark) -> tuple[int, tuple[int, int] | None]:
    return mark.end, mark.last_frame


def _trimmed_unusable(cut: snapshot.Cut, trim: snapshot.LogMark, signals: FramedLog,
                      sizes: dict[str, int]) -> str | None:
    """Why a trimmed run cannot take its snapshot: only damage counts. A changed fold, a split added or
    grown since, predictions the HDF5 file lost: a replay of the prefix is impossible, so the state stays
    as it was served (new samples empty, values folded as they were when they arrived)."""
    if cut.signals.end < trim.end:
        return f"it covers {cut.signals.end} bytes of signals.log, less than the {trim.end} given up"
    if not signals.ends_frame(cut.signals.end, cut.signals.last_frame):
        return f"signals.log ({signals.size} bytes) no longer holds the {cut.signals.end} bytes it covers"
    for split, image in cut.tables.items():
        if image.size > sizes.get(split, -1):
            return f"split {split!r} has fewer samples than the snapshot's {image.size}"
    return None


def _grown_image(split: str, image: TableImage, size: int) -> TableImage:
    """`image` for a split of `size` samples: the new ones as a new table has them."""
    if image.size >= size:
        return image
    fresh = SplitTable(split, size)
    columns = {}
    for name in RECORD_COLUMNS:
        col = getattr(fresh, name).copy()
        col[:image.size] = image.columns[name]
        columns[name] = col
    signals = {}
    for name, values in image.signals.items():
        grown = np.full(size, np.nan, dtype=np.float32)
        grown[:image.size] = values
        signals[name] = grown
    return TableImage(size, signals, columns, image.task_type)


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
