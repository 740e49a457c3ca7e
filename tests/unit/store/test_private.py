"""Folders weightslabd creates are 0700 (each missing parent too), files it creates 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from weightslabd.store.private import make_private_dirs, open_private


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_missing_folder_is_made_0700_and_existing_ones_keep_their_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    target = tmp_path / "a" / "b" / "c"
    old = os.umask(0o022)
    try:
        assert make_private_dirs(target) == target
    finally:
        os.umask(old)
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", target)] == [0o700] * 3
    assert mode(tmp_path) == 0o755  # not ours to change
    make_private_dirs(target)  # again: nothing to do, no error


def test_a_created_file_is_0600_and_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    fd = open_private(tmp_path / "new.log")
    os.close(fd)
    assert mode(tmp_path / "new.log") == 0o600
    (tmp_path / "old.log").write_text("x")
    (tmp_path / "old.log").chmod(0o640)
    os.close(open_private(tmp_path / "old.log"))
    assert mode(tmp_path / "old.log") == 0o640
