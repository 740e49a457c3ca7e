"""Edits reach the trainer at step boundaries: discards leave the loop mid-epoch, restores bring
samples back, and a torch quickstart script runs attached with only its import changed."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import Daemon, Trainer, history, hparams, journal, run_folder, set_hparams, wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_cnn.py"


def deny(stub: object, ids: list[int], *, restore: bool = False) -> pb.CommandResponse:
    op = pb.DenySamplesOperation(sample_ids=ids, accumulate=True)
    cmd = pb.TrainerCommand(remove_from_denylist_operation=op) if restore else pb.TrainerCommand(
        deny_samples_operation=op)
    return stub.ExperimentCommand(cmd, timeout=10)  # type: ignore[attr-defined]


def test_discarded_samples_leave_the_loop_mid_epoch_and_restore_brings_them_back(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    # 256 samples in batches of 16: an epoch is 16 steps, so edits land mid-epoch.
    trainer = Trainer(env, tmp_path, "--steps", "400", "--step-sleep", "0.004")
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 40, 10, "the first steps")
    denied = list(range(0, 256, 4))
    reply = deny(stub, denied)
    assert reply.success and reply.message.startswith("applied at step"), reply
    denied_at = int(reply.message.rsplit(" ", 1)[1])
    wait_for(lambda: len(history(stub)) > 2 * (denied_at + 60), 10, "steps after the discard")
    reply = deny(stub, denied, restore=True)
    assert reply.success, reply
    restored_at = int(reply.message.rsplit(" ", 1)[1])
    status = trainer.wait(60)
    by_step = dict(zip(status["step_of"], status["seen"], strict=True))
    gone = set(denied)
    assert any(gone & set(by_step[s]) for s in range(denied_at))
    assert not any(gone & set(by_step[s]) for s in range(denied_at, restored_at))
    assert any(gone & set(by_step[s]) for s in range(restored_at, 400))
    assert restored_at - denied_at >= 60
    journal = (run_folder(tmp_path) / "edits.journal").read_bytes()
    assert journal.count(b'"kind":"deny"') == 2




@pytest.mark.timeout(90)
def test_edits_made_while_no_trainer_is_attached_apply_when_it_attaches(daemon: Daemon, env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    # The trainer runs on, but cannot attach while the edits are made: it is stopped (SIGSTOP) while its
    # daemon is killed and another starts, which knows the run from disk and no trainer for it.
    stop = tmp_path / "stop"
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.003", "--until", str(stop))
    try:
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 40, 20, "the first steps")  # every sample seen: an epoch is 16 steps
        trainer.proc.send_signal(signal.SIGSTOP)
        daemon.kill(signal.SIGKILL)
        daemon.start()
        stub = daemon.stub()
        lr = set_hparams(stub, learning_rate=0.5)
        denied = [1, 2, 3]
        discard = deny(stub, denied)
        for reply in (lr, discard):
            assert reply.success and "no trainer is attached, it applies when the trainer reattaches" in reply.message
        edits = {e["kind"]: e["seq"] for e in journal(tmp_path) if e["kind"] in ("hparams", "deny")}
        assert set(edits) == {"hparams", "deny"}
        trainer.proc.send_signal(signal.SIGCONT)

        def applied() -> dict[int, dict[str, Any]]:
            done = {e["edit"]: e for e in journal(tmp_path) if e["kind"] == "applied"}
            return done if set(edits.values()) <= set(done) else {}

        steps = wait_for(applied, 20, "the trainer to apply both edits and the journal to record it")
        assert all(steps[seq]["ok"] for seq in edits.values())
        # The acknowledgement comes over the control socket; the hyperparameters the daemon serves come with
        # the trainer's next records through its ring, a moment later.
        wait_for(lambda: hparams(stub)["learning_rate"] == 0.5, 10, "the daemon to serve the new learning rate")
        denied_at = steps[edits["deny"]]["step"]
        # More than an epoch (16 steps) after the discard before the trainer stops: the check below needs it.
        wait_for(lambda: max((p.model_age for p in history(stub)), default=0) > denied_at + 20, 30,
                 "an epoch and more of steps after the discard")
        stop.touch()
        status = trainer.wait(60)
    finally:
        trainer.proc.send_signal(signal.SIGCONT)
        trainer.kill()
    assert status["lr"] == 0.5 and status["hparams"]["learning_rate"] == 0.5
    by_step = dict(zip(status["step_of"], status["seen"], strict=True))
    assert 40 < denied_at < max(by_step) - 16  # applied after the restart, with an epoch and more after it
    assert any(set(denied) & set(by_step[s]) for s in range(denied_at))
    assert not any(set(denied) & set(by_step[s]) for s in range(denied_at, max(by_step) + 1))


def test_torch_quickstart_script_runs_attached(daemon: Daemon, env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "40", "--samples", "512", "--eval-every", "20"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    stub = daemon.stub()
    names = {p.metric_name for p in history(stub)}
    assert {"train-loss-CE", "eval-loss-CE", "eval-accuracy"} <= names
    assert [p.model_age for p in history(stub) if p.metric_name == "train-loss-CE"] == list(range(40))
    assert list(stub.GetDataSplits(pb.Empty(), timeout=5).split_names) == ["train", "eval"]
    assert "Traceback" not in result.stderr and "no weightslabd" not in result.stderr


def test_batch_size_edit_changes_the_batches_from_the_step_it_applies(daemon: Daemon, env: dict[str, str],
                                                                       tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "300", "--step-sleep", "0.003")
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 20, 10, "the first steps")
    reply = set_hparams(stub, batch_size=5)
    assert reply.success and reply.message.startswith("applied at step"), reply
    applied = int(reply.message.rsplit(" ", 1)[1])
    status = trainer.wait(60)
    sizes = {step: len(ids) for step, ids in zip(status["step_of"], status["seen"], strict=True)}
    assert all(sizes[s] == 16 for s in range(applied - 5, applied - 1))
    assert all(sizes[s] <= 5 for s in range(applied, 300))  # batches are built as they are drawn
    assert status["hparams"]["batch_size"] == 5
