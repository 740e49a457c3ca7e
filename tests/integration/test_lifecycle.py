"""The daemon's lifecycle under signals, its health service, and what it exposes."""

from __future__ import annotations

import itertools
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc

from .harness import Daemon, Trainer, history, manifest, wait_for


def test_sigterm_drains_streams_saves_state_and_exits_0_within_10_s(daemon: Daemon, env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    try:
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 5, 10, "the first steps")
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(daemon.address))
        assert health.Check(health_pb2.HealthCheckRequest(service="ExperimentService"), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        stream = stub.StreamStatus(pb.Empty(), timeout=30)
        next(stream)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=10) == 0
        # The open stream ended cleanly instead of hanging the shutdown.
        assert sum(1 for _ in stream) >= 0
        assert manifest(tmp_path)["status"] == "detached"  # the trainer lives on; a new daemon re-attaches
        assert trainer.proc.poll() is None
        daemon.start()
        wait_for(lambda: manifest(tmp_path)["status"] == "running", 5, "the trainer to re-attach")
    finally:
        trainer.kill()


def test_sighup_reopens_the_log_file(env: dict[str, str], tmp_path: Path) -> None:
    env["WEIGHTSLAB_LOG_TO_FILE"] = "1"
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        log_file = Path(env["WEIGHTSLAB_ROOT_LOG_DIR"]) / "weightslabd.log"
        wait_for(log_file.exists, 5, "the log file")
        rotated = log_file.with_suffix(".log.1")
        log_file.rename(rotated)  # what logrotate does
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log_file.exists() and "SIGHUP: log files reopened" in log_file.read_text(), 5,
                 "a new log file")
        assert "SIGHUP" not in rotated.read_text()
    finally:
        daemon.stop()


def test_reflection_is_off_and_health_is_served(daemon: Daemon) -> None:
    channel = grpc.insecure_channel(daemon.address)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    try:
        list(reflect(iter([b""]), timeout=5))
        raise AssertionError("reflection answered")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNIMPLEMENTED


METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["ExperimentService"].methods]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), body=st.binary(max_size=512))
def test_random_bytes_to_every_rpc_get_an_error_not_a_crash(daemon: Daemon, method: str, body: bytes) -> None:
    channel = grpc.insecure_channel(daemon.address)
    service = pb.DESCRIPTOR.services_by_name["ExperimentService"]
    streaming = service.methods_by_name[method].server_streaming
    path = f"/ExperimentService/{method}"
    call = channel.unary_stream(path) if streaming else channel.unary_unary(path)
    # A refusal is an answer; a unary call that runs into its deadline, or is cancelled, hung. Only an open
    # stream may outlive the deadline: one that decoded waits for news, by design.
    answers = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INVALID_ARGUMENT)
    try:
        result = call(body, timeout=3)
        if streaming:
            for _ in zip(range(2), result, strict=False):
                pass
            result.cancel()
    except grpc.RpcError as exc:
        assert exc.code() in answers or (streaming and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED), exc
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # undecodable: refused, and logged with the peer
            assert wait_for(lambda: any(e.get("event") == "malformed request rejected" and
                                        e.get("peer", "").startswith("ipv4:127.0.0.1:") and e.get("method") == path
                                        for e in daemon.log_events()), 5, "the logged rejection")
    assert daemon.proc is not None and daemon.proc.poll() is None
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    assert not pb_grpc.ExperimentServiceStub(channel).GetDataSplits(pb.Empty(), timeout=5).success  # no run yet



def test_sigterm_turns_health_not_serving_before_the_server_stops(daemon: Daemon) -> None:
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(daemon.address))
    watch = health.Watch(health_pb2.HealthCheckRequest(service="ExperimentService"), timeout=20)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    statuses = []
    try:
        for update in watch:
            statuses.append(update.status)
    except grpc.RpcError:
        pass  # the server went away after saying so
    assert statuses[:1] == [health_pb2.HealthCheckResponse.NOT_SERVING]
    assert daemon.proc.wait(15) == 0


@pytest.mark.timeout(90)
def test_an_idle_stream_outlives_client_keepalive_pings(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    # A client (Envoy, a proxy, a script) that pings an idle stream every 10 s must not be told
    # "too many pings" and cut off: the stream stays open through the quiet, then delivers. The client
    # here pings every 6 s, just above the daemon's 5 s floor (a server on grpc's 5-minute default sends
    # GOAWAY too_many_pings within these 20 s).
    Trainer(env, tmp_path, "--steps", "5").wait(60)
    channel = grpc.insecure_channel(daemon.address, options=[
        ("grpc.keepalive_time_ms", 6_000), ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)])
    stream = pb_grpc.ExperimentServiceStub(channel).StreamStatus(pb.Empty(), timeout=80)
    first = next(stream)
    quiet_until = time.monotonic() + 20  # three client pings, each answered, with no data between
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend(itertools.islice(stream, 1)), daemon=True)
    reader.start()
    reader.join(max(0.0, quiet_until - time.monotonic()))
    assert reader.is_alive() and not got, "the stream stayed open and quiet"
    Trainer(env, tmp_path, "--steps", "5", name="second").wait(60)
    reader.join(20)
    assert got and got[0].timestamp > first.timestamp  # the news of the second run arrived
    stream.cancel()
