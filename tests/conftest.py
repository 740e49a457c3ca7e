"""Suite-wide: every test runs under the hard timeout WL_TEST_TIMEOUT (seconds, default 30)."""

from __future__ import annotations

import os
import shutil
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


def require_root(what: str) -> None:
    """Root-only parts (an attacker under another uid, a tmpfs to fill) run wherever the suite runs as root,
    as CI does; elsewhere the test fails, unless WL_TEST_SKIP_ROOT_ONLY=1 skips it on purpose."""
    if os.geteuid() == 0 and shutil.which("setpriv") is not None:
        return
    why = f"{what} needs root (and util-linux's setpriv)"
    if os.environ.get("WL_TEST_SKIP_ROOT_ONLY") == "1":
        pytest.skip(f"{why}; skipped as WL_TEST_SKIP_ROOT_ONLY=1 asks")
    pytest.fail(f"{why}: run the suite as root, or set WL_TEST_SKIP_ROOT_ONLY=1 to skip this test on purpose")


@pytest.fixture
def root_only() -> None:
    require_root("running a second uid")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts small tmpfs file systems to fill (a full disk, for real): `tmpfs("1m")` is its folder.
    Root only (see require_root). Every mount is taken down at the end."""
    require_root("mounting a small tmpfs to fill")
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
