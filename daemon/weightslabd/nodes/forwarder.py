"""A forwarding node: the records of its ranks of a job whose home (rank 0's node) is elsewhere go there.

The node's control server attaches such a rank as any other (its ring, heartbeats, welcome), but its
drain feeds a `RingSink`: each record becomes a frame of the `FrameBuffer`, after the rank's hello, in
the order the ring has them; register, a heartbeat a second and the rank's leaving become frames too.
One thread sends the buffer's head to the home in client-streaming `Forward` calls over mutual TLS and
drops what the home confirms. A failed call is retried with backoff (0.1 s doubling to 5 s), the same
frames again: the home drops records it holds already (their ring positions). The buffer's spool, in the
runtime directory, keeps what the home has not confirmed across a kill of this daemon: its next start
sends that first. Commands never travel
this way: rank 0, on the home's node, hands every edit to every rank through the job's process group.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import structlog

from weightslab_shim import wire
from weightslab_shim.runtime import ring_prefix
from weightslabd.nodes.buffer import FrameBuffer
from weightslabd.proto import node_forwarding_pb2 as pb
from weightslabd.proto import node_forwarding_pb2_grpc as pb_grpc

log = structlog.get_logger("weightslabd.nodes.forwarder")
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
LINGER = 0.02  # s a frame waits for others to go in the same call
CALL_BYTES = 8 << 20  # the most one call carries
MESSAGE_BYTES = 1 << 20  # frames per streamed message (a bigger record goes alone)
CALL_TIMEOUT = 30.0
HEARTBEAT_EVERY = 1.0  # a rank's heartbeats forwarded at most this often


def node_name(runtime_dir: Any) -> str:
    """This daemon among the home's nodes: host and runtime directory (its rings' prefix)."""
    return f"{socket.gethostname()}/{ring_prefix(runtime_dir)}"


class RingSink:
    """A forwarded rank's RingDrain writes here: frames for the home. A full buffer refuses the record
    with OSError, as a full disk would: the drain leaves it in the ring and offers it again."""

    def __init__(self, buffer: FrameBuffer, ring: str) -> None:
        self.buffer, self.ring = buffer, ring
        self.dropped = 0  # set by the drain: what the trainer dropped (its ring was full)

    def apply_record(self, rtype: int, step: int, payload: memoryview, position: int) -> bool:
        if not self.buffer.put_record(self.ring, rtype, step, position, payload):
            raise OSError(errno.ENOBUFS, "forwarding buffer full (the home is away); records wait in the ring")
        return True


class Forwarder:
    def __init__(self, home: str, credentials: grpc.ChannelCredentials, node: str, limit_bytes: int,
                 max_message_bytes: int = 256 << 20, spool: Path | None = None) -> None:
        """`spool`: the file that keeps the frames the home has not confirmed across a kill (none: memory only)."""
        self.home = home
        self.node = node
        self.buffer = FrameBuffer(limit_bytes, spool)
        if self.buffer.reloaded:
            log.info("forwarded frames of before a restart, not confirmed by the home, sent first", home=home,
                     frames=self.buffer.reloaded, bytes=self.buffer.bytes)
        self._beats: dict[str, float] = {}
        self._options = [("grpc.max_send_message_length", max_message_bytes),
                         ("grpc.max_receive_message_length", max_message_bytes)]
        self._channel = grpc.secure_channel(home, credentials, options=self._options)
        self._stub = pb_grpc.NodeForwardingStub(self._channel)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="forwarder", daemon=True)
        self.reachable = True  # as far as the last call tells
        self._waiting: set[str] = set()  # rings whose hello the home refused (their job unknown there)
        self.calls = self.failures = 0
        self.sent_bytes = 0  # what the calls carried (protobuf bytes, resent ones included)

    # -- the control server's side (ipc/control.py: Forwarding) --------------------------------------------

    def forwards(self, hello: wire.Message) -> bool:
        """A job whose ranks here do not include rank 0 (the node's rank, torchrun's GROUP_RANK, > 0)."""
        node = hello.get("node_rank", 0)
        return bool(hello.get("job")) and isinstance(node, int) and not isinstance(node, bool) and node > 0

    def attached(self, ring: str, hello: wire.Message) -> RingSink:
        self.buffer.put_control(ring, _json(hello), hello=True)
        return RingSink(self.buffer, ring)

    def control(self, ring: str, msg: wire.Message) -> None:
        if msg.get("type") == wire.HEARTBEAT:
            now = time.monotonic()
            if now - self._beats.get(ring, 0.0) < HEARTBEAT_EVERY:
                return
            self._beats[ring] = now
            self.buffer.put_control(ring, _json(msg), droppable=True)
        else:
            self.buffer.put_control(ring, _json(msg))

    def gone(self, ring: str, status: str) -> None:
        self._beats.pop(ring, None)
        self.buffer.put_control(ring, _json({"type": "gone", "status": status}))

    # -- sending -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, flush_seconds: float = 3.0) -> None:
        """Send what is held for up to `flush_seconds`, then stop; what is left waits in the spool for the next
        start (without one, it is lost); logged either way."""
        deadline = time.monotonic() + flush_seconds
        while len(self.buffer) and self.reachable and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._thread.join(timeout=CALL_TIMEOUT)
        if len(self.buffer) and self.buffer.spool is not None:
            log.warning("forwarded frames kept for the next start: the home did not take them", home=self.home,
                        frames=len(self.buffer), bytes=self.buffer.bytes, spool=str(self.buffer.spool.path))
        elif len(self.buffer):
            log.error("forwarded frames lost at shutdown: the home did not take them", home=self.home,
                      frames=len(self.buffer), bytes=self.buffer.bytes)
        self.buffer.close()
        self._channel.close()

    def _loop(self) -> None:
        backoff = BACKOFF_MIN
        prefix: list[pb.Frame] = []  # hellos the home asked for, sent before the head
        while not self._stop.is_set():
            if not prefix and not self.buffer.wait(0.5):
                continue
            self._stop.wait(LINGER)
            frames = prefix + self.buffer.head(CALL_BYTES)
            progress, prefix = self._call(frames)
            if progress:
                backoff = BACKOFF_MIN
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _call(self, frames: list[pb.Frame]) -> tuple[bool, list[pb.Frame]]:
        """One Forward call; (whether it moved anything, the hellos to send first next time)."""
        self.calls += 1
        try:
            taken = self._stub.Forward(self._messages(frames), timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            self.failures += 1
            if self.reachable:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                log.warning("home unreachable; holding records and retrying", home=self.home,
                            error=f"{code.name if code else 'error'}: {_details(exc)}", held_frames=len(self.buffer))
            self.reachable = False
            return False, [f for f in frames if f.seq == 0]
        if not self.reachable:
            log.info("home reachable again", home=self.home, held_frames=len(self.buffer))
        self.reachable = True
        moved = self.buffer.confirm(taken.seq)
        again: list[pb.Frame] = []
        for ring in taken.unknown:
            hello = self.buffer.hello_of(ring)
            if hello is None:  # the home will never place these frames
                log.error("forwarded frames dropped: the home does not know their ring", ring=ring,
                          frames=self.buffer.drop_ring(ring))
                moved += 1
            else:
                again.append(pb.Frame(seq=0, ring=ring, control=hello))
        sent_hellos = {f.ring for f in frames if f.seq == 0}
        waiting = {f.ring for f in again} & sent_hellos
        if waiting - self._waiting:  # its hello was sent and refused: the job's run is not at the home yet
            log.warning("the home does not know the job yet (rank 0 has not attached there); retrying",
                        home=self.home, rings=sorted(waiting - self._waiting))
        self._waiting = waiting
        return moved > 0 or bool(set(taken.unknown) - sent_hellos), again

    def _messages(self, frames: list[pb.Frame]) -> Iterator[pb.Frames]:
        batch: list[pb.Frame] = []
        size = 0
        for frame in frames:
            n = frame.ByteSize()
            if batch and size + n > MESSAGE_BYTES:
                yield self._message(batch)
                batch, size = [], 0
            batch.append(frame)
            size += n
        if batch:
            yield self._message(batch)

    def _message(self, frames: list[pb.Frame]) -> pb.Frames:
        msg = pb.Frames(node=self.node, frames=frames)
        self.sent_bytes += msg.ByteSize()
        return msg


def _json(msg: Any) -> bytes:
    return json.dumps(msg, separators=(",", ":"), default=str).encode()


def _details(exc: grpc.RpcError) -> str:
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return " ".join(str(details or "").split())[:200]
