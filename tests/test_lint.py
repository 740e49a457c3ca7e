"""The code stays ruff-clean and typed: the shim under mypy --strict, the daemon under mypy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(300)
def test_ruff_is_clean() -> None:
    result = run("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(300)
def test_mypy_is_clean() -> None:
    shim = run("mypy", "--strict", "client_shim/weightslab_shim")
    assert shim.returncode == 0, shim.stdout + shim.stderr
    daemon = run("mypy", "daemon/weightslabd")
    assert daemon.returncode == 0, daemon.stdout + daemon.stderr
