"""A torchrun job (2 ranks, gloo, CPU) is one run: every edit lands at the same step on both ranks, the
sharded loader draws every id once per epoch across ranks, and the Studio's counts and curves cover both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import Daemon, history, hparams, set_hparams, wait_for
from .test_cli_server import grpc_cli
from .test_edits import deny
from .test_evaluation import eval_points, status, step_ids

DDP_TRAINER = Path(__file__).resolve().parent / "ddp_trainer.py"
WORLD = 2


def applied(reply: Any) -> int:
    assert reply.success and reply.message.startswith("applied at step"), reply
    return int(reply.message.rsplit(" ", 1)[1])


def rank_log(tmp: Path, rank: int) -> list[dict[str, Any]]:
    path = tmp / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def loss_steps(stub: Any) -> list[int]:
    return [p.model_age for p in history(stub) if p.metric_name == "loss"]


def assert_merged(stub: Any, logs: list[list[dict[str, Any]]], steps: list[int]) -> None:
    """What the Studio is served of a job: one curve point per step, the mean over every rank's losses
    (from their logs), and each of the first 40 samples' encounters counted from every rank."""
    points = {p.model_age: p.metric_value for p in history(stub) if p.metric_name == "loss"}
    assert sorted(points) == steps
    for s in steps:
        values = [v for log in logs for v in log[s]["losses"]]
        assert points[s] == pytest.approx(sum(values) / len(values), rel=1e-4), f"step {s}"
    records = stub.GetDataSamples(pb.DataSamplesRequest(start_index=0, records_cnt=40), timeout=10).data_records
    encounters = {r.sample_id: next(s.value[0] for s in r.data_stats if s.name == "encounters") for r in records}
    expected = Counter(i for log in logs for d in log for i in set(d["ids"]))
    assert encounters == {i: expected.get(i, 0) for i in range(40)}


def start_job(env: dict[str, str], tmp: Path, *torchrun: str, script: tuple[str, ...] = (),
              nproc: int = WORLD) -> subprocess.Popen[bytes]:
    """The 2-rank job (`script`: more ddp_trainer.py arguments); it stops at the first step boundary after
    tmp/stop exists."""
    with open(tmp / "torchrun.out", "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 f"--nproc_per_node={nproc}", *torchrun, str(DDP_TRAINER), "--log-dir", str(tmp),
                                 "--until", str(tmp / "stop"), "--step-sleep", "0.005", *script],
                                env={**env, "WEIGHTSLAB_RUN_NAME": "ddp"}, stdout=out, stderr=subprocess.STDOUT)


def end(proc: subprocess.Popen[bytes], tmp: Path) -> None:
    """Kill the job's agent and ranks (each in a session of its own) if a failed test left them running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid_file in tmp.glob("rank*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.mark.timeout(90)
def test_a_torchrun_job_is_one_run_and_edits_land_on_every_rank_at_the_same_step(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    proc = start_job(env, tmp_path)
    try:
        stub = daemon.stub()
        wait_for(lambda: len(loss_steps(stub)) > 12, 40, "the job's first epochs")  # an epoch is 5 steps
        runs = stub.ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5)
        assert len(runs.runs) == 1, runs  # both ranks attached to one run
        lr_at = applied(set_hparams(stub, learning_rate=0.05))
        bs_at = applied(set_hparams(stub, batch_size=3))
        gone = [0, 1, 2, 3, 4]  # 35 left: the last batch of an epoch is padded
        deny_at = applied(deny(stub, gone))
        wait_for(lambda: max(loss_steps(stub)) > deny_at + 3, 20, "steps after the edits")
        pause_at = applied(set_hparams(stub, is_training=False))
        wait_for(lambda: all(rank_log(tmp_path, r)[-1]["step"] == pause_at - 1 for r in range(WORLD)), 10,
                 "both ranks held at the paused boundary")
        held_since = time.time()
        wait_for(lambda: hparams(stub).get("is_training") == "false", 5, "the paused state to show")
        assert all(rank_log(tmp_path, r)[-1]["step"] == pause_at - 1 for r in range(WORLD))
        assert applied(set_hparams(stub, is_training=True)) == pause_at  # the held boundary woke up
        wait_for(lambda: max(loss_steps(stub)) > pause_at + 14, 20, "two epochs after the resume")
        stop.touch()
        assert proc.wait(30) == 0, (tmp_path / "torchrun.out").read_text()  # nobody left in a collective
    finally:
        end(proc, tmp_path)

    logs = [rank_log(tmp_path, r) for r in range(WORLD)]
    steps = [d["step"] for d in logs[0]]
    assert steps == list(range(len(steps))) and steps == [d["step"] for d in logs[1]]  # same steps on both ranks
    for log in logs:
        at = {d["step"]: d for d in log}
        assert all(at[s]["lr"] == pytest.approx(0.01 if s < lr_at else 0.05) for s in steps), "lr not at its step"
        assert all(at[s]["bs"] == 4 for s in steps if s < bs_at) and all(at[s]["bs"] <= 3 for s in steps
                                                                         if s >= bs_at)
        assert not any(set(gone) & set(at[s]["ids"]) for s in steps if s >= deny_at), "a discard missed a rank"
        assert at[pause_at]["began"] > held_since  # neither rank began a step (its collectives) while paused
    assert [d["bs"] for d in logs[0]] == [d["bs"] for d in logs[1]]

    # Every id once per epoch across ranks (plus < WORLD repeats padding the last batch), equal batch counts.
    epochs = sorted({d["epoch"] for d in logs[0]})
    assert len(epochs) >= 6
    for epoch in epochs[:-1]:  # the last may be cut short by the stop
        rows = [[d for d in log if d["epoch"] == epoch] for log in logs]
        assert len(rows[0]) == len(rows[1]), f"epoch {epoch}: batch counts differ"
        first, last = rows[0][0]["step"], rows[0][-1]["step"]
        drawn = Counter(i for r in rows for d in r for i in d["ids"])
        out_at_end = set(gone) if last >= deny_at else set()
        assert set(range(40)) - out_at_end <= set(drawn), f"epoch {epoch}: ids not drawn"
        if first >= deny_at:
            assert not set(gone) & set(drawn)
        assert sum(drawn.values()) - len(drawn) < WORLD, f"epoch {epoch}: ids drawn twice"

    # The Studio: one curve point per step, the mean over both ranks; every sample's counts from both.
    assert_merged(stub, logs, steps)


@pytest.mark.timeout(90)
def test_the_ranks_train_on_through_a_daemon_restart_and_reattach_to_their_run(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    proc = start_job(env, tmp_path)
    try:
        stub = daemon.stub()
        wait_for(lambda: len(loss_steps(stub)) > 5, 40, "the job's first steps")
        daemon.kill(signal.SIGKILL)
        at_kill = [len(rank_log(tmp_path, r)) for r in range(WORLD)]
        wait_for(lambda: all(len(rank_log(tmp_path, r)) > at_kill[r] + 5 for r in range(WORLD)), 20,
                 "both ranks stepping with no daemon")
        daemon.start()
        stub = daemon.stub()
        wait_for(lambda: len(stub.ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5).runs) == 1
                 and len(loss_steps(stub)) > max(at_kill) + 5, 20,
                 "both ranks back in their one run")
        (tmp_path / "stop").touch()
        assert proc.wait(30) == 0, (tmp_path / "torchrun.out").read_text()
    finally:
        end(proc, tmp_path)
    steps = [d["step"] for d in rank_log(tmp_path, 0)]
    assert steps == [d["step"] for d in rank_log(tmp_path, 1)]
    wait_for(lambda: sorted(set(loss_steps(stub))) == steps, 10, "every step of both rings drained")
    runs = stub.ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5).runs
    assert len(runs) == 1, runs


@pytest.mark.timeout(120)
def test_a_rank_killed_comes_back_through_torchruns_restart_into_the_same_run(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    proc = start_job(env, tmp_path, "--max-restarts=1")
    try:
        stub = daemon.stub()
        wait_for(lambda: len(loss_steps(stub)) > 8, 40, "the job's first steps")
        os.kill(int((tmp_path / "rank1.pid").read_text()), signal.SIGKILL)  # torchrun restarts both workers

        def restarted(rank: int) -> list[dict[str, Any]]:
            return [d for d in rank_log(tmp_path, rank) if d["restart"] == 1]

        wait_for(lambda: all(len(restarted(r)) > 8 for r in range(WORLD)), 60, "the restarted workers stepping")
        restarts = wait_for(lambda: grpc_cli(daemon, "status")["restarts"], 10, "the restart in the status")
        assert [(e["restart"], e["step"] > 8, e["world_size"], e["resumed_from"]) for e in restarts] == [
            (1, True, WORLD, None)], restarts
        (tmp_path / "stop").touch()
        assert proc.wait(30) == 0, (tmp_path / "torchrun.out").read_text()
    finally:
        end(proc, tmp_path)
    runs = stub.ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5).runs
    assert len(runs) == 1, runs  # the restarted ranks' job id is the first ones': the same run
    again = [restarted(r) for r in range(WORLD)]
    steps = [d["step"] for d in again[0]]
    first = [d["step"] for d in rank_log(tmp_path, 0) if d["restart"] == 0]
    # No checkpoint: the new group's steps go on past every step the daemon had seen (the old group's
    # last, a failed step's partial record after it, or before it if its records died with the ranks).
    assert steps == list(range(steps[0], steps[0] + len(steps))) == [d["step"] for d in again[1]]
    assert steps[0] == restarts[0]["from_step"] and max(first) <= steps[0] <= max(first) + 2, (
        steps[:2], max(first), restarts, [ln for ln in (tmp_path / "torchrun.out").read_text().splitlines()
                                          if "weightslab" in ln])
    # The new workers' records reach the run (their rings start past the old ones in each lane), and
    # their curve is merged afresh over both: the last len(steps) points are theirs, step by step.
    wait_for(lambda: loss_steps(stub)[-len(steps):] == steps, 10, "the restarted workers' curve")
    all_steps = loss_steps(stub)
    assert all_steps == sorted(set(all_steps)), "the run's curve went back"
    points = [p for p in history(stub) if p.metric_name == "loss"][-len(steps):]
    by_step = [{d["step"]: d for d in log} for log in again]
    for s, point in zip(steps, points, strict=True):
        per_rank = [sum(log[s]["losses"]) / len(log[s]["losses"]) for log in by_step]
        values = [v for log in by_step for v in log[s]["losses"]]
        assert point.metric_value == pytest.approx(sum(values) / len(values), rel=1e-4), f"step {s}"
        assert (point.value_min, point.value_max) == pytest.approx((min(per_rank), max(per_rank)), rel=1e-4)


def eval_log(tmp: Path, rank: int) -> list[dict[str, Any]]:
    path = tmp / f"eval{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.timeout(60)
def test_a_cancelled_evaluation_stops_every_rank_at_the_same_batch_and_both_train_on_together(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    # 80 eval samples, 4 per rank per batch: 10 batches of 8, each rank evaluating 4 of each, 0.3 s a batch.
    proc = start_job(env, tmp_path, script=("--eval-size", "80", "--eval-sleep", "0.3"))
    try:
        stub = daemon.stub()
        wait_for(lambda: len(loss_steps(stub)) > 3, 40, "the job's first steps")
        reply = stub.TriggerEvaluation(pb.TriggerEvaluationRequest(split_name="eval"), timeout=10)
        assert reply.success, reply.message
        seen = wait_for(lambda: (s := status(stub)).current >= 2 and s.current, 15, "two batches")
        reply = stub.CancelEvaluation(pb.CancelEvaluationRequest(reason="enough"), timeout=5)
        assert reply.success, reply.message
        last = wait_for(lambda: "of 10 batches" in (s := status(stub)).message and s, 10, "the ranks' last word")
        assert last.status == "cancelled" and seen <= last.current <= seen + 2, last
        at = eval_log(tmp_path, 0)[0]["step"]
        wait_for(lambda: all(rank_log(tmp_path, r)[-1]["step"] > at + 5 for r in range(WORLD)), 15,
                 "both ranks training after the pass")
        (tmp_path / "stop").touch()
        assert proc.wait(30) == 0, (tmp_path / "torchrun.out").read_text()  # nobody left in a collective
    finally:
        end(proc, tmp_path)

    evals = [eval_log(tmp_path, r) for r in range(WORLD)]
    done = len(evals[0])
    assert done == len(evals[1]) == last.current < 10, "the ranks stopped at different batches"
    assert {e["step"] for log in evals for e in log} == {at} and not any(e["training"] for log in evals for e in log)
    for i in range(done):  # batch i: ids 8i..8i+7 (sample-id order), rank r taking positions r, r + 2...
        assert evals[0][i]["ids"] == list(range(8 * i, 8 * i + 8, 2)) and evals[1][i]["ids"] == list(
            range(8 * i + 1, 8 * i + 8, 2))
    logs = [{d["step"]: d for d in rank_log(tmp_path, r)} for r in range(WORLD)]
    assert sorted(logs[0]) == sorted(logs[1]) == list(range(len(logs[0])))  # the same steps on both ranks
    pass_began = min(e["began"] for log in evals for e in log)
    pass_ended = max(e["ended"] for log in evals for e in log)
    assert all(log[at - 1]["began"] < pass_began and log[at]["began"] > pass_ended for log in logs)
    # Both ranks' values of the batches done land in the one partial point at the pass's step.
    point = wait_for(lambda: eval_points(stub), 10, "the partial point")[0]
    assert point.model_age == at and point.point_note.startswith("partial evaluation (cancelled)")
    assert step_ids(stub, at) == list(range(8 * done))
