"""Nothing acknowledged is lost: torn tails are skipped on restart, a full disk refuses edits
honestly while reads go on, and storing resumes when space returns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import Daemon, Trainer, history, hparams, run_folder, set_hparams, wait_for


def loss_steps(daemon: Daemon) -> list[int]:
    return [p.model_age for p in history(daemon.stub()) if p.metric_name == "loss"]


def test_torn_tails_of_the_journal_and_the_signal_store_are_skipped(daemon: Daemon, env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "200", "--step-sleep", "0.002")
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 20, 10, "the first steps")
    assert set_hparams(stub, learning_rate=0.3).success
    trainer.wait()
    assert set_hparams(stub, training_steps_to_do=999).success  # no trainer: journaled, pending
    daemon.kill(signal.SIGKILL)
    folder = run_folder(tmp_path)
    signals, journal = folder / "signals.log", folder / "edits.journal"
    # A write cut mid-record: the last record loses its tail, as in a crash during write(2).
    os.truncate(signals, signals.stat().st_size - 100)
    os.truncate(journal, journal.stat().st_size - 5)
    daemon.start()
    assert loss_steps(daemon) == list(range(199))  # everything before the torn record
    hp = hparams(daemon.stub())
    assert hp["learning_rate"] == pytest.approx(0.3) and hp["training_steps_to_do"] == 200  # torn edit gone
    assert set_hparams(daemon.stub(), training_steps_to_do=555).success  # new entries follow good ones
    daemon.kill(signal.SIGKILL)
    daemon.start()
    assert hparams(daemon.stub())["training_steps_to_do"] == 555


@pytest.fixture
def small_disk(tmpfs: Callable[[str], Path]) -> Path:
    return tmpfs("1m")


def test_a_full_disk_refuses_edits_keeps_serving_and_recovers(env: dict[str, str], tmp_path: Path,
                                                              small_disk: Path) -> None:
    env["WEIGHTSLAB_ROOT_LOG_DIR"] = str(small_disk)
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.001", "--size", "4096",
                      "--batch", "128")
    try:
        stub = daemon.stub()
        wait_for(lambda: any(e.get("event") == "cannot store ring records; retrying"
                             for e in daemon.log_events()), 30, "the disk to fill")
        served = loss_steps(daemon)
        assert served  # reads go on from memory
        reply = set_hparams(stub, learning_rate=0.05)
        assert not reply.success
        assert reply.message == "edit not saved, nothing changed: No space left on device"
        assert hparams(stub)["learning_rate"] == pytest.approx(0.1)  # nothing applied, nothing claimed
        assert trainer.proc.poll() is None  # the trainer never noticed
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        wait_for(lambda: any(e.get("event") == "storing ring records again" for e in daemon.log_events()), 10,
                 "storing to resume")
        reply = set_hparams(stub, learning_rate=0.05)
        assert reply.success and reply.message.startswith("applied at step"), reply
        wait_for(lambda: len(loss_steps(daemon)) > len(served) + 50, 10, "the history to grow again")
    finally:
        trainer.kill()
        daemon.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)  # twenty daemon starts: longer than WL_TEST_TIMEOUT's default on a loaded machine
def test_twenty_daemon_kills_lose_nothing_acknowledged(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    trainer = Trainer(env, tmp_path, "--steps", "1000000", "--step-sleep", "0.002", "--until", str(stop))
    acknowledged: list[float] = []
    try:
        for cycle in range(20):
            stub = daemon.stub()
            served = max(loss_steps(daemon), default=-1)  # from disk, at once after a restart
            wait_for(lambda served=served: max(loss_steps(daemon), default=-1) > served, 10,  # type: ignore[misc]
                     "the trainer to re-attach")
            lr = 0.001 * (cycle + 1)
            reply = set_hparams(stub, learning_rate=lr)
            assert reply.success and reply.message.startswith("applied at step"), reply
            acknowledged.append(lr)
            daemon.kill(signal.SIGKILL)
            assert trainer.proc.poll() is None, trainer.stderr()
            daemon.start()
        stop.touch()
        status = trainer.wait(120)
    finally:
        trainer.kill()
    assert "Traceback" not in trainer.stderr()
    # The trainer has closed; the daemon may still be reading the ring's tail (and until then serves what its
    # log replayed, which can end before the record that reported the last edit).
    wait_for(lambda: len(loss_steps(daemon)) >= status["steps"], 30, "the daemon to ingest the trainer's last steps")
    assert status["lr"] == pytest.approx(acknowledged[-1])
    assert hparams(daemon.stub())["learning_rate"] == pytest.approx(acknowledged[-1])
    from weightslabd.store.framedlog import read_frames

    entries = [json.loads(frame) for _, frame in read_frames(run_folder(tmp_path) / "edits.journal")]
    journaled = [e["values"]["learning_rate"] for e in entries if e["kind"] == "hparams"]
    assert journaled == pytest.approx(acknowledged, rel=1e-6)  # every acknowledged edit, in order
    steps = loss_steps(daemon)
    assert status["dropped"] == 0, status["dropped_by"]  # the publisher kept up
    assert steps == list(range(status["steps"]))  # continuous: the ring held the gaps
    from .harness import shm_segments

    wait_for(lambda: shm_segments(env) == [], 10, "the daemon to unlink the ended trainer's ring")
    assert sorted(os.listdir(env["WEIGHTSLAB_RUNTIME_DIR"])) == ["control.sock", "daemon.json", "daemon.lock",
                                                                 "grpc-web.sock", "runs.json"]
