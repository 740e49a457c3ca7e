"""Private by default: the folders weightslabd creates for runs and logs are 0700, their files 0600.

A shared machine's other users must not read a run's samples, edits and audit log, nor the daemon's
log. Folders that already exist are left as they are: their owner chose their mode.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dirs(path: Path) -> Path:
    """Create `path` and each missing folder above it with mode 0700 (not the umask's 0755)."""
    missing = []
    folder = path
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:  # made meanwhile by another thread or process: theirs to choose
            continue
        os.chmod(folder, DIR_MODE)  # mkdir's mode passes through the umask; this is exact
    if not path.is_dir():
        path.mkdir(mode=DIR_MODE, exist_ok=True)  # a dangling link or a file: the usual error
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """os.open with mode 0600 for a file it creates (an existing file keeps its mode)."""
    return os.open(path, flags, FILE_MODE)
