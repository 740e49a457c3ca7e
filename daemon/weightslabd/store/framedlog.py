"""An append-only file of checksummed frames: the one on-disk mechanism under the edit journal and
the signal store.

    frame: length u32 | crc32 of (length, payload) u32 | payload

The crc covers the length too, so a zero-filled tail (what some file systems leave after a crash)
is not read as empty frames.

A frame cut short by a crash (or a corrupt one) ends the readable part: everything before it is
served, the tail is cut off on open so new frames follow good ones.

Opening scans every frame to find that end, unless the caller names a prefix it already trusts (a
snapshot's: its end and last frame, checked again here): then only the frames after it are scanned.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

FRAME = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
MAX_FRAME = 1 << 30


def _crc(length: bytes, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(length))


def read_frames(path: Path, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, payload) of every good frame from `start`, read-only: for tools and tests that look at a
    live daemon's files (opening a FramedLog would cut a frame the daemon is writing as "torn")."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - a generator holds it
    except FileNotFoundError:
        return
    with f:
        offset = start
        f.seek(start)
        while True:
            head = f.read(FRAME.size)
            if len(head) < FRAME.size:
                return
            length, crc = FRAME.unpack(head)
            if length > MAX_FRAME:
                return
            payload = f.read(length)
            if len(payload) < length or _crc(head[:4], payload) != crc:
                return
            yield offset, payload
            offset += FRAME.size + length


class FramedLog:
    def __init__(self, path: Path, known: tuple[int, tuple[int, int] | None] | None = None,
                 floor: tuple[int, tuple[int, int] | None] | None = None) -> None:
        """`known`: (end, (offset, crc) of the frame ending there) of a prefix not to scan again, if it
        is still this file's (else the whole file is scanned, as without it). `floor`: the same for a
        prefix given up (a trimmed log, log_trim.py): used when `known` is not, and never scanned."""
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.torn_bytes = 0
        self.last_frame: tuple[int, int] | None = None  # (offset, crc) of the last good frame: names a prefix
        self.skipped = 0  # bytes not scanned
        for prefix in (known, floor):
            if prefix is not None and self._holds(*prefix):
                self.skipped, self.last_frame = prefix
                break
        else:
            if floor is not None and floor[1] is not None:
                raise OSError(f"{path}: trimmed to {floor[0]} bytes, but its frame there is gone")
        good = self._scan_end(self.skipped)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        size = os.fstat(self._fd).st_size
        if size > good:
            self.torn_bytes = size - good
            os.ftruncate(self._fd, good)
        os.lseek(self._fd, good, os.SEEK_SET)
        self.size = good

    def _holds(self, end: int, frame: tuple[int, int] | None) -> bool:
        """Whether the file's first `end` bytes end with `frame`, whose payload still checks out."""
        if frame is None or end <= 0:
            return False
        try:
            with open(self.path, "rb") as f:
                f.seek(frame[0])
                head = f.read(FRAME.size)
                if len(head) < FRAME.size:
                    return False
                length, crc = FRAME.unpack(head)
                return (crc == frame[1] and frame[0] + FRAME.size + length == end
                        and _crc(head[:4], f.read(length)) == crc)
        except OSError:
            return False

    def _scan_end(self, start: int = 0) -> int:
        end, last = start, None
        for offset, payload in self._frames(start):
            end, last = offset + FRAME.size + len(payload), (offset, payload)
        if last is not None:
            self.last_frame = (last[0], _crc(_LENGTH.pack(len(last[1])), last[1]))
        return end

    def _frames(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        return read_frames(self.path, start)

    def frames(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """(offset, payload) of every good frame from `start` (a frame's offset, or the end of one), in order."""
        return self._frames(start)

    def ends_frame(self, end: int, frame: tuple[int, int] | None) -> bool:
        """Whether this file's first `end` bytes end with `frame` ((offset, crc); None: end is 0), as when it
        was noted: a cheap check that a prefix someone recorded is still this file's."""
        if frame is None:
            return end == 0
        offset, crc = frame
        if not 0 <= offset <= end - FRAME.size or end > self.size:
            return False
        length, stored = FRAME.unpack(os.pread(self._fd, FRAME.size, offset))
        return stored == crc and offset + FRAME.size + length == end

    def append(self, payload: bytes | bytearray | memoryview, *, sync: bool = False) -> int:
        """Write one frame; with sync it is on disk (fsync) before this returns. Returns its offset.

        On failure (a full disk) the file is cut back to where it was, so no partial frame stays."""
        return self.append_many((payload,), sync=sync)[0]

    def append_many(self, payloads: Iterable[bytes | bytearray | memoryview], *, sync: bool = False) -> list[int]:
        """Write several frames in one write (one system call for a batch of small frames); their
        offsets. On failure none of them stays: the file is cut back to where it was."""
        parts: list[bytes | memoryview] = []
        sizes: list[int] = []
        crc = 0
        for payload in payloads:
            view = memoryview(payload).cast("B")  # lengths in bytes, whatever the item size
            length = _LENGTH.pack(len(view))
            crc = _crc(length, view)
            parts += (length, _LENGTH.pack(crc), view)
            sizes.append(FRAME.size + len(view))
        if not sizes:
            return []
        start = self._write_frames(memoryview(b"".join(parts)), (sizes[-1], crc), sync)
        return list(itertools.accumulate(sizes[:-1], initial=start))

    def append_rows(self, rows: np.ndarray, *, sync: bool = False) -> np.ndarray:
        """Write each row of a 2-D uint8 array as one frame, all in one write: `append_many` for many
        payloads of one length without a call per frame but the checksum's. Their offsets (int64)."""
        n, length = rows.shape
        if n == 0:
            return np.zeros(0, np.int64)
        head = _LENGTH.pack(length)
        seed = zlib.crc32(head)
        framed = np.empty((n, FRAME.size + length), np.uint8)
        framed[:, FRAME.size:] = rows
        framed[:, :_LENGTH.size] = np.frombuffer(head, np.uint8)
        crcs = np.fromiter((zlib.crc32(row, seed) for row in framed[:, FRAME.size:]), "<u4", n)
        framed[:, _LENGTH.size:FRAME.size] = crcs.view(np.uint8).reshape(n, _LENGTH.size)
        start = self._write_frames(framed.data.cast("B"), (FRAME.size + length, int(crcs[-1])), sync)
        return start + np.arange(n, dtype=np.int64) * (FRAME.size + length)

    def _write_frames(self, data: memoryview, last: tuple[int, int], sync: bool) -> int:
        """Append whole frames, `last` the (size, crc) of the last of them; where they start. On
        failure none of them stays: the file is cut back to where it was."""
        with self._lock:
            start = self.size
            try:
                self._write_all(data)
                if sync:
                    os.fsync(self._fd)
            except OSError:
                os.ftruncate(self._fd, start)
                os.lseek(self._fd, start, os.SEEK_SET)
                raise
            self.size = start + len(data)
            self.last_frame = (self.size - last[0], last[1])
            return start

    def _write_all(self, data: memoryview) -> None:
        while data:
            data = data[os.write(self._fd, data):]  # a write may be short

    def read_at(self, offset: int) -> bytes:
        head = os.pread(self._fd, FRAME.size, offset)
        length, crc = FRAME.unpack(head)
        payload = os.pread(self._fd, length, offset + FRAME.size)
        if _crc(head[:4], payload) != crc:
            raise ValueError(f"{self.path}: frame at {offset} fails its checksum")
        return payload

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
