"""Fixtures of the nodes tests: certificates made here, and a home holding the run rank 0 made."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from weightslab_shim.runtime import new_run_id
from weightslabd.config import Settings
from weightslabd.ipc.control import ControlServer
from weightslabd.nodes.home import Home
from weightslabd.security.tls import generate_certs
from weightslabd.store.run import Run
from weightslabd.store.runs import RunRegistry

from .support import JOB


@pytest.fixture
def certs(tmp_path: Path) -> Settings:
    generate_certs(tmp_path / "certs")
    return Settings(weightslab_forward_cert_dir=tmp_path / "certs")


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Home, Run]]:
    (tmp_path / "rt").mkdir(mode=0o700)
    registry = RunRegistry(tmp_path / "logs", tmp_path / "rt")
    control = ControlServer(tmp_path / "rt", registry, hp_sync=False, heartbeat_timeout=1.5)
    # Rank 0, on the home's node, made the job's run.
    run = registry.attach({"run_id": new_run_id("ddp"), "job": JOB, "rank": 0, "world_size": 2,
                           "splits": {"train": 8}, "script_dir": str(tmp_path)})
    control.jobs.note(JOB, run.run_id)
    h = Home(control, registry, tmp_path / "rt")
    yield h, run
    h.stop()
    registry.close()
