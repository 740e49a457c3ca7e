"""Per-sample predictions in an HDF5 file under the run folder, for tools that read HDF5.

With WEIGHTSLAB_SAVE_PREDICTIONS_IN_H5=1 (the default) the daemon keeps a `PredictionsH5` per run and
appends each record's predictions to it; with 0 it creates none and nothing is written.

Layout, one group per split (a split name is percent-quoted if it is not a plain HDF5 name; the group's
`split` attribute holds the name as given):

    /<split>/step          int64 (n,)                 the record's step, one per row
    /<split>/sample_id     int32 (n,)
    /<split>/prediction    <dtype> (n, *per_sample)   class indexes (n,), or masks/logits (n, h, w) ...

Rows are resizable, chunked along the first axis (~256 KiB chunks) and lightly compressed (gzip level 1
with shuffle, readable by any HDF5 tool), except floating-point predictions (logits, probabilities), which
barely compress (~1.1x, at ~20x the cost of a plain write) and are stored plain unless `compress_floats`.

A split's predictions with another per-sample shape or dtype than its first (a model head changed, images
of several sizes) start another set of the three datasets with a numeric suffix: `step_1`, `sample_id_1`,
`prediction_1`, then `_2`, ...; `read` merges them. (Refusing them instead would lose the predictions of
variable-size segmentation outright.) The file is reopened and appended to across daemon restarts: a
set's row count is the shortest of its three datasets, so rows of a flush that died half way are
overwritten by the next one.

HDF5 is not crash-safe: a crash or power loss in the middle of a write can leave the file unreadable.
The file is a derived copy; the run's signals.log is the source of truth. Opening a file that HDF5
cannot read moves it aside as `predictions.h5.corrupt-<unix time>` and starts a new one (logged as an
error) instead of failing the run.

Appends are buffered in memory and written every `flush_rows` rows or `flush_bytes` bytes, on `flush()`
and on `close()`, so a step costs a copy of its arrays, and every few steps a write in the caller's thread
(gzip level 1 runs at ~100-500 MB/s: a 16 MiB flush of masks takes ~30-150 ms). A failing write
(ENOSPC, EIO, ...) never raises into the caller: it is logged once, the rows stay buffered and the write
is retried every `retry_s` seconds; past `max_buffer_bytes` buffered, new rows are dropped and counted in
`dropped_rows`. Rows HDF5 itself refuses (ValueError, TypeError) are dropped and counted at once, so
they cannot block the others.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import h5py
import numpy as np
import structlog

log = structlog.get_logger("weightslabd.store.predictions_h5")

FILE_NAME = "predictions.h5"
MAX_STEP_TAIL = 65536  # rows read from the end of a step column to find its highest step
FORMAT = "weightslabd-predictions/1"
_CHUNK_BYTES = 256 * 1024  # target size of one prediction chunk
_ID_CHUNK = 8192  # rows per chunk of step and sample_id
_SET_NAME = re.compile(r"^prediction(?:_(\d+))?$")
_STORABLE_KINDS = "biufc"  # bool, integers, floats, complex

Key = tuple[str, tuple[int, ...], str]  # split, per-sample shape, dtype string


@dataclass
class _Pending:
    steps: list[tuple[int, int]] = field(default_factory=list)  # (step, rows)
    ids: list[np.ndarray] = field(default_factory=list)
    preds: list[np.ndarray] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0


@dataclass
class _Set:
    """One set of three parallel datasets of a split."""

    suffix: str
    rows: int  # rows committed


def _group_name(split: str) -> str:
    """The split's HDF5 group name: the split itself when it is a plain name (no '/', not '' or '.')."""
    name = quote(split, safe="-_.+=@,;: ")
    if not name:
        return "%00"
    return name.replace(".", "%2E") if name.strip(".") == "" else name


class PredictionsH5:
    """Buffered appender and reader of one run's predictions file. Thread-safe (one lock)."""

    def __init__(self, path: Path, flush_rows: int = 4096, flush_bytes: int = 16 << 20,
                 max_buffer_bytes: int = 256 << 20, retry_s: float = 5.0, compression_level: int = 1,
                 compress_floats: bool = False) -> None:
        self.path = Path(path)
        self.flush_rows = max(1, flush_rows)
        self.flush_bytes = max(1, flush_bytes)
        self.max_buffer_bytes = max_buffer_bytes
        self.retry_s = retry_s
        self.compression_level = compression_level  # gzip level; 0: no compression
        self.compress_floats = compress_floats
        self.dropped_rows = 0  # rows refused (bad shape or dtype), dropped with the buffer full, or lost at close
        self.written_rows = 0  # rows written by this instance
        self._lock = threading.Lock()
        self._file: h5py.File | None = None
        self._sets: dict[Key, _Set] = {}
        self._next_suffix: dict[str, int] = {}
        self._pending: dict[Key, _Pending] = {}
        self._pending_rows = 0
        self._pending_bytes = 0
        self._failing = False  # the last write or open failed: logged once, retried after retry_at
        self._dropping = False
        self._retry_at = 0.0
        self._closed = False
        self._refused: set[str] = set()  # reasons logged already
        self._open()

    # -- opening -----------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._file = self._open_file()
        except Exception as exc:  # noqa: BLE001 - never fail the run over its derived copy
            self._file = None
            self._note_failure("predictions file cannot be opened; buffering", exc)
            return
        if self._failing:
            log.info("predictions file open again", path=str(self.path))
            self._failing = False

    def _open_file(self) -> h5py.File:
        try:
            f = h5py.File(self.path, "a")
        except (BlockingIOError, PermissionError, FileNotFoundError, IsADirectoryError):
            raise  # locked by another process, or not ours to open: the file itself may be fine
        except OSError as exc:
            if "unable to lock" in str(exc).lower() or not self.path.is_file():
                raise
            return self._start_over(exc)
        try:
            self._scan(f)
        except Exception as exc:  # noqa: BLE001 - opens, but its layout is unreadable: also corrupt
            f.close()
            return self._start_over(exc)
        os.chmod(self.path, 0o600)  # h5py creates files by the umask: runs are private
        return f

    def _start_over(self, exc: BaseException) -> h5py.File:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}-{n}")
            n += 1
        os.replace(self.path, aside)
        log.error("predictions file unreadable: moved aside, starting a new one (signals.log is the source of "
                  "truth)", path=str(self.path), moved_to=str(aside), error=f"{type(exc).__name__}: {exc}")
        self._sets.clear()
        self._next_suffix.clear()
        f = h5py.File(self.path, "a")
        os.chmod(self.path, 0o600)
        self._scan(f)
        return f

    def _scan(self, f: h5py.File) -> None:
        """Learn the existing sets of datasets and their committed row counts."""
        f.attrs.setdefault("format", FORMAT)
        f.attrs.setdefault("note", "derived copy of the run's signals.log; may be rebuilt or deleted")
        self._sets.clear()
        self._next_suffix.clear()
        for gname, group in f.items():
            if not isinstance(group, h5py.Group):
                continue
            split = str(group.attrs.get("split", unquote(gname)))
            for name in group:
                m = _SET_NAME.match(name)
                if m is None:
                    continue
                k = int(m.group(1) or 0)
                suffix = f"_{k}" if k else ""
                self._next_suffix[split] = max(self._next_suffix.get(split, 0), k + 1)
                parts = [group.get(f"{base}{suffix}") for base in ("step", "sample_id", "prediction")]
                if not all(isinstance(p, h5py.Dataset) for p in parts):
                    log.warning("incomplete prediction set ignored", split=split, dataset=name)
                    continue
                pred = parts[2]
                key = (split, tuple(int(d) for d in pred.shape[1:]), np.dtype(pred.dtype).str)
                self._sets[key] = _Set(suffix, min(int(p.shape[0]) for p in parts))

    # -- appending ---------------------------------------------------------------------------------

    def append(self, split: str, step: int, ids: np.ndarray, predictions: np.ndarray) -> None:
        """Buffer one record's predictions: row i is sample ids[i]'s prediction predictions[i]. Never raises
        for the file's sake; a record that cannot be stored is logged (once per reason) and counted."""
        ids = np.asarray(ids).reshape(-1)
        preds = np.asarray(predictions)
        if preds.ndim == 0 or preds.shape[0] != ids.size:
            self._refuse("predictions do not match the ids", ids.size, split=split,
                         ids=int(ids.size), shape=list(preds.shape))
            return
        if preds.dtype.kind not in _STORABLE_KINDS or 0 in preds.shape[1:]:
            self._refuse("predictions of this dtype or shape cannot be stored", ids.size, split=split,
                         dtype=str(preds.dtype), shape=list(preds.shape))
            return
        if ids.size == 0:
            return
        key: Key = (split, tuple(int(d) for d in preds.shape[1:]), preds.dtype.str)
        with self._lock:
            if self._closed:
                self._refuse("append after close", ids.size, split=split)
                return
            if self._pending_bytes + preds.nbytes + ids.size * 12 > self.max_buffer_bytes:
                self.dropped_rows += ids.size
                if not self._dropping:
                    log.error("predictions buffer full: dropping rows until a write succeeds", path=str(self.path),
                              buffered_bytes=self._pending_bytes)
                    self._dropping = True
                return
            pend = self._pending.setdefault(key, _Pending())
            pend.steps.append((int(step), ids.size))
            pend.ids.append(ids.astype(np.int32))  # copies: the caller's arrays may be views of reused memory
            pend.preds.append(np.array(preds, copy=True, order="C"))
            nbytes = preds.nbytes + ids.size * 12
            pend.rows += ids.size
            pend.nbytes += nbytes
            self._pending_rows += ids.size
            self._pending_bytes += nbytes
            if self._pending_rows >= self.flush_rows or self._pending_bytes >= self.flush_bytes:
                self._flush_locked(force=False)

    def flush(self) -> bool:
        """Write what is buffered now; False if some of it could not be written (still buffered)."""
        with self._lock:
            return self._flush_locked(force=True)

    def close(self) -> None:
        """Flush and close; rows that still cannot be written are counted as dropped. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._flush_locked(force=True)
            if self._pending_rows:
                log.error("predictions not written at close", path=str(self.path), rows=self._pending_rows)
                self.dropped_rows += self._pending_rows
                self._pending.clear()
                self._pending_rows = self._pending_bytes = 0
            if self._file is not None:
                try:
                    self._file.close()
                except Exception as exc:  # noqa: BLE001
                    log.error("predictions file close failed", path=str(self.path),
                              error=f"{type(exc).__name__}: {exc}")
                self._file = None
            self._closed = True

    def __enter__(self) -> PredictionsH5:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def _flush_locked(self, force: bool) -> bool:
        if not self._pending:
            return True
        if self._failing and not force and time.monotonic() < self._retry_at:
            return False
        if self._file is None:
            self._open()
            if self._file is None:
                return False
        try:
            for key in list(self._pending):
                try:
                    self._write(key, self._pending[key])
                except (ValueError, TypeError) as exc:  # these rows will never fit: drop them, keep the rest
                    pend = self._pending.pop(key)
                    self._forget(pend)
                    self._refuse("predictions refused by HDF5", pend.rows, split=key[0], shape=list(key[1]),
                                 dtype=key[2], error=f"{type(exc).__name__}: {exc}")
                    continue
                pend = self._pending.pop(key)
                self._forget(pend)
                self.written_rows += pend.rows
            self._file.flush()
        except Exception as exc:  # noqa: BLE001 - ENOSPC, EIO, a damaged file: keep the rows, retry later
            self._note_failure("predictions write failed; buffering", exc)
            return False
        if self._failing or self._dropping:
            log.info("predictions written again", path=str(self.path), dropped_rows=self.dropped_rows)
        self._failing = self._dropping = False
        return True

    def _forget(self, pend: _Pending) -> None:
        self._pending_rows -= pend.rows
        self._pending_bytes -= pend.nbytes

    def _write(self, key: Key, pend: _Pending) -> None:
        assert self._file is not None
        split, shape, dtype = key
        target = self._sets.get(key)
        if target is None:
            target = self._create(key)
        group = self._file[_group_name(split)]
        start, end = target.rows, target.rows + pend.rows
        steps = np.repeat(np.array([s for s, _ in pend.steps], dtype=np.int64), [n for _, n in pend.steps])
        columns = (("step", steps), ("sample_id", np.concatenate(pend.ids)),
                   ("prediction", np.concatenate(pend.preds) if len(pend.preds) > 1 else pend.preds[0]))
        for base, data in columns:
            ds = group[f"{base}{target.suffix}"]
            if ds.shape[0] != end:
                ds.resize(end, axis=0)
            ds[start:end] = data
        target.rows = end

    def _create(self, key: Key) -> _Set:
        assert self._file is not None
        split, shape, dtype = key
        gname = _group_name(split)
        group = self._file.require_group(gname)
        group.attrs["split"] = split
        k = self._next_suffix.get(split, 0)
        suffix = f"_{k}" if k else ""
        self._next_suffix[split] = k + 1
        if k:
            log.info("predictions of another shape: a new dataset set", split=split, shape=list(shape), dtype=dtype,
                     dataset=f"prediction{suffix}")
        row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        rows = max(1, min(_ID_CHUNK, _CHUNK_BYTES // row_bytes))
        gzip: dict[str, Any] = {}
        if self.compression_level > 0:
            gzip = {"compression": "gzip", "compression_opts": self.compression_level, "shuffle": True}
        # Logits and probabilities barely compress (~1.1x) at ~20x the cost of a plain write: floats are
        # stored as they are unless compress_floats; class indexes and masks compress well (2-30x).
        pred_opts = gzip if np.dtype(dtype).kind not in "fc" or self.compress_floats else {}
        for base, dt, sh, chunk, opts in (("step", np.int64, (), _ID_CHUNK, gzip),
                                          ("sample_id", np.int32, (), _ID_CHUNK, gzip),
                                          ("prediction", np.dtype(dtype), shape, rows, pred_opts)):
            name = f"{base}{suffix}"
            if name in group:  # an incomplete set left by an older file: not ours to trust
                del group[name]
            group.create_dataset(name, shape=(0, *sh), maxshape=(None, *sh), dtype=dt, chunks=(chunk, *sh), **opts)
        target = self._sets[key] = _Set(suffix, 0)
        return target

    def _note_failure(self, message: str, exc: BaseException) -> None:
        if not self._failing:
            log.error(message, path=str(self.path), error=f"{type(exc).__name__}: {exc}",
                      buffered_rows=self._pending_rows, retry_s=self.retry_s)
        self._failing = True
        self._retry_at = time.monotonic() + self.retry_s

    def _refuse(self, reason: str, rows: int, **info: Any) -> None:
        self.dropped_rows += rows
        if reason not in self._refused:
            self._refused.add(reason)
            log.error(reason, path=str(self.path), **info)

    # -- reading -----------------------------------------------------------------------------------

    def read(self, split: str, sample_id: int) -> list[tuple[int, np.ndarray]]:
        """Every (step, prediction) stored for one sample of `split`, by step (buffered rows included)."""
        with self._lock:
            self._flush_locked(force=True)
            found: list[tuple[int, np.ndarray]] = []
            if self._file is not None:
                group = self._file.get(_group_name(split))
                for key, target in self._sets.items():
                    if key[0] != split or group is None or target.rows == 0:
                        continue
                    ids = group[f"sample_id{target.suffix}"][:target.rows]
                    rows = np.flatnonzero(ids == sample_id)
                    if rows.size == 0:
                        continue
                    steps = group[f"step{target.suffix}"][:target.rows][rows]
                    preds = group[f"prediction{target.suffix}"][rows]  # increasing rows: h5py fancy indexing
                    found.extend((int(s), np.asarray(p)) for s, p in zip(steps, preds, strict=True))
            for key, pend in self._pending.items():
                if key[0] != split:
                    continue
                for (step, _), ids_, preds_ in zip(pend.steps, pend.ids, pend.preds, strict=True):
                    found.extend((step, np.asarray(preds_[i])) for i in np.flatnonzero(ids_ == sample_id))
        found.sort(key=lambda sp: sp[0])
        return found

    def max_step(self, split: str) -> int | None:
        """The highest step stored for `split` (written or buffered), e.g. to skip replayed records."""
        with self._lock:
            steps = [s for key, pend in self._pending.items() if key[0] == split for s, _ in pend.steps]
            group = self._file.get(_group_name(split)) if self._file is not None else None
            if group is not None:
                # Rows are appended in ring order, so steps never go back: the tail holds the highest,
                # and reading it (not the whole column, seconds at 100M rows) keeps a run's open fast.
                steps += [int(group[f"step{t.suffix}"][max(0, t.rows - MAX_STEP_TAIL):t.rows].max())
                          for key, t in self._sets.items() if key[0] == split and t.rows]
            return max(steps) if steps else None
