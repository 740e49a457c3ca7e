"""A torchrun job's ranks in one run: a lane of record positions per rank, and curves merged over ranks.

Each rank's ring feeds the run at positions rank << LANE_BITS and up, so duplicates (a record re-read
after a restart) are told per lane. A step's curve point is the mean over every rank's values of it;
its min and max are those of the ranks' own means (the per-rank spread). It is held until every rank
reported that step, or every rank is past it (a value only some ranks log), or too many steps wait (a
rank gone quiet).
"""

from __future__ import annotations

import numpy as np

LANE_BITS = 48  # a ring's positions stay below 2**48 bytes
HELD_STEPS = 1024  # a curve's steps waiting for a rank; past this many the oldest goes out as it is


def lane(position: int) -> int:
    return position >> LANE_BITS


Point = tuple[str, int, np.ndarray, np.ndarray]  # curve, step, every rank's values, each rank's mean


class RankMerge:
    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._held: dict[str, dict[int, list[tuple[int, np.ndarray]]]] = {}
        self._reached = [-1] * world_size  # per rank, the highest step it reported

    def add(self, name: str, step: int, values: np.ndarray, rank: int) -> list[Point]:
        """Every point now complete, this one's included once it is."""
        if 0 <= rank < self.world_size:
            self._reached[rank] = max(self._reached[rank], step)
        self._held.setdefault(name, {}).setdefault(step, []).append((rank, values))
        everyone_past = min(self._reached)
        out: list[Point] = []
        for curve, held in self._held.items():
            done = [s for s, parts in held.items()
                    if len({r for r, _ in parts}) >= self.world_size or s < everyone_past]
            while len(held) - len(done) > HELD_STEPS:
                done.append(min(s for s in held if s not in done))
            out.extend(_point(curve, s, held.pop(s)) for s in sorted(done))
        return out

    def flush(self) -> list[Point]:
        """Every held point, as it is."""
        out = [_point(curve, s, held[s]) for curve, held in self._held.items() for s in sorted(held)]
        self._held.clear()
        return out


def _point(curve: str, step: int, parts: list[tuple[int, np.ndarray]]) -> Point:
    by_rank: dict[int, list[np.ndarray]] = {}
    for rank, values in parts:
        by_rank.setdefault(rank, []).append(values)
    means = []
    for arrays in by_rank.values():
        joined = np.concatenate(arrays)
        finite = joined[np.isfinite(joined)]
        if finite.size:
            means.append(float(finite.mean()))
    return curve, step, np.concatenate([v for _, v in parts]), np.asarray(means, dtype=np.float64)
