"""Evaluation passes end to end: a real daemon, a real trainer subprocess (eval_trainer.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import Daemon, Trainer, history, hparams, run_folder, set_hparams, wait_for
from .test_cli_server import weightslabd_cli

SCRIPT = Path(__file__).resolve().parent / "eval_trainer.py"
TERMINAL = ("done", "cancelled", "timed out", "error")


def trainer(env: dict[str, str], tmp: Path, *args: str, name: str = "trainer") -> Trainer:
    return Trainer(env, tmp, "--until", str(tmp / f"{name}.stop"), *args, name=name, script=SCRIPT)


def stop(tmp: Path, t: Trainer, name: str = "trainer") -> dict[str, Any]:
    (tmp / f"{name}.stop").touch()
    return t.wait()


def status(stub: Any) -> Any:
    return stub.GetEvaluationStatus(pb.GetEvaluationStatusRequest(), timeout=5)


def trigger(stub: Any, split: str = "eval", tags: tuple[str, ...] = (), full: bool = False) -> Any:
    return stub.TriggerEvaluation(pb.TriggerEvaluationRequest(split_name=split, tags=list(tags), use_full_set=full),
                                  timeout=10)


def finished(stub: Any, timeout: float = 15) -> Any:
    return wait_for(lambda: (s := status(stub)).status in TERMINAL and s, timeout, "the pass to end")


def attached(stub: Any) -> None:
    wait_for(lambda: len(history(stub)) > 3, 15, "the first steps")


def eval_points(stub: Any) -> list[Any]:
    return [p for p in history(stub) if p.metric_name == "loss/eval"]


def train_age(stub: Any) -> int:
    return max(p.model_age for p in history(stub) if p.metric_name == "loss")


def step_ids(stub: Any, age: int) -> list[int]:
    reply = stub.GetStepSamples(pb.StepSamplesRequest(metric_name="loss/eval", model_age=age, max_samples=1000),
                                timeout=5)
    assert reply.success, reply.message
    return sorted(int(i) for i in reply.sample_ids)


def no_step_during(result: dict[str, Any], per_pass: int) -> None:
    """Each pass (per_pass batches) ran between two step boundaries, in eval mode, and train mode came back."""
    times = result["eval_batches"]
    for at in range(0, len(times), per_pass):
        first, last = times[at], times[min(at + per_pass, len(times)) - 1]
        assert not [s for s in result["steps"] if first <= s[1] <= last]
    assert all(mode for _, _, mode in result["steps"]) and result["training"]


@pytest.mark.timeout(60)
def test_a_pass_runs_at_a_boundary_records_per_sample_values_and_marks_one_point(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    t = trainer(env, tmp_path, "--step-sleep", "0.01")
    try:
        stub = daemon.stub()
        attached(stub)
        assert status(stub).status == "idle"
        deny = stub.ExperimentCommand(pb.TrainerCommand(deny_eval_samples_operation=pb.DenySamplesOperation(
            sample_ids=[0, 1, 2], accumulate=True)), timeout=10)
        assert deny.success, deny.message
        reply = trigger(stub)
        assert reply.success, reply.message
        end = finished(stub)
        assert (end.status, end.split_name, end.current, end.total, end.error) == ("done", "eval", 5, 5, "")
        points = wait_for(lambda: eval_points(stub), 10, "the evaluation point")
        assert len(points) == 1 and points[0].is_evaluation_marker and points[0].split_name == "eval"
        assert not any(p.is_evaluation_marker for p in history(stub) if p.metric_name == "loss")
        assert step_ids(stub, points[0].model_age) == list(range(3, 40))  # the deny list respected
        assert trigger(stub, full=True).success
        assert finished(stub).status == "done" and status(stub).total == 5
        second = wait_for(lambda: len(eval_points(stub)) == 2 and eval_points(stub)[1], 10, "the second point")
        assert step_ids(stub, second.model_age) == list(range(40))  # use_full_set: discarded ones too
        assert trigger(stub).success
        result = stop(tmp_path, t)  # right after a pass: its end still reaches the daemon
        assert finished(stub).status == "done"
    finally:
        t.kill()
    no_step_during(result, 5)
    # the passes ran without torch, which the shim never imports itself
    assert len(result["eval_batches"]) == 15 and not result["torch"]
    ages = [s[0] for s in result["steps"]]
    assert ages == list(range(len(ages)))  # no step skipped, none repeated


@pytest.mark.timeout(60)
def test_paused_runs_at_once_one_pass_at_a_time_and_a_resume_waits_for_the_pass(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    t = trainer(env, tmp_path, "--eval-sleep", "0.1", "--step-sleep", "0.005")
    try:
        stub = daemon.stub()
        attached(stub)
        assert set_hparams(stub, is_training=False).success
        assert trigger(stub).success
        assert finished(stub).status == "done"  # paused: at once
        point = wait_for(lambda: eval_points(stub), 10, "the evaluation point")[0]
        assert point.model_age == train_age(stub) + 1  # the ring is in order: no step since the pause
        assert trigger(stub).success
        wait_for(lambda: status(stub).status == "running", 10, "the second pass to run")
        refused = trigger(stub)
        assert not refused.success and "one pass at a time" in refused.message
        assert set_hparams(stub, is_training=True).success  # waits for the pass
        assert finished(stub).status == "done"
        result = stop(tmp_path, t)
    finally:
        t.kill()
    no_step_during(result, 5)


@pytest.mark.timeout(60)
def test_tags_evaluation_config_and_the_cli(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    t = trainer(env, tmp_path, "--step-sleep", "0.01")
    try:
        stub = daemon.stub()
        attached(stub)
        tagged = stub.EditDataSample(pb.DataEditsRequest(stat_name="tags", string_value="hard", type=pb.EDIT_ACCUMULATE,
                                                         samples_ids=[5, 6, 7, 20], sample_origins=["eval"] * 4),
                                     timeout=10)
        assert tagged.success, tagged.message
        cli = weightslabd_cli(env, "eval eval --tags hard,rare", "eval status")
        assert cli.returncode == 0, cli.stderr
        started = [json.loads(line) for line in cli.stdout.splitlines() if line.startswith("{")]
        assert started[0]["ok"], started
        end = finished(stub)
        assert end.status == "done" and end.total == 1
        point = wait_for(lambda: eval_points(stub), 10, "the evaluation point")[0]
        assert step_ids(stub, point.model_age) == [5, 6, 7, 20] and list(point.evaluation_tags) == ["hard", "rare"]
        reply = set_hparams(stub, evaluation_config=json.dumps({"split_name": "eval", "use_full_set": True}))
        assert reply.success, reply.message
        assert finished(stub).status == "done" and status(stub).total == 5
        for config, words in (("{not json", "evaluation_config refused"), ('{"tags": []}', "names no split"),
                              ('{"split_name": "nope"}', "no split 'nope'"),
                              ('{"split_name": "eval", "tags": ["none-has-it"]}', "no sample of split 'eval'"),
                              ('{"cancel": true}', "nothing to cancel")):
            reply = set_hparams(stub, evaluation_config=config)
            assert not reply.success and words in reply.message, (config, reply.message)
        idle = weightslabd_cli(env, "eval cancel", "eval status", "eval")
        cancel, state, empty = (json.loads(line) for line in idle.stdout.splitlines() if line.startswith("{"))
        assert not cancel["ok"] and state["status"] == "done" and state["split_name"] == "eval"
        assert not empty["ok"] and "needs a split" in empty["error"]
        stop(tmp_path, t)
    finally:
        t.kill()


@pytest.mark.timeout(60)
def test_cancel_takes_effect_within_one_batch(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    t = trainer(env, tmp_path, "--eval-sleep", "0.5", "--eval-size", "80")
    try:
        stub = daemon.stub()
        attached(stub)
        assert trigger(stub).success
        seen = wait_for(lambda: (s := status(stub)).current >= 2 and s.current, 15, "two batches")
        reply = stub.CancelEvaluation(pb.CancelEvaluationRequest(reason="enough"), timeout=5)
        assert reply.success, reply.message
        assert status(stub).status == "cancelled"
        end = wait_for(lambda: "of 10 batches" in (s := status(stub)).message and s, 10, "the trainer's last word")
        assert end.status == "cancelled" and end.current <= seen + 2
        result = stop(tmp_path, t)
    finally:
        t.kill()
    assert len(result["eval_batches"]) <= seen + 2
    point = wait_for(lambda: eval_points(stub), 10, "the partial point")[0]
    assert point.is_evaluation_marker and point.point_note.startswith("partial evaluation (cancelled)")


SLOW_PASS = ("--step-sleep", "0.02", "--eval-sleep", "0.05", "--eval-size", "80")  # 10 batches, 0.5 s


@pytest.mark.timeout(60)
@pytest.mark.parametrize("settings, outcome", [
    ({"WEIGHTSLAB_EVAL_TIMEOUT_MIN_SECONDS": "0", "WEIGHTSLAB_EVAL_TIMEOUT_MULTIPLIER": "0.2"}, "timed out"),
    ({"WEIGHTSLAB_EVAL_TIMEOUT_MIN_SECONDS": "30", "WEIGHTSLAB_EVAL_TIMEOUT_MULTIPLIER": "0.2"}, "done"),
    ({"WEIGHTSLAB_EVAL_TIMEOUT_MIN_SECONDS": "0", "WEIGHTSLAB_EVAL_TIMEOUT_MULTIPLIER": "20"}, "done"),
], ids=["multiplier-small", "min-seconds", "multiplier-large"])
def test_the_multiplier_and_the_minimum_change_the_outcome(env: dict[str, str], tmp_path: Path,
                                                           settings: dict[str, str], outcome: str) -> None:
    """Training steps take ~0.02 s, so avg_batch_seconds x 10 batches is ~0.2 s; the pass takes 0.5 s."""
    env.update(settings)
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    t = trainer(env, tmp_path, *SLOW_PASS)
    try:
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 20, 15, "twenty steps")
        assert trigger(stub).success
        end = finished(stub)
        assert end.status == outcome, end
        if outcome == "timed out":
            assert 0 < end.current < 10 and "partial" in end.message
    finally:
        t.kill()
        daemon.stop()


@pytest.mark.timeout(60)
def test_a_fixed_timeout_replaces_the_formula_and_the_daemon_times_out_a_stuck_trainer(
        env: dict[str, str], tmp_path: Path) -> None:
    """The multiplier-large settings (a pass that ends in time), with WEIGHTSLAB_EVAL_TIMEOUT_SECONDS set."""
    env.update(WEIGHTSLAB_EVAL_TIMEOUT_MIN_SECONDS="0", WEIGHTSLAB_EVAL_TIMEOUT_MULTIPLIER="20",
               WEIGHTSLAB_EVAL_TIMEOUT_SECONDS="0.2")
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    stuck = tmp_path / "stuck"
    t = trainer(env, tmp_path, *SLOW_PASS, "--stuck-when", str(stuck))
    try:
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 20, 15, "twenty steps")
        assert trigger(stub).success
        end = finished(stub)
        assert end.status == "timed out" and 0 < end.current < 10 and "partial" in end.message, end
        point = wait_for(lambda: eval_points(stub), 10, "the partial point")[0]
        assert point.is_evaluation_marker and point.point_note.startswith("partial evaluation (timed out)")
        stuck.touch()  # the next pass hangs inside its first batch: only the daemon can tell
        assert trigger(stub).success
        end = finished(stub, timeout=10)
        assert end.status == "timed out" and "stuck inside a batch" in end.message and end.current == 0, end
    finally:
        t.kill()
        daemon.stop()


@pytest.mark.timeout(90)
def test_the_status_survives_a_daemon_restart_and_a_trainer_death_is_an_error(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    t = trainer(env, tmp_path, "--eval-sleep", "0.15", "--eval-size", "64", "--step-sleep", "0.01")
    try:
        stub = daemon.stub()
        attached(stub)
        assert trigger(stub).success
        wait_for(lambda: status(daemon.stub()).status == "running", 10, "the pass to run")
        daemon.kill()
        daemon.start()
        after = status(daemon.stub())  # from the record in the run folder, or the trainer's word since
        assert after.status in ("running", "done") and after.split_name == "eval" and after.total == 8
        assert finished(daemon.stub()).status == "done"  # the trainer said hello again and told the end
        saved = json.loads((run_folder(tmp_path) / "evaluation.json").read_text())
        assert saved["passes"][-1]["state"] == "done"
        assert trigger(daemon.stub()).success
        wait_for(lambda: status(daemon.stub()).status == "running", 10, "the second pass to run")
        t.kill()
        end = finished(daemon.stub())
        assert end.status == "error" and "died" in end.error
        daemon.stop()
        daemon.start()
        again = status(daemon.stub())
        assert (again.status, again.error, again.split_name) == (end.status, end.error, "eval")
    finally:
        t.kill()


@pytest.mark.timeout(60)
def test_periodic_passes_every_n_steps_from_the_studio_hyperparameter(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    t = trainer(env, tmp_path, "--step-sleep", "0.01")
    try:
        stub = daemon.stub()
        attached(stub)
        refused = set_hparams(stub, full_eval_frequency=-1)
        assert not refused.success and "full_eval_frequency must be >= 0" in refused.message
        assert set_hparams(stub, full_eval_frequency=15).success
        assert hparams(stub)["eval_full_to_train_steps_ratio"] == 15  # the Studio's field, WeightsLab's name
        # the points come through the ring, the marks with the next heartbeat (every 0.25 s)
        points = wait_for(lambda: len(p := eval_points(stub)) >= 3 and all(x.is_evaluation_marker for x in p) and p,
                          20, "three periodic passes, marked")
        assert all(p.model_age % 15 == 0 and p.model_age > 0 for p in points)
        ages = [p.model_age for p in points]
        assert ages == list(range(ages[0], ages[0] + 15 * len(ages), 15))
        assert set_hparams(stub, full_eval_frequency=0).success
        last = len(eval_points(stub))
        at = train_age(stub)
        wait_for(lambda: train_age(stub) > at + 45, 20, "45 more steps")
        assert len(eval_points(stub)) <= last + 1  # one may have been under way
        stop(tmp_path, t)
    finally:
        t.kill()
