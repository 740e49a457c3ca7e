"""Signal history: one append-only curve per metric, and reads reduced to a point budget.

A curve holds, per step, the value (a scalar signal, or the mean of a per-sample signal), the
batch's min and max (for an error band) and the arrival time. Reads decimate to `max_points` by
keeping the first and last points and an evenly spaced subset between: no value is invented.
"""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Curve:
    name: str
    steps: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))
    vmin: array = field(default_factory=lambda: array("d"))
    vmax: array = field(default_factory=lambda: array("d"))
    stamps: array = field(default_factory=lambda: array("q"))  # unix ms
    last_append: int = -1  # the history's version at this curve's last append: orders curves exactly

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class CurveImage:
    """A copy of one curve, for a snapshot: its columns and where it stands in the append order."""

    name: str
    steps: np.ndarray  # int64
    values: np.ndarray  # float64
    vmin: np.ndarray  # float64
    vmax: np.ndarray  # float64
    stamps: np.ndarray  # int64
    last_append: int


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


def _copy(column: array) -> np.ndarray:
    return np.frombuffer(column, dtype=column.typecode).copy()


def decimate_indexes(n: int, max_points: int) -> np.ndarray:
    """Indexes of at most max_points of n points, first and last included (max_points <= 0: all)."""
    if max_points <= 0 or n <= max_points:
        return np.arange(n)
    if max_points == 1:
        return np.array([n - 1])
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


class SignalHistory:
    def __init__(self) -> None:
        self.curves: dict[str, Curve] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumps on every append, for waiters

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

    def names(self) -> list[str]:
        with self._lock:
            return list(self.curves)

    def length(self, name: str) -> int:
        with self._lock:
            curve = self.curves.get(name)
            return len(curve) if curve else 0

    def read(self, name: str, start: int = 0, max_points: int = 0) -> Points:
        """Points from index `start` on, reduced to max_points."""
        with self._lock:
            curve = self.curves[name]
            n = len(curve)
            idx = decimate_indexes(max(0, n - start), max_points) + start  # picked first: only those are copied
            steps, values, vmin, vmax, stamps = (np.frombuffer(a, dtype=a.typecode)[idx] if n > start else
                                                 np.empty(0, dtype=a.typecode)
                                                 for a in (curve.steps, curve.values, curve.vmin, curve.vmax,
                                                           curve.stamps))
        return Points(name, steps, values, vmin, vmax, stamps, max(n, start))

    def latest(self) -> tuple[str, int, float] | None:
        """The most recently appended point of any curve: (name, step, value)."""
        with self._lock:
            if not self.curves:
                return None
            curve = max(self.curves.values(), key=lambda c: c.last_append)
            return curve.name, curve.steps[-1], curve.values[-1]

    def image(self) -> tuple[int, list[CurveImage]]:
        """(version, a copy of every curve in creation order): what `adopt` rebuilds the history from."""
        with self._lock:
            return self.version, [CurveImage(c.name, _copy(c.steps), _copy(c.values), _copy(c.vmin), _copy(c.vmax),
                                             _copy(c.stamps), c.last_append) for c in self.curves.values()]

    def adopt(self, version: int, curves: list[CurveImage]) -> None:
        """Replace every curve by those of an image (taken by `image`, possibly in another process)."""
        built: dict[str, Curve] = {}
        for img in curves:
            curve = Curve(img.name, last_append=img.last_append)
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
