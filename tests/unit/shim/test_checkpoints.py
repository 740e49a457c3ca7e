"""The shim's checkpoints without a daemon: a numpy-only loop restored mid-epoch draws the same batches
and random numbers again, and the files are private."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import numpy as np
import pytest

from weightslab_shim.data import WatchedLoader
from weightslab_shim.session import Session


class Optimizer:
    def __init__(self) -> None:
        self.param_groups = [{"lr": 0.1}]


def draws(loader: WatchedLoader, n: int) -> list[tuple[list[int], float, float]]:
    out = []
    for _ in range(n):
        _, ids, _ = next(loader)
        out.append((ids.tolist(), float(np.random.random()), random.random()))
    return out


def test_a_restore_mid_epoch_replays_the_same_batches_and_random_numbers(tmp_path: Path) -> None:
    session = Session(env={})
    loader = WatchedLoader([(np.zeros(2, dtype=np.float32), i % 3) for i in range(50)], session, "train",
                           batch_size=4, shuffle=True, is_training=True, seed=7)
    session.optimizers.append(Optimizer())
    session.register_hparams({"learning_rate": 0.1, "checkpoint_keep_last": 2})
    ckpt = session.checkpoints
    ckpt.folder = tmp_path
    draws(loader, 5)  # mid-epoch: 13 batches an epoch
    loader.set_denied(np.array([1, 2]), True)
    saved = ckpt.save("test")
    assert ckpt.wait(10)
    after = draws(loader, 20)  # into the next epoch
    loader.set_denied(np.array([1, 2]), False)
    session.optimizers[0].param_groups[0]["lr"] = 0.9
    session.hparams["learning_rate"] = 0.9
    ckpt.restore(saved["path"])
    assert draws(loader, 20) == after
    assert session.optimizers[0].param_groups[0]["lr"] == 0.1 and session.hparams["learning_rate"] == 0.1
    assert loader.sampler.denied[[1, 2]].all()
    path = Path(saved["path"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for _ in range(3):
        ckpt.save("test")
        assert ckpt.wait(10)
    assert len(list(path.parent.iterdir())) == 2  # checkpoint_keep_last


def test_only_its_own_checkpoint_files_are_loaded(tmp_path: Path) -> None:
    session = Session(env={})
    session.checkpoints.folder = tmp_path
    stranger = tmp_path / "elsewhere" / "step-00000001-abcdef.wlckpt"
    for bad in ("/etc/passwd", str(stranger), "relative/step-00000001-abcdef.wlckpt"):
        with pytest.raises(ValueError):
            session.checkpoints.restore(bad)


def test_a_resume_with_no_daemon_running_does_not_hold_the_first_step(tmp_path: Path) -> None:
    import time

    session = Session(env={"WEIGHTSLAB_RESUME": "1", "WEIGHTSLAB_RUNTIME_DIR": str(tmp_path / "rt")})
    began = time.monotonic()
    try:
        session.begin_step()
        session.end_step(training=True)
        assert time.monotonic() - began < 3 and session.step == 1 and session.errors == 0
    finally:
        session.close()


def test_the_model_hash_is_the_architecture_not_the_weights() -> None:
    import torch

    from weightslab_shim.checkpoints import model_hash

    def net(width: int) -> object:
        return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))

    model = net(8)
    before = model_hash([model])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert model_hash([model]) == before and len(before) == 8
    assert model_hash([net(16)]) != before
