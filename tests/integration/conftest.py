"""Fixtures shared by the integration tests: a private environment and a running daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Daemon, base_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return base_env(tmp_path)


@pytest.fixture
def daemon(env: dict[str, str], tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(env, tmp_path / "daemon.log").start()
    yield d
    d.stop()
