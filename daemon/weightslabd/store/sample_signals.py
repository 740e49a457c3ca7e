"""Per-sample signal history: every (step, sample id, value) a trainer reported, and the reads built on it.

Each training step the trainer reports, per signal and split, a vector of per-sample values with their
sample ids. A `SignalStore` keeps all of them, for one (split, signal), as numpy columns:

    per value   ids int32, values float32            8 bytes a value
                instances int32 (instance index)     +4, only in chunks holding records given explicit indexes
    per record  steps int64, starts int64, flags u8  17 bytes a record (0.07 bytes a value at 256 a record)

Values live in chunks (64 Ki values at first, doubling up to 4 Mi, then 4 Mi each, or one record's size
when a record is larger); a record never straddles two chunks, and a chunk is never reallocated, so an
append copies only the record (no doubling copies, no 2x peak), and a chunk is also the unit a read
vectorises over, which bounds a read's temporary memory to a few times a chunk whatever the store's size.

Instances. A sample may have several instances (annotations, e.g. detection boxes): a record's ids then
repeat a sample id, one value per instance. Such a record is stored sorted (stably) by sample id, so the
per-instance breakdown is kept and a per-sample fold at read time is a run-length reduction, no sort.
The instance index of each value is the caller's `instances` when given (stored in the instance column),
else the value's occurrence order among its id's values, which the stable sort keeps (nothing stored:
a batch drawn with replacement repeats ids without costing the column). A sample's
instances are the repeated ids within one record; a step reported by several records (an evaluation
pass in batches) pools the samples of all of them into that step's point. `fold_per_sample` is the
same fold for one batch.

At rest. A full chunk (one a later chunk follows; no append touches it again) may be moved to its
Parquet file (`compact`, run by compactor.py; the file format in parquet_history.py): the chunk is then a
`_ColdChunk`, whose reads decode only the row groups and columns they need. A reader that took the
chunk before the swap keeps its arrays until it finishes.

Non-finite values (NaN, +-inf) are not counted anywhere: not in means, minima, maxima, counts or folds.

Threads. One ingest thread appends while gRPC threads read. `append` holds the store's lock only for
the copy (microseconds). A read takes a snapshot under the same lock (the record count, the index
arrays, the chunk list: references, no copy) and computes without it: an append writes only past the
snapshot's end (a chunk's free tail, a new chunk, or index arrays that are replaced, never modified
below the snapshot's length, when they grow), so the snapshot's prefix never changes under a reader.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from weightslabd.store.history import decimate_indexes
from weightslabd.store.parquet_history import ChunkRows, ColdPart, write_chunk

log = structlog.get_logger("weightslabd.store.sample_signals")

Fold = Literal["mean", "max"]
FOLDS: tuple[str, ...] = ("mean", "max")
CHUNK_MIN = 1 << 16  # values in a store's first chunk
CHUNK_MAX = 1 << 22  # values in a full-size chunk (4 Mi: 32 MiB of ids and values)
_INDEX_MIN = 1024  # records the index starts with
_FOLD = np.uint8(1)  # record flag: repeated ids (instances), stored sorted by id
_INST = np.uint8(2)  # record flag: an instance column holds this record's instance indexes
_ID_LIMIT = np.iinfo(np.int32).max


@dataclass(frozen=True)
class SliceCurve:
    """One mean curve: per step, the mean, min and max of the signal over the counted samples."""

    steps: np.ndarray  # int64
    means: np.ndarray  # float64
    mins: np.ndarray  # float64
    maxs: np.ndarray  # float64
    counts: np.ndarray  # int64: samples counted at the step (after the per-sample fold)
    total_points: int  # steps before downsampling

    def __len__(self) -> int:
        return len(self.steps)


def _empty_curve(total: int = 0) -> SliceCurve:
    f = np.empty(0, dtype=np.float64)
    return SliceCurve(np.empty(0, dtype=np.int64), f, f.copy(), f.copy(), np.empty(0, dtype=np.int64), total)


def _check_fold(how: str) -> None:
    if how not in FOLDS:
        raise ValueError(f"instance aggregation must be one of {', '.join(FOLDS)}, not {how!r}")


def _run_fold(values: np.ndarray, starts: np.ndarray, how: str) -> np.ndarray:
    """Fold runs of finite values starting at `starts` (non-empty runs, increasing) into float64."""
    if how == "max":
        return np.maximum.reduceat(values, starts).astype(np.float64)
    sums = np.add.reduceat(values, starts, dtype=np.float64)
    return sums / np.diff(np.append(starts, len(values)))


def fold_per_sample(ids: np.ndarray, values: np.ndarray, how: Fold | str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Fold one batch's per-instance values into one value per sample: (unique ids ascending, folded float64).

    Non-finite values are ignored; a sample whose values are all non-finite folds to NaN.
    """
    _check_fold(how)
    ids = np.asarray(ids).reshape(-1)
    values = np.asarray(values).reshape(-1)
    if ids.shape != values.shape:
        raise ValueError(f"{ids.size} ids for {values.size} values")
    if ids.size == 0:
        return ids.astype(np.int64), np.empty(0, dtype=np.float64)
    order = np.argsort(ids, kind="stable")
    sids = ids[order]
    svals = values[order].astype(np.float64)
    first = np.empty(len(sids), dtype=bool)
    first[0] = True
    np.not_equal(sids[1:], sids[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    finite = np.isfinite(svals)
    counts = np.add.reduceat(finite, starts, dtype=np.int64)
    if how == "max":
        folded = np.maximum.reduceat(np.where(finite, svals, -np.inf), starts)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            folded = np.add.reduceat(np.where(finite, svals, 0.0), starts) / counts
    folded[counts == 0] = np.nan
    return sids[starts].astype(np.int64), folded


def _occurrence(sorted_ids: np.ndarray) -> np.ndarray:
    """Each value's number among its id's values (0, 1, ...), for ids sorted stably."""
    n = len(sorted_ids)
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    pos = np.arange(n)
    return (pos - np.maximum.accumulate(np.where(first, pos, 0))).astype(np.int32)


class _Chunk:
    """Fixed-capacity value columns; records fill it from the front and never move."""

    __slots__ = ("ids", "values", "instances", "first_record", "offset", "used")

    def __init__(self, capacity: int, first_record: int, offset: int) -> None:
        self.ids = np.empty(capacity, dtype=np.int32)
        self.values = np.empty(capacity, dtype=np.float32)
        self.instances: np.ndarray | None = None  # allocated at the first record that has instance indexes
        self.first_record = first_record  # index of its first record
        self.offset = offset  # global position of its first value
        self.used = 0

    @classmethod
    def adopt(cls, image: ChunkImage) -> _Chunk | _ColdChunk:
        """A chunk over an image's arrays (taken, not copied), or over its file for a chunk at rest."""
        if image.part is not None:
            return _ColdChunk(image.part)
        chunk = cls.__new__(cls)
        chunk.ids, chunk.values, chunk.instances = image.ids, image.values, image.instances
        chunk.first_record, chunk.offset, chunk.used = image.first_record, image.offset, image.used
        return chunk

    @property
    def capacity(self) -> int:
        return len(self.ids)

    def nbytes(self) -> int:
        return self.ids.nbytes + self.values.nbytes + (self.instances.nbytes if self.instances is not None else 0)

    def columns(self, lo: int, hi: int, instances: bool = False) -> list[np.ndarray]:
        """ids, values [, instance indexes or None] of chunk positions [lo, hi): views, no copy."""
        out = [self.ids[lo:hi], self.values[lo:hi]]
        if instances:
            out.append(None if self.instances is None else self.instances[lo:hi])  # type: ignore[arg-type]
        return out

    def id_hits(self, lo: int, hi: int, table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions from lo, ids, values) of the values in [lo, hi) whose id is set in `table`."""
        ids = self.ids[lo:hi]
        pos = np.flatnonzero(table[ids])
        return pos, ids[pos], self.values[lo:hi][pos]


class _ColdChunk:
    """A full chunk at rest in its Parquet file (parquet_history.py): reads decode only what they need."""

    __slots__ = ("part",)

    def __init__(self, part: ColdPart) -> None:
        self.part = part

    first_record = property(lambda self: self.part.first_record)
    offset = property(lambda self: self.part.offset)
    used = property(lambda self: self.part.used)
    capacity = used

    def nbytes(self) -> int:
        return 0

    def columns(self, lo: int, hi: int, instances: bool = False) -> list[np.ndarray]:
        names = ("sample_id", "value", "instance") if instances else ("sample_id", "value")
        return self.part.read(lo, hi, names)

    def id_hits(self, lo: int, hi: int, table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As _Chunk.id_hits, decoding the value column only in the row groups holding a wanted id."""
        ids = self.part.read(lo, hi, ("sample_id",))[0]
        pos = np.flatnonzero(table[ids])
        if pos.size == 0:
            return pos, ids[pos], np.empty(0, dtype=np.float32)
        return pos, ids[pos], self.part.read_at(lo + pos, "value")


@dataclass(frozen=True)
class ChunkImage:
    """One chunk as of a cut: its arrays (whole capacity, by reference) and how many values were in use.

    The first `used` values never change once written, so they may be read after the store's lock is let go."""

    capacity: int
    first_record: int
    offset: int
    used: int
    ids: np.ndarray  # int32 [capacity]
    values: np.ndarray  # float32 [capacity]
    instances: np.ndarray | None  # int32 [capacity], or None: no record before the cut gave instance indexes
    part: ColdPart | None = None  # a chunk at rest: its file (ids and values then empty)


@dataclass(frozen=True)
class StoreImage:
    """A `SignalStore` as of a cut: the record index (copies) and the chunks (see ChunkImage)."""

    split: str
    signal: str
    records: int
    values: int
    steps: np.ndarray  # int64 [records]
    starts: np.ndarray  # int64 [records + 1]
    flags: np.ndarray  # uint8 [records]
    sorted_steps: bool
    max_id: int
    any_instances: bool
    bad_ids: int
    chunks: tuple[ChunkImage, ...]


@dataclass(frozen=True)
class _Snapshot:
    records: int
    steps: np.ndarray  # [records]
    starts: np.ndarray  # [records + 1], global value positions
    flags: np.ndarray  # [records]
    chunks: tuple[tuple[_Chunk | _ColdChunk, int, int], ...]  # (chunk, first record, end record), non-empty
    sorted_steps: bool  # steps never decrease
    max_id: int


@dataclass
class _Partial:
    """Per-record aggregates of the counted values (or per-sample folds)."""

    sums: np.ndarray
    counts: np.ndarray
    mins: np.ndarray
    maxs: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Partial:
        return cls(np.zeros(n), np.zeros(n, dtype=np.int64), np.full(n, np.nan), np.full(n, np.nan))

    def reset(self, at: np.ndarray) -> None:
        self.sums[at] = 0.0
        self.counts[at] = 0
        self.mins[at] = np.nan
        self.maxs[at] = np.nan


class SignalStore:
    """Every (step, sample id, value) of one signal on one split. See the module docstring."""

    def __init__(self, split: str = "", signal: str = "", chunk_max: int = CHUNK_MAX) -> None:
        self.split = split
        self.signal = signal
        self._chunk_max = max(1, chunk_max)
        self._lock = threading.Lock()
        self._chunks: list[_Chunk | _ColdChunk] = []
        self.on_full: Callable[[], object] | None = None  # told when a chunk fills: it may go to disk
        self._steps = np.empty(_INDEX_MIN, dtype=np.int64)
        self._starts = np.zeros(_INDEX_MIN + 1, dtype=np.int64)
        self._flags = np.zeros(_INDEX_MIN, dtype=np.uint8)
        self._records = 0
        self._values = 0
        self._sorted_steps = True
        self._max_id = -1
        self._any_instances = False
        self._bad_ids = 0  # values dropped at append for an id outside 0..2**31-1

    # -- writing ------------------------------------------------------------------------------------

    def append(self, step: int, ids: np.ndarray, values: np.ndarray, instances: np.ndarray | None = None) -> None:
        """Store one record: the values of samples `ids` at `step` (ids may repeat: one value per instance).

        `instances` optionally gives each value's instance index; without it a repeated id's values are
        numbered in their order. Ids outside 0..2**31-1 are dropped (logged once per store).
        """
        ids = np.asarray(ids).reshape(-1)
        vals = np.asarray(values, dtype=np.float32).reshape(-1)
        if ids.shape != vals.shape:
            raise ValueError(f"{ids.size} ids for {vals.size} values")
        inst = None if instances is None else np.asarray(instances).reshape(-1)
        if inst is not None and inst.shape != ids.shape:
            raise ValueError(f"{inst.size} instance indexes for {ids.size} values")
        if ids.size and (ids.dtype.kind not in "iu" or ids.dtype.itemsize > 4 or ids.dtype == np.uint32):
            ok = (ids >= 0) & (ids <= _ID_LIMIT)
            if not ok.all():
                self._note_bad_ids(int(ids.size - ok.sum()))
                ids, vals = ids[ok], vals[ok]
                inst = None if inst is None else inst[ok]
        ids32 = ids.astype(np.int32, copy=False)
        n = ids32.size
        if n == 0:
            return
        if ids32.min() < 0:
            ok = ids32 >= 0
            self._note_bad_ids(int(n - ok.sum()))
            ids32, vals = ids32[ok], vals[ok]
            inst = None if inst is None else inst[ok]
            n = ids32.size
            if n == 0:
                return
        flags = np.uint8(0)
        if n > 1:
            sids = np.sort(ids32)
            if (sids[1:] == sids[:-1]).any():  # instances: store sorted by id, so folds are runs
                flags |= _FOLD
                order = np.argsort(ids32, kind="stable")  # stable: implicit instance numbers stay recoverable
                ids32, vals = sids, vals[order]
                inst = None if inst is None else inst[order]
        if inst is not None:
            flags |= _INST
            inst = inst.astype(np.int32, copy=False)
        top = int(ids32.max())
        with self._lock:
            last = self._chunks[-1] if self._chunks else None
            if last is None or last.used + n > last.capacity or isinstance(last, _ColdChunk):
                size = CHUNK_MIN if last is None else last.capacity * 2
                chunk = _Chunk(max(n, min(size, self._chunk_max)), self._records, self._values)
                self._chunks.append(chunk)
                full = last is not None
            else:
                chunk, full = last, False
            at = chunk.used
            chunk.ids[at:at + n] = ids32
            chunk.values[at:at + n] = vals
            if inst is not None:
                if chunk.instances is None:
                    chunk.instances = np.zeros(chunk.capacity, dtype=np.int32)
                chunk.instances[at:at + n] = inst
            chunk.used = at + n
            r = self._records
            if r == len(self._steps):
                self._grow_index()
            self._steps[r] = step
            self._starts[r + 1] = self._values + n
            self._flags[r] = flags
            if r and step < self._steps[r - 1]:
                self._sorted_steps = False
            self._max_id = max(self._max_id, top)
            self._any_instances |= bool(flags)
            self._values += n
            self._records = r + 1  # last: the record is complete when a reader can count it
        if full and self.on_full is not None:
            self.on_full()

    def _grow_index(self) -> None:
        """Replace the index arrays by twice-larger copies (readers keep the old ones: same prefix)."""
        cap = len(self._steps) * 2
        steps = np.empty(cap, dtype=np.int64)
        steps[:len(self._steps)] = self._steps
        starts = np.zeros(cap + 1, dtype=np.int64)
        starts[:len(self._starts)] = self._starts
        flags = np.zeros(cap, dtype=np.uint8)
        flags[:len(self._flags)] = self._flags
        self._steps, self._starts, self._flags = steps, starts, flags

    def image(self) -> StoreImage:
        """The store as of now: the record index copied (17 bytes a record), the chunks by reference."""
        with self._lock:
            n = self._records
            chunks = tuple(_chunk_image(c) for c in self._chunks)
            return StoreImage(self.split, self.signal, n, self._values, self._steps[:n].copy(),
                              self._starts[:n + 1].copy(), self._flags[:n].copy(), self._sorted_steps, self._max_id,
                              self._any_instances, self._bad_ids, chunks)

    @classmethod
    def from_image(cls, image: StoreImage, chunk_max: int = CHUNK_MAX) -> SignalStore:
        """A store rebuilt from an image (its chunk arrays are taken, not copied); checks it hangs together."""
        _check_image(image)
        store = cls(image.split, image.signal, chunk_max)
        n = image.records
        cap = _INDEX_MIN
        while cap < n:  # the capacity appends would have grown the index to
            cap *= 2
        store._steps = np.empty(cap, dtype=np.int64)
        store._starts = np.zeros(cap + 1, dtype=np.int64)
        store._flags = np.zeros(cap, dtype=np.uint8)
        store._steps[:n], store._starts[:n + 1], store._flags[:n] = image.steps, image.starts, image.flags
        store._chunks = [_Chunk.adopt(c) for c in image.chunks]
        store._records, store._values = n, image.values
        store._sorted_steps, store._max_id = image.sorted_steps, image.max_id
        store._any_instances, store._bad_ids = image.any_instances, image.bad_ids
        return store

    def _note_bad_ids(self, count: int) -> None:
        if not self._bad_ids:
            log.warning("sample ids outside 0..2**31-1 dropped", split=self.split, signal=self.signal, count=count)
        self._bad_ids += count

    # -- size ---------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Values stored."""
        return self._values

    @property
    def records(self) -> int:
        return self._records

    @property
    def has_instances(self) -> bool:
        """Whether any record carried repeated ids or instance indexes."""
        return self._any_instances

    def nbytes(self) -> int:
        """Bytes allocated for the store (chunk capacity included; untouched pages are not resident)."""
        with self._lock:
            return sum(c.nbytes() for c in self._chunks) + self._steps.nbytes + self._starts.nbytes + self._flags.nbytes

    def used_nbytes(self) -> int:
        """Bytes holding data: values, instance indexes of chunks that have them, and the record index."""
        with self._lock:
            hot = [c for c in self._chunks if isinstance(c, _Chunk)]
            inst = sum(c.used * 4 for c in hot if c.instances is not None)
            return sum(c.used for c in hot) * 8 + inst + self._records * 17

    # -- at rest (parquet_history.py) ----------------------------------------------------------------

    def hot_full_chunks(self) -> int:
        """Chunks in memory that no append will touch again: what `compact` would move to disk."""
        with self._lock:
            return sum(isinstance(c, _Chunk) for c in self._chunks[:-1])

    def compact(self, run_folder: Path, after_swap: Callable[[], object] | None = None) -> int:
        """Move every full chunk still in memory to its Parquet file, then drop its arrays (readers that
        took it keep them until they finish). The only lock taken is the store's, for the swap. How many."""
        with self._lock:
            n = self._records
            steps, starts, flags = self._steps[:n], self._starts[:n + 1], self._flags[:n]
            todo = [(i, c, self._chunks[i + 1].first_record) for i, c in enumerate(self._chunks[:-1])
                    if isinstance(c, _Chunk)]
        done = 0
        for index, chunk, end in todo:
            part = write_chunk(run_folder, self.chunk_rows(index, chunk, end, steps, starts, flags))
            with self._lock:
                if self._chunks[index] is chunk:
                    self._chunks[index] = _ColdChunk(part)
                    done += 1
            if after_swap is not None:
                after_swap()
        return done

    def chunk_rows(self, index: int, chunk: _Chunk, end: int, steps: np.ndarray, starts: np.ndarray,
                   flags: np.ndarray) -> ChunkRows:
        """A chunk in memory as the rows of its file (records chunk.first_record..end)."""
        r0 = chunk.first_record
        bounds = starts[r0:end + 1] - chunk.offset
        used = int(bounds[-1])
        inst = np.zeros(used, dtype=np.int32)
        for r in np.flatnonzero(flags[r0:end]).tolist():
            lo, hi = int(bounds[r]), int(bounds[r + 1])
            if flags[r0 + r] & _INST and chunk.instances is not None:
                inst[lo:hi] = chunk.instances[lo:hi]
            elif flags[r0 + r] & _FOLD:
                inst[lo:hi] = _occurrence(chunk.ids[lo:hi])
        return ChunkRows(self.split, self.signal, index, r0, chunk.offset, steps[r0:end], bounds,
                         chunk.ids[:used], chunk.values[:used], inst)

    def rows(self) -> Iterator[tuple[ColdPart | None, ChunkRows | None]]:
        """Every chunk as of now: (its file, None) for one at rest, (None, its rows) for one in memory."""
        with self._lock:
            n = self._records
            steps, starts, flags = self._steps[:n], self._starts[:n + 1], self._flags[:n]
            chunks = list(self._chunks)
        for i, c in enumerate(chunks):
            end = min(chunks[i + 1].first_record, n) if i + 1 < len(chunks) else n
            if isinstance(c, _ColdChunk):
                yield c.part, None
            elif end > c.first_record:
                yield None, self.chunk_rows(i, c, end, steps, starts, flags)

    # -- reading ------------------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        with self._lock:
            n = self._records
            chunks = list(self._chunks)
            steps, starts, flags = self._steps[:n], self._starts[:n + 1], self._flags[:n]
            sorted_steps, max_id = self._sorted_steps, self._max_id
        spans = []
        for i, c in enumerate(chunks):
            end = min(chunks[i + 1].first_record, n) if i + 1 < len(chunks) else n
            if end > c.first_record:
                spans.append((c, c.first_record, end))
        return _Snapshot(n, steps, starts, flags, tuple(spans), sorted_steps, max_id)

    def slice_curve(self, mask: np.ndarray | None, max_points: int, how: Fold | str = "mean",
                    step_range: tuple[int, int] | None = None) -> SliceCurve:
        """The mean curve of the samples in `mask` (a boolean mask over the split's sample ids; None: all).

        Per step: the mean, min and max over the samples of the step's records that are in the mask (a
        sample's instances folded first with `how`), and how many were counted; steps with none are
        absent. `step_range` (first, last), both included, keeps those steps only. Downsampled to
        `max_points` (0: every step) keeping the first and last steps and an evenly spaced subset.
        """
        _check_fold(how)
        snap = self._snapshot()
        if snap.records == 0:
            return _empty_curve()
        lookup: np.ndarray | None = None
        if mask is not None:
            lookup = np.asarray(mask, dtype=bool).reshape(-1)
            if not lookup.any():
                return _empty_curve()
            if len(lookup) <= snap.max_id:  # ids past the mask's end are not in it
                lookup = np.concatenate([lookup, np.zeros(snap.max_id + 1 - len(lookup), dtype=bool)])
        rec_ok: np.ndarray | None = None
        if step_range is not None:
            rec_ok = (snap.steps >= step_range[0]) & (snap.steps <= step_range[1])
        part = _Partial.empty(snap.records)
        blocks = []
        for chunk, r0, r1 in snap.chunks:
            ok = None
            if rec_ok is not None:
                sel = np.flatnonzero(rec_ok[r0:r1])
                if sel.size == 0:
                    continue
                r0, r1 = r0 + int(sel[0]), r0 + int(sel[-1]) + 1
                ok = rec_ok[r0:r1]
                if ok.all():
                    ok = None
            blocks.append((chunk, r0, r1, ok))
        member = None if lookup is None else pa.array(lookup.view(np.uint8))  # for _member (no copy)
        for (_, r0, r1, ok), columns in zip(blocks, _prefetched(snap, blocks), strict=True):
            _aggregate_chunk(columns, snap, r0, r1, member, how, ok, part)
        return _by_step(snap, part, max_points)

    def trajectory(self, sample_ids: Sequence[int] | np.ndarray, max_points: int,
                   how: Fold | str = "mean") -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per requested sample: (steps int64, values float64) of every step it appeared at, in step order,
        its instances (and repeated reports at one step) folded with `how`, downsampled to `max_points`."""
        _check_fold(how)
        wanted = np.unique(np.asarray(sample_ids, dtype=np.int64).reshape(-1))
        out = {int(s): (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)) for s in wanted.tolist()}
        snap = self._snapshot()
        wanted = wanted[(wanted >= 0) & (wanted <= snap.max_id)]
        if snap.records == 0 or wanted.size == 0:
            return out
        table = np.zeros(snap.max_id + 1, dtype=bool)
        table[wanted] = True
        got_ids, got_steps, got_vals = [], [], []
        for chunk, r0, r1 in snap.chunks:
            rows = chunk.part.sample_rows(wanted) if isinstance(chunk, _ColdChunk) else None
            if rows is not None:  # the by-sample copy: only the row groups of the wanted ids
                fin = np.isfinite(rows[2])
                got_ids.append(rows[0][fin])
                got_steps.append(rows[1][fin])
                got_vals.append(rows[2][fin])
                continue
            lo, hi = int(snap.starts[r0] - chunk.offset), int(snap.starts[r1] - chunk.offset)
            pos, hit_ids, vals = chunk.id_hits(lo, hi, table)
            if pos.size == 0:
                continue
            fin = np.isfinite(vals)
            pos, vals, hit_ids = pos[fin], vals[fin], hit_ids[fin]
            rec = np.searchsorted(snap.starts[r0:r1 + 1] - snap.starts[r0], pos, side="right") - 1
            got_ids.append(hit_ids)
            got_steps.append(snap.steps[r0:r1][rec])
            got_vals.append(vals)
        if not got_ids:
            return out
        ids = np.concatenate(got_ids)
        steps = np.concatenate(got_steps)
        vals = np.concatenate(got_vals)
        order = np.lexsort((steps, ids))
        ids, steps, vals = ids[order], steps[order], vals[order]
        if ids.size == 0:
            return out
        first = np.ones(len(ids), dtype=bool)
        first[1:] = (ids[1:] != ids[:-1]) | (steps[1:] != steps[:-1])
        starts = np.flatnonzero(first)
        folded = _run_fold(vals, starts, how)
        ids, steps = ids[starts], steps[starts]
        bounds = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1], True])
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            idx = decimate_indexes(b - a, max_points) + a
            out[int(ids[a])] = (steps[idx], folded[idx])
        return out

    def step_samples(self, step: int, max_samples: int, how: Fold | str = "mean") -> tuple[np.ndarray, np.ndarray, int]:
        """The samples reported at `step`: (ids int64, values float64, how many samples there were), highest
        values first (NaN last), at most `max_samples` of them (0: all); instances folded with `how`."""
        _check_fold(how)
        snap = self._snapshot()
        if snap.sorted_steps:
            lo, hi = np.searchsorted(snap.steps, [step, step + 1])
            recs = np.arange(lo, hi)
        else:
            recs = np.flatnonzero(snap.steps == step)
        if recs.size == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64), 0
        firsts = np.array([c.first_record for c, _, _ in snap.chunks])
        ids_parts, val_parts = [], []
        for r in recs.tolist():
            chunk = snap.chunks[int(np.searchsorted(firsts, r, side="right")) - 1][0]
            lo_, hi_ = int(snap.starts[r] - chunk.offset), int(snap.starts[r + 1] - chunk.offset)
            ids_, vals_ = chunk.columns(lo_, hi_)
            ids_parts.append(ids_)
            val_parts.append(vals_)
        uids, folded = fold_per_sample(np.concatenate(ids_parts), np.concatenate(val_parts), how)
        order = np.argsort(-folded, kind="stable")  # NaN sorts last
        if max_samples > 0:
            order = order[:max_samples]
        return uids[order], folded[order], len(uids)

    def records_at(self, step: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """The stored records of `step`, per-instance breakdown included: (ids, values, instance indexes or
        None), copies. A record with repeated ids is stored sorted by id."""
        snap = self._snapshot()
        out = []
        firsts = np.array([c.first_record for c, _, _ in snap.chunks])
        for r in np.flatnonzero(snap.steps == step).tolist():
            chunk = snap.chunks[int(np.searchsorted(firsts, r, side="right")) - 1][0]
            lo, hi = int(snap.starts[r] - chunk.offset), int(snap.starts[r + 1] - chunk.offset)
            ids, vals, stored = chunk.columns(lo, hi, instances=True)
            ids = ids.copy()
            inst: np.ndarray | None = None
            if isinstance(chunk, _ColdChunk):  # its file holds what the cases below give
                inst = stored.copy() if snap.flags[r] & (_INST | _FOLD) else None
            elif snap.flags[r] & _INST and stored is not None:
                inst = stored.copy()
            elif snap.flags[r] & _FOLD:
                inst = _occurrence(ids)
            out.append((ids, vals.copy(), inst))
        return out


def _chunk_image(c: _Chunk | _ColdChunk) -> ChunkImage:
    if isinstance(c, _ColdChunk):
        empty_i, empty_f = np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32)
        return ChunkImage(c.used, c.first_record, c.offset, c.used, empty_i, empty_f, None, c.part)
    return ChunkImage(c.capacity, c.first_record, c.offset, c.used, c.ids, c.values, c.instances)


def _check_image(image: StoreImage) -> None:
    """Raise ValueError unless the image's index and chunks describe one another (lengths, offsets, dtypes)."""
    n, where = image.records, f"store {image.split!r}/{image.signal!r}"
    if image.steps.shape != (n,) or image.starts.shape != (n + 1,) or image.flags.shape != (n,):
        raise ValueError(f"{where}: index arrays do not hold {n} records")
    if (image.steps.dtype, image.starts.dtype, image.flags.dtype) != (np.int64, np.int64, np.uint8):
        raise ValueError(f"{where}: index arrays of the wrong dtypes")
    if int(image.starts[0]) != 0 or int(image.starts[-1]) != image.values or (np.diff(image.starts) < 0).any():
        raise ValueError(f"{where}: record starts do not run from 0 to {image.values}")
    record, offset = 0, 0
    for c in image.chunks:
        arrays = [c.ids, c.values] + ([] if c.instances is None else [c.instances])
        if c.part is not None:
            if (c.part.first_record, c.part.offset, c.part.used) != (c.first_record, c.offset, c.used):
                raise ValueError(f"{where}: the file of the chunk at value {c.offset} holds another chunk")
        elif any(a.shape != (c.capacity,) for a in arrays) or not 0 <= c.used <= c.capacity:
            raise ValueError(f"{where}: a chunk's arrays do not match its capacity {c.capacity}")
        if (c.ids.dtype, c.values.dtype) != (np.int32, np.float32) or (c.instances is not None
                                                                       and c.instances.dtype != np.int32):
            raise ValueError(f"{where}: chunk arrays of the wrong dtypes")
        if c.first_record != record or c.offset != offset or int(image.starts[record]) != offset:
            raise ValueError(f"{where}: chunk at value {c.offset} does not follow the one before")
        end = int(np.searchsorted(image.starts, offset + c.used, side="right")) - 1
        if int(image.starts[end]) != offset + c.used:  # a record never straddles two chunks
            raise ValueError(f"{where}: chunk at value {c.offset} ends inside a record")
        record, offset = end, offset + c.used
    if record != n or offset != image.values:
        raise ValueError(f"{where}: chunks hold {offset} values of {record} records, not {image.values} of {n}")


def _block_columns(chunk: _Chunk | _ColdChunk, snap: _Snapshot, r0: int, r1: int) -> list[np.ndarray]:
    lo = int(snap.starts[r0]) - chunk.offset
    return chunk.columns(lo, lo + int(snap.starts[r1] - snap.starts[r0]))


def _member(lookup: pa.Array, ids: np.ndarray) -> np.ndarray:
    """lookup[ids] as booleans, `lookup` a uint8 Arrow array over every id: Arrow's take reads int32 ids as
    they are, where numpy's indexing first widens them (break-by-slices: ~2x faster, the same mask)."""
    return np.asarray(pc.take(lookup, pa.array(ids)).to_numpy(zero_copy_only=False)).view(bool)


def _aggregate_chunk(columns: list[np.ndarray], snap: _Snapshot, r0: int, r1: int, lookup: pa.Array | None,
                     how: str, rec_ok: np.ndarray | None, part: _Partial) -> None:
    """Fill `part[r0:r1]` from records r0..r1 (`columns`: their ids and values); `rec_ok`: which of them count;
    `lookup`: which sample ids count (None: all), see _member."""
    base = int(snap.starts[r0])
    bounds = snap.starts[r0:r1 + 1] - base  # record boundaries within the block
    ids, vals = columns
    keep: np.ndarray | None = None  # which values count (None: all, if finite)
    if lookup is not None:
        keep = _member(lookup, ids)
    if rec_ok is not None:
        by_value = np.repeat(rec_ok, np.diff(bounds))
        keep = by_value if keep is None else keep & by_value
    fold = (snap.flags[r0:r1] & _FOLD) != 0
    if not fold.any():  # the common case: no sample has several instances
        _aggregate(ids, vals, bounds, keep, False, how, part, np.arange(r0, r1))
    elif fold.all():
        _aggregate(ids, vals, bounds, keep, True, how, part, np.arange(r0, r1))
    else:
        # Every record as if none had instances (no copy), then the few records with instances again,
        # gathered apart and folded, replacing what the first pass wrote for them.
        _aggregate(ids, vals, bounds, keep, False, how, part, np.arange(r0, r1))
        local = np.flatnonzero(fold)
        dest = local + r0
        part.reset(dest)
        idx, sub_bounds = _ranges(bounds[local], bounds[local + 1])
        _aggregate(ids[idx], vals[idx], sub_bounds, None if keep is None else keep[idx], True, how, part, dest)


def _prefetched(snap: _Snapshot, blocks: list[Any]) -> Iterator[list[np.ndarray]]:
    """The columns of each block in turn; a block at rest is decoded on a second thread while the one
    before is aggregated (the decoder lets go of the GIL), and at most two are held at once."""
    if not any(isinstance(b[0], _ColdChunk) for b in blocks):
        for chunk, r0, r1, _ in blocks:
            yield _block_columns(chunk, snap, r0, r1)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-read") as pool:
        ahead = None
        for i, (chunk, r0, r1, _) in enumerate(blocks):
            current = ahead.result() if ahead is not None else _block_columns(chunk, snap, r0, r1)
            ahead = None
            if i + 1 < len(blocks):
                nxt = blocks[i + 1]
                ahead = pool.submit(_block_columns, nxt[0], snap, nxt[1], nxt[2])
            yield current


def _ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the ranges [starts, ends) back to back, and the ranges' bounds within them."""
    lengths = ends - starts
    bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=bounds[1:])
    return np.arange(bounds[-1]) + np.repeat(starts - bounds[:-1], lengths), bounds


def _aggregate(ids: np.ndarray, vals: np.ndarray, bounds: np.ndarray, keep: np.ndarray | None, fold: bool,
               how: str, part: _Partial, dest: np.ndarray) -> None:
    """Per-record sum, count, min and max of the kept finite values (of the per-sample folds if `fold`), for
    the records between `bounds`, written to `part` at their indexes `dest` (records with any only)."""
    cids = ids
    if keep is None:
        if np.isfinite(vals).all():  # every value counts: no copy
            cvals, cbounds = vals, bounds
        else:
            keep = np.isfinite(vals)
    if keep is not None:
        pos = np.flatnonzero(keep)
        cvals = vals[pos]
        finite = np.isfinite(cvals)
        if not finite.all():
            pos, cvals = pos[finite], cvals[finite]
        cbounds = np.searchsorted(pos, bounds)
        if fold:
            cids = ids[pos]
    if fold and len(cvals):  # fold each sample's instances: runs of one id within a record (stored sorted)
        first = np.empty(len(cvals), dtype=bool)
        first[0] = True
        np.not_equal(cids[1:], cids[:-1], out=first[1:])
        first[cbounds[:-1][cbounds[:-1] < len(cvals)]] = True
        gstarts = np.flatnonzero(first)
        cvals = _run_fold(cvals, gstarts, how)
        cbounds = np.searchsorted(gstarts, cbounds)
    counts = np.diff(cbounds)
    nonempty = counts > 0
    if not nonempty.any():
        return
    at = cbounds[:-1][nonempty]
    dest = dest[nonempty]
    part.counts[dest] = counts[nonempty]
    part.sums[dest] = np.add.reduceat(cvals, at, dtype=np.float64)
    part.mins[dest] = np.minimum.reduceat(cvals, at)
    part.maxs[dest] = np.maximum.reduceat(cvals, at)


def _by_step(snap: _Snapshot, part: _Partial, max_points: int) -> SliceCurve:
    """Pool the per-record aggregates by step, then downsample."""
    recs = np.flatnonzero(part.counts)
    if recs.size == 0:
        return _empty_curve()
    steps = snap.steps[recs]
    if not snap.sorted_steps:
        order = np.argsort(steps, kind="stable")
        recs, steps = recs[order], steps[order]
    sums, counts, mins, maxs = part.sums[recs], part.counts[recs], part.mins[recs], part.maxs[recs]
    if len(steps) > 1 and not (np.diff(steps) > 0).all():  # several records at one step: pool them
        at = np.flatnonzero(np.r_[True, steps[1:] != steps[:-1]])
        steps = steps[at]
        sums, counts = np.add.reduceat(sums, at), np.add.reduceat(counts, at)
        mins, maxs = np.minimum.reduceat(mins, at), np.maximum.reduceat(maxs, at)
    idx = decimate_indexes(len(steps), max_points)
    return SliceCurve(steps[idx], sums[idx] / counts[idx], mins[idx], maxs[idx], counts[idx], len(steps))


class SampleSignals:
    """All of a run's per-sample signal histories, one `SignalStore` per (split, signal)."""

    def __init__(self, chunk_max: int = CHUNK_MAX, on_full: Callable[[], object] | None = None) -> None:
        self._lock = threading.Lock()
        self._stores: dict[tuple[str, str], SignalStore] = {}
        self._chunk_max = chunk_max
        self._on_full = on_full  # given to every store: a chunk filled (the compactor may move it to disk)

    def store(self, split: str, signal: str) -> SignalStore:
        """The store of (split, signal), created on first use."""
        with self._lock:
            store = self._stores.get((split, signal))
            if store is None:
                store = self._stores[(split, signal)] = SignalStore(split, signal, self._chunk_max)
                store.on_full = self._on_full
            return store

    def get(self, split: str, signal: str) -> SignalStore | None:
        """The store of (split, signal) if anything was appended to it (readers: never creates one)."""
        with self._lock:
            return self._stores.get((split, signal))

    def images(self) -> list[StoreImage]:
        """An image of every store, in creation order (take it under the lock that orders appends)."""
        with self._lock:
            stores = list(self._stores.values())
        return [s.image() for s in stores]

    def adopt(self, images: list[StoreImage]) -> None:
        """Replace every store by those rebuilt from `images` (all checked first: all or nothing)."""
        stores = {(img.split, img.signal): SignalStore.from_image(img, self._chunk_max) for img in images}
        if len(stores) != len(images):
            raise ValueError("two store images of one (split, signal)")
        for store in stores.values():
            store.on_full = self._on_full
        with self._lock:
            self._stores = stores

    def stores(self) -> list[SignalStore]:
        with self._lock:
            return list(self._stores.values())

    def names(self) -> list[tuple[str, str]]:
        """(split, signal) of every store, in creation order."""
        with self._lock:
            return list(self._stores)

    def nbytes(self) -> int:
        with self._lock:
            stores = list(self._stores.values())
        return sum(s.nbytes() for s in stores)

    def __len__(self) -> int:
        """Values stored, all stores together."""
        with self._lock:
            stores = list(self._stores.values())
        return sum(len(s) for s in stores)
