"""The watchdog end to end: a real daemon (a subprocess) whose real GetDataSplits handler really blocks
(the test-only WEIGHTSLABD_TEST_STUCK_GETDATASPLITS=1, see api/servicer.py) past GRPC_WATCHDOG_STUCK_SECONDS.

Two such calls fill GRPC_MAX_CONCURRENT_RPCS=2, so the server answers nothing else (RESOURCE_EXHAUSTED);
after GRPC_WATCHDOG_RESTART_THRESHOLD polls the watchdog restarts the gRPC server, the stuck calls end,
and the same client channels get answers again, from the same process. With GRPC_WATCHDOG_EXIT_ON_STUCK=1
the process exits with status 1 instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from weightslabd.api.servicer import TEST_STUCK_ENV
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.security.tls import channel_credentials, generate_certs

from .harness import Daemon, base_env, wait_for

STUCK_S = 3.0  # long enough for the test to see the server wedged before the watchdog acts
THRESHOLD = 3


def stuck_env(tmp_path: Path, *, tls: bool = False, **extra: str) -> dict[str, str]:
    env = base_env(tmp_path)
    env.update({TEST_STUCK_ENV: "1"}, GRPC_WATCHDOG_STUCK_SECONDS=str(STUCK_S), GRPC_WATCHDOG_INTERVAL_SECONDS="0.1",
               GRPC_WATCHDOG_RESTART_THRESHOLD=str(THRESHOLD), GRPC_MAX_CONCURRENT_RPCS="2", **extra)
    if tls:
        generate_certs(tmp_path / "certs")
        env.update(GRPC_TLS_ENABLED="1", GRPC_TLS_CERT_DIR=str(tmp_path / "certs"))
    return env


def channel(daemon: Daemon, tmp_path: Path, tls: bool) -> grpc.Channel:
    if tls:
        port = daemon.env["GRPC_BACKEND_PORT"]
        return grpc.secure_channel(f"localhost:{port}", channel_credentials(tmp_path / "certs"))
    return grpc.insecure_channel(daemon.address)


def answer(ch: grpc.Channel) -> str:
    """What a probe call gets: "OK" for a SERVING health check and a real RPC's reply, else the status name."""
    try:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="ExperimentService"),
                                                      timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reply = pb_grpc.ExperimentServiceStub(ch).ExperimentCommand(pb.TrainerCommand(get_hyper_parameters=True),
                                                                     timeout=5)
        assert "no training run" in reply.message  # a real answer from the servicer
        return "OK"
    except grpc.RpcError as exc:
        return str(exc.code().name)


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.log_events() if e.get("event") == name]


def wedge(daemon: Daemon, ch: grpc.Channel) -> list[grpc.Future]:
    """Two calls that block in the real handler: every worker taken, nothing else is answered."""
    assert answer(ch) == "OK"
    stub = pb_grpc.ExperimentServiceStub(ch)
    stuck: list[grpc.Future] = []

    def wedged() -> bool:
        # A call that arrived while the probe's slot was not yet given back was refused at once: not stuck.
        stuck[:] = [f for f in stuck if not refused(f)]
        while len(stuck) < 2:
            stuck.append(stub.GetDataSplits.future(pb.Empty(), timeout=120))
        # Wedged: nothing else is answered, or (on a loaded machine, where probing is slower than the
        # watchdog) the watchdog has already seen the handlers stuck.
        return bool(events(daemon, "stuck RPCs")) or answer(ch) == "RESOURCE_EXHAUSTED"

    wait_for(wedged, 10, "the server to be wedged by the stuck handlers")
    held = [f for f in stuck if not refused(f)]
    assert held, "no call is stuck in the handler"
    return held


def refused(future: grpc.Future) -> bool:
    return bool(future.done() and future.exception() is not None
                and future.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "through-the-tls-front"])
def test_a_really_stuck_handler_makes_the_daemon_restart_its_grpc_server(tmp_path: Path, tls: bool) -> None:
    daemon = Daemon(stuck_env(tmp_path, tls=tls), tmp_path / "daemon.log").start()
    try:
        pid = daemon.wait_ready()["pid"]
        assert events(daemon, "test-only hook on: GetDataSplits blocks")
        ch = channel(daemon, tmp_path, tls)
        other = channel(daemon, tmp_path, tls)  # a second client, connected before the restart
        assert answer(other) == "OK"
        stuck = wedge(daemon, ch)
        # The restart ends the stuck calls (their server is gone) ...
        for future in stuck:
            with pytest.raises(grpc.RpcError) as ended:
                future.result(timeout=60)
            assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        # ... and both clients reconnect on their own and are answered again, by the same process.
        wait_for(lambda: answer(ch) == "OK", 30, "the first client to be answered again")
        wait_for(lambda: answer(other) == "OK", 30, "the second client to be answered again")
        assert daemon.proc is not None and daemon.proc.poll() is None and daemon.wait_ready()["pid"] == pid
        polls = events(daemon, "stuck RPCs")
        assert [e["unhealthy_polls"] for e in polls[:THRESHOLD]] == list(range(1, THRESHOLD + 1))
        assert all(e["rpcs"][0].startswith("/ExperimentService/GetDataSplits from ") for e in polls)
        assert events(daemon, "restarting the gRPC server") and events(daemon, "gRPC server restarted")
        assert not events(daemon, "exiting for the supervisor to restart weightslabd")
        ch.close()
        other.close()
    finally:
        daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0  # and it still stops cleanly


@pytest.mark.timeout(60)
def test_a_really_stuck_handler_with_exit_on_stuck_ends_the_process_with_status_1(tmp_path: Path) -> None:
    daemon = Daemon(stuck_env(tmp_path, GRPC_WATCHDOG_EXIT_ON_STUCK="1"), tmp_path / "daemon.log").start()
    try:
        ch = channel(daemon, tmp_path, False)
        stuck = wedge(daemon, ch)  # held: a dropped future cancels its call
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=30) == 1, daemon.log()
        assert all(f.exception(timeout=30) is not None for f in stuck)
        assert events(daemon, "exiting for the supervisor to restart weightslabd")
        assert [e["unhealthy_polls"] for e in events(daemon, "stuck RPCs")] == list(range(1, THRESHOLD + 1))
        assert not events(daemon, "gRPC server restarted")
        ch.close()
    finally:
        daemon.stop()


def test_the_stuck_hook_is_off_unless_set_to_1(tmp_path: Path) -> None:
    env = stuck_env(tmp_path)
    env[TEST_STUCK_ENV] = "yes"  # anything but "1": the real handler, answering at once
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        with grpc.insecure_channel(daemon.address) as ch:
            stub = pb_grpc.ExperimentServiceStub(ch)
            assert [stub.GetDataSplits(pb.Empty(), timeout=10).success for _ in range(3)] == [False] * 3
        assert not events(daemon, "test-only hook on: GetDataSplits blocks")
    finally:
        daemon.stop()
