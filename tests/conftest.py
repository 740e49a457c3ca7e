"""Suite-wide: every test runs under the hard timeout WL_TEST_TIMEOUT (seconds, default 30)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

DEFAULT_TEST_TIMEOUT = 30.0


def pytest_configure(config: pytest.Config) -> None:
    # An explicit --timeout on the command line wins; otherwise the documented variable decides.
    if not config.getoption("timeout", default=None):
        config.option.timeout = float(os.environ.get("WL_TEST_TIMEOUT", DEFAULT_TEST_TIMEOUT))
        config.option.timeout_method = "signal"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts small tmpfs file systems to fill (a full disk, for real): `tmpfs("1m")` is its folder.
    Needs root; skips otherwise. Every mount is taken down at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(disk)], check=True)
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)
