"""Checkpoints of a torchrun job (2 ranks, gloo, CPU, a real daemon): saved at the same step on both ranks,
each rank's own part kept; a restore lands at the same step on both, each continuing its own shard and
random numbers; torchrun's restart resumes from the newest checkpoint; a re-launch on another world size
resumes the run, re-shards the epoch and merges its curves over the new ranks."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import Daemon, history, set_hparams, wait_for
from .test_cli_server import grpc_cli
from .test_distributed import WORLD, end, loss_steps, rank_log, start_job

SAME = ("step", "lr", "bs", "ids", "epoch", "noise")  # what a resumed step repeats exactly, per rank


def last_at(log: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """The last time a rank ran `step` (a restore runs steps again)."""
    return [d for d in log if d["step"] == step][-1]


def went_back(log: list[dict[str, Any]]) -> int:
    """The index of the first step a rank ran that is not after the one before it (a restore)."""
    return next(i for i in range(1, len(log)) if log[i]["step"] <= log[i - 1]["step"])


def files(folder: Path) -> Counter[int]:
    """Per step, how many files (the checkpoint and its ranks' parts) the run's checkpoint folder holds."""
    return Counter(int(p.name.split("-")[1]) for p in folder.glob("step-*.wlckpt"))


def save_checkpoint(daemon: Daemon) -> tuple[int, Path]:
    """`weightslabd cli checkpoint save`: the step it was written at and the folder it was written to."""
    saved = grpc_cli(daemon, "checkpoint save")
    assert saved["ok"] and "written" in saved["message"], saved
    at = int(saved["message"].split("@")[1].split(" ")[0])
    return at, Path(saved["message"].split(": ", 1)[1].split(" (")[0]).parent


@pytest.mark.timeout(120)
def test_checkpoints_of_a_job_save_and_restore_every_rank_at_one_step_and_a_restart_resumes(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    proc = start_job(env, tmp_path, "--max-restarts=1")
    try:
        stub = daemon.stub()
        wait_for(lambda: len(loss_steps(stub)) > 8, 40, "the job's first steps")
        at, folder = save_checkpoint(daemon)
        wait_for(lambda: files(folder)[at] == WORLD, 10, "rank 1's part beside the checkpoint")
        assert set_hparams(stub, learning_rate=0.05).success
        wait_for(lambda: all(rank_log(tmp_path, r)[-1]["step"] > at + 6 for r in range(WORLD)), 20, "steps on")
        before = [rank_log(tmp_path, r) for r in range(WORLD)]
        reply = stub.RestoreCheckpoint(pb.RestoreCheckpointRequest(experiment_hash=f"@{at}"), timeout=20)
        assert reply.success and f"training continues from step {at}" in reply.message, reply.message
        wait_for(lambda: all(len(rank_log(tmp_path, r)) > len(before[r]) + 8 for r in range(WORLD)), 20,
                 "steps after the restore")
        assert set_hparams(stub, checkpont_frequency=4).success  # auto: on both ranks at the same steps
        wait_for(lambda: len([s for s, n in files(folder).items() if s != at]) >= 2, 20, "two auto checkpoints")
        assert set_hparams(stub, checkpont_frequency=0).success
        wait_for(lambda: files(folder) and all(n == WORLD for n in files(folder).values()), 10, "every part written")
        newest = max(files(folder))  # no save after it, so every part of it is on disk
        wait_for(lambda: all(rank_log(tmp_path, r)[-1]["step"] > newest + 2 for r in range(WORLD)), 20, "steps on")
        ran = [rank_log(tmp_path, r) for r in range(WORLD)]
        os.kill(int((tmp_path / "rank1.pid").read_text()), signal.SIGKILL)  # torchrun restarts both workers

        def restarted(rank: int) -> list[dict[str, Any]]:
            return [d for d in rank_log(tmp_path, rank) if d["restart"] == 1]

        wait_for(lambda: all(len(restarted(r)) > 3 for r in range(WORLD)), 60, "the restarted workers stepping")
        restarts = wait_for(lambda: grpc_cli(daemon, "status")["restarts"], 10, "the restart in the status")
        (tmp_path / "stop").touch()
        assert proc.wait(30) == 0, (tmp_path / "torchrun.out").read_text()
    finally:
        end(proc, tmp_path)

    logs = [[d for d in rank_log(tmp_path, r) if d["restart"] == 0] for r in range(WORLD)]
    before = [log[:went_back(log)] for log in logs]
    after = [log[went_back(log):] for log in logs]
    assert before[0][-1]["step"] == before[1][-1]["step"]  # the restore came at one boundary on both ranks
    for r in range(WORLD):
        # The restore: the step after it is `at` on both ranks, and it repeats what each rank did at `at`
        # (its shard's ids from the same position, its own random number, the learning rate saved).
        first = after[r][0]
        assert {k: first[k] for k in SAME} == {k: last_at(before[r], at)[k] for k in SAME}, f"rank {r}"
        assert first["lr"] == 0.01 and before[r][-1]["lr"] == pytest.approx(0.05)  # the saved rate is back
    assert [d["step"] for d in after[0]] == [d["step"] for d in after[1]]
    # The curve after the restore: each repeated step's point is again the mean over both ranks.
    points = [(p.model_age, p.metric_value) for p in history(stub) if p.metric_name == "loss"]
    for d0, d1 in list(zip(after[0], after[1], strict=True))[:8]:
        values = d0["losses"] + d1["losses"]
        mean = sum(values) / len(values)
        assert any(age == d0["step"] and v == pytest.approx(mean, rel=1e-4) for age, v in points), d0["step"]
    # torchrun's restart: the new group resumed from the newest checkpoint, both ranks at its step.
    assert [(e["restart"], e["resumed_from"].split("@")[1]) for e in restarts] == [(1, str(newest))], restarts
    for r in range(WORLD):
        again = restarted(r)[0]
        assert {k: again[k] for k in SAME} == {k: last_at(ran[r], newest)[k] for k in SAME}, (
            r, [ln for ln in (tmp_path / "torchrun.out").read_text().splitlines() if "weightslab" in ln])
    assert [d["step"] for d in restarted(0)] == [d["step"] for d in restarted(1)]
    runs = stub.ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5).runs
    assert len([r for r in runs if len(r.experiment_hash) != 24]) == 1  # one run; checkpoints listed once each
    listed = grpc_cli(daemon, "checkpoint list")["checkpoints"]
    assert len(listed) == len({c["step"] for c in listed}) and all(".rank" not in c["path"] for c in listed)


@pytest.mark.timeout(120)
def test_a_re_launch_on_one_rank_resumes_the_run_re_shards_the_epoch_and_merges_its_curves_over_one_rank(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    first, second = tmp_path / "two", tmp_path / "one"
    first.mkdir()
    second.mkdir()
    proc = start_job(env, first)
    try:
        stub = daemon.stub()
        wait_for(lambda: len(loss_steps(stub)) > 6, 40, "the job's first steps")
        at, _ = save_checkpoint(daemon)
        wait_for(lambda: all(rank_log(first, r)[-1]["step"] > at + 3 for r in range(WORLD)), 20, "steps on")
        (first / "stop").touch()
        assert proc.wait(30) == 0, (first / "torchrun.out").read_text()
        relaunched = time.time()
        proc = start_job(dict(env, WEIGHTSLAB_RESUME="1"), second, nproc=1)  # another job, the same run
        wait_for(lambda: len(rank_log(second, 0)) > 12, 40, "the one rank stepping")
        (second / "stop").touch()
        assert proc.wait(30) == 0, (second / "torchrun.out").read_text()
    finally:
        end(proc, first)
        end(proc, second)
    old, new = [rank_log(first, r) for r in range(WORLD)], rank_log(second, 0)
    assert new[0]["step"] == at and new[0]["world"] == 1 and new[0]["began"] > relaunched
    assert [d["step"] for d in new] == list(range(at, at + len(new)))
    # The epoch in progress at the checkpoint: the two ranks' batches before it and the one rank's after
    # it draw every id once (but for fewer than 2 repeats padding the two ranks' last global batch).
    epoch = new[0]["epoch"]
    assert epoch == last_at(old[0], at)["epoch"] and any(d["epoch"] == epoch + 1 for d in new)
    drawn = Counter(i for log in old for d in log if d["step"] < at and d["epoch"] == epoch for i in d["ids"])
    drawn.update(i for d in new if d["epoch"] == epoch for i in d["ids"])
    assert set(drawn) == set(range(40)) and sum(drawn.values()) - 40 < WORLD
    later = Counter(i for d in new if d["epoch"] == epoch + 1 for i in d["ids"])
    assert max(later.values()) == 1
    # The daemon: one run, the new group recorded with its world size, its points merged over one rank.
    status = grpc_cli(daemon, "status")
    assert [(e["world_size"], e["resumed_from"].split("@")[1]) for e in status["restarts"]] == [(1, str(at))]
    runs = stub.ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5).runs
    assert len([r for r in runs if len(r.experiment_hash) != 24]) == 1
    points = wait_for(lambda: (p := [p for p in history(stub) if p.metric_name == "loss"])[-len(new):][0].model_age
                      == at and p, 10, "the one rank's points")
    for d, point in zip(new, points[-len(new):], strict=True):
        assert point.model_age == d["step"]
        assert point.metric_value == pytest.approx(sum(d["losses"]) / len(d["losses"]), rel=1e-4)
