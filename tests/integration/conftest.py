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


@pytest.fixture(autouse=True)
def no_leftover_rings(env: dict[str, str]) -> Iterator[None]:
    """Tests end daemons and trainers abruptly; a ring whose writer and reader are both gone would
    stay in /dev/shm until a daemon on that runtime dir starts again, which for a test never comes."""
    yield
    from weightslab_shim.ring import RingError, RingReader, list_rings, unlink
    from weightslab_shim.runtime import ring_prefix

    for name in list_rings(ring_prefix(Path(env["WEIGHTSLAB_RUNTIME_DIR"]))):
        try:
            reader = RingReader(name)
        except RingError:
            unlink(name)
            continue
        pid = reader.info.writer_pid
        reader.close()
        if not Path(f"/proc/{pid}").exists():
            unlink(name)
