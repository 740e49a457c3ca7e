"""The forwarding buffer on disk, so that a daemon killed (SIGKILL, OOM) sends at its next start what the
home had not confirmed: frames already taken out of the rings live nowhere else.

A checksummed append-only file (store/framedlog.py) in the daemon's private runtime directory, one entry
per event, its first byte its kind:

    F frame   a frame to send (its seq set)
    H frame   a ring's hello: a frame to send as well when its seq is set; with seq 0 only kept, to answer
              the home's Taken.unknown
    C seq     the home confirmed every frame up to seq (u64)

Entries are plain write()s: the page cache outlives the process, so no fsync (a power cut loses the rings
too). A last entry cut short by a kill is cut off on open, with one log line. When the file is past
COMPACT_MIN and more than twice what is unconfirmed, it is rewritten with only that (a temporary file
renamed over it).
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from google.protobuf.message import DecodeError

from weightslabd.proto import node_forwarding_pb2 as pb
from weightslabd.store.framedlog import FramedLog

log = structlog.get_logger("weightslabd.nodes.spool")
FILE = "forward-spool.wlf"
COMPACT_MIN = 4 << 20
FRAME, HELLO, CONFIRM = b"F", b"H", b"C"
_SEQ = struct.Struct("<Q")


@dataclass
class Held:
    """What a spool holds: the unconfirmed frames in order, each ring's newest hello, the last seq used."""

    frames: list[tuple[pb.Frame, bool]] = field(default_factory=list)  # (frame, whether it is its ring's hello)
    hellos: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    seq: int = 0
    confirmed: int = 0


def frame_entry(frame: pb.Frame, hello: bool) -> bytes:
    return (HELLO if hello else FRAME) + frame.SerializeToString()


def confirm_entry(seq: int) -> bytes:
    return CONFIRM + _SEQ.pack(seq)


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._log = FramedLog(path)
        self.torn_bytes = self._log.torn_bytes
        if self.torn_bytes:
            log.warning("forwarding spool: a last entry cut short (the daemon was killed mid-write) skipped",
                        path=str(path), bytes=self.torn_bytes)

    @property
    def size(self) -> int:
        return self._log.size

    def load(self) -> Held:
        held = Held()
        frames: list[tuple[pb.Frame, bool]] = []
        bad = 0
        for _, entry in self._log.frames():
            kind, body = entry[:1], entry[1:]
            if kind == CONFIRM and len(body) == _SEQ.size:
                held.confirmed = max(held.confirmed, _SEQ.unpack(body)[0])
                continue
            if kind not in (FRAME, HELLO):
                bad += 1
                continue
            frame = pb.Frame()
            try:
                frame.ParseFromString(body)
            except DecodeError:
                bad += 1
                continue
            if kind == HELLO:
                held.hellos[frame.ring] = frame.control
                held.hellos.move_to_end(frame.ring)
            if frame.seq:
                frames.append((frame, kind == HELLO))
                held.seq = max(held.seq, frame.seq)
        if bad:
            log.error("forwarding spool: unreadable entries skipped", path=str(self.path), entries=bad)
        held.seq = max(held.seq, held.confirmed)
        held.frames = [(f, h) for f, h in frames if f.seq > held.confirmed]
        return held

    def append(self, entry: bytes) -> None:
        self._log.append(entry)

    def rewrite(self, entries: Iterable[bytes]) -> None:
        """The file replaced by one of `entries` only (a temporary file renamed over it)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        new = FramedLog(tmp)
        try:
            for entry in entries:
                new.append(entry)
            known = (new.size, new.last_frame)
        except OSError:
            new.close()
            tmp.unlink(missing_ok=True)
            raise
        new.close()
        os.replace(tmp, self.path)
        self._log.close()
        self._log = FramedLog(self.path, known=known)

    def close(self) -> None:
        self._log.close()
