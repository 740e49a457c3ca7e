"""The watchdog with real threads and a real gRPC server on loopback: stuck lock holders are
interrupted and release the lock, handlers that cannot get it answer RESOURCE_EXHAUSTED, stuck RPCs
restart the server (or exit) after the threshold, and its log lines stay bounded."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from weightslabd.api.servicer import ExperimentServicer
from weightslabd.ipc.control import ControlServer
from weightslabd.ops.logs import configure_logging, reset_logging
from weightslabd.ops.watchdog import InflightCalls, Watchdog
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.store.locks import WatchdogInterrupt, WatchedLock
from weightslabd.store.run import Run
from weightslabd.store.runs import RunRegistry


def until(condition, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def watchdog(calls: InflightCalls, locks: list[WatchedLock], **kw: object) -> Watchdog:
    options = dict(stuck_seconds=0.3, interval=0.05, restart_threshold=3, details_limit=10, exit_on_stuck=False,
                   restart=lambda: None)
    options.update(kw)
    return Watchdog(locks=lambda: locks, calls=calls, **options)  # type: ignore[arg-type]


def test_watched_lock_is_reentrant_and_waits_like_an_rlock_under_a_condition() -> None:
    lock = WatchedLock("state")
    changed = threading.Condition(lock)  # type: ignore[arg-type]
    with lock, lock:
        assert lock.holder == threading.get_ident()
    assert lock.holder is None
    got = threading.Event()

    def other() -> None:
        with lock:  # possible only because wait() below released the lock fully
            got.set()
            changed.notify_all()

    with lock, lock:
        threading.Thread(target=other).start()
        assert changed.wait_for(got.is_set, timeout=5)
        assert lock.holder == threading.get_ident()


def test_a_lock_held_too_long_has_its_holder_interrupted_and_released() -> None:
    lock = WatchedLock("state")
    caught = threading.Event()

    def holder() -> None:
        try:
            with lock:
                while True:  # a handler stuck in Python code, holding the state
                    time.sleep(0.01)
        except WatchdogInterrupt:
            caught.set()

    worker = threading.Thread(target=holder, daemon=True)
    worker.start()
    assert until(lambda: lock.holder is not None)
    dog = watchdog(InflightCalls(), [lock])
    dog.start()
    try:
        assert caught.wait(5) and until(lambda: lock.holder is None)
        assert lock.acquire(timeout=1)
        lock.release()
        assert dog.interrupts == 1
    finally:
        dog.stop()


@pytest.fixture
def servicer(tmp_path: Path) -> Iterator[ExperimentServicer]:
    registry = RunRegistry(tmp_path / "logs", tmp_path)
    registry.runs["r"] = Run.create(tmp_path / "logs" / "r", {"run_id": "r", "created": 0, "splits": {"train": 4}})
    registry.current_id = "r"
    yield ExperimentServicer(registry, ControlServer(tmp_path, registry, hp_sync=True, heartbeat_timeout=1.0),
                             lock_timeout=0.2)
    registry.close()


def serve(servicer: object, calls: InflightCalls) -> tuple[grpc.Server, int]:
    server = grpc.server(ThreadPoolExecutor(8), interceptors=[calls])
    pb_grpc.add_ExperimentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_a_handler_that_cannot_get_the_state_answers_resource_exhausted(servicer: ExperimentServicer) -> None:
    server, port = serve(servicer, InflightCalls())
    run = servicer.registry.current()
    assert run is not None
    stub = pb_grpc.ExperimentServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    try:
        assert stub.ExperimentCommand(pb.TrainerCommand(get_hyper_parameters=True), timeout=5).success
        taken = threading.Event()
        release = threading.Event()

        def hog() -> None:
            with run.lock:
                taken.set()
                release.wait(10)

        threading.Thread(target=hog, daemon=True).start()
        assert taken.wait(5)
        with pytest.raises(grpc.RpcError) as exc:  # a hang would end in DEADLINE_EXCEEDED instead
            stub.ExperimentCommand(pb.TrainerCommand(get_hyper_parameters=True), timeout=5)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in (exc.value.details() or "")
        release.set()
    finally:
        server.stop(0)


class Stuck(pb_grpc.ExperimentServiceServicer):
    def __init__(self) -> None:
        self.release = threading.Event()

    def GetDataSplits(self, request: object, context: grpc.ServicerContext) -> pb.DataSplitsResponse:
        self.release.wait(20)
        return pb.DataSplitsResponse(success=True)


@pytest.mark.parametrize("exit_on_stuck", [False, True])
def test_stuck_rpcs_restart_the_server_or_exit_after_the_threshold(exit_on_stuck: bool) -> None:
    calls = InflightCalls()
    stuck = Stuck()
    server, port = serve(stuck, calls)
    restarted, exited = threading.Event(), []
    stream = io.StringIO()
    configure_logging("INFO", log_to_file=False, log_dir=None, stream=stream)
    dog = watchdog(calls, [], restart=restarted.set, exit_process=exited.append, exit_on_stuck=exit_on_stuck,
                   details_limit=2, restart_threshold=3)
    stub = pb_grpc.ExperimentServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    futures = [stub.GetDataSplits.future(pb.Empty(), timeout=20) for _ in range(3)]
    try:
        # all three older than the dog's stuck_seconds before it starts: under load they begin far apart
        assert until(lambda: len(calls.stuck(time.monotonic(), dog.stuck_seconds)) == 3)
        dog.start()
        if exit_on_stuck:
            assert until(lambda: exited == [1]) and not restarted.is_set()
        else:
            assert restarted.wait(5) and exited == []
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        polls = [e for e in lines if e["event"] == "stuck RPCs"]
        assert polls and all(e["level"] == "WATCHDOG" for e in polls)
        assert [e["unhealthy_polls"] for e in polls[:3]] == [1, 2, 3]
        assert all(e["count"] == 3 and len(e["rpcs"]) == 2 for e in polls)  # at most the details limit
    finally:
        dog.stop()
        stuck.release.set()
        for f in futures:
            f.result()
        server.stop(0)
        reset_logging()


def test_streams_waiting_for_news_are_not_stuck(servicer: ExperimentServicer) -> None:
    calls = InflightCalls()
    server, port = serve(servicer, calls)
    stub = pb_grpc.ExperimentServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    stream = stub.StreamStatus(pb.Empty(), timeout=10)
    try:
        assert next(stream).experiment_name  # the first status, then nothing new to say
        assert until(lambda: len(calls.stuck(time.monotonic(), 10)) == 0 and calls._calls)
        time.sleep(1.2)  # the stream is idle on purpose: no new step for longer than "stuck"
        assert calls.stuck(time.monotonic(), 1.0) == []
    finally:
        stream.cancel()
        servicer.stopping.set()
        server.stop(0)
