"""The append-only file of checksummed frames under the edit journal and the signal store."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from weightslabd.store import framedlog
from weightslabd.store.framedlog import FRAME, FramedLog

PAYLOADS = [b"first", b"", b"\x00" * 17, "ünïcode ✓".encode(), bytes(range(256)) * 40]


class OsWithFaults:
    """The os module as framedlog sees it, with `write` and `fsync` replaceable for one test."""

    def __init__(self) -> None:
        self.write: Callable[[int, Any], int] = os.write
        self.fsync: Callable[[int], None] = os.fsync

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


@pytest.fixture
def fake_os(monkeypatch: pytest.MonkeyPatch) -> OsWithFaults:
    proxy = OsWithFaults()
    monkeypatch.setattr(framedlog, "os", proxy)
    return proxy


@pytest.fixture
def open_log(tmp_path: Path) -> Iterator[Callable[..., FramedLog]]:
    logs: list[FramedLog] = []

    def make(path: Path | None = None) -> FramedLog:
        log = FramedLog(path or tmp_path / "run" / "journal.log")
        logs.append(log)
        return log

    try:
        yield make
    finally:
        for log in logs:
            log.close()


def fill(log: FramedLog) -> list[int]:
    return [log.append(p) for p in PAYLOADS]


def test_appended_frames_read_back_in_order_with_their_offsets(open_log: Callable[..., FramedLog]) -> None:
    log = open_log()
    offsets = fill(log)
    expected_offsets = [0]
    for p in PAYLOADS[:-1]:
        expected_offsets.append(expected_offsets[-1] + FRAME.size + len(p))
    assert offsets == expected_offsets
    assert list(log.frames()) == list(zip(offsets, PAYLOADS, strict=True))
    assert log.size == os.path.getsize(log.path) == sum(FRAME.size + len(p) for p in PAYLOADS)
    assert [log.read_at(o) for o in reversed(offsets)] == list(reversed(PAYLOADS))


def test_append_many_writes_the_frames_of_several_appends_in_one_write(open_log: Callable[..., FramedLog],
                                                                        fake_os: OsWithFaults) -> None:
    one_by_one = open_log(open_log().path.parent / "one_by_one.log")
    expected = fill(one_by_one)
    log = open_log()
    writes: list[int] = []
    fake_os.write = lambda fd, data: writes.append(len(data)) or os.write(fd, data)
    assert log.append_many(PAYLOADS) == expected
    assert writes == [log.size]  # one system call for the batch
    assert log.append_many([]) == [] and writes == [log.size]
    assert (log.size, log.last_frame) == (one_by_one.size, one_by_one.last_frame)
    assert log.path.read_bytes() == one_by_one.path.read_bytes()
    assert log.append(b"next") == log.size - FRAME.size - 4


def test_append_many_on_a_full_disk_leaves_none_of_its_frames(open_log: Callable[..., FramedLog],
                                                              fake_os: OsWithFaults) -> None:
    log = open_log()
    log.append(b"kept")
    size_before = log.size

    def write_half_then_enospc(fd: int, data: Any) -> int:
        if fake_os.write is write_half_then_enospc and len(data) > 100:
            fake_os.write = lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
            return os.write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    fake_os.write = write_half_then_enospc
    with pytest.raises(OSError):
        log.append_many(PAYLOADS)
    assert os.path.getsize(log.path) == size_before == log.size
    assert [p for _, p in log.frames()] == [b"kept"]


def test_append_rows_frames_each_row_as_append_many_does_in_one_write(open_log: Callable[..., FramedLog],
                                                                      fake_os: OsWithFaults) -> None:
    rows = np.random.default_rng(3).integers(0, 256, (5, 3001), dtype=np.uint8)
    one_by_one = open_log(open_log().path.parent / "one_by_one.log")
    one_by_one.append(b"before")
    expected = one_by_one.append_many([row.tobytes() for row in rows])
    log = open_log()
    log.append(b"before")
    writes: list[int] = []
    fake_os.write = lambda fd, data: writes.append(len(data)) or os.write(fd, data)
    assert log.append_rows(rows).tolist() == expected
    assert writes == [5 * (FRAME.size + 3001)]  # one system call for the rows
    assert (log.size, log.last_frame) == (one_by_one.size, one_by_one.last_frame)
    assert log.path.read_bytes() == one_by_one.path.read_bytes()
    assert log.append_rows(rows[:0]).tolist() == [] and len(writes) == 1


def test_append_rows_on_a_full_disk_leaves_none_of_its_frames(open_log: Callable[..., FramedLog],
                                                              fake_os: OsWithFaults) -> None:
    log = open_log()
    log.append(b"kept")
    size_before, last_before = log.size, log.last_frame

    def write_half_then_enospc(fd: int, data: Any) -> int:
        fake_os.write = lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return os.write(fd, bytes(data)[: len(data) // 2])

    fake_os.write = write_half_then_enospc
    with pytest.raises(OSError):
        log.append_rows(np.ones((4, 100), np.uint8))
    assert os.path.getsize(log.path) == size_before == log.size and log.last_frame == last_before
    assert [p for _, p in log.frames()] == [b"kept"]


def test_memoryview_of_bytes_is_appended_like_bytes(open_log: Callable[..., FramedLog]) -> None:
    log = open_log()
    data = bytearray(b"0123456789")
    offset = log.append(memoryview(data)[2:7])
    assert log.read_at(offset) == b"23456"


def test_memoryview_with_wide_items_is_appended_as_its_bytes(open_log: Callable[..., FramedLog]) -> None:
    log = open_log()
    arr = np.arange(4, dtype=np.int32)
    first = log.append(arr.data)
    second = log.append(b"next")
    assert [p for _, p in log.frames()] == [arr.tobytes(), b"next"]
    assert log.read_at(first) == arr.tobytes()
    assert log.read_at(second) == b"next"


def test_new_directory_and_private_file_are_created(tmp_path: Path, open_log: Callable[..., FramedLog]) -> None:
    path = tmp_path / "a" / "b" / "log"
    log = open_log(path)
    log.append(b"x")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert log.torn_bytes == 0


def test_reopened_log_serves_every_frame_and_appends_after_them(open_log: Callable[..., FramedLog]) -> None:
    log = open_log()
    offsets = fill(log)
    log.close()
    again = open_log(log.path)
    assert again.torn_bytes == 0
    assert again.size == log.size
    assert list(again.frames()) == list(zip(offsets, PAYLOADS, strict=True))
    assert again.append(b"more") == log.size
    assert [p for _, p in again.frames()] == [*PAYLOADS, b"more"]


def test_torn_last_frame_is_dropped_on_reopen_at_every_cut(open_log: Callable[..., FramedLog]) -> None:
    log = open_log()
    offsets = fill(log)
    log.append(b"the frame a crash cut short")
    log.close()
    whole = log.path.read_bytes()
    good_end = log.size - FRAME.size - len(b"the frame a crash cut short")
    for cut in range(good_end + 1, len(whole)):
        log.path.write_bytes(whole[:cut])
        torn = open_log(log.path)
        assert torn.torn_bytes == cut - good_end
        assert torn.size == good_end == os.path.getsize(log.path)
        assert list(torn.frames()) == list(zip(offsets, PAYLOADS, strict=True))
        assert torn.append(b"after") == good_end
        torn.close()
        assert [p for _, p in open_log(log.path).frames()] == [*PAYLOADS, b"after"]


@pytest.mark.parametrize("garble", ["last payload byte", "crc", "length too large", "length past the end"])
def test_garbled_last_frame_is_dropped_on_reopen(open_log: Callable[..., FramedLog], garble: str) -> None:
    log = open_log()
    fill(log)
    last = log.append(b"garbled soon")
    log.close()
    data = bytearray(log.path.read_bytes())
    if garble == "last payload byte":
        data[-1] ^= 0x01
    elif garble == "crc":
        data[last + 4] ^= 0x80
    elif garble == "length too large":
        data[last: last + 4] = (framedlog.MAX_FRAME + 1).to_bytes(4, "little")
    else:
        data[last: last + 4] = (len(b"garbled soon") + 100).to_bytes(4, "little")
    log.path.write_bytes(bytes(data))
    reopened = open_log(log.path)
    assert [p for _, p in reopened.frames()] == PAYLOADS
    assert reopened.torn_bytes == len(data) - last
    assert reopened.append(b"fresh") == last
    assert [p for _, p in reopened.frames()] == [*PAYLOADS, b"fresh"]


def test_corrupt_middle_frame_ends_the_readable_part(open_log: Callable[..., FramedLog]) -> None:
    log = open_log()
    offsets = fill(log)
    log.close()
    data = bytearray(log.path.read_bytes())
    data[offsets[2] + FRAME.size] ^= 0xFF
    log.path.write_bytes(bytes(data))
    reopened = open_log(log.path)
    assert [p for _, p in reopened.frames()] == PAYLOADS[:2]
    assert reopened.size == offsets[2]


def test_zero_filled_tail_is_dropped_on_reopen(open_log: Callable[..., FramedLog]) -> None:
    log = open_log()
    fill(log)
    log.close()
    with open(log.path, "ab") as f:
        f.write(bytes(4096))
    reopened = open_log(log.path)
    assert [p for _, p in reopened.frames()] == PAYLOADS
    assert reopened.torn_bytes == 4096


def test_read_at_refuses_a_frame_changed_on_disk(open_log: Callable[..., FramedLog]) -> None:
    log = open_log()
    offsets = fill(log)
    with open(log.path, "r+b") as f:
        f.seek(offsets[0] + FRAME.size)
        f.write(b"F")
    with pytest.raises(ValueError, match=f"frame at {offsets[0]} fails its checksum"):
        log.read_at(offsets[0])
    assert log.read_at(offsets[3]) == PAYLOADS[3]


# -- failing writes -----------------------------------------------------------------------------


def test_disk_full_mid_frame_leaves_no_partial_frame(open_log: Callable[..., FramedLog],
                                                     fake_os: OsWithFaults) -> None:
    log = open_log()
    fill(log)
    size_before = log.size
    calls = []

    def write_half_then_enospc(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return os.write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    fake_os.write = write_half_then_enospc
    with pytest.raises(OSError) as exc:
        log.append(b"x" * 1000)
    assert exc.value.errno == errno.ENOSPC
    assert len(calls) == 2  # the first, short write did land on disk before the failure
    assert os.path.getsize(log.path) == size_before == log.size
    assert [p for _, p in log.frames()] == PAYLOADS

    fake_os.write = os.write  # space again: the log carries on where it was
    assert log.append(b"after the disk was freed") == size_before
    log.close()
    reopened = open_log(log.path)
    assert reopened.torn_bytes == 0
    assert [p for _, p in reopened.frames()] == [*PAYLOADS, b"after the disk was freed"]


def test_failing_fsync_with_sync_cuts_the_frame_back(open_log: Callable[..., FramedLog],
                                                     fake_os: OsWithFaults) -> None:
    log = open_log()
    fill(log)
    size_before = log.size

    def fsync_fails(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    fake_os.fsync = fsync_fails
    with pytest.raises(OSError, match="I/O error"):
        log.append(b"not durable", sync=True)
    assert os.path.getsize(log.path) == size_before == log.size
    fake_os.fsync = os.fsync
    assert log.append(b"durable", sync=True) == size_before
    assert [p for _, p in log.frames()] == [*PAYLOADS, b"durable"]


def test_short_writes_are_completed(open_log: Callable[..., FramedLog], fake_os: OsWithFaults) -> None:
    log = open_log()

    def one_byte_at_a_time(fd: int, data: Any) -> int:
        return os.write(fd, bytes(data[:1]))

    fake_os.write = one_byte_at_a_time
    offsets = fill(log)
    assert list(log.frames()) == list(zip(offsets, PAYLOADS, strict=True))


def test_sync_append_fsyncs_the_log_before_returning(open_log: Callable[..., FramedLog],
                                                     fake_os: OsWithFaults) -> None:
    log = open_log()
    synced: list[tuple[int, int]] = []

    def recording_fsync(fd: int) -> None:
        synced.append((fd, os.fstat(fd).st_size))
        os.fsync(fd)

    fake_os.fsync = recording_fsync
    log.append(b"fast")
    assert synced == []
    offset = log.append(b"durable", sync=True)
    assert len(synced) == 1
    fd, size_at_fsync = synced[0]
    assert os.path.samestat(os.fstat(fd), os.stat(log.path))
    assert size_at_fsync == offset + FRAME.size + len(b"durable")  # the frame was written before the fsync
    log.sync()
    assert len(synced) == 2


def test_concurrent_appends_never_interleave(open_log: Callable[..., FramedLog]) -> None:
    log = open_log()
    results: dict[int, list[tuple[int, bytes]]] = {}

    def writer(t: int) -> None:
        mine = []
        for i in range(200):
            payload = f"thread {t} frame {i} ".encode() * (i % 7 + 1)
            mine.append((log.append(payload), payload))
        results[t] = mine

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    written = sorted(frame for mine in results.values() for frame in mine)
    assert list(log.frames()) == written
    assert len(written) == 800
