"""A forwarding node's frames waiting for the home: in order, bounded in bytes, each numbered.

Frames leave only when the home confirms them (`confirm`), so a failed call sends the same frames
again. Past the bound a record is refused (its drain leaves it in the ring and tries again: the ring
holds it, and a full ring makes the trainer drop and count new records, as for a full disk); a heartbeat
is dropped and counted; a hello, register or gone always enters (one or two per rank).
"""

from __future__ import annotations

import threading
from collections import deque

from weightslabd.proto import node_forwarding_pb2 as pb

FRAME_OVERHEAD = 32  # bytes counted per frame besides its payload


class FrameBuffer:
    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self._frames: deque[pb.Frame] = deque()
        self._sizes: deque[int] = deque()
        self.bytes = 0
        self._seq = 0
        self._cond = threading.Condition()
        self.refused_records = 0  # records left in their ring because the buffer was full (retried)
        self.dropped_heartbeats = 0
        self.confirmed = 0  # frames the home applied
        self.confirmed_bytes = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)

    def _put(self, frame: pb.Frame, size: int, *, bounded: bool) -> bool:
        with self._cond:
            if bounded and self.bytes + size > self.limit and self._frames:
                return False
            self._seq += 1
            frame.seq = self._seq
            self._frames.append(frame)
            self._sizes.append(size)
            self.bytes += size
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

    def put_control(self, ring: str, message: bytes, *, droppable: bool = False) -> bool:
        """A control message (JSON); a droppable one (a heartbeat) is dropped and counted when full."""
        if self._put(pb.Frame(ring=ring, control=message), len(message) + FRAME_OVERHEAD, bounded=droppable):
            return True
        with self._cond:
            self.dropped_heartbeats += 1
        return False

    def wait(self, timeout: float) -> bool:
        """Whether a frame waits, after at most `timeout` s."""
        with self._cond:
            if not self._frames:
                self._cond.wait(timeout)
            return bool(self._frames)

    def head(self, max_bytes: int) -> list[pb.Frame]:
        """The oldest frames, up to `max_bytes` (at least one), left in place until confirmed."""
        out: list[pb.Frame] = []
        total = 0
        with self._cond:
            for frame, size in zip(self._frames, self._sizes, strict=True):
                if out and total + size > max_bytes:
                    break
                out.append(frame)
                total += size
        return out

    def confirm(self, seq: int) -> int:
        """Drop the frames up to `seq` (the home applied them); how many."""
        n = 0
        with self._cond:
            while self._frames and self._frames[0].seq <= seq:
                self._frames.popleft()
                size = self._sizes.popleft()
                self.bytes -= size
                self.confirmed_bytes += size
                n += 1
            self.confirmed += n
        return n

    def drop_ring(self, ring: str) -> int:
        """Drop every frame of `ring` (the home cannot take them: it has no hello for it); how many."""
        with self._cond:
            keep = [(f, s) for f, s in zip(self._frames, self._sizes, strict=True) if f.ring != ring]
            n = len(self._frames) - len(keep)
            self._frames = deque(f for f, _ in keep)
            self._sizes = deque(s for _, s in keep)
            self.bytes = sum(self._sizes)
        return n
