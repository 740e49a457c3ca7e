"""A torchrun job's ranks in one run: a lane of record positions per rank, and curves merged over ranks.

Each rank's ring feeds the run at positions rank << LANE_BITS and up, so duplicates (a record re-read
after a restart) are told per lane. A step's curve point is the mean over every rank's values of it;
its min and max are those of the ranks' own means (the per-rank spread). It is held until every rank
reported that step, or every rank is past it (a value only some ranks log), or too many steps wait (a
rank gone quiet).

A job's worker groups (torchrun's elastic restarts, a re-launch with WEIGHTSLAB_RESUME, a new world
size) each start their rings in every lane at a slot of their own (slot << GROUP_BITS), so a record's
position names its group, live and in a replay alike, and each group merges over its own world size.
A rank's steps going back (a checkpoint restored) start a new segment: points merge segment by segment.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LANE_BITS = 48  # a ring's positions stay below 2**48 bytes
GROUP_BITS = 40  # a worker group's rings start in each lane at slot << GROUP_BITS
GROUP_SLOTS = 1 << (LANE_BITS - GROUP_BITS)
HELD_STEPS = 1024  # a curve's steps waiting for a rank; past this many the oldest goes out as it is
_NO_SPREAD = np.empty(0, dtype=np.float64)


def lane(position: int) -> int:
    return position >> LANE_BITS


def slot(position: int) -> int:
    """The worker-group slot a position of a lane is in."""
    return (position & ((1 << LANE_BITS) - 1)) >> GROUP_BITS


Point = tuple[str, int, np.ndarray, np.ndarray]  # curve, step, every rank's values, each rank's mean
Key = tuple[int, int]  # (segment, step): a rank's segment grows each time its steps go back


class RankMerge:
    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._held: dict[str, dict[Key, list[tuple[int, np.ndarray]]]] = {}
        self._reached: list[Key] = [(-1, -1)] * world_size  # per rank, the highest (segment, step) reported
        self._last: dict[int, Key] = {}  # per rank, its segment and last step

    def add(self, name: str, step: int, values: np.ndarray, rank: int) -> list[Point]:
        """Every point now complete, this one's included once it is."""
        if self.world_size == 1:
            return [(name, step, values, _NO_SPREAD)]
        segment, last = self._last.get(rank, (0, step))
        if step < last:  # a restore took this rank back: its steps merge with the others' new segment
            segment += 1
        key = self._last[rank] = (segment, step)
        if 0 <= rank < self.world_size:
            self._reached[rank] = max(self._reached[rank], key)
        self._held.setdefault(name, {}).setdefault(key, []).append((rank, values))
        everyone_past = min(self._reached)
        out: list[Point] = []
        for curve, held in self._held.items():
            done = [k for k, parts in held.items()
                    if len({r for r, _ in parts}) >= self.world_size or k < everyone_past]
            while len(held) - len(done) > HELD_STEPS:
                done.append(min(k for k in held if k not in done))
            out.extend(_point(curve, k[1], held.pop(k)) for k in sorted(done))
        return out

    def flush(self) -> list[Point]:
        """Every held point, as it is."""
        out = [_point(curve, k[1], held[k]) for curve, held in self._held.items() for k in sorted(held)]
        self._held.clear()
        return out


class RankGroups:
    """A job's worker groups, each a RankMerge over its world size, told apart by their records' slot."""

    def __init__(self, world_size: int) -> None:
        self._groups: list[tuple[int, RankMerge]] = [(0, RankMerge(world_size))]  # by slot
        self._active = 0  # the slot of the newest group records came from
        self.top = -1  # the highest step of any record (a failed step's partial record included)

    def start(self, at: int, world_size: int) -> None:
        """A group whose rings start at slot `at` (known already: nothing changes)."""
        if any(s == at for s, _ in self._groups):
            return
        self._groups.append((at, RankMerge(max(1, world_size))))
        self._groups.sort(key=lambda g: g[0])

    def add(self, name: str, step: int, values: np.ndarray, position: int) -> list[Point]:
        at = slot(position)
        self.top = max(self.top, step)
        group, merge = next(g for g in reversed(self._groups) if g[0] <= at)
        out: list[Point] = []
        if group > self._active:  # a new group's first records: the older groups' held points go out
            for s, older in self._groups:
                if s < group:
                    out.extend(older.flush())
            self._active = group
        out.extend(merge.add(name, step, values, lane(position)))
        if group < self._active:  # a dead group's ring still draining: its points go out as they are
            out.extend(merge.flush())
        return out

    def flush(self) -> list[Point]:
        return [p for _, merge in self._groups for p in merge.flush()]


def groups_of(manifest: dict[str, Any]) -> tuple[RankGroups, dict[str, Any]]:
    """A job's run's worker groups from its manifest (the first, then each restart listed), and the
    current group: {job, restart, world_size, slot}."""
    world = int(manifest.get("world_size", 1) or 1)
    groups = RankGroups(world)
    current: dict[str, Any] = {"job": manifest.get("job"), "restart": 0, "world_size": world, "slot": 0}
    for entry in manifest.get("restarts") or ():
        group = group_of(entry, manifest)
        groups.start(group["slot"], group["world_size"])
        if group["slot"] >= current["slot"]:
            current = group
    return groups, dict(manifest.get("group") or current)


def group_of(entry: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """The group a journaled restart entry started (entries from before slots: slot = restart count)."""
    restart = int(entry.get("restart", 0))
    return {"job": entry.get("job") or manifest.get("job"), "restart": restart,
            "world_size": int(entry.get("world_size") or manifest.get("world_size", 1) or 1),
            "slot": int(entry.get("slot", min(restart, GROUP_SLOTS - 1))),
            **({"from_step": int(entry["from_step"])} if "from_step" in entry else {})}


def next_slot(current: int, lanes: dict[int, int]) -> int:
    """A new group's slot: past the current group's and past every position a lane holds."""
    used = max((slot(p) for p in lanes.values() if p >= 0), default=0)
    return min(max(current, used) + 1, GROUP_SLOTS - 1)


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
