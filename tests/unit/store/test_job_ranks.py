"""A torchrun job's run: each rank's records in a lane of their own, curves the mean over ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from weightslab_shim import records
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType
from weightslabd.ipc.jobs import job_and_rank, restart_of, ring_base
from weightslabd.store.ranks import GROUP_BITS, HELD_STEPS, RankMerge, lane, slot
from weightslabd.store.run import Run


def _step(ids: list[int], losses: list[float]) -> memoryview:
    return memoryview(records.encode([(f"ids{SEP}train{SEP}loss{SEP}0", np.asarray(ids, dtype=np.int64)),
                                      (f"sig{SEP}train{SEP}loss{SEP}0", np.asarray(losses, dtype=np.float32))]))


def _curve(run: Run) -> dict[int, tuple[float, float, float]]:
    c = run.history.curves["loss"]
    return {int(s): (v, lo, hi) for s, v, lo, hi in zip(c.steps, c.values, c.vmin, c.vmax, strict=True)}


def test_ranks_records_share_one_run_with_curves_merged_over_ranks(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "r", {"run_id": "r", "splits": {"train": 8}, "job": "job-" + "0" * 16,
                                      "world_size": 2})
    rank1 = 1 << 48  # rank 1's lane
    assert lane(rank1 + 5) == 1 and lane(5) == 0
    assert run.apply_record(RecordType.STEP, 0, _step([0, 1], [1.0, 3.0]), 0)
    assert "loss" not in run.history.curves  # held until rank 1 reports step 0
    assert run.apply_record(RecordType.STEP, 0, _step([2, 3], [5.0, 7.0]), rank1)
    assert run.apply_record(RecordType.STEP, 1, _step([4, 5], [1.0, 1.0]), rank1 + 10)
    assert not run.apply_record(RecordType.STEP, 0, _step([2, 3], [5.0, 7.0]), rank1)  # a re-read: per lane
    assert run.apply_record(RecordType.STEP, 1, _step([6, 7], [3.0, 3.0]), 10)  # rank 0, behind rank 1: kept
    # The mean over every rank's values; the range: the lowest and highest rank mean (the per-rank spread).
    assert _curve(run) == {0: (4.0, 2.0, 6.0), 1: (2.0, 1.0, 3.0)}
    assert run.samples.get("train").encounters.tolist() == [1] * 8  # both ranks' samples in one table
    run.close()


def test_a_value_only_one_rank_logs_goes_out_once_every_rank_is_past_it() -> None:
    merge = RankMerge(2)
    assert merge.add("lr", 0, np.array([0.1]), 0) == []
    assert merge.add("loss", 0, np.array([1.0]), 1) == []
    assert merge.add("loss", 1, np.array([1.0]), 1) == []  # rank 0 is not past step 0 yet
    out = merge.add("lr", 1, np.array([0.2]), 0)  # now it is: step 0 is complete without rank 0's loss
    assert [(n, s, v.tolist()) for n, s, v, _ in out] == [("lr", 0, [0.1]), ("loss", 0, [1.0])]
    quiet = RankMerge(2)  # rank 1 never reports: the oldest steps go out after HELD_STEPS
    for s in range(HELD_STEPS + 3):
        out = quiet.add("loss", s, np.array([float(s)]), 0)
    assert [s for _, s, _, _ in out] == [2]


def test_job_fields_of_a_hello_are_checked() -> None:
    assert job_and_rank({"rank": 0}) == (None, 0)
    assert job_and_rank({"job": "job-" + "a" * 16, "rank": 1, "world_size": 2}) == ("job-" + "a" * 16, 1)
    with pytest.raises(ValueError, match="is not one the shim makes"):
        job_and_rank({"job": "../x", "rank": 0, "world_size": 2})
    with pytest.raises(ValueError, match="is not a rank of a job"):
        job_and_rank({"job": "job-" + "a" * 16, "rank": 2, "world_size": 2})


def test_a_point_s_range_is_the_spread_of_the_ranks_means_and_a_restart_flushes_held_points(
        tmp_path: Path) -> None:
    merge = RankMerge(3)
    merge.add("loss", 0, np.array([1.0, 2.0, np.nan]), 0)
    merge.add("loss", 0, np.array([4.0]), 1)
    merge.add("loss", 0, np.array([6.0]), 1)  # a second value of rank 1 at the same step: one rank mean
    [(_, _, values, spread)] = merge.add("loss", 0, np.array([0.0, 10.0]), 2)
    assert sorted(spread.tolist()) == [1.5, 5.0, 5.0] and values.size == 7
    run = Run.create(tmp_path / "r", {"run_id": "r", "splits": {"train": 8}, "job": "job-" + "0" * 16,
                                      "world_size": 2})
    assert run.apply_record(RecordType.STEP, 7, _step([0, 1], [1.0, 3.0]), 0)
    assert "loss" not in run.history.curves
    group = run.new_worker_group("job-" + "0" * 16, 1, 2)  # torchrun restarted the workers
    assert group["slot"] == 1 and "loss" not in run.history.curves
    assert run.lane_next(0) == 1 and run.lane_next(1) == 1 << 48
    assert run.apply_record(RecordType.STEP, 0, _step([0, 1], [1.0, 1.0]), ring_base(0, 1, run.lane_next(0)))
    # the new group's first record: step 7, held for the old group, goes out with rank 0's values alone
    assert _curve(run) == {7: (2.0, 2.0, 2.0)}
    assert run.apply_record(RecordType.STEP, 0, _step([2, 3], [3.0, 3.0]), ring_base(1, 1, run.lane_next(1)))
    assert _curve(run)[0] == (2.0, 1.0, 3.0)  # merged afresh over both ranks
    run.close()


def test_a_restarted_rank_s_ring_starts_past_its_lane_and_in_a_stretch_of_its_own() -> None:
    assert ring_base(1, 0, 1 << 48) == 1 << 48
    assert ring_base(1, 2, (1 << 48) + 5) == (1 << 48) + (2 << GROUP_BITS)
    assert ring_base(0, 1, (3 << GROUP_BITS) + 1) == (3 << GROUP_BITS) + 1  # the lane is further on
    assert slot(ring_base(1, 2, (1 << 48) + 5)) == 2
    assert ring_base(0, 10**6, 0) < 1 << 48  # never out of its lane
    assert restart_of({}) == 0 and restart_of({"restart": 3}) == 3
    for bad in (-1, True, "1", 1 << 20):
        with pytest.raises(ValueError, match="is not a restart count"):
            restart_of({"restart": bad})


def test_after_a_restore_the_ranks_repeated_steps_merge_with_each_other_not_alone() -> None:
    merge = RankMerge(2)
    for s in range(6):
        for r in range(2):
            merge.add("loss", s, np.array([float(r)]), r)
    out = merge.add("loss", 3, np.array([10.0]), 0)  # rank 0 restored to step 3; rank 1 is not there yet
    out += merge.add("loss", 4, np.array([10.0]), 0)
    assert [s for _, s, _, _ in out] == []  # held for rank 1's step 3, not sent with rank 0's alone
    out = merge.add("loss", 3, np.array([20.0]), 1)
    assert [(s, v.tolist()) for _, s, v, _ in out] == [(3, [10.0, 20.0])]


def test_a_new_world_size_merges_the_new_group_over_its_own_ranks_live_and_in_a_replay(tmp_path: Path) -> None:
    from weightslabd.store.run import RunOptions

    job = "job-" + "0" * 16
    run = Run.create(tmp_path / "r", {"run_id": "r", "splits": {"train": 8}, "job": job, "world_size": 2},
                     RunOptions(snapshots=False))
    for s in range(3):
        for r in range(2):
            assert run.apply_record(RecordType.STEP, s, _step([r], [float(r)]), ring_base(r, 0, run.lane_next(r)) + s)
    group = run.new_worker_group("job-" + "1" * 16, 0, 1)  # re-launched on one rank, resumed from step 1
    run.journal_edit({"kind": "restart", **group, "rank": 0, "step": 3, "resumed_from": None})
    base = ring_base(0, group["slot"], run.lane_next(0))
    for s in (1, 2, 3):
        assert run.apply_record(RecordType.STEP, s, _step([5], [7.0]), base + s)
    c = run.history.curves["loss"]
    again = [(int(s), float(v)) for s, v in zip(c.steps, c.values, strict=True)]
    # each step of the first group the mean over its two ranks; the new group's over its one, at once
    assert again == [(0, 0.5), (1, 0.5), (2, 0.5), (1, 7.0), (2, 7.0), (3, 7.0)]
    assert run.manifest["group"]["world_size"] == 1 and run.manifest["restarts"][-1]["world_size"] == 1
    run.close()
    reopened = Run.open(tmp_path / "r", RunOptions(snapshots=False))  # the journal, then every record again
    c = reopened.history.curves["loss"]
    assert [(int(s), float(v)) for s, v in zip(c.steps, c.values, strict=True)] == again
    reopened.close()
