"""Checkpoints end to end: a real trainer writes them, a real daemon journals, lists and restores them."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import HERE, Daemon, Trainer, run_folder, set_hparams, wait_for

TORCH_TRAINER = HERE / "torch_trainer.py"


def steps_logged(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def hash_entries(stub: Any) -> list[Any]:
    return [r for r in stub.ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5).runs
            if len(r.experiment_hash) == 24]


def torch_trainer(env: dict[str, str], tmp: Path, *args: str, name: str = "torch") -> Trainer:
    return Trainer(env, tmp, "--log", str(tmp / f"{name}.jsonl"), *args, name=name, script=TORCH_TRAINER)


@pytest.mark.timeout(90)
def test_a_restored_checkpoint_continues_bit_identically(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    trainer = torch_trainer(env, tmp_path, "--pause-at", "100", "--until", str(stop),
                            "--hp", "checkpoint_frequency=10", "--hp", "checkpoint_keep_last=20")
    log = tmp_path / "torch.jsonl"
    try:
        stub = daemon.stub()
        wait_for(lambda: len(steps_logged(log)) >= 100, 40, "100 training steps")
        entry = wait_for(lambda: next((r for r in hash_entries(stub) if r.latest_weight_step == 100), None), 15,
                         "the checkpoint of step 100 journaled")
        reply = stub.RestoreCheckpoint(pb.RestoreCheckpointRequest(experiment_hash=f"{entry.experiment_hash}@50"),
                                       timeout=20)
        assert reply.success, reply.message
        assert "training continues from step 50" in reply.message
        assert set_hparams(stub, is_training=True).success
        wait_for(lambda: len(steps_logged(log)) >= 150, 40, "steps 50-99 again")
        stop.touch()
        assert set_hparams(stub, is_training=True).success
        status = trainer.wait(30)
    finally:
        trainer.kill()
    logged = steps_logged(log)
    first, again = {e["step"]: e for e in logged[:100]}, logged[100:150]
    assert [e["step"] for e in again] == list(range(50, 100))
    for e in again:
        assert e["ids"] == first[e["step"]]["ids"], e["step"]
        assert e["losses"] == first[e["step"]]["losses"], e["step"]  # exact: bit-identical float32 values
    assert status["errors"] == 0 and len(status["loaded"]) == 1
    files = list((run_folder(tmp_path) / "checkpoints").iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE((run_folder(tmp_path) / "checkpoints").stat().st_mode) == 0o700
