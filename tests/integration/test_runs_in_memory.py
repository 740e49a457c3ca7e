"""Runs the daemon has seen stay on disk, not in memory: an ended run that is neither current nor attached
is released (its snapshot written), a restarted daemon opens only the newest, and an old run asked for by
the Studio is read again from its folder, whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .harness import Daemon, Trainer, history, wait_for


def run_ids(tmp_path: Path) -> list[str]:
    """Every run folder's id, oldest first."""
    manifests = [json.loads(m.read_text()) for m in (tmp_path / "logs").glob("*/manifest.json")]
    return [m["run_id"] for m in sorted(manifests, key=lambda m: m["created"])]


def released(daemon: Daemon) -> set[str]:
    return {e["run"] for e in daemon.log_events() if e.get("event") == "run released from memory"}


@pytest.mark.timeout(120)
def test_ended_runs_leave_memory_and_come_back_when_read(env: dict[str, str], tmp_path: Path) -> None:
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        for n in range(3):
            Trainer(env, tmp_path, "--steps", "30", "--step-sleep", "0.002").wait(60)
            wait_for(lambda n=n: len(run_ids(tmp_path)) == n + 1, 10, "the run's folder")  # type: ignore[misc]
        first, second, third = run_ids(tmp_path)
        # Each trainer's hello made its run current; the ended ones before it were released.
        wait_for(lambda: released(daemon) == {first, second}, 10, "the older runs to be released")
        assert sorted({p.model_age for p in history(daemon.stub()) if p.metric_name == "loss"}) == list(range(30))
        old = history(daemon.stub(), experiment_hashes=[first])  # read again, from its folder
        assert sorted({p.model_age for p in old if p.metric_name == "loss"}) == list(range(30))
        assert {p.experiment_hash for p in old} == {first}
    finally:
        daemon.stop()

    daemon = Daemon(env, tmp_path / "daemon2.log").start()
    try:
        found = next(e for e in daemon.log_events() if e.get("event") == "runs found")
        assert (found["count"], found["held"], found["current"]) == (3, 1, third)  # only the newest replayed
        assert {p.experiment_hash for p in history(daemon.stub(), experiment_hashes=[second])} == {second}
    finally:
        daemon.stop()
