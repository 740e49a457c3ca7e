"""Per-sample history at rest: one immutable Parquet file per full chunk of a `SignalStore`.

    <run>/history/<store dir>/c<chunk index>-<crc32 of its ids and values>.parquet

    columns   split, signal  dictionary strings (one entry a file: nothing a row)
              step int64     the record's step (runs of one value: a few bytes a record)
              sample_id int32, value float32 (byte stream split), instance int32 (0 unless repeated ids);
              lz4 (LZ4_RAW: pandas, DuckDB and polars read it)
    metadata  first_record, offset, records of the chunk: where it sits in its store

Rows are in the store's order (record by record), so a file is a chunk on disk: reads take a value range
of it, and only the row groups that range overlaps are decoded (and only the columns asked for). The
content names the file, so writing a chunk again (a replay) finds it done, and a file never changes once
in place. Writing is atomic: a temporary file, fsync, rename, fsync of the folder; a crash leaves at most
a temporary file, which `remove_temporaries` deletes and nothing ever reads.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIR = "history"
BY_SAMPLE_DIR = "history-by-sample"  # each chunk's rows again, sorted by sample id: trajectories prune by id
ROW_GROUP_BY_SAMPLE = 1 << 14  # ~4,000 samples a row group at 1M samples: a trajectory reads a few
ROW_GROUP = 1 << 18  # values a row group: 16 to a full chunk, the unit a read decodes
COMPRESSION = "lz4"  # zstd is ~15% smaller on loss-like values, but break-by-slices from disk is ~1.5x slower
TMP_PREFIX = ".tmp-"
PAUSE_ENV = "WL_TEST_COMPACTION_PAUSE"  # test hook: "<point>[,<point>...]" pauses there (see pause_point)
POINTS = ("written", "synced", "renamed", "swapped")
# Columns without nulls (NaN is a value, not a null): a reader then decodes no definition levels, which
# makes reading ~1.7x faster (break-by-slices decodes every value). Files of older daemons read alike.
SCHEMA = pa.schema([pa.field("split", pa.dictionary(pa.int32(), pa.string()), nullable=False),
                    pa.field("signal", pa.dictionary(pa.int32(), pa.string()), nullable=False),
                    pa.field("step", pa.int64(), nullable=False), pa.field("sample_id", pa.int32(), nullable=False),
                    pa.field("value", pa.float32(), nullable=False), pa.field("instance", pa.int32(), nullable=False)])
BY_SAMPLE_SCHEMA = pa.schema([SCHEMA.field("sample_id"), SCHEMA.field("step"), SCHEMA.field("value")])
_KEYS = (b"first_record", b"offset", b"records", b"crc32")


def store_dir(split: str, signal: str) -> str:
    """A file-system-safe folder name for one (split, signal); the names themselves are in the files."""
    return "s-" + hashlib.sha1(f"{split}\0{signal}".encode()).hexdigest()[:16]


def chunk_crc(ids: np.ndarray, values: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(values).data.cast("B"), zlib.crc32(np.ascontiguousarray(ids).data.cast("B")))


def pause_point(point: str, folder: Path) -> None:
    """Test hook: with PAUSE_ENV naming `point`, leave a marker `<folder>/.paused-<point>` and stop here for
    good (the test kills the process). Unset, it costs one dict lookup."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or point not in wanted.split(","):
        return
    (folder / f".paused-{point}").write_text(str(os.getpid()))
    threading.Event().wait()


@dataclass(frozen=True)
class ChunkRows:
    """One full chunk's rows, as the store holds them (arrays read, never changed)."""

    split: str
    signal: str
    index: int
    first_record: int
    offset: int
    steps: np.ndarray  # int64, per record
    starts: np.ndarray  # int64 [records + 1], value positions within the chunk
    ids: np.ndarray  # int32 [values]
    values: np.ndarray  # float32 [values]
    instances: np.ndarray  # int32 [values]


class ColdPart:
    """A chunk on disk: its file, where it sits, and its row groups' bounds (from the footer)."""

    __slots__ = ("path", "first_record", "offset", "used", "records", "_bounds", "_by_sample", "_meta")

    def __init__(self, path: Path) -> None:
        meta = pq.read_metadata(path)
        kv = meta.metadata or {}
        if any(k not in kv for k in _KEYS):
            raise ValueError(f"{path.name}: not a chunk file of a run's history")
        self.path = path
        self.first_record, self.offset = int(kv[b"first_record"]), int(kv[b"offset"])
        self.records = int(kv[b"records"])
        self.used = int(meta.num_rows)
        self._meta = meta  # kept (a few KB): a read parses no footer again
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._by_sample: tuple[np.ndarray, np.ndarray] | None = None  # its row groups' min and max ids

    def sample_rows(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(ids, steps, values) of the sample ids `wanted` (sorted, unique), from the by-sample copy: only the
        row groups whose id range holds one of them are decoded. In chunk order within a sample. None
        when the copy is missing (a crash before it was written, or removed): then read by column."""
        path = by_sample_path(self.path)
        try:
            if self._by_sample is None:
                meta = pq.read_metadata(path)
                stats = [meta.row_group(g).column(0).statistics for g in range(meta.num_row_groups)]
                if meta.num_rows != self.used or any(st is None or not st.has_min_max for st in stats):
                    return None
                self._by_sample = (np.array([st.min for st in stats], dtype=np.int64),
                                   np.array([st.max for st in stats], dtype=np.int64))
            lows, highs = self._by_sample
            at = np.searchsorted(wanted, lows)  # the first wanted id at or above each group's minimum
            hit = (at < len(wanted)) & (wanted[np.minimum(at, len(wanted) - 1)] <= highs)
            groups = np.flatnonzero(hit).tolist()
            if not groups:
                return np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float32)
            table = pq.ParquetFile(path).read_row_groups(groups, columns=["sample_id", "step", "value"],
                                                         use_threads=False)
        except (OSError, pa.ArrowException):
            return None
        ids = table.column("sample_id").to_numpy()
        keep = np.flatnonzero(np.isin(ids, wanted))
        return ids[keep], table.column("step").to_numpy()[keep], table.column("value").to_numpy()[keep]

    def read(self, lo: int, hi: int, columns: tuple[str, ...]) -> list[np.ndarray]:
        """Columns of rows [lo, hi) (chunk positions), decoding only the row groups they lie in."""
        if hi <= lo:
            return [np.empty(0, dtype=SCHEMA.field(c).type.to_pandas_dtype()) for c in columns]
        first = int(np.searchsorted(self._bounds, lo, side="right")) - 1
        last = int(np.searchsorted(self._bounds, hi, side="left"))
        table = pq.ParquetFile(self.path, metadata=self._meta, memory_map=True).read_row_groups(  # mapped: ~1.3x
            list(range(first, last)), columns=list(columns), use_threads=len(columns) > 1)  # faster than read
        base = int(self._bounds[first])
        return [table.column(c).to_numpy()[lo - base:hi - base] for c in columns]

    def read_at(self, positions: np.ndarray, column: str) -> np.ndarray:
        """One column at chunk positions (increasing), decoding only the row groups holding one of them."""
        group = np.searchsorted(self._bounds, positions, side="right") - 1
        groups = np.unique(group)
        table = pq.ParquetFile(self.path, metadata=self._meta).read_row_groups(groups.tolist(), columns=[column],
                                                                               use_threads=False)
        sizes = np.diff(self._bounds)[groups]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # where each group lies in what was read
        where = starts[np.searchsorted(groups, group)] + positions - self._bounds[group]
        return table.column(column).to_numpy()[where]


def by_sample_path(path: Path) -> Path:
    """Where the by-sample copy of the chunk file `path` is (<run>/history-by-sample/<store>/<name>)."""
    return path.parent.parent.parent / BY_SAMPLE_DIR / path.parent.name / path.name


def part_path(run_folder: Path, split: str, signal: str, index: int, crc: int) -> Path:
    return run_folder / DIR / store_dir(split, signal) / f"c{index:06d}-{crc:08x}.parquet"


def write_chunk(run_folder: Path, rows: ChunkRows) -> ColdPart:
    """The chunk's file, written atomically if it is not there already (see the module docstring)."""
    crc = chunk_crc(rows.ids, rows.values)
    path = part_path(run_folder, rows.split, rows.signal, rows.index, crc)
    companion = by_sample_path(path)
    if not companion.is_file():  # first: a chunk file in place always has its copy (unless removed since)
        companion.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_durably(companion, by_sample_table(rows), ROW_GROUP_BY_SAMPLE)
    if path.is_file():
        try:
            part = ColdPart(path)
            if (part.first_record, part.offset, part.used) == (rows.first_record, rows.offset, len(rows.ids)):
                return part
        except (OSError, ValueError, pa.ArrowException):
            pass  # not a good copy of this chunk: written again over it
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    meta = {"first_record": rows.first_record, "offset": rows.offset, "records": len(rows.steps), "crc32": crc}
    place_durably(path, lambda tmp: write_table(tmp, chunk_table(rows), meta), pause="")
    return ColdPart(path)


def chunk_table(rows: ChunkRows) -> pa.Table:
    n = len(rows.ids)
    counts = np.diff(rows.starts)
    return pa.table({
        "split": pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), [rows.split]),
        "signal": pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), [rows.signal]),
        "step": np.repeat(rows.steps, counts), "sample_id": rows.ids, "value": rows.values,
        "instance": rows.instances}, schema=SCHEMA)


def by_sample_table(rows: ChunkRows) -> pa.Table:
    """sample_id, step, value sorted by sample id (stably: a sample's rows stay in chunk order)."""
    order = np.argsort(rows.ids, kind="stable")
    steps = np.repeat(rows.steps, np.diff(rows.starts))
    return pa.table({"sample_id": rows.ids[order], "step": steps[order], "value": rows.values[order]},
                    schema=BY_SAMPLE_SCHEMA)


def write_table(path: Path, table: pa.Table, metadata: dict[str, Any] | None = None,
                row_group: int | None = None) -> None:
    """One Parquet file as the history's are written (lz4, statistics for pruning), not yet synced."""
    if metadata:
        table = table.replace_schema_metadata({str(k): str(v) for k, v in metadata.items()})
    pq.write_table(table, path, row_group_size=row_group or ROW_GROUP, compression=COMPRESSION,
                   use_dictionary=["split", "signal", "step"],
                   use_byte_stream_split=[c for c in ("value",) if c in table.column_names],
                   write_statistics=True)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, table: pa.Table, row_group: int | None = None) -> None:
    """A whole Parquet file in place atomically (see `place_durably`)."""
    place_durably(path, lambda tmp: write_table(tmp, table, row_group=row_group))


def place_durably(path: Path, write: Callable[[Path], object], pause: str | None = None) -> None:
    """`write` fills a temporary file beside `path`, which is then synced, renamed over `path`, and its
    folder synced: a crash leaves the old file or the new one, and at most a temporary that
    `remove_temporaries` deletes. With `pause` (a prefix), the test hook's points `<pause>written`,
    `<pause>synced` and `<pause>renamed` are on the way."""
    folder = path.parent
    tmp = folder / f"{TMP_PREFIX}{path.name}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        write(tmp)
        if pause is not None:
            pause_point(f"{pause}written", folder)
        fsync_path(tmp)
        if pause is not None:
            pause_point(f"{pause}synced", folder)
        os.rename(tmp, path)
        fsync_path(folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if pause is not None:
        pause_point(f"{pause}renamed", folder)


def remove_temporaries(run_folder: Path) -> int:
    """Delete what a crash in the middle of a write left (never read: only renamed files are); how many."""
    return remove_temporaries_under(run_folder / DIR, run_folder / BY_SAMPLE_DIR)


def remove_temporaries_under(*roots: Path) -> int:
    """Temporary files and pause markers under these folders deleted; how many temporary files."""
    removed = 0
    for root in roots:
        if not root.is_dir():
            continue
        for entry in root.rglob(f"{TMP_PREFIX}*"):
            entry.unlink(missing_ok=True)
            removed += 1
        for entry in root.rglob(".paused-*"):
            entry.unlink(missing_ok=True)
    return removed


def disk_bytes(run_folder: Path, folder: str = DIR) -> int:
    root = run_folder / folder
    return sum(p.stat().st_size for p in root.rglob("*.parquet")) if root.is_dir() else 0
