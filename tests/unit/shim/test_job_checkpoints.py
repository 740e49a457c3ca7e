"""Checkpoints of a torchrun job, each rank a Session of its own (no process group: each applies alone):
rank 0 writes the checkpoint, rank r its own part beside it under the same name; a restore gives every
rank its own sampler position and random states back, and re-shards the epoch for another world size."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from weightslab_shim.checkpoints import RANK_NAME
from weightslab_shim.data import WatchedLoader
from weightslab_shim.session import Session

SIZE, BATCH = 30, 2


class Optimizer:
    def __init__(self) -> None:
        self.param_groups = [{"lr": 0.1}]


def rank(r: int, world: int, folder: Path) -> tuple[Session, WatchedLoader]:
    env = {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "MASTER_ADDR": "localhost",
           "MASTER_PORT": "1"}
    session = Session(env=env)
    loader = WatchedLoader([(np.zeros(2, dtype=np.float32), 0) for _ in range(SIZE)], session, "train",
                           batch_size=BATCH, shuffle=True, is_training=True, seed=5)
    session.optimizers.append(Optimizer())
    session.register_hparams({"learning_rate": 0.1, "checkpoint_keep_last": 2})
    session.checkpoints.folder = folder
    return session, loader


def draw(loader: WatchedLoader, n: int) -> list[tuple[int, list[int], float]]:
    """n batches: (epoch, ids, a number of the rank's own random state)."""
    out = []
    for _ in range(n):
        _, ids, _ = next(loader)
        out.append((loader.sampler.epoch - 1, ids.tolist(), float(np.random.random())))
    return out


def test_every_rank_gets_its_own_position_and_random_states_back(tmp_path: Path) -> None:
    ranks = [rank(r, 2, tmp_path) for r in range(2)]
    for _, loader in ranks:
        draw(loader, 11)  # into the second epoch (7.5 global batches of 4 an epoch)
    saved = []
    for r, (session, _) in enumerate(ranks):  # one process plays both ranks: each saves its own random state
        np.random.seed(100 + r)
        saved.append(session.checkpoints.save("test"))
    assert saved[0]["path"] == saved[1]["path"]  # every rank names the checkpoint alike
    assert all(session.checkpoints.wait(10) for session, _ in ranks)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    main = Path(saved[0]["path"]).name
    assert names == sorted([main, main.replace(".wlckpt", ".rank1.wlckpt")]) and RANK_NAME.fullmatch(names[0])
    after = []
    for r, (_, loader) in enumerate(ranks):
        np.random.seed(100 + r)
        after.append(draw(loader, 6))
    for r, (session, loader) in enumerate(ranks):
        np.random.seed(999)  # changed since: the restore brings this rank's back
        session.optimizers[0].param_groups[0]["lr"] = 0.7
        reply = session.checkpoints.restore(saved[0]["path"])
        assert reply["step"] == 0 and session.optimizers[0].param_groups[0]["lr"] == 0.1
        assert draw(loader, 6) == after[r]  # its own shard from the same position, its own numbers
    assert after[0][0][2] != after[1][0][2] and not set(after[0][0][1]) & set(after[1][0][1])
    for _ in range(3):
        for session, _ in ranks:
            session.checkpoints.save("test")
            assert session.checkpoints.wait(10)
    kinds = Counter(bool(RANK_NAME.fullmatch(p.name)) for p in (tmp_path / "checkpoints").iterdir())
    assert kinds == {False: 2, True: 2}  # checkpoint_keep_last: the checkpoints and their ranks' parts
    for session, _ in ranks:
        session.close()


@pytest.mark.parametrize("new_world", [3, 1])
def test_a_checkpoint_of_two_ranks_re_shards_its_epoch_over_another_world_size(tmp_path: Path, new_world: int) -> None:
    old = [rank(r, 2, tmp_path) for r in range(2)]
    drawn = [draw(loader, 10) for _, loader in old]  # 7.5 global batches an epoch: 2 into the second epoch
    saved = [session.checkpoints.save("test") for session, _ in old]
    assert all(session.checkpoints.wait(10) for session, _ in old)
    epoch = drawn[0][-1][0]
    seen = Counter(i for log in drawn for e, ids, _ in log if e == epoch for i in ids)
    new = [rank(r, new_world, tmp_path) for r in range(new_world)]
    for session, _ in new:
        session.checkpoints.restore(saved[0]["path"])
    rest = [draw(loader, 12) for _, loader in new]  # past the end of the epoch
    counts = {len([b for b in log if b[0] == epoch]) for log in rest}
    assert len(counts) == 1  # every new rank draws as many batches of the epoch
    seen.update(i for log in rest for e, ids, _ in log if e == epoch for i in ids)
    assert set(seen) == set(range(SIZE))  # every id of the epoch once across the old and the new ranks...
    assert sum(seen.values()) - SIZE < new_world  # ...but for fewer than W ids padding the last batch
    for session, _ in (*old, *new):
        session.close()
