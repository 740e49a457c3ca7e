"""Previews at rest across a daemon restart: a restarted daemon tells the trainer which samples it has,
so none is sent (or encoded) again, whether it was stopped (index written) or killed (log scanned)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from weightslabd.store.framedlog import read_frames
from weightslabd.store.preview_log import LOG

from .harness import Daemon, Trainer, history, run_folder, wait_for
from .test_cli_server import grpc_cli


def at_rest(tmp_path: Path) -> int:
    """Entries in previews.log (frame 0 is the header), read-only: the daemon may be writing."""
    logs = tmp_path / "logs"
    if not (logs.is_dir() and any((p / "manifest.json").exists() for p in logs.iterdir())):
        return 0  # no run yet
    return max(0, sum(1 for _ in read_frames(run_folder(tmp_path) / LOG)) - 1)


def last_step(daemon: Daemon) -> int:
    return max((p.model_age for p in history(daemon.stub())), default=0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_restarted_daemon_is_sent_no_preview_it_has(daemon: Daemon, env: dict[str, str], tmp_path: Path,
                                                        how: int) -> None:
    stop = tmp_path / "stop"
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.004", "--size", "48", "--batch", "16",
                      "--shape", "3,96,96", "--until", str(stop))
    try:
        wait_for(lambda: at_rest(tmp_path) >= 48, 30, "every sample's preview at rest")
        attached = daemon.log().count("trainer attached")
        daemon.kill(how)
        assert trainer.proc.poll() is None, trainer.stderr()
        daemon.start()
        wait_for(lambda: daemon.log().count("trainer attached") > attached, 30, "the trainer's hello again")
        for _ in range(2):  # the first: past the ring's backlog from while it was down; the second: live steps
            reached = last_step(daemon)
            # welcomed, it runs on: 20 epochs of 3 steps, every sample drawn again (and, were it sent, ingested)
            wait_for(lambda reached=reached: last_step(daemon) > reached + 60, 30,  # type: ignore[misc]
                     "the trainer to run on attached")
        status = grpc_cli(daemon, "status")["previews_at_rest"]
        assert status["ingested"] == 0  # nothing sent again: the welcome said which samples the daemon has
        assert at_rest(tmp_path) == 48
    finally:
        stop.touch()
        trainer.kill()
