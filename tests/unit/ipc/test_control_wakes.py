"""The daemon's control thread sleeps until a frame arrives, a command is queued for a trainer (a poke
through a pipe), or a liveness check is due: an idle daemon does not wake every few milliseconds, and
a command still leaves at once. A real ROUTER socket and a real DEALER as the trainer."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from waiting import wait_for

from weightslab_shim import wire
from weightslabd.ipc import control
from weightslabd.ipc.control import Attachment, ControlServer
from weightslabd.store.runs import RunRegistry


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlServer]:
    monkeypatch.setattr(control, "TICK", 60.0)  # no liveness check within the test
    monkeypatch.setattr(control, "IDLE_POLL_MS", 60_000)
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o700)
    registry = RunRegistry(tmp_path / "logs", tmp_path / "state")
    srv = ControlServer(runtime, registry, hp_sync=True, heartbeat_timeout=30.0)
    srv.start()
    yield srv
    srv.attachments.clear()  # the fake attachment has no ring to drain
    srv.stop()
    registry.close()
    assert not srv.alive()  # stop pokes the sleeping thread (else it sleeps past stop's 5 s join)


def test_an_idle_control_thread_sleeps_and_a_command_leaves_at_once(server: ControlServer, tmp_path: Path) -> None:
    started = time.monotonic()
    wait_for(lambda: time.monotonic() - started > 0.5, 2.0, "a 0.5 s window")
    assert server.wakes <= 1  # no trainer, nothing sent: asleep (it woke every 5 ms before)

    run = server.registry.attach({"run_id": "wakes-20261206-000000-abcdef", "splits": {"train": 4}})
    ctx = zmq.Context()
    trainer = ctx.socket(zmq.DEALER)
    trainer.setsockopt(zmq.ROUTING_ID, b"trainer-1")
    trainer.setsockopt(zmq.LINGER, 0)
    trainer.connect(server.endpoint)
    try:
        trainer.send(b"not a frame")  # the ROUTER now knows the route (and rejects the frame)
        assert trainer.poll(5000), "no reply to the bad frame"
        assert wire.decode(trainer.recv())["type"] == wire.REJECT
        fake: Any = None
        server.attachments[b"trainer-1"] = Attachment(b"trainer-1", run, os.getpid(), fake, time.monotonic())
        sent = time.monotonic()
        assert server.send_command(run, "noop", {}) is not None
        assert trainer.poll(5000), "the command did not leave"  # without the poke: after the 60 s sleep
        msg = wire.decode(trainer.recv())
        assert (msg["type"], msg["op"]) == (wire.COMMAND, "noop") and time.monotonic() - sent < 5
    finally:
        trainer.close(0)
        ctx.term()
