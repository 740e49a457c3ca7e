"""FramedLog from an offset, and a known prefix (a snapshot's) that opening need not scan again."""

from __future__ import annotations

import os
from pathlib import Path

from weightslabd.store.framedlog import FramedLog


def written(path: Path, n: int) -> tuple[list[int], tuple[int, int] | None, int]:
    log = FramedLog(path)
    offsets = [log.append(b"frame %d" % i * (i + 1)) for i in range(n)]
    mark, end = log.last_frame, log.size
    log.close()
    return offsets, mark, end


def test_frames_from_an_offset_are_the_rest(tmp_path: Path) -> None:
    offsets, _, _ = written(tmp_path / "f.log", 6)
    log = FramedLog(tmp_path / "f.log")
    assert [o for o, _ in log.frames(offsets[3])] == offsets[3:]
    assert [p for _, p in log.frames(offsets[5])] == [b"frame 5" * 6]
    log.close()


def test_a_known_prefix_is_not_scanned_and_the_tail_still_is(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    _, mark, end = written(path, 5)
    log = FramedLog(path)
    log.append(b"after")
    full = log.size
    log.close()
    with open(path, "ab") as f:
        f.write(b"\x07\x00\x00\x00torn")  # a frame cut short after the prefix
    log = FramedLog(path, (end, mark))
    assert log.skipped == end and log.size == full and log.torn_bytes == 8
    assert log.ends_frame(end, mark) and not log.ends_frame(end - 1, mark)
    log.close()


def test_a_prefix_that_is_no_longer_the_files_means_a_full_scan(tmp_path: Path) -> None:
    path = tmp_path / "f.log"
    offsets, mark, end = written(path, 5)
    os.truncate(path, offsets[3])  # shorter than the prefix
    log = FramedLog(path, (end, mark))
    assert log.skipped == 0 and log.size == offsets[3] and not log.ends_frame(end, mark)
    while log.size < end:
        log.append(b"other frames, other crcs")
    log.close()
    log = FramedLog(path, (end, mark))
    assert log.skipped == 0  # as long again, but not the same frames
    log.close()
