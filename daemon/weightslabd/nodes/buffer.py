"""A forwarding node's frames waiting for the home: in order, bounded in bytes, each numbered.

Frames leave only when the home confirms them (`confirm`), so a failed call sends the same frames
again. Past the bound a record is refused (its drain leaves it in the ring and tries again: the ring
holds it, and a full ring makes the trainer drop and count new records, as for a full disk); a heartbeat
is dropped and counted; a hello, register or gone always enters (one or two per rank). Each ring's
newest hello is kept, to send again when the home asks for it (Taken.unknown).

With a spool (nodes/spool.py) every frame taken and every confirmation is written there too, and a
new buffer on the same file starts with the frames the home had not confirmed: a killed daemon loses
none of them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from pathlib import Path

import structlog

from weightslabd.nodes.spool import COMPACT_MIN, Spool, confirm_entry, frame_entry
from weightslabd.proto import node_forwarding_pb2 as pb

log = structlog.get_logger("weightslabd.nodes.buffer")
FRAME_OVERHEAD = 32  # bytes counted per frame besides its payload
HELLOS_KEPT = 1024


class FrameBuffer:
    def __init__(self, limit_bytes: int, spool: Path | None = None) -> None:
        self.limit = limit_bytes
        self._held: deque[tuple[pb.Frame, int, bool]] = deque()  # (frame, its size, whether a hello)
        self.hellos: OrderedDict[str, bytes] = OrderedDict()  # ring -> its newest hello
        self.bytes = 0
        self._seq = 0
        self._confirmed_seq = 0
        self._cond = threading.Condition()
        self.refused_records = 0  # records left in their ring because the buffer was full (retried)
        self.dropped_heartbeats = 0
        self.confirmed = 0  # frames the home applied
        self.confirmed_bytes = 0
        self.spool: Spool | None = None
        self.reloaded = 0  # frames of before a restart (the spool's), sent first
        if spool is not None:
            try:
                self.spool = Spool(spool)
                held = self.spool.load()
            except OSError as exc:  # forwarding goes on, as before spools: a kill loses what is held
                log.error("forwarding spool unusable; frames held in memory only", path=str(spool),
                          error=exc.strerror or str(exc))
                self.spool = None
                return
            self.hellos = held.hellos
            while len(self.hellos) > HELLOS_KEPT:
                self.hellos.popitem(last=False)
            self._seq, self._confirmed_seq = held.seq, held.confirmed
            for frame, hello in held.frames:
                self._held.append((frame, _size(frame), hello))
                self.bytes += _size(frame)
            self.reloaded = len(held.frames)
            self._compact_if_large()

    def __len__(self) -> int:
        with self._cond:
            return len(self._held)

    def _put(self, frame: pb.Frame, size: int, *, bounded: bool, hello: bool = False, spooled: bool = True) -> bool:
        with self._cond:
            if bounded and self.bytes + size > self.limit and self._held:
                return False
            frame.seq = self._seq + 1
            if self.spool is not None and spooled:  # a refusal (a full disk) raises OSError: a record stays in its ring
                self.spool.append(frame_entry(frame, hello))
            self._seq += 1
            self._held.append((frame, size, hello))
            self.bytes += size
            if hello:
                self.hellos[frame.ring] = frame.control
                self.hellos.move_to_end(frame.ring)
                while len(self.hellos) > HELLOS_KEPT:
                    self.hellos.popitem(last=False)
            self._cond.notify_all()
            return True

    def put_record(self, ring: str, rtype: int, step: int, position: int, payload: bytes | memoryview) -> bool:
        """False when full: the caller keeps the record and offers it again later."""
        data = bytes(payload)
        frame = pb.Frame(ring=ring, record=pb.Record(type=rtype, step=step, position=position, payload=data))
        if self._put(frame, len(data) + FRAME_OVERHEAD, bounded=True):
            return True
        with self._cond:
            self.refused_records += 1
        return False

    def put_control(self, ring: str, message: bytes, *, droppable: bool = False, hello: bool = False) -> bool:
        """A control message (JSON); a droppable one (a heartbeat) is dropped and counted when full. A hello is
        kept as its ring's, to send again on demand (`hello_of`)."""
        frame = pb.Frame(ring=ring, control=message)
        try:
            if self._put(frame, len(message) + FRAME_OVERHEAD, bounded=droppable, hello=hello):
                return True
        except OSError as exc:  # kept in memory only: lost if this daemon is killed before the home takes it
            log.error("forwarding spool refused a control message; kept in memory", error=exc.strerror or str(exc))
            return self._put(frame, len(message) + FRAME_OVERHEAD, bounded=droppable, hello=hello, spooled=False)
        with self._cond:
            self.dropped_heartbeats += 1
        return False

    def hello_of(self, ring: str) -> bytes | None:
        with self._cond:
            return self.hellos.get(ring)

    def wait(self, timeout: float) -> bool:
        """Whether a frame waits, after at most `timeout` s."""
        with self._cond:
            if not self._held:
                self._cond.wait(timeout)
            return bool(self._held)

    def head(self, max_bytes: int) -> list[pb.Frame]:
        """The oldest frames, up to `max_bytes` (at least one), left in place until confirmed."""
        out: list[pb.Frame] = []
        total = 0
        with self._cond:
            for frame, size, _ in self._held:
                if out and total + size > max_bytes:
                    break
                out.append(frame)
                total += size
        return out

    def confirm(self, seq: int) -> int:
        """Drop the frames up to `seq` (the home applied them); how many."""
        n = 0
        with self._cond:
            while self._held and self._held[0][0].seq <= seq:
                _, size, _ = self._held.popleft()
                self.bytes -= size
                self.confirmed_bytes += size
                n += 1
            self.confirmed += n
            if n:
                self._confirmed_seq = max(self._confirmed_seq, seq)
                self._spool_write(confirm_entry(seq))
                self._compact_if_large()
        return n

    def drop_ring(self, ring: str) -> int:
        """Drop every frame of `ring` (the home cannot take them: it has no hello for it); how many."""
        with self._cond:
            keep = deque(h for h in self._held if h[0].ring != ring)
            n = len(self._held) - len(keep)
            self._held = keep
            self.bytes = sum(size for _, size, _ in keep)
            self._compact()
        return n

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()

    # -- the spool ------------------------------------------------------------------------------------------

    def _spool_write(self, entry: bytes) -> None:
        if self.spool is None:
            return
        try:
            self.spool.append(entry)
        except OSError as exc:  # a confirmation not written: those frames are sent again after a restart
            log.error("forwarding spool not written", error=exc.strerror or str(exc))

    def _compact_if_large(self) -> None:
        if self.spool is not None and self.spool.size > max(COMPACT_MIN, 2 * self.bytes):
            self._compact()

    def _compact(self) -> None:
        """The spool rewritten with what is held only (under the lock)."""
        if self.spool is None:
            return
        try:
            self.spool.rewrite(self._entries())
        except OSError as exc:  # the longer file still holds everything
            log.error("forwarding spool not compacted", error=exc.strerror or str(exc))

    def _entries(self) -> Iterator[bytes]:
        yield confirm_entry(self._confirmed_seq)
        pending = {f.ring for f, _, hello in self._held if hello}
        for ring, hello in self.hellos.items():  # hellos already taken: kept for Taken.unknown
            if ring not in pending:
                yield frame_entry(pb.Frame(seq=0, ring=ring, control=hello), True)
        for frame, _, is_hello in self._held:
            yield frame_entry(frame, is_hello)


def _size(frame: pb.Frame) -> int:
    body = frame.record.payload if frame.HasField("record") else frame.control
    return len(body) + FRAME_OVERHEAD
