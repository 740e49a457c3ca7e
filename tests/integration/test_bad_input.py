"""Bad input on the IPC channels: rejected with an error naming the sender; everyone else carries on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zmq

from weightslab_shim import records, wire
from weightslab_shim.ring import RecordType, RingWriter
from weightslab_shim.runtime import control_endpoint, ring_prefix

from .harness import Daemon, Trainer, history, wait_for


@pytest.fixture
def dealer(env: dict[str, str]):  # type: ignore[no-untyped-def]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(control_endpoint(Path(env["WEIGHTSLAB_RUNTIME_DIR"])))
    yield sock
    sock.close(0)
    ctx.term()


def rejections(daemon: Daemon) -> list[dict[str, object]]:
    return [e for e in daemon.log_events() if e.get("event") == "control message rejected"]


@pytest.mark.parametrize(("frame", "says"), [
    (b"garbage", "not a weightslab control frame"),
    (wire.encode({"type": "hello"}, version=99), "protocol version 99 is not supported"),
    (b"WLC\x01{not json", "malformed JSON body"),
    (b"WLC\x01[1, 2]", "not an object with a string 'type'"),
    (wire.encode({"type": "hello", "protocol": 7, "run_id": "r", "pid": 1, "ring": {"name": "x"}}),
     "protocol 7 is not supported"),
    (wire.encode({"type": "hello", "protocol": wire.PROTOCOL_VERSION, "run_id": "r-20240101-000000-abcdef",
                  "pid": 1, "ring": {"name": "wl.nope"}}), "is not a ring name of this runtime directory"),
    (wire.encode({"type": "hello", "protocol": wire.PROTOCOL_VERSION}), "missing field 'run_id'"),
    (wire.encode({"type": "warp"}), "unknown message type"),
])
def test_malformed_control_frames_are_rejected_and_named(daemon: Daemon, dealer: zmq.Socket, frame: bytes,
                                                         says: str, env: dict[str, str], tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "200", "--step-sleep", "0.002")
    dealer.send(frame)
    reply = wire.decode(dealer.recv())
    assert reply["type"] == wire.REJECT and says in str(reply["reason"])
    event = wait_for(lambda: next((e for e in rejections(daemon) if says in str(e.get("error"))), None), 5,
                     "the rejection to be logged")
    assert str(event["sender"]).startswith("peer ")  # names the sender
    assert trainer.wait()["steps"] == 200
    assert [p.model_age for p in history(daemon.stub()) if p.metric_name == "loss"] == list(range(200))


def test_a_corrupt_ring_record_is_skipped_and_the_rest_is_read(daemon: Daemon, dealer: zmq.Socket,
                                                               env: dict[str, str]) -> None:
    run_id = "corrupt-ring-test-20240101-000000-abcdef"
    ring = RingWriter(ring_prefix(Path(env["WEIGHTSLAB_RUNTIME_DIR"])), 1 << 20, run_id)
    try:
        payload = records.encode([("scalar\x1fm\x1f0", np.asarray(1.5))])
        positions = []
        for step in range(3):
            positions.append(ring._write)
            assert ring.write(RecordType.STEP, step, payload)
        ring._seg.data[positions[1] + 30] ^= 0xFF  # one flipped payload byte in the middle record
        hello = {"type": wire.HELLO, "protocol": wire.PROTOCOL_VERSION, "pid": os.getpid(), "run_id": run_id,
                 "run_name": "corrupt", "script_dir": str(Path(env["WEIGHTSLAB_ROOT_LOG_DIR"])), "splits": {},
                 "hparams": {}, "ring": {"name": ring.name, "capacity": ring.capacity}}
        dealer.send(wire.encode(hello))
        assert wire.decode(dealer.recv())["type"] == wire.WELCOME
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) == 2, 5, "the two good records")
        assert [p.model_age for p in history(stub)] == [0, 2]
        event = next(e for e in daemon.log_events() if e.get("event") == "corrupt ring record skipped")
        assert event["sender"] == f"pid {os.getpid()} run {run_id}" and event["reason"] == "checksum mismatch"
        assert ring.write(RecordType.STEP, 3, payload)  # the ring keeps working after the skip
        wait_for(lambda: len(history(stub)) == 3, 5, "a record after the corrupt one")
    finally:
        ring.close(unlink_segment=True)


def test_a_hello_the_daemon_cannot_store_is_refused_and_others_carry_on(daemon: Daemon, dealer: zmq.Socket,
                                                                        env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    run_id = "unstorable-20240101-000000-abcdef"
    ring = RingWriter(ring_prefix(Path(env["WEIGHTSLAB_RUNTIME_DIR"])), 1 << 20, run_id)
    try:
        env_root = Path(env["WEIGHTSLAB_ROOT_LOG_DIR"])
        env_root.mkdir(parents=True, exist_ok=True)
        (env_root / run_id).write_text("")  # a file where the run folder must go
        hello = {"type": wire.HELLO, "protocol": wire.PROTOCOL_VERSION, "pid": os.getpid(), "run_id": run_id,
                 "run_name": "x", "script_dir": str(blocker), "splits": {}, "hparams": {},
                 "ring": {"name": ring.name, "capacity": ring.capacity}}
        dealer.send(wire.encode(hello))
        reply = wire.decode(dealer.recv())
        assert reply["type"] == wire.REJECT and "could not handle hello" in str(reply["reason"])
    finally:
        ring.close(unlink_segment=True)
    assert Trainer(env, tmp_path, "--steps", "30").wait()["steps"] == 30
    assert [p.model_age for p in history(daemon.stub()) if p.metric_name == "loss"] == list(range(30))
