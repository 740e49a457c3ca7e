"""Signal history: one append-only curve per metric, and reads reduced to a point budget.

A curve holds, per step, the value (a scalar signal, or the mean of a per-sample signal), the
batch's min and max (for an error band) and the arrival time. Reads decimate to `max_points` by
keeping the first and last points and an evenly spaced subset between: no value is invented.

At rest. Once a curve's points in memory pass a full chunk (parquet_curves.py: 64 Ki points, plus at
least one, so the latest point is always in memory), the compactor (compactor.py) writes the chunk's
file and `compact` swaps the chunk in memory for it: a curve is its files (`cold`, points 0..base)
followed by the points in memory. Chunks start at multiples of the chunk size, so a replay that builds
the curve again makes the same files. A read takes what it needs under the lock (the hot points it
picks, the list of files) and decodes, without it, only the row groups of the files holding its points.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weightslabd.store.parquet_curves import CurvePart, chunk_points, write_part


@dataclass
class Curve:
    name: str
    steps: array = field(default_factory=lambda: array("q"))  # the points in memory: from `base` on
    values: array = field(default_factory=lambda: array("d"))
    vmin: array = field(default_factory=lambda: array("d"))
    vmax: array = field(default_factory=lambda: array("d"))
    stamps: array = field(default_factory=lambda: array("q"))  # unix ms
    last_append: int = -1  # the history's version at this curve's last append: orders curves exactly
    cold: list[CurvePart] = field(default_factory=list)  # its files, in order: points 0..base
    base: int = 0
    head: int | None = None  # the first point's step (the first file's, read once)

    def __len__(self) -> int:
        return self.base + len(self.steps)


@dataclass(frozen=True)
class CurveImage:
    """A copy of one curve, for a snapshot: its files, the points in memory, where it stands in the append order."""

    name: str
    steps: np.ndarray  # int64: the points after its files
    values: np.ndarray  # float64
    vmin: np.ndarray  # float64
    vmax: np.ndarray  # float64
    stamps: np.ndarray  # int64
    last_append: int
    parts: tuple[CurvePart, ...] = ()  # its files, points 0.. in order


_COLUMNS = ("steps", "values", "vmin", "vmax", "stamps")


@dataclass(frozen=True)
class Points:
    name: str
    steps: np.ndarray
    values: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    stamps: np.ndarray
    end: int  # the curve's length when read: where an incremental reader resumes


def _copy(column: array, lo: int = 0, hi: int | None = None) -> np.ndarray:
    return np.frombuffer(column, dtype=column.typecode)[lo:hi].copy()


def decimate_indexes(n: int, max_points: int) -> np.ndarray:
    """Indexes of at most max_points of n points, first and last included (max_points <= 0: all)."""
    if max_points <= 0 or n <= max_points:
        return np.arange(n)
    if max_points == 1:
        return np.array([n - 1])
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def _gather(parts: list[CurvePart], positions: np.ndarray) -> list[np.ndarray]:
    """The five columns at curve positions (increasing) held by `parts` (contiguous from the curve's start)."""
    firsts = np.array([p.first for p in parts], dtype=np.int64)
    which = np.searchsorted(firsts, positions, side="right") - 1
    pieces = [parts[int(w)].read_at(positions[which == w] - firsts[w]) for w in np.unique(which).tolist()]
    return [np.concatenate([p[c] for p in pieces]) for c in range(len(_COLUMNS))]


class SignalHistory:
    def __init__(self, on_full: Callable[[], object] | None = None) -> None:
        self.curves: dict[str, Curve] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumps on every append, for waiters
        self.on_full = on_full  # told when a curve's points in memory pass a full chunk: it may go to disk
        self.chunk = chunk_points()

    def append(self, name: str, step: int, value: float, vmin: float, vmax: float, stamp_ms: int) -> None:
        with self._lock:
            curve = self.curves.get(name)
            if curve is None:
                curve = self.curves[name] = Curve(name)
            curve.steps.append(step)
            curve.values.append(value)
            curve.vmin.append(vmin)
            curve.vmax.append(vmax)
            curve.stamps.append(stamp_ms)
            self.version += 1
            curve.last_append = self.version
            hot = len(curve.steps)
            full = hot > self.chunk and (hot - 1) % self.chunk == 0  # a chunk and one point more: once a chunk
        if full and self.on_full is not None:
            self.on_full()

    def names(self) -> list[str]:
        with self._lock:
            return list(self.curves)

    def length(self, name: str) -> int:
        with self._lock:
            curve = self.curves.get(name)
            return len(curve) if curve else 0

    def read(self, name: str, start: int = 0, max_points: int = 0) -> Points:
        """Points from index `start` on, reduced to max_points (from memory, and the files they lie in)."""
        with self._lock:
            curve = self.curves[name]
            n, base, parts = len(curve), curve.base, list(curve.cold)
            idx = decimate_indexes(max(0, n - start), max_points) + start  # picked first: only those are copied
            hot = idx[idx >= base] - base
            cols = [np.frombuffer(a, dtype=a.typecode)[hot] for a in (curve.steps, curve.values, curve.vmin,
                                                                        curve.vmax, curve.stamps)]
        cold = idx[idx < base]
        if cold.size:
            cols = [np.concatenate([c, h]) for c, h in zip(_gather(parts, cold), cols, strict=True)]
        steps, values, vmin, vmax, stamps = cols
        return Points(name, steps, values, vmin, vmax, stamps, max(n, start))

    def span(self, name: str) -> tuple[int, int, int]:
        """(first step, last step, points) of a non-empty curve, from memory (the first step read once)."""
        with self._lock:
            curve = self.curves[name]
            n, head, parts = len(curve), curve.head, list(curve.cold)
            last = curve.steps[-1] if curve.steps else None
            if head is None and len(curve.steps) and not parts:
                head = curve.head = curve.steps[0]
        if head is None or last is None:
            ends = self.read(name, 0, 2)
            head, last = int(ends.steps[0]), int(ends.steps[-1])
            with self._lock:
                curve.head = head
        return head, last, n

    def latest(self) -> tuple[str, int, float] | None:
        """The most recently appended point of any curve: (name, step, value)."""
        with self._lock:
            if not self.curves:
                return None
            curve = max(self.curves.values(), key=lambda c: c.last_append)
            if curve.steps:
                return curve.name, curve.steps[-1], curve.values[-1]
        pts = self.read(curve.name, len(curve) - 1)  # all at rest (never so after a compaction here)
        return curve.name, int(pts.steps[-1]), float(pts.values[-1])

    def image(self) -> tuple[int, list[CurveImage]]:
        """(version, a copy of every curve in creation order): what `adopt` rebuilds the history from. The
        points at rest are named by their files, not copied."""
        with self._lock:
            return self.version, [CurveImage(c.name, _copy(c.steps), _copy(c.values), _copy(c.vmin), _copy(c.vmax),
                                             _copy(c.stamps), c.last_append, tuple(c.cold))
                                  for c in self.curves.values()]

    def adopt(self, version: int, curves: list[CurveImage]) -> None:
        """Replace every curve by those of an image (taken by `image`, possibly in another process)."""
        built: dict[str, Curve] = {}
        for img in curves:
            curve = Curve(img.name, last_append=img.last_append, cold=list(img.parts))
            for part in img.parts:
                if part.first != curve.base:
                    raise ValueError(f"curve {img.name!r}: a file starts at point {part.first}, not {curve.base}")
                curve.base += part.count
            lengths = set()
            for col in _COLUMNS:
                column = getattr(curve, col)
                data = np.ascontiguousarray(getattr(img, col), dtype=column.typecode)
                column.frombytes(data.tobytes())
                lengths.add(len(column))
            if len(lengths) != 1 or img.last_append > version:
                raise ValueError(f"curve {img.name!r}: columns of lengths {sorted(lengths)} or last append "
                                 f"{img.last_append} past version {version}")
            built[img.name] = curve
        with self._lock:
            self.curves = built
            self.version = version

    # -- at rest (parquet_curves.py) -----------------------------------------------------------------

    def hot_full_chunks(self) -> int:
        """Full chunks in memory: what `compact` would move to disk."""
        with self._lock:
            return sum(max(0, len(c.steps) - 1) // self.chunk for c in self.curves.values())

    def compact(self, run_folder: Path, after_swap: Callable[[], object] | None = None) -> int:
        """Move every full chunk in memory to its file, then drop its points from memory; how many. The
        history's lock is taken only to copy a chunk and to swap it."""
        done = 0
        for name in self.names():
            while True:
                with self._lock:
                    curve = self.curves.get(name)
                    if curve is None or len(curve.steps) <= self.chunk:
                        break
                    base, size = curve.base, self.chunk
                    columns = tuple(_copy(getattr(curve, col), 0, size) for col in _COLUMNS)
                part = write_part(run_folder, name, base, columns)
                with self._lock:
                    if self.curves.get(name) is not curve or curve.base != base:
                        break  # adopted over meanwhile (a snapshot's): that history compacts its own
                    for col in _COLUMNS:
                        del getattr(curve, col)[:size]
                    curve.cold.append(part)
                    curve.base += size
                    done += 1
                if after_swap is not None:
                    after_swap()
        return done

    def at_rest(self, name: str) -> tuple[list[CurvePart], Points]:
        """A curve as of now: its files, and a copy of the points after them (for an export)."""
        with self._lock:
            curve = self.curves[name]
            steps, values, vmin, vmax, stamps = (_copy(getattr(curve, col)) for col in _COLUMNS)
            return list(curve.cold), Points(name, steps, values, vmin, vmax, stamps, len(curve))
