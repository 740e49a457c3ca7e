"""A run's previews at rest: one encoded image (or image file path) per sample, in `previews.log`.

Ingest never encodes and never waits: `ingest` copies the new samples' inputs into a bounded queue
(at most MAX_PENDING samples and MAX_PENDING_BYTES) and returns. The queue holds blocks: a record's
new samples, their inputs in one array (at most BLOCK of them). A worker thread takes a block at a
time, encodes its samples (preview_encoder.py: at most 256 px a side, at most 32 KB) and appends one
entry per sample to the log in one write. A block of small 8-bit images (a first epoch of CIFAR, say)
is kept as its pixels all at once, with no call per sample but the checksum's: the work on a sample
is numpy's, not Python's (bench/previews.py --daemon-only). Under pressure the queue coalesces (a
newer input of a queued sample replaces the older one, in its place); once it holds half its bytes,
new inputs are queued thinned to PRESSURE_EDGE px (a strided pick: cheaper to copy and ~12x cheaper
to encode; the grid still shows them, the modal at that size); past its bounds a new sample is not
queued and counted `dropped` (the welcome then lacks it, so the trainer sends it again when it next
attaches).

Each sample is encoded once. A sample that arrives again after it was stored is encoded again only if
the Studio asked for its image since: never more often than the Studio looks. Its newer entry then
supersedes the older one; when superseded entries are more than half of the log (and at least
COMPACT_MIN_BYTES), the worker rewrites the log with only the latest entry of each sample: into
`previews.log.compact`, fsync, rename over `previews.log`, fsync the folder. A crash before the rename
leaves the old log in use (the leftover is removed at open); after it, the new one; never a half file.

`previews.index` says where each sample's latest entry is, as of a prefix of the log (preview_log.py):
it is written every INDEX_EVERY entries, after a compaction and at close, and opening scans only the
log after it. Previews are kept apart from snapshots: the index is their snapshot.

A `previews.log` of an older daemon (raw inputs, one ring record per frame) is renamed at open to
`previews.legacy.N.log`, served as it is, and converted by the worker when its queue is empty; the
legacy file is removed once every sample in it has its entry at rest (fsynced, indexed).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from PIL import Image

from weightslab_shim import records
from weightslab_shim.previews import spatial_slices
from weightslab_shim.records import SEP
from weightslabd.store import preview_log as fmt
from weightslabd.store.framedlog import FRAME, FramedLog, read_frames
from weightslabd.store.preview_encoder import Encoded, encode_block, encode_preview

__all__ = ["PreviewStore", "Source"]

log = structlog.get_logger("weightslabd.store.preview_store")

MAX_PENDING = 8192
MAX_PENDING_BYTES = 64 << 20  # past half of it, inputs are queued thinned to PRESSURE_EDGE; past all, dropped
PRESSURE_EDGE = 64
CHUNK = 64  # samples of an older daemon's log the worker converts at a time
BLOCK = 256  # samples of a record queued together, at most: what the worker takes at a time
INDEX_EVERY = 20_000  # entries appended between index writes: bounds the scan after a crash
COMPACT_MIN_BYTES = 8 << 20
RECENT_LEGACY_FRAMES = 16
COMPACT_SUFFIX = ".compact"
Key = tuple[str, int]
Source = np.ndarray | Encoded | None


@dataclass(slots=True)
class _Block:
    """New samples of one record, queued together: row i is sample ids[i]."""

    serial: int
    split: str
    ids: np.ndarray  # int64
    inputs: np.ndarray | None  # their inputs, copied out of the ring (row i: ids[i]); None: paths only
    paths: list[str]  # row i's image file ("" for none), or [] when none has one
    queued: np.ndarray  # bool: still to store (False once a newer input of the sample took its place)
    taken: bool = False  # the worker is on it

    @property
    def row_bytes(self) -> int:
        return 0 if self.inputs is None else int(self.inputs[0].nbytes)

    def path(self, row: int) -> str:
        return self.paths[row] if row < len(self.paths) else ""


class PreviewStore:
    """`size_of(split)` gives a registered split's size (None: not registered); `on_stored(split, ids,
    renewed)` is called from the worker after entries are at rest (`renewed`: ids whose older entry they
    supersede, for caches to forget)."""

    def __init__(self, folder: Path, size_of: Callable[[str], int | None],
                 on_stored: Callable[[str, list[int], list[int]], None] | None = None) -> None:
        self.folder = folder
        self._size_of = size_of
        self._on_stored = on_stored
        self._cond = threading.Condition(threading.Lock())
        self._log_lock = threading.Lock()  # readers against the swap of a compaction
        self._offsets: dict[str, np.ndarray] = {}  # per split, offset of each sample's entry (-1: none)
        self._looked: dict[str, np.ndarray] = {}  # per split, asked for by the Studio since its last encode
        self._blocks: dict[int, _Block] = {}  # queued or being stored, by serial
        self._queue: deque[int] = deque()  # serials of the blocks to store, oldest first
        self._serials = itertools.count()
        self._block_of: dict[str, np.ndarray] = {}  # per split, each sample's block serial (-1: none)
        self._row_of: dict[str, np.ndarray] = {}  # per split, each sample's row in its block
        self._pending = 0  # samples queued, not yet taken
        self._pending_bytes = 0
        self._in_flight: set[Key] = set()  # samples of an older daemon's log being converted
        self._legacy: dict[Key, tuple[int, int]] = {}  # samples only in a legacy log: (file, frame offset)
        self._legacy_logs: list[FramedLog] = []
        self._legacy_frames: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
        self._live = self._dead = 0
        self._since_index = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._warned_drop = False
        self._unreadable = 0
        self._closed = False
        self._working = False  # the worker is on a chunk or its maintenance
        self.stats_ = dict.fromkeys(("ingested", "encoded", "skipped", "coalesced", "dropped", "errors",
                                     "compactions", "converted", "thinned", "encode_ns"), 0)
        self._open()

    # -- opening ---------------------------------------------------------------------------------------

    def _open(self) -> None:
        path = self.folder / fmt.LOG
        (self.folder / (fmt.LOG + COMPACT_SUFFIX)).unlink(missing_ok=True)  # a compaction cut short: unused
        first = next(read_frames(path), None)
        if first is not None and fmt.generation_of(first[1]) is None:
            self._set_aside_legacy(path)
        index = fmt.read_index(self.folder / fmt.INDEX)
        self.log = FramedLog(path, (index.end, index.last_frame) if index is not None else None)
        if self.log.size == 0:
            self.log.append(fmt.header(0), sync=True)
        self.generation = fmt.generation_of(self.log.read_at(0)) or 0  # frame 0 is a header here
        if index is not None and self.log.skipped == index.end and index.generation == self.generation:
            self._offsets = index.offsets
            self._live, self._dead = index.live_bytes, index.dead_bytes
            frames: Iterator[tuple[int, bytes]] = self.log.frames(index.end)
        else:
            frames = itertools.islice(self.log.frames(0), 1, None)  # all but the header
        scanned = 0
        for offset, payload in frames:
            scanned += 1
            try:
                entry = fmt.unpack_entry(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                log.error("preview entry skipped", offset=offset, error=f"{type(exc).__name__}: {exc}")
                continue
            self._place(entry.split, entry.sample_id, offset, FRAME.size + len(payload))
        self._since_index = scanned
        for legacy in sorted(self.folder.glob("previews.legacy.*.log"), key=_legacy_number):
            self._index_legacy(FramedLog(legacy))

    def _set_aside_legacy(self, path: Path) -> None:
        numbers = [_legacy_number(p) for p in self.folder.glob("previews.legacy.*.log")]
        target = self.folder / f"previews.legacy.{max(numbers, default=0) + 1}.log"
        os.replace(path, target)
        fmt.sync_dir(self.folder)
        (self.folder / fmt.INDEX).unlink(missing_ok=True)
        log.info("previews of an older daemon set aside for conversion", file=target.name)

    def _index_legacy(self, legacy: FramedLog) -> None:
        number = len(self._legacy_logs)
        self._legacy_logs.append(legacy)
        for offset, payload in legacy.frames():
            try:
                fields = records.decode(payload)
            except records.MalformedPayload:
                continue
            for key, ids in fields.items():
                parts = key.split(SEP)
                if parts[0] != "pids" or len(parts) != 3:
                    continue
                for sid in ids.reshape(-1).tolist():
                    if sid >= 0 and self._entry_offset(parts[1], sid) < 0:
                        self._legacy[(parts[1], int(sid))] = (number, offset)

    # -- ingest (the ingest thread, under the run's lock) ------------------------------------------------

    def ingest(self, fields: dict[str, np.ndarray]) -> None:
        """Queue the previews of one ring record. `fields` are views of the ring: what is queued is
        copied, once per record, outside the store's lock."""
        for key, ids in fields.items():
            parts = key.split(SEP)
            if parts[0] != "pids" or len(parts) != 3 or ids.dtype.kind not in "iu":
                continue
            split, serial = parts[1], parts[2]
            size = self._size_of(split)
            if size is None:
                continue  # previews only of registered splits: never sized from a record's ids
            inputs = fields.get(f"x{SEP}{split}{SEP}{serial}")
            if inputs is not None and inputs.ndim < 2:
                inputs = None  # not one array per sample: the record's other fields still count
            paths = _paths(fields.get(f"xpath{SEP}{split}{SEP}{serial}"))
            flat = ids.reshape(-1).astype(np.int64, copy=False)
            valid = np.flatnonzero((flat >= 0) & (flat < size))
            rows = _last_of_each(flat, valid)  # a sample twice in one record: its later row wins
            with self._cond:
                self.stats_["ingested"] += len(flat)
                self.stats_["coalesced"] += len(valid) - len(rows)
                offsets = self._grow(self._offsets, split, size, -1)
                looked = self._grow(self._looked, split, size, False)
                queued = self._grow(self._block_of, split, size, -1)
                sids = flat[rows]
                # stored, and not looked at since: not encoded again
                wanted = rows[(offsets[sids] < 0) | looked[sids] | (queued[sids] >= 0)]
                self.stats_["skipped"] += len(flat) - len(valid) + len(rows) - len(wanted)
                room = MAX_PENDING_BYTES // 2 - self._pending_bytes
            rows = wanted
            if not rows.size:
                continue
            if inputs is not None:
                with_input = rows[rows < len(inputs)]
                if with_input.size:
                    if inputs[0].nbytes * len(with_input) > room:  # the encoder is behind: queue these thinned
                        inputs = inputs[spatial_slices(inputs.shape[1:], PRESSURE_EDGE) or (slice(None),)]
                        self.stats_["thinned"] += len(with_input)
                    # one copy out of the ring (its memory is reused), outside the lock
                    self._enqueue(split, flat[with_input], inputs[with_input], _pick(paths, with_input))
                rows = rows[rows >= len(inputs)]
            if paths and rows.size:  # no input, only an image file the daemon may read
                named = rows[[i < len(paths) and bool(paths[i]) for i in rows.tolist()]]
                if named.size:
                    self._enqueue(split, flat[named], None, _pick(paths, named))

    def _enqueue(self, split: str, sids: np.ndarray, inputs: np.ndarray | None, paths: list[str]) -> None:
        """Queue these samples' inputs (the store's own copy, kept as it is) and paths (one per sample, or
        none). A sample already queued takes the newer input in its place; one being stored is skipped."""
        with self._cond:
            where = self._block_of[split][sids]  # grown by ingest to the split's size
            keep = np.ones(len(sids), np.bool_)  # to queue in a new block
            fresh = np.ones(len(sids), np.bool_)  # its input is (or will be) in the queue now
            for serial in np.unique(where[where >= 0]).tolist():
                block, mine = self._blocks[serial], np.flatnonzero(where == serial)
                rows = self._row_of[split][sids[mine]]
                if block.taken:  # being stored: the input it has is as good
                    keep[mine] = fresh[mine] = False
                    self.stats_["skipped"] += len(mine)
                    continue
                self.stats_["coalesced"] += len(mine)
                if inputs is not None and block.inputs is not None and block.inputs.shape[1:] == inputs.shape[1:] \
                        and block.inputs.dtype == inputs.dtype:
                    block.inputs[rows] = inputs[mine]  # in its place: the queue's order and bytes stay
                    if paths and not block.paths:
                        block.paths = [""] * len(block.ids)
                    for row, i in zip(rows.tolist(), mine.tolist(), strict=True):
                        if block.paths:
                            block.paths[row] = paths[i] if i < len(paths) else ""
                    keep[mine] = False
                else:  # another shape (thinned, say): out of the older block, into the new one
                    block.queued[rows] = False
                    self._pending -= len(mine)
                    self._pending_bytes -= block.row_bytes * len(mine)
            row_bytes = 0 if inputs is None else int(inputs[0].nbytes)
            new = keep & (where < 0)
            # a sample moved out of an older block is queued whatever the bounds (it was already), so it
            # counts against them first: the count stays bounded, the bytes pass by at most its growth
            moved = int(np.count_nonzero(keep)) - int(np.count_nonzero(new))
            room = MAX_PENDING_BYTES - self._pending_bytes - moved * row_bytes
            fits = max(0, min(MAX_PENDING - self._pending - moved, room // row_bytes if row_bytes else MAX_PENDING))
            if np.count_nonzero(new) > fits:
                dropped = np.flatnonzero(new)[fits:]
                keep[dropped] = fresh[dropped] = False
                self.stats_["dropped"] += len(dropped)
                if not self._warned_drop:
                    self._warned_drop = True
                    log.warning("preview encoding behind: new previews dropped until it catches up; the trainer "
                                "sends them again when it next attaches", pending=self._pending)
            self._looked[split][sids[fresh]] = False  # a newer input is queued: the Studio will see it
            chosen = np.flatnonzero(keep)
            if chosen.size:
                whole = len(chosen) == len(sids)
                block_inputs = None if inputs is None else inputs if whole else inputs[chosen]
                block_paths = _pick(paths, chosen) if paths and not whole else paths
                for at in range(0, len(chosen), BLOCK):
                    part = slice(at, at + BLOCK)
                    self._add_block(split, sids[chosen[part]], None if block_inputs is None else block_inputs[part],
                                    block_paths[part])
            self._cond.notify_all()

    def _add_block(self, split: str, sids: np.ndarray, inputs: np.ndarray | None, paths: list[str]) -> None:
        """Under the lock. `sids` is the block's own (a fancy-indexed copy)."""
        serial = next(self._serials)
        self._blocks[serial] = _Block(serial, split, sids, inputs, paths, np.ones(len(sids), np.bool_))
        self._queue.append(serial)
        self._block_of[split][sids] = serial
        self._grow(self._row_of, split, len(self._block_of[split]), 0)[sids] = np.arange(len(sids))
        self._pending += len(sids)
        self._pending_bytes += 0 if inputs is None else int(inputs[0].nbytes) * len(sids)

    # -- the Studio ------------------------------------------------------------------------------------

    def looked(self, keys: list[Key]) -> None:
        """The Studio asked for these samples' images: a newer input of them is worth encoding again."""
        with self._cond:
            for split, sid in keys:
                size = self._size_of(split)
                if size is not None and 0 <= sid < size:  # a look before any record since the start counts too
                    self._grow(self._looked, split, size, False)[sid] = True

    def source(self, split: str, sample_id: int) -> Source:
        """The sample's picture: its image file when named and readable (the original, before any
        augmentation), else its encoded preview (or, not yet encoded, the input itself); None if none."""
        key = (split, int(sample_id))
        entry = None
        with self._log_lock:  # the offset and the read in one go: a compaction swaps the log between
            with self._cond:
                pending = self._queued_input(*key)
                offset = self._entry_offset(split, key[1])
                legacy = self._legacy.get(key)
            if pending is None and offset >= 0:
                entry = self._read(offset)
        if pending is not None:
            array, path = pending
        elif entry is not None:
            original = self._original(entry.path) if entry.path else None
            return original if original is not None else entry.image
        elif legacy is not None:
            array, path = self._legacy_sample(key, legacy)
        else:
            return None
        original = self._original(path) if path else None
        return original if original is not None else array

    def _queued_input(self, split: str, sid: int) -> tuple[np.ndarray | None, str] | None:
        """Under the lock: (input, path) of a sample queued or being stored (a copy: a newer input may
        take its place in the queue); None when it is not."""
        queued = self._block_of.get(split)
        if queued is None or not 0 <= sid < len(queued) or queued[sid] < 0:
            return None
        block, row = self._blocks[int(queued[sid])], int(self._row_of[split][sid])
        return (None if block.inputs is None else block.inputs[row].copy()), block.path(row)

    def masks(self) -> dict[str, np.ndarray]:
        """Per split, which samples have a preview (at rest, queued or being encoded)."""
        with self._cond:
            out: dict[str, np.ndarray] = {}
            for split in set(self._offsets) | {s for s, _ in self._legacy}:
                size = self._size_of(split)
                if size is None:
                    continue
                out[split] = self._grow(self._offsets, split, size, -1)[:size] >= 0
                queued = self._block_of.get(split)
                if queued is not None:
                    out[split] |= queued[:size] >= 0
            for split, sid in (*self._in_flight, *self._legacy):
                if split in out and sid < len(out[split]):
                    out[split][sid] = True
            return out

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {**self.stats_, "pending": self._pending, "pending_bytes": self._pending_bytes,
                    "legacy": len(self._legacy), "live_bytes": self._live, "dead_bytes": self._dead,
                    "log_bytes": self.log.size}

    # -- the worker ------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._work, name="preview-encoder", daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float, *, converted: bool = False) -> bool:
        """Block until nothing is queued, encoded or maintained (with `converted`, and no legacy log is
        left), at most `timeout`; whether it came to that."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._blocks and not self._in_flight and not self._working
                                       and not (converted and self._legacy_logs), timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Encode what is queued (bounded by `timeout`), write the index and close the files (once)."""
        if self._closed:
            return
        self._closed = True
        self.wait_idle(timeout)
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        try:
            self._write_index()
        except OSError as exc:  # the log still holds every entry: the next open scans it
            log.error("preview index not written", error=f"{type(exc).__name__}: {exc}")
        for framed in (self.log, *self._legacy_logs):
            framed.close()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or bool(self._queue) or bool(self._legacy)
                                    or self._legacy_done())
                if self._stopping:
                    return
                block, take = self._take()
                self._working = True
            try:
                if block is not None:
                    self._store_block(block)
                else:
                    self._convert(take)
            except Exception as exc:  # noqa: BLE001 - a full disk, say: these are lost (the welcome lacks them)
                count = len(take) if block is None else int(np.count_nonzero(block.queued))
                log.error("previews not stored", count=count, error=f"{type(exc).__name__}: {exc}"[:300])
            finally:
                with self._cond:
                    self._release(block, take)
                    self._cond.notify_all()
            try:
                self._maintain()
            except Exception as exc:  # noqa: BLE001 - a full disk, say: the log and any legacy file stay as they are
                log.error("preview log maintenance failed; retried later",
                          error=f"{type(exc).__name__}: {exc}"[:300])
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, timeout=5.0)
            finally:
                with self._cond:
                    self._working = False
                    self._cond.notify_all()

    def _take(self) -> tuple[_Block | None, list[Key]]:
        """Under the lock: the next block to store, else the next samples of an older daemon's log."""
        if self._queue:
            block = self._blocks[self._queue.popleft()]
            block.taken = True
            count = int(np.count_nonzero(block.queued))
            self._pending -= count
            self._pending_bytes -= block.row_bytes * count
            return block, []
        take = list(itertools.islice(self._legacy, CHUNK))
        self._in_flight.update(take)
        return None, take

    def _release(self, block: _Block | None, take: list[Key]) -> None:
        """Under the lock: the block (or legacy samples) is stored, or given up."""
        if block is None:
            self._in_flight.difference_update(take)
            return
        del self._blocks[block.serial]
        queued = self._block_of[block.split]
        queued[block.ids[queued[block.ids] == block.serial]] = -1

    def _store_block(self, block: _Block) -> None:
        """Encode a block's samples and append their entries in one write."""
        rows = np.flatnonzero(block.queued)
        if not rows.size:
            return
        ids = block.ids[rows]
        inputs = block.inputs if block.inputs is None or len(rows) == len(block.ids) else block.inputs[rows]
        if inputs is not None and not any(block.paths):
            began = time.thread_time_ns()
            pixels = encode_block(inputs)  # small 8-bit images: all at once
            self.stats_["encode_ns"] += time.thread_time_ns() - began
            if pixels is not None:
                payloads = fmt.pack_block(block.split, ids, pixels)
                offsets = self.log.append_rows(payloads)  # one write for the block
                self._stored(block.split, ids, offsets, np.full(len(ids), FRAME.size + payloads.shape[1]), len(ids))
                return
        entries = []
        for i, (row, sid) in enumerate(zip(rows.tolist(), ids.tolist(), strict=True)):
            image = None if inputs is None else self._encode(block.split, sid, inputs[i])
            if image is not None or block.path(row):
                entries.append(fmt.Entry(block.split, sid, block.path(row), image))
        self._append(entries)

    def _convert(self, take: list[Key]) -> None:
        """Store the entries of samples of an older daemon's log (each: its input, encoded, or its path)."""
        entries: list[fmt.Entry] = []
        for key in take:
            with self._cond:
                where = self._legacy.get(key)
            if where is None or self._entry_offset(*key) >= 0:
                self._drop_legacy(key)
                continue
            try:
                array, path = self._legacy_sample(key, where)
            except (OSError, ValueError) as exc:  # a damaged frame (MalformedPayload is a ValueError)
                log.error("legacy preview unreadable", split=key[0], sample_id=key[1],
                          error=f"{type(exc).__name__}: {exc}"[:300])
                self._drop_legacy(key)
                continue
            image = None if array is None else self._encode(key[0], key[1], array)
            if image is not None or path:
                entries.append(fmt.Entry(key[0], key[1], path, image))
            else:
                self._drop_legacy(key)
        self._append(entries)
        with self._cond:
            for entry in entries:
                self.stats_["converted"] += 1
                self._legacy.pop((entry.split, entry.sample_id), None)

    def _encode(self, split: str, sid: int, array: np.ndarray) -> Encoded | None:
        """One sample's preview; None (logged, a few times) for what is not an image."""
        began = time.thread_time_ns()
        try:
            return encode_preview(array)
        except Exception as exc:  # noqa: BLE001 - one bad sample must not stop the others
            self.stats_["errors"] += 1
            if self.stats_["errors"] <= 3:
                log.error("preview not encoded", split=split, sample_id=sid, error=f"{type(exc).__name__}: {exc}"[:300])
            return None
        finally:
            self.stats_["encode_ns"] += time.thread_time_ns() - began

    def _append(self, entries: list[fmt.Entry]) -> None:
        """Append entries in one write, then place them."""
        payloads = [fmt.pack_entry(entry) for entry in entries]
        offsets = self.log.append_many(payloads)
        for split in dict.fromkeys(entry.split for entry in entries):
            mine = [i for i, entry in enumerate(entries) if entry.split == split]
            self._stored(split, np.array([entries[i].sample_id for i in mine], np.int64),
                         np.array([offsets[i] for i in mine], np.int64),
                         np.array([FRAME.size + len(payloads[i]) for i in mine], np.int64),
                         sum(entries[i].image is not None for i in mine))

    def _stored(self, split: str, ids: np.ndarray, offsets: np.ndarray, frame_bytes: np.ndarray, encoded: int) -> None:
        """These samples' entries (distinct ids) are in the log at `offsets`: place them, then tell."""
        with self._cond:
            arr = self._grow(self._offsets, split, max(int(ids.max()) + 1, self._size_of(split) or 0), -1)
            old = arr[ids]
            arr[ids] = offsets
            self._live += int(frame_bytes.sum())
            for offset in old[old >= 0].tolist():  # superseded
                size = self._frame_bytes(offset)
                self._live -= size
                self._dead += size
            self._since_index += len(ids)
            self.stats_["encoded"] += encoded
        if self._on_stored is not None:
            self._on_stored(split, ids.tolist(), ids[old >= 0].tolist())

    def _drop_legacy(self, key: Key) -> None:
        with self._cond:
            self._legacy.pop(key, None)

    def _maintain(self) -> None:
        """After a chunk: compact, finish a legacy conversion, or write the index, when due."""
        with self._cond:
            compact = self._dead >= COMPACT_MIN_BYTES and self._dead > self._live
            finished = self._legacy_done()
            index = self._since_index >= INDEX_EVERY
        if compact:
            self.compact()
        elif finished:
            self._finish_legacy()
        elif index:
            self._write_index()

    def _legacy_done(self) -> bool:
        """Under the lock: every sample of the legacy logs is at rest (or had nothing to show)."""
        return bool(self._legacy_logs) and not self._legacy and not self._queue

    # -- at rest -----------------------------------------------------------------------------------------

    def _place(self, split: str, sid: int, offset: int, frame_bytes: int) -> bool:
        """Under the lock (or at open): the sample's entry is now at `offset`; whether it had one."""
        offsets = self._grow(self._offsets, split, max(sid + 1, self._size_of(split) or 0), -1)
        old = int(offsets[sid])
        offsets[sid] = offset
        self._live += frame_bytes
        if old >= 0:
            size = self._frame_bytes(old)
            self._live -= size
            self._dead += size
        return old >= 0

    def _frame_bytes(self, offset: int) -> int:
        return FRAME.size + len(self.log.read_at(offset))

    def _entry_offset(self, split: str, sid: int) -> int:
        offsets = self._offsets.get(split)
        return int(offsets[sid]) if offsets is not None and 0 <= sid < len(offsets) else -1

    def _read(self, offset: int) -> fmt.Entry | None:
        """With the log lock held: the entry at `offset`."""
        try:
            return fmt.unpack_entry(self.log.read_at(offset))
        except (OSError, ValueError) as exc:
            log.error("preview entry unreadable", offset=offset, error=f"{type(exc).__name__}: {exc}")
            return None

    def _write_index(self) -> None:
        """fsync the log, then record where each sample's entry is (never beyond what is on disk)."""
        self.log.sync()
        with self._cond:
            index = fmt.Index(self.generation, self.log.size, self.log.last_frame, self._live, self._dead,
                              {split: o.copy() for split, o in self._offsets.items()})
            self._since_index = 0
        fmt.write_index(self.folder / fmt.INDEX, index)

    def compact(self) -> None:
        """Rewrite the log with only each sample's latest entry (on the worker, or with it stopped)."""
        path = self.folder / fmt.LOG
        tmp = path.with_name(path.name + COMPACT_SUFFIX)
        with self._cond:  # per split, its samples with an entry, in the log's order (sequential reads)
            live = {split: (ids := np.flatnonzero(o >= 0))[np.argsort(o[ids], kind="stable")]
                    for split, o in self._offsets.items()}
            where = {split: self._offsets[split][ids] for split, ids in live.items()}
        tmp.unlink(missing_ok=True)
        fresh = FramedLog(tmp)
        try:
            fresh.append(fmt.header(self.generation + 1))
            moved = {split: np.array([fresh.append(self.log.read_at(int(o))) for o in where[split]], np.int64)
                     for split in live}
            fresh.sync()
        except BaseException:
            fresh.close()
            tmp.unlink(missing_ok=True)
            raise
        with self._log_lock:  # readers wait for the swap; ingest only for the offsets' update
            os.replace(tmp, path)
            fmt.sync_dir(self.folder)
            with self._cond:
                old, self.log = self.log, fresh
                fresh.path = path
                self.generation += 1
                for split, ids in live.items():
                    self._offsets[split][ids] = moved[split]
                self._live, self._dead = fresh.size - len(fmt.header(self.generation)) - FRAME.size, 0
                self.stats_["compactions"] += 1
        old.close()
        self._write_index()
        log.info("preview log compacted", entries=sum(len(ids) for ids in live.values()), bytes=self.log.size)

    def _finish_legacy(self) -> None:
        self._write_index()  # fsyncs the log first: the converted entries are on disk
        logs, self._legacy_logs = self._legacy_logs, []
        for legacy in logs:
            legacy.close()
            legacy.path.unlink(missing_ok=True)
        fmt.sync_dir(self.folder)
        with self._cond:
            self._legacy_frames.clear()
        log.info("previews of an older daemon converted", files=len(logs), converted=self.stats_["converted"])

    def _legacy_sample(self, key: Key, where: tuple[int, int]) -> tuple[np.ndarray | None, str]:
        """(input, path) of a sample in a legacy log: the old daemon's record of raw inputs."""
        number, offset = where
        with self._cond:
            fields = self._legacy_frames.get(where)
            logs = self._legacy_logs
        if fields is None:
            if number >= len(logs):
                return None, ""
            fields = records.decode(logs[number].read_at(offset))
            with self._cond:
                self._legacy_frames[where] = fields
                while len(self._legacy_frames) > RECENT_LEGACY_FRAMES:
                    self._legacy_frames.popitem(last=False)
        split, sid = key
        for name, ids in fields.items():
            parts = name.split(SEP)
            if parts[0] != "pids" or len(parts) != 3 or parts[1] != split:
                continue
            hits = np.flatnonzero(ids.reshape(-1) == sid)
            if not hits.size:
                continue
            i = int(hits[0])
            inputs = fields.get(f"x{SEP}{split}{SEP}{parts[2]}")
            paths = _paths(fields.get(f"xpath{SEP}{split}{SEP}{parts[2]}"))
            array = np.asarray(inputs[i]) if inputs is not None and i < len(inputs) else None
            return array, paths[i] if i < len(paths) else ""
        return None, ""

    def _original(self, path: str) -> np.ndarray | None:
        """The sample's image file, when this daemon can read it: full resolution, before augmentation."""
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            self._unreadable += 1
            if self._unreadable <= 3:  # the input serves instead; say why, a few times
                log.warning("sample image file unreadable, using the training input",
                            error=f"{type(exc).__name__}: {exc}"[:300])
            return None

    @staticmethod
    def _grow(arrays: dict[str, np.ndarray], split: str, size: int, fill: int | bool) -> np.ndarray:
        arr = arrays.get(split)
        if arr is None or len(arr) < size:
            grown = np.full(size, fill, dtype=np.int64 if fill is not False else np.bool_)
            if arr is not None:
                grown[:len(arr)] = arr
            arr = arrays[split] = grown
        return arr


def _legacy_number(path: Path) -> int:
    try:
        return int(path.name.split(".")[2])
    except (IndexError, ValueError):
        return 0


def _paths(field: np.ndarray | None) -> list[str]:
    if field is None:
        return []
    try:
        return [str(p or "") for p in records.as_json(field)["paths"]]
    except (ValueError, KeyError, TypeError):
        return []


def _pick(paths: list[str], rows: np.ndarray) -> list[str]:
    """The paths of these rows ("" where there is none); [] when there are none at all."""
    return [paths[i] if i < len(paths) else "" for i in rows.tolist()] if paths else []


def _last_of_each(flat: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Of these rows of `flat` (in order), the last row of each sample id, in order."""
    if len(rows) < 2:
        return rows
    _, last = np.unique(flat[rows][::-1], return_index=True)
    return rows[::-1][np.sort(last)][::-1] if len(last) < len(rows) else rows
