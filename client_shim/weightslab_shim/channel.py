"""The control channel: a background thread that owns the ZeroMQ DEALER socket.

The training thread never touches the socket: it appends to `outbox` and reads `inbox` at step
boundaries. The thread says hello until welcomed, heartbeats while attached, notices a silent daemon
and says hello again when one is back (ZeroMQ reconnects the ipc path by itself).

The thread sleeps in one poll until a frame arrives, its next hello or heartbeat is due, or `send`
pokes it through a pipe: each wake takes the GIL from the trainer, so it wakes a few times a second,
not every few milliseconds.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from . import wire
from .poke import Poke
from .runtime import private_dir_problem

HELLO_EVERY = 0.2  # seconds between hellos while detached: re-attach well within a second
HEARTBEAT_EVERY = 0.25
# No reply for this long: the daemon is gone. A restarted daemon answers our heartbeats with WHO at
# once, so this only decides how long a busy daemon may take to answer, not how fast we re-attach.
SILENT_AFTER = 3.0
MAX_POLL_MS = 250  # the longest sleep (a stop or an outbox message wakes it at once)
WARN_AFTER = 2.0  # first warning about a missing daemon
REJECTED_RETRY = 5.0
OUTBOX_LIMIT = 10_000


@dataclass
class _LoopState:
    started: float
    next_hello: float = 0.0
    next_beat: float = 0.0
    last_reply: float = 0.0


class ControlChannel:
    def __init__(
        self,
        endpoint: str,
        hello: Callable[[], wire.Message],
        heartbeat: Callable[[], wire.Message],
        on_message: Callable[[wire.Message], None],
        runtime_dir: Path | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.runtime_dir = runtime_dir
        self.refused: str | None = None  # the runtime directory is not private: we never talk there
        self._hello = hello
        self._heartbeat = heartbeat
        self._on_message = on_message
        # Bounded: acks pile up only while detached, and a re-attached daemon re-sends what it needs.
        self.outbox: deque[wire.Message] = deque(maxlen=OUTBOX_LIMIT)
        self.attached = threading.Event()
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._warned = False
        self.rejected: str | None = None
        self._thread = threading.Thread(target=self._run, name="weightslab-control", daemon=True)
        self._pid = os.getpid()
        self._failed = False
        self._poke = Poke()

    def start(self) -> None:
        self._thread.start()

    def send(self, msg: wire.Message) -> None:
        self.outbox.append(msg)
        self._poke()

    def end_of_stream(self, msg: wire.Message, timeout: float) -> bool:
        """Tell the daemon we are done and wait (bounded) until it has drained our ring."""
        if not self.attached.is_set():
            return False
        self.send(msg)
        return self.ended.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._poke()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        if not self._thread.is_alive():  # only the caller could still poke: close
            self._poke.close()

    def _run(self) -> None:
        state = _LoopState(started=time.monotonic())
        if not self._await_private_dir(state):
            return
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to a live daemon; else drop, never block
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.connect(self.endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._poke.fd, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                try:
                    self._iterate(sock, poller, state)
                except Exception as exc:  # noqa: BLE001 - this thread must outlive any one bad moment
                    if not self._failed:
                        self._failed = True
                        sys.stderr.write(f"weightslab: control thread error (continuing): {type(exc).__name__}: "
                                         f"{exc}\n")
                    self._stop.wait(0.05)
        finally:
            sock.close(0)
            ctx.term()

    def _iterate(self, sock: Any, poller: Any, st: _LoopState) -> None:
        now = time.monotonic()
        attached = self.attached.is_set()
        if attached and now - st.last_reply > SILENT_AFTER:
            self.attached.clear()
            attached = False
            st.next_hello = 0.0
        if not attached and now >= st.next_hello:
            if not self._dir_private():
                return
            self._send(sock, self._hello())
            # After a refusal, ask again now and then: the daemon may be upgraded or restarted.
            st.next_hello = now + (REJECTED_RETRY if self.rejected else HELLO_EVERY)
        if not attached and not self._warned and now - st.started > WARN_AFTER:
            self._warn_once()
        if attached and now >= st.next_beat:
            self._send(sock, self._heartbeat())
            st.next_beat = now + HEARTBEAT_EVERY
        self._poke.clear()  # before draining the outbox: a later send pokes again
        while attached and self.outbox:
            self._send(sock, self.outbox.popleft())
        due = min(st.next_hello if not attached else st.next_beat, now + MAX_POLL_MS / 1000)
        if any(s is sock for s, _ in poller.poll(max(0, int((due - time.monotonic()) * 1000)) + 1)):
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if not self.attached.is_set() and not self._dir_private():
                    return
                st.last_reply = time.monotonic()
                self._dispatch(frame)

    def _dispatch(self, frame: bytes) -> None:
        try:
            msg = wire.decode(frame)
        except wire.ProtocolError as exc:
            sys.stderr.write(f"weightslab: ignoring a bad frame from weightslabd: {exc}\n")
            return
        kind = msg["type"]
        if kind == wire.WELCOME:
            self.rejected = None
            self.attached.set()
        elif kind == wire.WHO:  # a restarted daemon does not know us yet
            self.attached.clear()
        elif kind == wire.END_OK:
            self.ended.set()
        elif kind == wire.REJECT:
            reason = str(msg.get("reason", "rejected"))
            if reason != self.rejected:
                sys.stderr.write(f"weightslab: weightslabd refused this trainer: {reason}; "
                                 "training continues and it will ask again\n")
            self.rejected = reason
        self._on_message(msg)

    def _send(self, sock: Any, msg: wire.Message) -> None:
        try:
            sock.send(wire.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            pass  # no daemon: the ring keeps the data, control messages are re-sent by state

    def _dir_private(self) -> bool:
        """Checked before each hello, and before reading anything while detached (never on the
        training thread): a runtime directory that is not ours and private ends this channel."""
        if self.refused is None and self.runtime_dir is not None:
            problem = private_dir_problem(self.runtime_dir)
            if problem:
                self.refused = problem
                self.attached.clear()
                self._stop.set()
                sys.stderr.write(f"weightslab: {problem}; training continues without weightslabd\n")
        return self.refused is None

    def _await_private_dir(self, st: _LoopState) -> bool:
        """Connect only once the runtime directory exists and is private (the daemon creates it)."""
        while not self._stop.is_set():
            if self.runtime_dir is None or os.path.lexists(self.runtime_dir):
                return self._dir_private()
            if not self._warned and time.monotonic() - st.started > WARN_AFTER:
                self._warn_once()
            self._stop.wait(HELLO_EVERY)
        return False

    def _warn_once(self) -> None:
        self._warned = True
        sys.stderr.write(
            f"weightslab: no weightslabd at {self.endpoint}; training continues at full speed and "
            "attaches when one starts\n"
        )
