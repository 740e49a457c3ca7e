"""Snapshots of a run's record-derived state, so that opening a run replays only the tail of its logs.

    <run>/snapshot/CURRENT                 the current snapshot's name (replaced atomically: the switch)
    <run>/snapshot/<name>/meta             crc32 line, then JSON: format, version, the log offsets it covers,
                                           the scalar state, each array's place, dtype, shape and crc32
                          state.bin        table columns, preview offsets, curves (their points in memory),
                                           store indexes, back to back (a curve's points at rest: its
                                           Parquet files under <run>/curves/, parquet_curves.py, are named)
                          sNNNN-cNNNNNN.bin  chunk NNNNNN of store NNNN: its used ids, values [, instance indexes]
                                           (a chunk at rest is named instead: its Parquet file under
                                           <run>/history/, parquet_history.py, which never changes)

A snapshot is the state the records of `signals.log[:end]` and `previews.log[:end]` built, nothing else:
the user's edits (denied, tags, journaled hyperparameters) are always replayed from `edits.journal`. It is
only an accelerator: the logs stay the source of truth, and `Run` ignores (one logged line) any snapshot
that does not verify or no longer matches the folder, and replays everything.

Writing: the caller takes a `Cut` under the run lock (small parts copied, store chunks by reference: the
used part of a chunk never changes), then `write` puts it in a temporary directory without the lock,
fsyncs, renames it into place and switches CURRENT, then removes the old one. A chunk file whose chunk is
unchanged since the previous snapshot (every full chunk, and a partial one no record reached) is hard
linked from it instead of written again: after the first snapshot only new values are written.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from weightslabd.store.history import CurveImage
from weightslabd.store.parquet_curves import DIR as CURVES_DIR
from weightslabd.store.parquet_curves import CurvePart
from weightslabd.store.parquet_history import DIR as HISTORY_DIR
from weightslabd.store.parquet_history import ColdPart
from weightslabd.store.sample_signals import ChunkImage, StoreImage
from weightslabd.store.samples import RECORD_COLUMNS, TableImage

FORMAT = "weightslabd-snapshot"
VERSION = 3  # 2: chunks may be at rest in Parquet files; 3: curves' too. Older versions are read as before
_READABLE = (1, 2, 3)
DIR = "snapshot"
CURRENT = "CURRENT"
META = "meta"
STATE = "state.bin"
_ALIGN = 64  # arrays start at multiples of this in state.bin
_CURVE_COLUMNS = ("steps", "values", "vmin", "vmax", "stamps")
_INDEX_COLUMNS = ("steps", "starts", "flags")
_DTYPES = frozenset({"<i4", "<i8", "<f4", "<f8", "|u1"})  # what a snapshot may hold: never an object dtype
_names = itertools.count()
log = structlog.get_logger("weightslabd.store.snapshot")

# When a live run writes one in the background (besides at close). Replaying a record costs ~170 µs, so
# 20,000 records bound the tail a crash leaves to a few seconds; a snapshot rewrites the table columns
# (~50 MB per million samples) and only the new chunk data, so at ~100 records/s that is every ~3 minutes.
EVERY_RECORDS = 20_000
EVERY_BYTES = 512 << 20  # of signals.log: large records (masks) cost more to replay than their count says
EVERY_SECONDS = 600.0  # a slow trickle of records still gets a snapshot this often


class SnapshotError(Exception):
    """A snapshot that cannot be used: missing part, bad checksum, unknown version, inconsistent content."""


@dataclass(frozen=True)
class LogMark:
    """A prefix of a framed log: its length and (offset, crc) of its last frame (None for an empty prefix)."""

    end: int
    last_frame: tuple[int, int] | None


@dataclass
class Cut:
    """The record-derived state of a run at one position of its logs (see the module docstring)."""

    run_id: str
    signals: LogMark
    previews: LogMark
    state: dict[str, Any]  # JSON-able: step, last position, hyperparameters from records, ...
    tables: dict[str, TableImage]
    preview_offsets: dict[str, np.ndarray]
    history_version: int
    curves: list[CurveImage]
    stores: list[StoreImage]


@dataclass(frozen=True)
class Written:
    """A snapshot on disk: its directory name and meta, what the next write reuses chunk files from."""

    name: str
    meta: dict[str, Any]
    bytes_written: int = 0
    bytes_linked: int = 0
    seconds: float = 0.0  # to take and write it, lock and fsyncs included

    @property
    def signals_end(self) -> int:
        return int(self.meta["logs"]["signals"][0])

    @property
    def previews_end(self) -> int:
        return int(self.meta["logs"]["previews"][0])


# -- writing ------------------------------------------------------------------------------------------


def write(root: Path, cut: Cut, previous: Written | None = None) -> Written:
    """Write `cut` as the run's current snapshot under `root` (see the module docstring). Raises OSError
    (a full disk, ...) with nothing left behind and the previous snapshot still current."""
    root.mkdir(mode=0o700, exist_ok=True)
    name = f"{cut.signals.end:012x}-{os.urandom(4).hex()}-{next(_names)}"  # unique across restarts (pid 1 again)
    tmp = root / f"tmp-{name}"
    tmp.mkdir(mode=0o700)
    try:
        meta, written, linked = _write_into(tmp, cut, previous, root)
        body = json.dumps(meta, separators=(",", ":")).encode()
        _write_file(tmp / META, b"%08x\n" % zlib.crc32(body) + body)
        _fsync_dir(tmp)
        final = root / name
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    switch = root / f"{CURRENT}.tmp"
    try:
        _write_file(switch, name.encode() + b"\n")
        os.replace(switch, root / CURRENT)  # the switch: before it the old snapshot is current, after it this one
    except BaseException:
        switch.unlink(missing_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        raise
    _fsync_dir(root)
    prune(root)
    return Written(name, meta, written, linked)


def _write_into(folder: Path, cut: Cut, previous: Written | None,
                root: Path) -> tuple[dict[str, Any], int, int]:
    arrays = _ArrayWriter(folder / STATE)
    meta: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "run_id": cut.run_id, "created": time.time(),
        "logs": {"signals": [cut.signals.end, cut.signals.last_frame],
                 "previews": [cut.previews.end, cut.previews.last_frame]},
        "state": cut.state, "tables": [], "previews": list(cut.preview_offsets),
        "history": {"version": cut.history_version,
                    "curves": [[c.name, c.last_append, [{"parquet": p.path.relative_to(root.parent).as_posix(),
                                                         "first": p.first, "count": p.count} for p in c.parts]]
                               for c in cut.curves]},
        "stores": [],
    }
    try:
        for i, (split, table) in enumerate(cut.tables.items()):
            meta["tables"].append({"split": split, "size": table.size, "task_type": table.task_type,
                                   "signals": list(table.signals)})
            for col in RECORD_COLUMNS:
                arrays.add(f"t{i}.{col}", table.columns[col])
            for j, col_values in enumerate(table.signals.values()):
                arrays.add(f"t{i}.s{j}", col_values)
        for i, offsets in enumerate(cut.preview_offsets.values()):
            arrays.add(f"p{i}", offsets)
        for i, curve in enumerate(cut.curves):
            for col in _CURVE_COLUMNS:
                arrays.add(f"h{i}.{col}", getattr(curve, col))
        for i, store in enumerate(cut.stores):
            for col in _INDEX_COLUMNS:
                arrays.add(f"s{i}.{col}", getattr(store, col))
        arrays.finish()
    finally:
        arrays.close()
    meta["arrays"] = arrays.entries
    meta["state_bytes"] = arrays.size
    written, linked = arrays.size, 0
    before = _chunk_files(previous)
    for i, store in enumerate(cut.stores):
        chunks = []
        for j, chunk in enumerate(store.chunks):
            if chunk.part is not None:
                chunks.append({"parquet": chunk.part.path.relative_to(root.parent).as_posix(),
                               "first_record": chunk.first_record, "offset": chunk.offset, "used": chunk.used})
                continue
            entry: dict[str, Any] = {"file": f"s{i:04d}-c{j:06d}.bin", "capacity": chunk.capacity,
                                     "first_record": chunk.first_record, "offset": chunk.offset, "used": chunk.used,
                                     "instances": chunk.instances is not None}
            old = before.get((store.split, store.signal, j)) if previous is not None else None
            same = old is not None and "file" in old and all(old[k] == entry[k] for k in
                                           ("capacity", "first_record", "offset", "used", "instances"))
            if same and old is not None and previous is not None and _link(root / previous.name / old["file"],
                                                                           folder / entry["file"]):
                entry.update(bytes=old["bytes"], crc32=old["crc32"])  # unchanged since: the same file
                linked += int(old["bytes"])
            else:
                entry["bytes"], entry["crc32"] = _write_chunk(folder / entry["file"], chunk)
                written += entry["bytes"]
            chunks.append(entry)
        meta["stores"].append({"split": store.split, "signal": store.signal, "records": store.records,
                               "values": store.values, "sorted_steps": store.sorted_steps, "max_id": store.max_id,
                               "any_instances": store.any_instances, "bad_ids": store.bad_ids, "chunks": chunks})
    return meta, written, linked


def _chunk_files(previous: Written | None) -> dict[tuple[str, str, int], dict[str, Any]]:
    if previous is None:
        return {}
    return {(s["split"], s["signal"], j): c for s in previous.meta["stores"] for j, c in enumerate(s["chunks"])}


def _link(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
        return True
    except OSError:  # the old file is gone, or the file system has no hard links: write it again
        return False


def _write_chunk(path: Path, chunk: ChunkImage) -> tuple[int, int]:
    """Write the used part of a chunk (read without a lock: it never changes); (bytes, crc32)."""
    n = chunk.used
    parts = [chunk.ids[:n], chunk.values[:n]] + ([] if chunk.instances is None else [chunk.instances[:n]])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        crc, size = 0, 0
        for part in parts:
            view = np.ascontiguousarray(part).data.cast("B")
            _write_all(fd, view)
            crc = zlib.crc32(view, crc)
            size += len(view)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size, crc


class _ArrayWriter:
    """Arrays back to back in one file, each at an aligned offset, each with its own crc32."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.size = 0
        self.entries: dict[str, list[Any]] = {}

    def add(self, key: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array).reshape(-1)
        if array.dtype.str not in _DTYPES:
            raise TypeError(f"array {key!r} of dtype {array.dtype} cannot go in a snapshot")
        pad = -self.size % _ALIGN
        if pad:
            _write_all(self._fd, memoryview(bytes(pad)))
            self.size += pad
        view = array.data.cast("B")
        _write_all(self._fd, view)
        self.entries[key] = [self.size, array.dtype.str, len(array), zlib.crc32(view)]
        self.size += len(view)

    def finish(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]  # a write may be short


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, memoryview(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(root: Path) -> None:
    """Remove what is not the current snapshot: older ones, and half-written ones a crash left."""
    try:
        current = (root / CURRENT).read_text().strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        current = ""
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name in (CURRENT, current):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def remove(root: Path) -> None:
    """Forget the snapshot (CURRENT first, so a crash half way leaves no snapshot rather than a broken one)."""
    (root / CURRENT).unlink(missing_ok=True)
    prune(root)


# -- reading ------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A snapshot read back and verified (every crc32, every shape), ready to be adopted."""

    written: Written
    cut: Cut


def load(root: Path) -> Loaded | None:
    """The current snapshot under `root`, verified; None if there is none. Raises SnapshotError (or OSError,
    ValueError, KeyError, TypeError for a damaged one: the caller treats every exception as 'unusable')."""
    try:
        name = (root / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    folder = root / name
    if not name or "/" in name or name.startswith("."):
        raise SnapshotError(f"{CURRENT} names no snapshot ({name!r})")
    meta = _read_meta(folder / META)
    if meta.get("format") != FORMAT or meta.get("version") not in _READABLE:
        raise SnapshotError(f"format {meta.get('format')!r} version {meta.get('version')!r} is not "
                            f"{FORMAT!r} version {VERSION}")
    arrays = _ArrayReader(folder / STATE, int(meta["state_bytes"]), meta["arrays"])
    tables: dict[str, TableImage] = {}
    for i, t in enumerate(meta["tables"]):
        tables[str(t["split"])] = TableImage(int(t["size"]), {str(s): arrays.get(f"t{i}.s{j}")
                                                               for j, s in enumerate(t["signals"])},
                                             {col: arrays.get(f"t{i}.{col}") for col in RECORD_COLUMNS},
                                             str(t["task_type"]))
    previews = {str(split): arrays.get(f"p{i}") for i, split in enumerate(meta["previews"])}
    curves = [CurveImage(str(c[0]), arrays.get(f"h{i}.steps"), arrays.get(f"h{i}.values"),
                         arrays.get(f"h{i}.vmin"), arrays.get(f"h{i}.vmax"), arrays.get(f"h{i}.stamps"), int(c[1]),
                         tuple(_curve_part(root.parent, e) for e in (c[2] if len(c) > 2 else ())))
              for i, c in enumerate(meta["history"]["curves"])]
    stores = []
    for i, s in enumerate(meta["stores"]):
        chunks = [_cold_chunk(root.parent, c) if "parquet" in c else _read_chunk(folder / str(c["file"]), c)
                  for c in s["chunks"]]
        stores.append(StoreImage(str(s["split"]), str(s["signal"]), int(s["records"]), int(s["values"]),
                                 arrays.get(f"s{i}.steps"), arrays.get(f"s{i}.starts"), arrays.get(f"s{i}.flags"),
                                 bool(s["sorted_steps"]), int(s["max_id"]), bool(s["any_instances"]),
                                 int(s["bad_ids"]), tuple(chunks)))
    logs = meta["logs"]
    cut = Cut(str(meta["run_id"]), _mark(logs["signals"]), _mark(logs["previews"]), dict(meta["state"]), tables,
              previews, int(meta["history"]["version"]), curves, stores)
    return Loaded(Written(name, meta), cut)


def mark_of(written: Written) -> LogMark:
    """The prefix of signals.log a snapshot covers."""
    return _mark(written.meta["logs"]["signals"])


def _mark(value: list[Any]) -> LogMark:
    end, frame = value
    return LogMark(int(end), None if frame is None else (int(frame[0]), int(frame[1])))


def _read_meta(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    head, _, body = data.partition(b"\n")
    try:
        crc = int(head, 16)
    except ValueError:
        raise SnapshotError(f"{path.name}: no checksum line") from None
    if zlib.crc32(body) != crc:
        raise SnapshotError(f"{path.name}: checksum mismatch")
    meta = json.loads(body)
    if not isinstance(meta, dict):
        raise SnapshotError(f"{path.name}: not an object")
    return meta


class _ArrayReader:
    def __init__(self, path: Path, size: int, entries: dict[str, list[Any]]) -> None:
        self.size = size
        self._buf = np.empty(size, dtype=np.uint8)
        with open(path, "rb", buffering=0) as f:
            if os.fstat(f.fileno()).st_size != size:
                raise SnapshotError(f"{path.name}: {os.fstat(f.fileno()).st_size} bytes, not {size}")
            _read_exact(f, self._buf.data)
        self._entries = entries

    def get(self, key: str) -> np.ndarray:
        offset, dtype_str, count, crc = self._entries[key]
        if dtype_str not in _DTYPES:
            raise SnapshotError(f"array {key!r}: dtype {dtype_str!r} not allowed")
        dtype = np.dtype(dtype_str)
        offset, count = int(offset), int(count)
        end = offset + count * dtype.itemsize
        if offset < 0 or count < 0 or end > self.size:
            raise SnapshotError(f"array {key!r} lies outside {STATE}")
        raw = self._buf[offset:end]
        if zlib.crc32(raw.data) != crc:
            raise SnapshotError(f"array {key!r}: checksum mismatch")
        return raw.view(dtype)


def _read_chunk(path: Path, entry: dict[str, Any]) -> ChunkImage:
    capacity, used = int(entry["capacity"]), int(entry["used"])
    if not 0 <= used <= capacity or capacity > 1 << 31:
        raise SnapshotError(f"{path.name}: {used} values used of {capacity}")
    ids = np.empty(capacity, dtype=np.int32)
    values = np.empty(capacity, dtype=np.float32)
    instances = np.zeros(capacity, dtype=np.int32) if entry["instances"] else None  # zeros: as appends make it
    parts = [ids, values] + ([] if instances is None else [instances])
    size = 4 * used * len(parts)
    with open(path, "rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size != size or size != int(entry["bytes"]):
            raise SnapshotError(f"{path.name}: {os.fstat(f.fileno()).st_size} bytes, not {size}")
        crc = 0
        for part in parts:
            view = part[:used].data.cast("B")
            _read_exact(f, view)
            crc = zlib.crc32(view, crc)
    if crc != int(entry["crc32"]):
        raise SnapshotError(f"{path.name}: checksum mismatch")
    return ChunkImage(capacity, int(entry["first_record"]), int(entry["offset"]), used, ids, values, instances)


def _cold_chunk(run_folder: Path, entry: dict[str, Any]) -> ChunkImage:
    """A chunk at rest: its file's footer only (the values stay on disk), checked to be that chunk."""
    rel = Path(str(entry["parquet"]))
    if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] != (HISTORY_DIR,):
        raise SnapshotError(f"chunk file {str(rel)!r} is not under {HISTORY_DIR}/")
    part = ColdPart(run_folder / rel)
    used, first, offset = int(entry["used"]), int(entry["first_record"]), int(entry["offset"])
    if (part.used, part.first_record, part.offset) != (used, first, offset):
        raise SnapshotError(f"{rel.name} does not hold the chunk the snapshot names")
    empty_i, empty_f = np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32)
    return ChunkImage(used, first, offset, used, empty_i, empty_f, None, part)


def _curve_part(run_folder: Path, entry: dict[str, Any]) -> CurvePart:
    """A curve's chunk at rest: its file's footer only, checked to be that chunk."""
    rel = Path(str(entry["parquet"]))
    if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] != (CURVES_DIR,):
        raise SnapshotError(f"curve file {str(rel)!r} is not under {CURVES_DIR}/")
    part = CurvePart(run_folder / rel)
    if (part.first, part.count) != (int(entry["first"]), int(entry["count"])):
        raise SnapshotError(f"{rel.name} does not hold the curve chunk the snapshot names")
    return part


def _read_exact(f: Any, view: memoryview) -> None:
    while view:
        n = f.readinto(view)
        if not n:
            raise SnapshotError(f"{Path(f.name).name}: shorter than its meta says")
        view = view[n:]


def disk_bytes(root: Path) -> int:
    """Bytes the current snapshot's files take (hard-linked chunk files counted once)."""
    try:
        folder = root / (root / CURRENT).read_text().strip()
        return sum(p.stat().st_size for p in folder.iterdir())
    except OSError:
        return 0


# -- when to write ------------------------------------------------------------------------------------


class Periodic:
    """Calls `write` from a background thread once enough has arrived since the last snapshot: EVERY_RECORDS
    records, EVERY_BYTES bytes, or EVERY_SECONDS with anything at all. Started at the first arrival."""

    def __init__(self, write: Callable[[], object], name: str, every_records: int = EVERY_RECORDS,
                 every_bytes: int = EVERY_BYTES, every_s: float = EVERY_SECONDS) -> None:
        self._write = write
        self._name = name
        self.every_records, self.every_bytes, self.every_s = every_records, every_bytes, every_s
        self.records = 0  # since the last cut; counted under the run lock
        self.bytes = 0
        self._since = time.monotonic()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def arrived(self, nbytes: int) -> None:
        """One record stored (cheap: called under the run lock for every record)."""
        self.records += 1
        self.bytes += nbytes
        if self.records == 1:
            self._since = time.monotonic()  # EVERY_SECONDS counts from the first record no snapshot covers
        if self.records == 1 or self.records == self.every_records or (
                self.bytes >= self.every_bytes and self.bytes - nbytes < self.every_bytes):
            self._kick()

    def cut(self) -> None:
        """A snapshot is being taken of everything so far (called under the run lock)."""
        self.records = self.bytes = 0

    def _kick(self) -> None:
        if self._thread is None and self.every_records > 0 and not self._stopping:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=f"snapshot-{self._name}", daemon=True)
                    self._thread.start()
        self._wake.set()

    def _due(self) -> bool:
        return self.records > 0 and (self.records >= self.every_records or self.bytes >= self.every_bytes
                                     or time.monotonic() - self._since >= self.every_s)

    def _loop(self) -> None:
        while not self._stopping:
            wait = None if self.records == 0 else max(0.0, self._since + self.every_s - time.monotonic())
            self._wake.wait(wait)
            self._wake.clear()
            if not self._stopping and self._due():
                try:
                    self._write()
                except Exception as exc:  # noqa: BLE001 - the logs still hold everything; try again later
                    log.error("snapshot failed", run=self._name, error=f"{type(exc).__name__}: {exc}")
                    self.cut()  # not at once again: after as much again has arrived

    def stop(self) -> None:
        """Stop the thread, letting a write in progress finish."""
        self._stopping = True
        self._wake.set()
        with self._start_lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
