"""Step curves at rest: one immutable Parquet file per full chunk of a curve's points (history.py).

    <run>/curves/<curve dir>/p<index of its first point>-<crc32 of its columns>.parquet

    columns   name   dictionary string (one entry a file: nothing a row)
              step int64, value float64, min float64, max float64, time timestamp[ms]
              lz4, 1,024 rows a row group (a decimated read decodes only the groups of the points it picks)
    metadata  first (the curve index of its first point), count

Each file has a companion, `<run>/curves-points/<curve dir>/<its name>.points`: its points again, 40 bytes
each (the five columns, fixed width), so that a decimated read of a long curve takes any point directly
(1,000 points of a 4M-point curve in a few ms, where decoding their row groups takes ~150 ms). It is an
index, not data: written first, never named by a snapshot nor exported; without it reads decode the file.

The layout is the export's (`weightslabd export` links these very files). As for the per-sample history
(parquet_history.py): the content names the file, so a replay that rebuilds a chunk finds it done; writing
is atomic (temporary file, fsync, rename, fsync of the folder), and a crash leaves at most a temporary
file, which `remove_temporaries` deletes and nothing reads.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from weightslabd.store.parquet_history import (
    COMPRESSION,
    place_durably,
    remove_temporaries_under,
)

DIR = "curves"
POINTS_DIR = "curves-points"  # the companions: fixed-width copies of the files' points
COLUMNS = ("step", "value", "min", "max", "time")
POINT = np.dtype([(c, "<i8" if c in ("step", "time") else "<f8") for c in COLUMNS])  # a companion's point
CHUNK_POINTS = 1 << 16  # points a file: 2.5 MiB in memory while hot (40 bytes a point)
CHUNK_ENV = "WL_TEST_CURVE_CHUNK_POINTS"  # test hook: smaller chunks, so a test fills some quickly
ROW_GROUP = 1 << 10
POINTS = ("curve-written", "curve-synced", "curve-renamed", "curve-swapped")  # pause points (PAUSE_ENV)
SCHEMA = pa.schema([pa.field(name, kind, nullable=False) for name, kind in (
    ("name", pa.dictionary(pa.int32(), pa.string())), ("step", pa.int64()), ("value", pa.float64()),
    ("min", pa.float64()), ("max", pa.float64()), ("time", pa.timestamp("ms")))])  # no nulls: faster reads
_KEYS = (b"first", b"count", b"crc32")


def chunk_points() -> int:
    """Points in a curve's full chunk: CHUNK_POINTS, or the test hook's."""
    try:
        return max(1, int(os.environ.get(CHUNK_ENV, "") or CHUNK_POINTS))
    except ValueError:
        return CHUNK_POINTS


def curve_dir(name: str) -> str:
    """A file-system-safe folder name for one curve; the name itself is in its files."""
    return "c-" + hashlib.sha1(name.encode()).hexdigest()[:16]


def columns_crc(columns: tuple[np.ndarray, ...]) -> int:
    crc = 0
    for col in columns:
        crc = zlib.crc32(np.ascontiguousarray(col).data.cast("B"), crc)
    return crc


class CurvePart:
    """A chunk of a curve on disk: its file, where it sits in the curve, and its row groups' bounds."""

    __slots__ = ("path", "first", "count", "_meta", "_bounds")

    def __init__(self, path: Path) -> None:
        meta = pq.read_metadata(path)
        kv = meta.metadata or {}
        if any(k not in kv for k in _KEYS) or [f.name for f in meta.schema.to_arrow_schema()] != SCHEMA.names:
            raise ValueError(f"{path.name}: not a chunk file of a run's step curve")
        self.path = path
        self.first, self.count = int(kv[b"first"]), int(kv[b"count"])
        if meta.num_rows != self.count:
            raise ValueError(f"{path.name}: {meta.num_rows} rows, not {self.count}")
        self._meta = meta  # kept: a read parses no footer again
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def read_at(self, positions: np.ndarray) -> list[np.ndarray]:
        """The five columns (steps, values, mins, maxs, unix ms) at positions within the chunk (increasing):
        from the companion, else decoding only the row groups holding one of them."""
        picked = _pick(points_path(self.path), self.count, positions)
        if picked is not None:
            return [picked[field] for field in COLUMNS]
        group = np.searchsorted(self._bounds, positions, side="right") - 1
        groups = np.unique(group)
        table = pq.ParquetFile(self.path, metadata=self._meta).read_row_groups(groups.tolist(), columns=list(COLUMNS),
                                                                               use_threads=False)
        starts = np.concatenate([[0], np.cumsum(np.diff(self._bounds)[groups])[:-1]])
        where = starts[np.searchsorted(groups, group)] + positions - self._bounds[group]
        return [_numpy(table.column(c))[where] for c in COLUMNS]


def _pick(path: Path, count: int, positions: np.ndarray) -> np.ndarray | None:
    """The points at `positions` (increasing) of a companion of `count` points, read with pread (no mmap: in a
    process of many threads, unmapping costs more than the reads); None if it is missing or not that long."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size != count * POINT.itemsize:
            return None
        lo, hi = int(positions[0]), int(positions[-1]) + 1
        if hi - lo <= 8 * len(positions):  # dense: one read of the range
            data = os.pread(fd, (hi - lo) * POINT.itemsize, lo * POINT.itemsize)
            return np.frombuffer(data, dtype=POINT)[positions - lo]
        size = POINT.itemsize
        data = b"".join([os.pread(fd, size, p * size) for p in positions.tolist()])
        return np.frombuffer(data, dtype=POINT)
    except OSError:
        return None
    finally:
        os.close(fd)


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    return column.to_numpy()


def points_path(path: Path) -> Path:
    """Where the companion of the curve file `path` is (<run>/curves-points/<curve dir>/<name>.points)."""
    return path.parent.parent.parent / POINTS_DIR / path.parent.name / (path.stem + ".points")


def part_path(run_folder: Path, name: str, first: int, crc: int) -> Path:
    return run_folder / DIR / curve_dir(name) / f"p{first:010d}-{crc:08x}.parquet"


def table(name: str, columns: tuple[np.ndarray, ...]) -> pa.Table:
    """A curve's points as the files hold them: columns are steps, values, mins, maxs, unix ms."""
    steps, values, mins, maxs, stamps = columns
    n = len(steps)
    return pa.table({"name": pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), [name]),
                     "step": np.asarray(steps, dtype=np.int64), "value": np.asarray(values, dtype=np.float64),
                     "min": np.asarray(mins, dtype=np.float64), "max": np.asarray(maxs, dtype=np.float64),
                     "time": pa.array(np.asarray(stamps, dtype=np.int64)).cast(pa.timestamp("ms"))}, schema=SCHEMA)


def write_table(path: Path, data: pa.Table, metadata: dict[str, int] | None = None) -> None:
    """One curve file as the daemon writes them (not yet synced)."""
    if metadata:
        data = data.replace_schema_metadata({k: str(v) for k, v in metadata.items()})
    pq.write_table(data, path, row_group_size=ROW_GROUP, compression=COMPRESSION, use_dictionary=["name"],
                   write_statistics=["step"])


def write_part(run_folder: Path, name: str, first: int, columns: tuple[np.ndarray, ...]) -> CurvePart:
    """The chunk's file, written atomically if it is not there already (see the module docstring)."""
    crc = columns_crc(columns)
    path = part_path(run_folder, name, first, crc)
    count = len(columns[0])
    companion = points_path(path)
    if not companion.is_file():  # first: a file in place always has its companion (unless removed since)
        companion.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        points = np.empty(count, dtype=POINT)
        for field, col in zip(COLUMNS, columns, strict=True):
            points[field] = col
        place_durably(companion, lambda tmp: tmp.write_bytes(points.data.cast("B")))
    if path.is_file():
        try:
            part = CurvePart(path)
            if (part.first, part.count) == (first, count):
                return part
        except (OSError, ValueError, pa.ArrowException):
            pass  # not a good copy of this chunk: written again over it
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    meta = {"first": first, "count": count, "crc32": crc}
    place_durably(path, lambda tmp: write_table(tmp, table(name, columns), meta), pause="curve-")
    return CurvePart(path)


def remove_temporaries(run_folder: Path) -> int:
    """Delete what a crash in the middle of a write left (never read); how many."""
    return remove_temporaries_under(run_folder / DIR, run_folder / POINTS_DIR)
