"""The whole path with real parts: trainer process -> ring + ZeroMQ -> weightslabd -> gRPC, and back."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import (
    Daemon,
    Trainer,
    base_env,
    history,
    hparams,
    journal,
    manifest,
    run_folder,
    set_hparams,
    shm_segments,
    wait_for,
)


def steps_of(points: list, name: str = "loss") -> list[int]:  # type: ignore[type-arg]
    return [p.model_age for p in points if p.metric_name == name]


def test_history_of_a_finished_run_is_served(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    status = Trainer(env, tmp_path, "--steps", "120").wait()
    assert status["steps"] == 120
    stub = daemon.stub()
    assert steps_of(history(stub)) == list(range(120))
    reduced = steps_of(history(stub, max_points=10))
    assert len(reduced) == 10 and reduced[0] == 0 and reduced[-1] == 119
    assert manifest(tmp_path)["status"] == "ended"
    assert shm_segments(env) == []


def test_trainer_without_daemon_runs_and_warns_once(env: dict[str, str], tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "700", "--step-sleep", "0.005")
    status = trainer.wait()
    assert status["steps"] == 700
    assert trainer.stderr().count("no weightslabd") == 1, trainer.stderr()
    assert shm_segments(env) == []  # never attached: nobody would read the ring, so it is gone


def test_pause_blocks_the_step_boundary_and_resume_releases_it(daemon: Daemon, env: dict[str, str],
                                                                tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    try:
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 5, 10, "the first steps")
        reply = set_hparams(stub, is_training=False)
        assert reply.success and reply.message.startswith("applied at step"), reply
        paused_at = int(reply.message.rsplit(" ", 1)[1])
        wait_for(lambda: hparams(stub).get("is_training") == "false", 5, "the paused state to show")
        before = max(steps_of(history(stub)))
        assert before <= paused_at  # nothing ran past the boundary where the pause applied
        reply = set_hparams(stub, is_training=True)
        # The ack, at the very step of the pause, proves the blocked boundary woke up (bench/latency.py times it).
        assert reply.success and reply.message == f"applied at step {paused_at}", reply
        wait_for(lambda: max(steps_of(history(stub))) > paused_at + 3, 10, "steps after resume")
    finally:
        trainer.kill()


def test_learning_rate_edit_reaches_the_optimizer_at_a_step_boundary(daemon: Daemon, env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "400", "--step-sleep", "0.002")
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 5, 10, "the first steps")
    reply = set_hparams(stub, learning_rate=0.025)
    assert reply.success, reply
    applied = int(reply.message.rsplit(" ", 1)[1])
    status = trainer.wait()
    # The Studio's learning_rate is a 32-bit float (0.025 arrives as 0.02500000037252903): the optimizer
    # gets the decimal the user typed, exactly, and so does the journal.
    assert status["lr"] == 0.025
    assert [e["values"] for e in journal(tmp_path) if e.get("kind") == "hparams"] == [{"learning_rate": 0.025}]
    lr_curve = {p.model_age: p.metric_value for p in history(stub) if p.metric_name == "lr"}
    assert lr_curve[applied - 1] == pytest.approx(0.1) and lr_curve[applied] == pytest.approx(0.025)
    assert hparams(stub)["learning_rate"] == pytest.approx(0.025)


def test_invalid_edit_is_refused_with_a_clear_message(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    Trainer(env, tmp_path, "--steps", "5").wait()
    reply = set_hparams(daemon.stub(), learning_rate=float("nan"))
    assert not reply.success and "learning_rate must be a finite number" in reply.message


def test_daemon_sigkill_then_restart_reattaches_and_history_continues(daemon: Daemon, env: dict[str, str],
                                                                       tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "1500", "--step-sleep", "0.003")
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 10, 10, "the first steps")
    daemon.kill(signal.SIGKILL)
    time.sleep(0.5)  # the trainer keeps stepping with no daemon: that is the point of the test
    assert trainer.proc.poll() is None
    daemon.start(wait=True)
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 10, 10, "the run to be served again")  # bench/latency.py times it
    status = trainer.wait(60)
    assert status["steps"] == 1500 and status["dropped"] == 0
    assert steps_of(history(stub)) == list(range(1500))  # written to the ring meanwhile, nothing lost
    assert "Traceback" not in trainer.stderr()
    assert shm_segments(env) == []


def test_trainer_sigkill_marks_the_run_crashed_and_leaves_nothing(daemon: Daemon, env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 5, 10, "the first steps")
    assert len(shm_segments(env)) == 1
    trainer.kill()
    wait_for(lambda: manifest(tmp_path)["status"] == "crashed", 10, "the run to be marked crashed")
    wait_for(lambda: shm_segments(env) == [], 10, "the ring to be unlinked")
    assert sorted(os.listdir(env["WEIGHTSLAB_RUNTIME_DIR"])) == ["control.sock", "daemon.json", "daemon.lock",
                                                                 "grpc-web.sock", "runs.json"]
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert len(history(stub)) > 5  # still serving


def test_restart_serves_the_same_history_and_hyperparameters(daemon: Daemon, env: dict[str, str],
                                                              tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "300", "--step-sleep", "0.002")
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 5, 10, "the first steps")
    assert set_hparams(stub, learning_rate=0.5, training_steps_to_do=777).success
    trainer.wait()
    before_points = [(p.metric_name, p.model_age, p.metric_value) for p in history(stub)]
    before_hp = hparams(stub)
    daemon.kill(signal.SIGKILL)
    daemon.start()
    stub = daemon.stub()
    assert [(p.metric_name, p.model_age, p.metric_value) for p in history(stub)] == before_points
    after_hp = hparams(stub)
    assert after_hp == before_hp
    assert after_hp["learning_rate"] == pytest.approx(0.5) and after_hp["training_steps_to_do"] == 777


def test_an_acknowledged_edit_survives_a_daemon_crash(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "300", "--step-sleep", "0.003")
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 5, 10, "the first steps")
    os.kill(trainer.proc.pid, signal.SIGSTOP)  # the trainer cannot apply it before the daemon dies
    try:
        reply = set_hparams(stub, learning_rate=0.0125)
        assert reply.success and reply.message.startswith("saved"), reply
        daemon.kill(signal.SIGKILL)
        daemon.start()
    finally:
        os.kill(trainer.proc.pid, signal.SIGCONT)
    status = trainer.wait(60)
    assert status["lr"] == pytest.approx(0.0125)
    journal = (run_folder(tmp_path) / "edits.journal").read_bytes()
    assert b'"learning_rate":0.0125' in journal and b'"kind":"applied"' in journal


def test_incremental_reads_give_each_client_all_new_points(daemon: Daemon, env: dict[str, str],
                                                           tmp_path: Path) -> None:
    import grpc

    from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc

    trainer = Trainer(env, tmp_path, "--steps", "300", "--step-sleep", "0.002")
    # Two browsers are two connections: a local subchannel pool keeps grpcio from sharing one.
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    a = pb_grpc.ExperimentServiceStub(grpc.insecure_channel(daemon.address, options=own_connection))
    b = pb_grpc.ExperimentServiceStub(grpc.insecure_channel(daemon.address, options=own_connection))
    got: dict[str, list[int]] = {"a": [], "b": []}
    incremental = pb.GetLatestLoggerDataRequest(request_full_history=False, metric_names=["loss"])
    while trainer.proc.poll() is None:
        for key, stub in (("a", a), ("b", b)):
            got[key] += [p.model_age for p in stub.GetLatestLoggerData(incremental, timeout=5).points]
    trainer.wait()
    for key, stub in (("a", a), ("b", b)):
        got[key] += [p.model_age for p in stub.GetLatestLoggerData(incremental, timeout=5).points]
    assert got["a"] == list(range(300)) and got["b"] == list(range(300))
    # Behind a shared connection (a proxy), a client id keeps readers apart the same way.
    c = [("x-client-id", "c")]
    d = [("x-client-id", "d")]
    full = pb.GetLatestLoggerDataRequest(request_full_history=False, metric_names=["loss"])
    assert len(a.GetLatestLoggerData(full, metadata=c, timeout=5).points) == 300
    assert len(a.GetLatestLoggerData(full, metadata=d, timeout=5).points) == 300
    assert len(a.GetLatestLoggerData(full, metadata=c, timeout=5).points) == 0


def test_stream_status_follows_the_steps(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    try:
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 2, 10, "the first steps")
        ages = []
        for message in stub.StreamStatus(pb.Empty(), timeout=10):
            ages.append(message.model_age)
            assert message.experiment_name == "trainer" and message.metrics_status.name in ("loss", "lr")
            if len(ages) == 5:
                break
        assert ages == sorted(ages) and ages[-1] > ages[0]
    finally:
        trainer.kill()


def test_second_daemon_on_the_same_runtime_dir_is_refused(daemon: Daemon, env: dict[str, str],
                                                          tmp_path: Path) -> None:
    import subprocess
    import sys

    other = subprocess.run([sys.executable, "-m", "weightslabd"], env=env, capture_output=True, text=True, timeout=20)
    assert other.returncode == 2
    assert other.stderr.strip().count("\n") == 0
    assert "another weightslabd" in other.stderr and "WEIGHTSLAB_RUNTIME_DIR" in other.stderr


def test_daemons_side_by_side_each_serve_their_own_trainer(env: dict[str, str], tmp_path: Path) -> None:
    second_env = base_env(tmp_path / "second")
    first = Daemon(env, tmp_path / "d1.log").start()
    second = Daemon(second_env, tmp_path / "d2.log").start()
    try:
        Trainer(env, tmp_path, "--steps", "20", name="t1").wait()
        Trainer(second_env, tmp_path, "--steps", "30", name="t2").wait()
        assert steps_of(history(first.stub())) == list(range(20))
        assert steps_of(history(second.stub())) == list(range(30))
    finally:
        first.stop()
        second.stop()


def test_run_folder_holds_manifest_journal_and_signal_store(daemon: Daemon, env: dict[str, str],
                                                             tmp_path: Path) -> None:
    Trainer(env, tmp_path, "--steps", "10").wait()
    folder = run_folder(tmp_path)
    assert {p.name for p in folder.iterdir()} >= {"manifest.json", "signals.log", "edits.journal", "previews.log"}
    data = json.loads((folder / "manifest.json").read_text())
    assert data["splits"] == {"train": 256} and data["run_name"] == "trainer" and data["step"] == 10


def test_a_small_ring_without_a_daemon_drops_the_newest_and_counts(env: dict[str, str], tmp_path: Path) -> None:
    env["WEIGHTSLAB_RING_MB"] = "0.0625"  # 64 KiB: a few hundred step records
    status = Trainer(env, tmp_path, "--steps", "1500").wait()
    assert status["steps"] == 1500 and status["dropped"] > 0
    env["WEIGHTSLAB_RING_MB"] = "lots"
    trainer = Trainer(env, tmp_path, "--steps", "5", name="bad-setting")
    assert trainer.wait()["steps"] == 5
    assert "WEIGHTSLAB_RING_MB='lots' is invalid" in trainer.stderr()


def test_after_a_restart_the_trainers_latest_values_win_over_older_edits(daemon: Daemon, env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    # The trainer's own change comes once the edit is applied (a file says so), not at a step a loaded
    # machine might reach before the edit's round trip ends.
    lr_file, stop = tmp_path / "set-lr", tmp_path / "stop"
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002", "--set-lr-after", str(lr_file),
                      "--until", str(stop))
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 20, 10, "the first steps")
    reply = set_hparams(stub, learning_rate=0.5)
    assert reply.success, reply
    lr_file.touch()
    wait_for(lambda: hparams(stub)["learning_rate"] == pytest.approx(0.7), 10, "the trainer's own learning rate")
    stop.touch()
    status = trainer.wait()
    assert int(reply.message.rsplit(" ", 1)[1]) < status["lr_set_at"], (reply, status["lr_set_at"])
    assert status["lr"] == pytest.approx(0.7)
    assert hparams(stub)["learning_rate"] == pytest.approx(0.7)
    daemon.kill(signal.SIGKILL)
    daemon.start()
    assert hparams(daemon.stub())["learning_rate"] == pytest.approx(0.7)
