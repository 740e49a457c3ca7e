"""The bulk channel: one single-producer/single-consumer ring of records in POSIX shared memory.

The trainer creates and writes it (so it outlives a daemon restart); the daemon attaches, reads and
finally unlinks it. Layout (all integers little-endian):

    header (4096 bytes)
      0   magic            8s   b"WLRING01"
      8   layout version   u32
      12  header size      u32
      16  capacity         u64  bytes in the data area, a multiple of 8
      24  writer pid       u32
      28  reserved         u32
      32  created (unix)   f64
      40  run id           48s  utf-8, NUL padded
      128 write position   u64  total bytes ever committed (own cache line)
      192 read position    u64  total bytes ever consumed (own cache line)
      256 dropped records  u64  records the writer dropped because the ring was full
      264 dropped bytes    u64
      272 written records  u64
      280 writer closed    u64  1 once the writer has finished cleanly
    data (capacity bytes), records aligned to 8:
      0   magic     u16  0x5752 ("WR")
      2   type      u16  RecordType; PAD fills the tail before a wrap
      4   length    u32  payload bytes
      8   step      i64
      16  checksum  u32  crc32 of the payload, or a 64-bit word sum folded (flag WORDSUM) for big ones
      20  flags     u32
      24  payload

Positions are monotonic byte counters, stored with one aligned 8-byte store after the bytes they
cover. Python has no memory fences, so the checksum is what lets a reader on a weakly-ordered CPU
refuse a record whose bytes were not all visible yet: it retries, and skips the record only when it
is still wrong after the writer has moved on.
"""

from __future__ import annotations

import mmap
import os
import secrets
import stat
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"WLRING01"
LAYOUT_VERSION = 1
HEADER_SIZE = 4096
RECORD_MAGIC = 0x5752
RECORD_HEADER = struct.Struct("<HHIqII")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 24
_CHECKED_HEAD = 16  # magic, type, length, step: covered by the checksum that follows them
_CHECK = struct.Struct("<II")
SHM_DIR = Path("/dev/shm")
WORDSUM_MIN = 64 * 1024  # above this a numpy word sum is ~10x cheaper than crc32
FLAG_WORDSUM = 1

_STATIC = struct.Struct("<8sIIQIId48s")
# u64 slots of the header, as indexes into a uint64 view
_W, _R, _DROPPED, _DROPPED_BYTES, _WRITTEN, _CLOSED = 16, 24, 32, 33, 34, 35


class RecordType:
    PAD = 0
    STEP = 1  # a training step: its step is the step's index (the model age before its update)
    PREVIEW = 2
    EVAL = 3  # an evaluation at a model age: its step is the number of training steps completed


class RingError(Exception):
    """A segment that is not a ring of ours, or of a layout this code cannot read."""


def _align8(n: int) -> int:
    return (n + 7) & ~7


MASK64 = 0xFFFFFFFFFFFFFFFF
SUM_CHUNK = 1 << 20  # within a core's L2/L3 share: summing right after copying reads from cache


def word_sum(region: memoryview) -> int:
    return int(np.frombuffer(region, dtype=np.uint64).sum(dtype=np.uint64))


def copy_summing(dst: memoryview, src: memoryview, pad: int = 0) -> int:
    """Copy `src` into the start of `dst`, zero the `pad` bytes after it, and return the 64-bit word
    sum of the whole destination (its length must be a multiple of 8). Each chunk is summed right
    after it is copied, while it is still in cache: no second trip through memory."""
    n = len(src)
    if pad:
        dst[n: n + pad] = bytes(pad)
    total = 0
    for a in range(0, n + pad, SUM_CHUNK):
        b = min(a + SUM_CHUNK, n + pad)
        if a < n:
            dst[a: min(b, n)] = src[a: min(b, n)]
        total += word_sum(dst[a:b])
    return total


def checksum(payload: memoryview, head: bytes | memoryview = b"", words_sum: int | None = None) -> tuple[int, int]:
    """(checksum, flags) of a record: crc32 when small, a folded 64-bit word sum when large.

    `head` is the record header before its checksum (magic, type, length, step): a torn or changed
    header fails the check too. `words_sum`, when the writer already summed the payload's whole
    words while copying them, saves a second pass over a large payload."""
    seed = zlib.crc32(head)
    n = len(payload)
    if n < WORDSUM_MIN:
        return zlib.crc32(payload, seed), 0
    words = n // 8
    if words_sum is None:
        words_sum = word_sum(payload[: words * 8])
    total = (words_sum + zlib.crc32(payload[words * 8 :], seed) + n) & MASK64
    return (total ^ (total >> 32)) & 0xFFFFFFFF, FLAG_WORDSUM


@dataclass(frozen=True)
class RingInfo:
    name: str
    capacity: int
    writer_pid: int
    run_id: str
    created: float


class _Segment:
    """A mapped shared-memory file with typed views of the ring header."""

    def __init__(self, name: str, fd: int, size: int) -> None:
        self.name = name
        try:
            self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.buf = memoryview(self.map)
        self.slots = np.frombuffer(self.map, dtype=np.uint64, count=HEADER_SIZE // 8)
        self.data = self.buf[HEADER_SIZE:]
        self.data_np = np.frombuffer(self.map, dtype=np.uint8, offset=HEADER_SIZE)

    def close(self) -> None:
        # Views must go before the map can close.
        del self.slots, self.data_np
        self.data.release()
        self.buf.release()
        try:
            self.map.close()
        except BufferError:  # a caller still holds a record view; the OS unmaps at exit
            pass


def shm_path(name: str) -> Path:
    return SHM_DIR / name


def unlink(name: str) -> bool:
    try:
        os.unlink(shm_path(name))
        return True
    except FileNotFoundError:
        return False


class RingWriter:
    """The trainer's end. Never blocks: a record that does not fit is dropped and counted."""

    def __init__(self, prefix: str, capacity: int, run_id: str) -> None:
        capacity = _align8(max(capacity, 64 * 1024))
        self.capacity = capacity
        self.max_record = capacity // 2
        self.name = f"{prefix}{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(shm_path(self.name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask: the daemon attaches nothing else
            # Reserve the pages now: a tmpfs that fills up later would kill the trainer with SIGBUS on
            # a write; here it is an ENOSPC the shim reports, and training goes on unobserved.
            os.posix_fallocate(fd, 0, HEADER_SIZE + capacity)
        except OSError:
            os.close(fd)
            unlink(self.name)
            raise
        self._seg = _Segment(self.name, fd, HEADER_SIZE + capacity)
        _STATIC.pack_into(self._seg.buf, 0, MAGIC, LAYOUT_VERSION, HEADER_SIZE, capacity, os.getpid(), 0,
                          time.time(), run_id.encode()[:48])
        self._write = 0
        self._dropped = 0

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def written(self) -> int:
        return int(self._seg.slots[_WRITTEN])

    def reserve(self, rtype: int, step: int, length: int) -> memoryview | None:
        """A writable view of `length` payload bytes, or None (counted as dropped) when full.

        Call `commit()` after filling it; nothing is visible to the reader before that."""
        size = _align8(RECORD_HEADER_SIZE + length)
        if size > self.max_record:
            self._drop(size)
            return None
        cap = self.capacity
        off = self._write % cap
        tail = cap - off
        pad = tail if tail < size else 0
        free = cap - (self._write - int(self._seg.slots[_R]))
        if pad + size > free:
            self._drop(size)
            return None
        if pad:
            if pad >= RECORD_HEADER_SIZE:
                RECORD_HEADER.pack_into(self._seg.data, off, RECORD_MAGIC, RecordType.PAD,
                                        pad - RECORD_HEADER_SIZE, 0, 0, 0)
            self._write += pad
            off = 0
        self._pending = (off, rtype, step, length, size)
        return self._seg.data[off + RECORD_HEADER_SIZE: off + RECORD_HEADER_SIZE + length]

    def commit(self, words_sum: int | None = None) -> None:
        """Publish the reserved record. `words_sum`: the payload's 64-bit word sum, if the caller
        computed it while filling (see `copy_summing`)."""
        off, rtype, step, length, size = self._pending
        data = self._seg.data
        RECORD_HEADER.pack_into(data, off, RECORD_MAGIC, rtype, length, step, 0, 0)
        crc, flags = checksum(data[off + RECORD_HEADER_SIZE: off + RECORD_HEADER_SIZE + length],
                              data[off: off + _CHECKED_HEAD], words_sum)
        _CHECK.pack_into(data, off + _CHECKED_HEAD, crc, flags)
        self._write += size
        slots = self._seg.slots
        slots[_WRITTEN] += 1
        slots[_W] = self._write  # one aligned store, after the bytes it publishes

    def write(self, rtype: int, step: int, payload: bytes | memoryview) -> bool:
        src = memoryview(payload).cast("B")
        view = self.reserve(rtype, step, len(src))
        if view is None:
            return False
        if len(src) < WORDSUM_MIN:
            view[:] = src
            self.commit()
            return True
        whole = len(src) - len(src) % 8
        total = copy_summing(view[:whole], src[:whole])
        view[whole:] = src[whole:]
        self.commit(total & MASK64)
        return True

    def _drop(self, size: int) -> None:
        self._dropped += 1
        slots = self._seg.slots
        slots[_DROPPED] += 1
        slots[_DROPPED_BYTES] += size

    def mark_closed(self) -> None:
        self._seg.slots[_CLOSED] = 1

    def close(self, *, unlink_segment: bool) -> None:
        self._seg.close()
        if unlink_segment:
            unlink(self.name)


@dataclass
class Record:
    type: int
    step: int
    position: int
    payload: memoryview


class CorruptRecord(Exception):
    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"corrupt ring record at position {position}: {reason}")
        self.position = position
        self.reason = reason


class RingReader:
    """The daemon's end. Attaches by name; records are views valid until `advance()`."""

    def __init__(self, name: str) -> None:
        self.name = name
        if not name or "/" in name or name in (".", ".."):
            raise RingError(f"ring name {name!r} is not a file name in {SHM_DIR}")
        try:
            # No symlinks, no waiting on a FIFO: only a plain file of ours, checked before it is mapped.
            fd = os.open(shm_path(name), os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RingError(f"ring {name!r} does not exist") from None
        except OSError as exc:
            raise RingError(f"ring {name!r} cannot be opened: {exc.strerror or exc}") from None
        st = os.fstat(fd)
        problem = _foreign(st)
        if problem:
            os.close(fd)
            raise RingError(f"segment {name!r} {problem}; not attached")
        size = st.st_size
        if size < HEADER_SIZE:
            os.close(fd)
            raise RingError(f"ring {name!r} is too small ({size} bytes) to be a weightslab ring")
        seg = _Segment(name, fd, size)
        magic, version, hsize, cap, pid, _, created, run = _STATIC.unpack_from(seg.buf, 0)
        if magic != MAGIC:
            seg.close()
            raise RingError(f"segment {name!r} is not a weightslab ring (magic {magic!r})")
        if version != LAYOUT_VERSION or hsize != HEADER_SIZE or HEADER_SIZE + cap != size or cap % 8 or cap < 4096:
            seg.close()
            raise RingError(f"ring {name!r} has layout version {version} (this daemon reads {LAYOUT_VERSION})"
                            f" or inconsistent sizes")
        self._seg = seg
        self.info = RingInfo(name, cap, pid, run.rstrip(b"\0").decode(errors="replace"), created)
        self.capacity = cap
        self.corrupt = 0

    @property
    def read_position(self) -> int:
        return int(self._seg.slots[_R])

    @property
    def write_position(self) -> int:
        return int(self._seg.slots[_W])

    @property
    def dropped(self) -> tuple[int, int]:
        s = self._seg.slots
        return int(s[_DROPPED]), int(s[_DROPPED_BYTES])

    @property
    def written(self) -> int:
        return int(self._seg.slots[_WRITTEN])

    @property
    def writer_closed(self) -> bool:
        return bool(self._seg.slots[_CLOSED])

    def pending(self) -> int:
        return self.write_position - self.read_position

    def records(self, limit: int = 1 << 30) -> Iterator[Record]:
        """Committed records from the read position on. Advance past each with `advance()`.

        Raises CorruptRecord for one that stays wrong; the caller logs it and calls `skip()`."""
        cap = self.capacity
        data = self._seg.data
        r = self.read_position
        w = self.write_position
        if w - r > cap or w < r:
            raise CorruptRecord(r, f"write position {w} is inconsistent with read position {r}")
        count = 0
        while r < w and count < limit:
            off = r % cap
            tail = cap - off
            if tail < RECORD_HEADER_SIZE:
                r += tail
                self._store_read(r)
                continue
            rtype, length, step = self._valid_record(off, tail, w - r, r)
            size = _align8(RECORD_HEADER_SIZE + length)
            if rtype == RecordType.PAD:
                r += size
                self._store_read(r)
                continue
            payload = data[off + RECORD_HEADER_SIZE: off + RECORD_HEADER_SIZE + length]
            self._next = r + size
            yield Record(rtype, step, r, payload)
            r = self._next
            count += 1

    def _valid_record(self, off: int, tail: int, available: int, position: int) -> tuple[int, int, int]:
        """(type, length, step) of the record at `off`, once its header and checksum agree.

        Bytes not all visible yet (a weakly-ordered CPU) come right within microseconds: retry for a
        few milliseconds, re-reading the header each time, before calling the record corrupt."""
        data = self._seg.data
        deadline = 0.0
        while True:
            magic, rtype, length, step, crc, flags = RECORD_HEADER.unpack_from(data, off)
            size = _align8(RECORD_HEADER_SIZE + length)
            if magic != RECORD_MAGIC or size > tail or size > available:
                reason = f"bad record header (magic {magic:#x}, length {length})"
            elif rtype == RecordType.PAD and length == tail - RECORD_HEADER_SIZE:
                return rtype, length, step
            else:
                payload = data[off + RECORD_HEADER_SIZE: off + RECORD_HEADER_SIZE + length]
                if checksum(payload, data[off: off + _CHECKED_HEAD]) == (crc, flags & FLAG_WORDSUM):
                    return rtype, length, step
                reason = "checksum mismatch"
            now = time.monotonic()
            if not deadline:
                deadline = now + 0.005
            elif now > deadline:
                raise CorruptRecord(position, reason)
            time.sleep(0.0005)

    def advance(self) -> None:
        """Consume the record last yielded: its bytes may be overwritten after this."""
        self._store_read(self._next)

    def skip(self, position: int) -> int:
        """Skip past a corrupt record; where its length cannot be trusted, skip all written so far.

        Returns the number of bytes lost."""
        self.corrupt += 1
        cap = self.capacity
        off = position % cap
        w = self.write_position
        target = w
        if 0 <= w - position <= cap and cap - off >= RECORD_HEADER_SIZE:
            magic, _, length, *_ = RECORD_HEADER.unpack_from(self._seg.data, off)
            size = _align8(RECORD_HEADER_SIZE + length)
            if magic == RECORD_MAGIC and size <= cap - off and position + size <= w:
                target = position + size
        self._store_read(target)
        return target - position

    def _store_read(self, r: int) -> None:
        self._seg.slots[_R] = r

    def close(self, *, unlink_segment: bool = False) -> None:
        self._seg.close()
        if unlink_segment:
            unlink(self.name)


def _foreign(st: os.stat_result) -> str | None:
    """Why a segment is not one a ring writer of our user made (plain file, ours, mode 0600), or None."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a plain file"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if stat.S_IMODE(st.st_mode) != 0o600:
        return f"has mode {stat.S_IMODE(st.st_mode):04o}, not 0600"
    return None


def list_rings(prefix: str) -> list[str]:
    """Names in /dev/shm under `prefix`, whoever made them: `RingReader` refuses those not ours."""
    try:
        return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []
