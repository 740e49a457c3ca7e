"""Trimming signals.log: once a durable snapshot covers a prefix of the log, that prefix's disk blocks are
given back. A hole is punched (fallocate PUNCH_HOLE): offsets stay what snapshots name, the prefix reads
as zeros, and only whole blocks before the covered prefix's last frame go (that frame stays, so a reopen
can check the prefix is still this file's).

    <run>/signals.trim   crc32 line, then JSON [end, [offset, crc]]: the prefix given up

The mark is written durably before the punch, so a crash leaves either no mark and an intact log, or a
mark and a log whose prefix is partly or wholly zeros: opening never scans before the mark (a scan from 0
would read the zeros as a torn frame and cut the whole log). Where the file system cannot punch holes,
nothing is trimmed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import zlib
from pathlib import Path

import structlog

from weightslabd.store.snapshot import LogMark

FILE = "signals.trim"
KEEP_ENV = "WL_TEST_KEEP_SIGNALS_LOG"  # test hook: set, the daemon keeps the whole log (replays from it work)
BLOCK = 4096
_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
log = structlog.get_logger("weightslabd.store.log_trim")
_warned: list[bool] = []


def read(folder: Path) -> LogMark | None:
    """The prefix of signals.log given up, or None. Raises ValueError for a damaged mark."""
    try:
        data = (folder / FILE).read_bytes()
    except FileNotFoundError:
        return None
    head, _, body = data.partition(b"\n")
    try:
        if int(head, 16) != zlib.crc32(body):
            raise ValueError("checksum mismatch")
        end, frame = json.loads(body)
        return LogMark(int(end), None if frame is None else (int(frame[0]), int(frame[1])))
    except (ValueError, TypeError, IndexError) as exc:  # the run is then skipped with this line, not cut
        raise ValueError(f"{folder / FILE}: damaged ({exc})") from None


def write(folder: Path, mark: LogMark) -> None:
    """Record durably that the log's prefix up to `mark` is given up (before any block of it goes)."""
    body = json.dumps([mark.end, mark.last_frame]).encode()
    tmp = folder / (FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"%08x\n" % zlib.crc32(body) + body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, folder / FILE)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def hole_end(mark: LogMark) -> int:
    """Where the hole for `mark` ends: the block boundary at or before its last frame (kept intact)."""
    return 0 if mark.last_frame is None else mark.last_frame[0] // BLOCK * BLOCK


def punch(path: Path, end: int) -> bool:
    """Give back the disk blocks of `path`'s first `end` bytes (they read as zeros after); False where the
    platform or file system cannot (then nothing changed)."""
    if end <= 0:
        return True
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError, TypeError):
        return False
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
    fd = os.open(path, os.O_WRONLY)
    try:
        if fallocate(fd, _PUNCH, 0, end) != 0:
            if not _warned:
                _warned.append(True)  # once a process: it will not change
                log.warning("signals.log not trimmed: the file system cannot punch holes",
                            error=os.strerror(ctypes.get_errno()))
            return False
        os.fsync(fd)
        return True
    finally:
        os.close(fd)
