"""The shim's background threads wake rarely: each wake takes the GIL from the training thread.

The publisher is woken once WAKE_RECORDS records wait (or a record has waited WAKE_AFTER), at the next
loss the trainer records (right before backward), or at once at twice that or when inputs held for
previews add up; it writes a lone record within IDLE_WAIT without being woken; the
control thread sleeps until a frame, a due hello or heartbeat, or a message to send. Real rings, real
ZeroMQ sockets."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from waiting import wait_for

from weightslab_shim import channel as channel_module
from weightslab_shim import publisher as publisher_module
from weightslab_shim import wire
from weightslab_shim.channel import ControlChannel
from weightslab_shim.publisher import (
    IDLE_WAIT,
    NUDGE_SETTLE,
    WAKE_AFTER,
    WAKE_HELD,
    WAKE_RECORDS,
    Publisher,
    yield_on_wake,
)
from weightslab_shim.ring import RecordType, RingReader, RingWriter, unlink
from weightslab_shim.session import Session
from weightslab_shim.tensors import Deferred, Staged

CALLER_POLICY = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None  # before any publisher


class CountingEvent(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


@pytest.fixture
def ring() -> Iterator[tuple[RingWriter, RingReader]]:
    writer = RingWriter(f"wl-test-wakes-{os.getpid()}-", 1 << 20, "wakes")
    reader = RingReader(writer.name)
    yield writer, reader
    reader.close()
    writer.close(unlink_segment=False)
    unlink(writer.name)


@pytest.fixture
def publisher(ring: tuple[RingWriter, RingReader]) -> Iterator[tuple[Publisher, CountingEvent]]:
    pub = Publisher(ring[0], lambda rtype, fields: None)
    wakes = CountingEvent()
    pub._wake = wakes
    pub.start()
    yield pub, wakes
    pub.close(2.0)


def step_fields(i: int) -> list[tuple[str, Any]]:
    return [("ids\x1ftrain\x1floss\x1f0", Staged(np.arange(4, dtype=np.int64) + i)),
            ("sig\x1ftrain\x1floss\x1f0", Staged(np.ones(4, dtype=np.float32)))]


def test_a_fast_loop_wakes_the_publisher_once_per_batch_of_records(
        publisher: tuple[Publisher, CountingEvent], ring: tuple[RingWriter, RingReader]) -> None:
    pub, wakes = publisher
    records = 8 * WAKE_RECORDS
    started = time.monotonic()
    for i in range(records):
        pub.submit(RecordType.STEP, i, step_fields(i))
    elapsed = time.monotonic() - started
    # No loss recorded: one wake per 2 x WAKE_RECORDS records, plus at most one per 2 x WAKE_AFTER the
    # loop took (a loaded machine)
    assert wakes.sets <= records // (2 * WAKE_RECORDS) + int(elapsed / (2 * WAKE_AFTER)) + 1
    assert pub.flush(5.0)
    assert ring[1].written == records


def test_a_due_wake_waits_for_the_next_loss(publisher: tuple[Publisher, CountingEvent],
                                            ring: tuple[RingWriter, RingReader]) -> None:
    pub, wakes = publisher
    for i in range(WAKE_RECORDS):
        pub.submit(RecordType.STEP, i, step_fields(i))
    if wakes.sets == 0:  # (a loaded machine may have taken 2 x WAKE_AFTER over these: then it woke already)
        assert pub.due
        pub.nudge()  # what the session does as the trainer records a loss, before backward
        assert wakes.sets == 1 and not pub.due
    pub.nudge()
    assert wakes.sets == 1  # nothing due: no wake
    wait_for(lambda: ring[1].written == WAKE_RECORDS, 5.0, "the records in the ring")


def test_a_lone_record_is_written_without_a_wake(publisher: tuple[Publisher, CountingEvent],
                                                 ring: tuple[RingWriter, RingReader]) -> None:
    pub, wakes = publisher
    pub.submit(RecordType.STEP, 0, step_fields(0))
    wait_for(lambda: ring[1].written == 1, IDLE_WAIT * 8, "the record to reach the ring")
    assert wakes.sets == 0


def test_inputs_held_for_previews_wake_the_publisher_at_once(publisher: tuple[Publisher, CountingEvent],
                                                            ring: tuple[RingWriter, RingReader]) -> None:
    pub, wakes = publisher
    small = Deferred(lambda: np.zeros((1, 4, 4), dtype=np.uint8), 16, held=WAKE_HELD // 2)
    pub.submit(RecordType.PREVIEW, 0, [("x\x1ftrain\x1f0", small)])
    assert wakes.sets == 0  # half the bound: it waits for more
    big = Deferred(lambda: np.zeros((1, 4, 4), dtype=np.uint8), 16, held=WAKE_HELD // 2)
    pub.submit(RecordType.PREVIEW, 1, [("x\x1ftrain\x1f0", big)])
    assert wakes.sets == 1  # the batches the previews keep alive add up to the bound: reduce them now
    wait_for(lambda: ring[1].written == 2, 5.0, "both previews in the ring")


def test_a_preview_record_makes_a_wake_due_at_the_next_loss(publisher: tuple[Publisher, CountingEvent],
                                                           ring: tuple[RingWriter, RingReader]) -> None:
    """Its reduction is the heaviest work of a step: done in the next backward, one step at a time."""
    pub, wakes = publisher
    preview = Deferred(lambda: np.zeros((1, 4, 4), dtype=np.uint8), 16, held=1024)
    pub.submit(RecordType.PREVIEW, 0, [("x\x1ftrain\x1f0", preview)])
    assert wakes.sets == 0 and pub.due
    pub.nudge()
    assert wakes.sets == 1
    wait_for(lambda: ring[1].written == 1, 5.0, "the preview in the ring")


def test_a_nudged_wake_settles_before_it_takes_the_gil(publisher: tuple[Publisher, CountingEvent],
                                                       ring: tuple[RingWriter, RingReader],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Woken as the trainer heads into backward, the thread sleeps NUDGE_SETTLE first; woken otherwise, not."""
    pub, _ = publisher
    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "weightslab-publisher":
            slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    pub.submit(RecordType.STEP, 0, step_fields(0))
    pub.wake()  # a plain wake (flush, pause): no settle
    wait_for(lambda: ring[1].written == 1, 5.0, "the first record in the ring")
    assert NUDGE_SETTLE not in slept
    pub.submit(RecordType.PREVIEW, 1, [("x\x1ftrain\x1f0", Deferred(lambda: np.zeros((1, 4, 4), dtype=np.uint8), 16))])
    pub.nudge()
    wait_for(lambda: ring[1].written == 2, 5.0, "the preview in the ring")
    assert slept.count(NUDGE_SETTLE) == 1


def test_the_publisher_never_preempts_the_thread_that_wakes_it(publisher: tuple[Publisher, CountingEvent]) -> None:
    """The publisher's thread runs under SCHED_BATCH (no wake-up preemption); the threads around it do not.
    Where the OS has no SCHED_BATCH (not Linux), asking for it says so and changes nothing."""
    pub, _ = publisher
    if not hasattr(os, "SCHED_BATCH"):
        assert yield_on_wake() is False
        return
    tid = pub._thread.native_id
    assert tid is not None
    wait_for(lambda: os.sched_getscheduler(tid) == os.SCHED_BATCH, 5.0, "the publisher under SCHED_BATCH")
    assert os.sched_getscheduler(threading.get_native_id()) == CALLER_POLICY  # the caller is left as it was


@pytest.mark.parametrize("short_queue, yield_after, hand_backs", [
    (0, 60.0, 0),  # a backlog, written within YIELD_AFTER: no hand-back
    (0, 0.0, 23),  # a backlog, YIELD_AFTER gone after each record: one after each but the last
    (16, 60.0, 16),  # after each record that leaves at most SHORT_QUEUE (and at least one) behind
])
def test_the_publisher_hands_the_gil_back_per_record_only_when_little_is_left(
        publisher: tuple[Publisher, CountingEvent], ring: tuple[RingWriter, RingReader],
        monkeypatch: pytest.MonkeyPatch, short_queue: int, yield_after: float, hand_backs: int) -> None:
    """What a wake brings is written with a hand-back of the GIL after each record (a trainer waits one
    record at most); a longer backlog, each YIELD_AFTER of writing: on busy CPUs each hand-back can cost a
    whole turn, and one a record never caught up."""
    pub, _ = publisher
    zero_sleeps: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "weightslab-publisher" and seconds == 0:
            zero_sleeps.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(publisher_module, "SHORT_QUEUE", short_queue)
    monkeypatch.setattr(publisher_module, "YIELD_AFTER", yield_after)
    monkeypatch.setattr(time, "sleep", sleep)
    gate = Gate()  # the first record's device copy "runs" until all 24 are queued: one drain writes them all
    first = step_fields(0)
    first[0] = (first[0][0], Staged(np.arange(4, dtype=np.int64), gate))
    pub.submit(RecordType.STEP, 0, first)
    for step in range(1, 24):
        pub.submit(RecordType.STEP, step, step_fields(step))
    pub.wake()
    gate.done = True
    wait_for(lambda: ring[1].written == 24, 5.0, "the backlog in the ring")
    assert len(zero_sleeps) == hand_backs


class Gate:
    """A device copy's event, done when the test says so."""

    done = False

    def query(self) -> bool:
        return self.done


def test_flush_waits_for_every_record_submitted(publisher: tuple[Publisher, CountingEvent],
                                                ring: tuple[RingWriter, RingReader]) -> None:
    pub, _ = publisher
    for i in range(3):
        pub.submit(RecordType.STEP, i, step_fields(i))
    assert pub.flush(5.0)
    assert ring[1].written == 3


# -- the control thread --------------------------------------------------------------------------------


@pytest.fixture
def daemon_socket(tmp_path: Path) -> Iterator[tuple[zmq.Socket[bytes], str, Path]]:
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    endpoint = f"ipc://{runtime}/control.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    yield router, endpoint, runtime
    router.close(0)
    ctx.term()


def drained(router: zmq.Socket[bytes], quiet: float) -> bool:
    """Read what arrives within `quiet` seconds; True if anything did."""
    got = False
    while router.poll(int(quiet * 1000)):
        router.recv_multipart()
        got = True
    return got


def recv(router: zmq.Socket[bytes], timeout: float) -> tuple[bytes, wire.Message]:
    """The next message other than a heartbeat."""
    deadline = time.monotonic() + timeout
    while True:
        assert router.poll(max(1, int((deadline - time.monotonic()) * 1000))), "no message from the shim in time"
        ident, frame = router.recv_multipart()
        msg = wire.decode(frame)
        if msg["type"] != wire.HEARTBEAT:
            return ident, msg


def test_the_control_thread_sleeps_between_heartbeats_and_wakes_for_a_message(
        daemon_socket: tuple[zmq.Socket[bytes], str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    router, endpoint, runtime = daemon_socket
    monkeypatch.setattr(channel_module, "SILENT_AFTER", 60.0)  # this "daemon" answers no heartbeat
    iterations = 0
    channel = ControlChannel(endpoint, lambda: {"type": wire.HELLO}, lambda: {"type": wire.HEARTBEAT},
                             lambda msg: None, runtime_dir=runtime)
    real_iterate = channel._iterate

    def counted(*args: Any) -> None:
        nonlocal iterations
        iterations += 1
        real_iterate(*args)

    channel._iterate = counted  # type: ignore[method-assign]
    channel.start()
    try:
        ident, hello = recv(router, 5.0)
        assert hello["type"] == wire.HELLO
        router.send_multipart([ident, wire.encode({"type": wire.WELCOME})])
        wait_for(channel.attached.is_set, 5.0, "the welcome")
        before, started = iterations, time.monotonic()
        wait_for(lambda: time.monotonic() - started > 0.6, 2.0, "a 0.6 s window")
        window = time.monotonic() - started
        # Heartbeats every HEARTBEAT_EVERY and their replies: a few wakes, not one every few ms.
        assert iterations - before <= 2 * window / channel_module.HEARTBEAT_EVERY + 3
        # With heartbeats and the poll's cap far away, a message still goes out at once (the pipe's poke).
        monkeypatch.setattr(channel_module, "HEARTBEAT_EVERY", 60.0)
        monkeypatch.setattr(channel_module, "MAX_POLL_MS", 60_000)
        wait_for(lambda: not drained(router, 0.3), 5.0, "the last heartbeat before the long sleep")
        channel.send({"type": wire.ACK, "cmd_id": "c1"})
        _, ack = recv(router, 5.0)  # without the poke: after the 60 s sleep
        assert ack == {"type": wire.ACK, "cmd_id": "c1"}
    finally:
        channel.stop()
    assert not channel._thread.is_alive()  # stop pokes the sleeping thread too


def test_the_session_nudges_the_publisher_when_a_loss_is_recorded(tmp_path: Path) -> None:
    session = Session({"WEIGHTSLAB_RUNTIME_DIR": str(tmp_path / "rt"), "WEIGHTSLAB_RING_MB": "1"})
    session.start()
    try:
        assert session.publisher is not None
        wakes = CountingEvent()
        session.publisher._wake = wakes
        for _ in range(WAKE_RECORDS):
            session.begin_step()
            session.add_batch("train", np.arange(4), targets=np.zeros(4))
            session.end_step(training=True)
        if wakes.sets == 0:  # (unless a loaded machine took 2 x WAKE_AFTER over these steps)
            session.add_signal("loss", "train", np.arange(4), np.ones(4))  # the loss, before its backward
            assert wakes.sets == 1
        assert session.flush(5.0)
    finally:
        session.close()
