"""Each setting the spine uses changes what the daemon does: one test per setting (or pair)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import grpc
import pytest

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc

from .harness import TRAINER, Daemon, Trainer, base_env, history, hparams, run_folder, wait_for


def hp_fields_in_store(tmp_path: Path) -> int:
    from weightslab_shim import records
    from weightslabd.store.framedlog import read_frames
    from weightslabd.store.run import STORED

    # Read-only: the daemon is still writing this log.
    return sum("hp" in records.decode(memoryview(frame)[STORED.size:])
               for _, frame in read_frames(run_folder(tmp_path) / "signals.log"))


def start(env: dict[str, str], tmp_path: Path, **settings: str) -> Daemon:
    env.update(settings)
    return Daemon(env, tmp_path / "daemon.log").start()


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
def test_log_level_filters_the_daemon_log(tmp_path: Path, level: str) -> None:
    daemon = start(base_env(tmp_path), tmp_path, WEIGHTSLAB_LOG_LEVEL=level)
    daemon.stop()
    events = [e.get("event") for e in daemon.log_events()]
    assert ("weightslabd ready" in events) is (level == "INFO")


@pytest.mark.parametrize("to_file", ["1", "0"])
def test_log_to_file_writes_a_json_log_under_the_root_log_dir(tmp_path: Path, to_file: str) -> None:
    daemon = start(base_env(tmp_path), tmp_path, WEIGHTSLAB_LOG_TO_FILE=to_file)
    daemon.stop()
    log_file = tmp_path / "logs" / "weightslabd.log"
    assert log_file.exists() is (to_file == "1")
    if to_file == "1":
        assert any(json.loads(line)["event"] == "weightslabd ready" for line in log_file.read_text().splitlines())


def test_root_log_dir_unset_puts_runs_next_to_the_training_script(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    del env["WEIGHTSLAB_ROOT_LOG_DIR"]
    daemon = start(env, tmp_path)
    try:
        script_dir = tmp_path / "project"
        script_dir.mkdir()
        shutil.copy(TRAINER, script_dir / "trainer.py")
        status = tmp_path / "status.json"
        subprocess.run([sys.executable, str(script_dir / "trainer.py"), "--status", str(status), "--steps", "5"],
                       env=env, check=True, timeout=60)
        runs = list((script_dir / "root_log_dir").iterdir())
        assert len(runs) == 1 and (runs[0] / "manifest.json").exists()
    finally:
        daemon.stop()


@pytest.mark.parametrize("sync", ["1", "0"])
def test_hp_sync_sends_hyperparameters_with_steps_or_only_on_demand(tmp_path: Path, sync: str) -> None:
    env = base_env(tmp_path)
    daemon = start(env, tmp_path, WL_ENABLE_HP_SYNC=sync)
    try:
        trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002", "--mutate-hp-at", "20")
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 30, 10, "steps after the trainer changed its hyperparameters")
        # While the trainer runs, the UI sees the change either way: synced, or fetched on demand.
        wait_for(lambda: hparams(stub).get("custom_knob") == 20, 10, "the trainer's own change to show")
        # What crossed the ring: with sync, the steps carry the hyperparameters; without, none does.
        if sync == "1":
            wait_for(lambda: hp_fields_in_store(tmp_path) > 0, 10, "a stored step carrying the hyperparameters")
        trainer.kill()
        if sync == "0":
            assert hp_fields_in_store(tmp_path) == 0
    finally:
        daemon.stop()


def test_backend_host_is_the_address_bound(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    daemon = start(env, tmp_path, GRPC_BACKEND_HOST="127.0.0.2")
    try:
        port = env["GRPC_BACKEND_PORT"]
        ok = pb_grpc.ExperimentServiceStub(grpc.insecure_channel(f"127.0.0.2:{port}"))
        assert ok.GetDataSplits(pb.Empty(), timeout=5).success is False  # served (no run yet)
        other = pb_grpc.ExperimentServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        with pytest.raises(grpc.RpcError) as exc:
            other.GetDataSplits(pb.Empty(), timeout=2)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        daemon.stop()


def test_port_zero_picks_a_free_port_and_reports_it(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    daemon = start(env, tmp_path, GRPC_BACKEND_PORT="0")
    try:
        port = daemon.wait_ready()["grpc_port"]
        assert port > 0
        stub = pb_grpc.ExperimentServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert stub.GetDataSplits(pb.Empty(), timeout=5) == pb.DataSplitsResponse(success=False)  # served: no run yet
    finally:
        daemon.stop()


def test_max_message_bytes_limits_what_the_server_sends(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    daemon = start(env, tmp_path, GRPC_MAX_MESSAGE_BYTES="200")
    try:
        Trainer(env, tmp_path, "--steps", "50").wait()
        with pytest.raises(grpc.RpcError) as exc:
            history(daemon.stub())
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(history(daemon.stub(), max_points=1, metric_names=["loss"])) == 1  # small replies still go
    finally:
        daemon.stop()


def test_max_concurrent_rpcs_refuses_calls_beyond_the_limit(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    daemon = start(env, tmp_path, GRPC_MAX_CONCURRENT_RPCS="1")
    try:
        trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 2, 10, "the first steps")
        stream = stub.StreamStatus(pb.Empty(), timeout=10)
        first = next(stream)  # the one allowed call is now in flight
        assert first.model_age >= 0
        with pytest.raises(grpc.RpcError) as exc:
            stub.GetDataSplits(pb.Empty(), timeout=5)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        stream.cancel()
        trainer.kill()
    finally:
        daemon.stop()


def test_heartbeat_timeout_decides_when_a_silent_trainer_is_reported(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    daemon = start(env, tmp_path, WEIGHTSLAB_HEARTBEAT_TIMEOUT_SECONDS="0.3")
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    try:
        wait_for(lambda: len(history(daemon.stub())) > 2, 10, "the first steps")
        os.kill(trainer.proc.pid, signal.SIGSTOP)
        event = wait_for(lambda: next((e for e in daemon.log_events()
                                       if e.get("event") == "trainer silent but alive"), None), 3,
                         "the silent-trainer warning")
        assert event["timeout_s"] == 0.3 and event["silent_s"] >= 0.3  # the setting's threshold, not the default
    finally:
        os.kill(trainer.proc.pid, signal.SIGCONT)
        trainer.kill()
        daemon.stop()


def test_wl_test_timeout_is_the_hard_timeout_of_a_test(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "conftest.py", suite / "conftest.py")
    (suite / "test_slow.py").write_text(textwrap.dedent("""
        import threading

        def test_never_finishes():
            threading.Event().wait(60)
    """))
    env = dict(os.environ, WL_TEST_TIMEOUT="1")
    done = threading.Event()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)], env=env,
                            capture_output=True, text=True, timeout=30, cwd=suite)
    done.set()
    assert result.returncode == 1
    assert "Timeout (>1.0s" in result.stdout


@pytest.mark.parametrize("disabled", ["yes", "0"])
def test_disable_watchdogs_turns_the_watchdog_off(tmp_path: Path, disabled: str) -> None:
    daemon = start(base_env(tmp_path), tmp_path, WEIGHTSLAB_DISABLE_WATCHDOGS=disabled,
                   GRPC_WATCHDOG_STUCK_SECONDS="7", GRPC_WATCHDOG_INTERVAL_SECONDS="0.5",
                   GRPC_WATCHDOG_RESTART_THRESHOLD="4", GRPC_WATCHDOG_EXIT_ON_STUCK="on")
    daemon.stop()
    events = {e.get("event"): e for e in daemon.log_events()}
    if disabled == "yes":
        assert "watchdogs disabled (WEIGHTSLAB_DISABLE_WATCHDOGS)" in events and "watchdog on" not in events
    else:
        on = events["watchdog on"]
        assert (on["stuck_s"], on["every_s"], on["restart_after"], on["exit_on_stuck"]) == (7.0, 0.5, 4, True)


@pytest.mark.parametrize(("level", "debug_lines"), [("DEBUG", True), ("ERROR", False)])
def test_grpc_verbosity_from_the_env_file_reaches_the_grpc_core(tmp_path: Path, level: str, debug_lines: bool) -> None:
    # Only in the --env file: grpc reads GRPC_VERBOSITY from the process environment by itself, so a value
    # there would pass without the daemon doing anything.
    env = base_env(tmp_path)
    assert not any(key.startswith("GRPC_VERBOSITY") or key == "GRPC_TRACE" for key in env)
    env_file = tmp_path / "weightslabd.env"
    env_file.write_text(f"GRPC_VERBOSITY={level}\n")
    daemon = Daemon(env, tmp_path / "daemon.log").start("--env", str(env_file))
    daemon.stop()
    # grpc core's own lines on stderr, e.g. "D1206 06:00:58.8 ... Log level DEBUG is not suitable for production"
    assert ("Log level DEBUG is not suitable for production" in daemon.log()) is debug_lines, daemon.log()[-2000:]
