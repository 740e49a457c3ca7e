"""The shim's session against a real ring, with no daemon: it never raises into the training loop,
and a command re-sent after a daemon restart is acknowledged without being applied twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from weightslab_shim import wire
from weightslab_shim.data import WatchedLoader
from weightslab_shim.ring import RingReader
from weightslab_shim.session import Session


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    s = Session({"WEIGHTSLAB_RUNTIME_DIR": str(tmp_path / "rt"), "WEIGHTSLAB_RING_MB": "1"})
    s.start()
    yield s
    s.close()


class Optimizer:
    def __init__(self) -> None:
        self.param_groups = [{"lr": 0.1}]


def test_odd_values_are_left_out_and_never_raise(session: Session, capsys: pytest.CaptureFixture[str]) -> None:
    session.begin_step()
    session.add_batch("train", np.arange(2), targets=np.array(["cat", "dog"]), preds=[{"box": 1}, {"box": 2}])
    session.add_signal("loss", "train", torch.arange(2), torch.ones(2, dtype=torch.bfloat16))
    session.add_signal("broken", "train", np.arange(3), object())
    session.end_step(training=True)
    assert session.step == 1
    assert session.flush(5)
    assert session.ring is not None
    reader = RingReader(session.ring.name)
    try:
        record = next(reader.records())
        from weightslab_shim import records

        names = {name.split("\x1f")[0] for name in records.decode(record.payload)}
        assert names == {"ids", "sig", "bids"}  # the loss made it; strings and dicts were left out
    finally:
        reader.close()
    assert "ignored; training continues" in capsys.readouterr().err


def test_steps_after_close_do_nothing(session: Session) -> None:
    session.close()
    session.begin_step()
    session.add_signal("loss", "train", np.arange(2), np.ones(2))
    session.end_step(training=True)
    assert session.step == 1


def test_a_resent_edit_is_acknowledged_with_its_first_step_and_not_applied_again(session: Session) -> None:
    opt = Optimizer()
    session.optimizers.append(opt)
    command = {"type": wire.COMMAND, "cmd_id": "e7", "op": "set_hparams", "args": {"learning_rate": 0.5}}
    session._on_message(command)
    session.begin_step()
    session.end_step(training=True)
    opt.param_groups[0]["lr"] = 0.25  # a scheduler moves it on
    session._on_message(command)  # a restarted daemon re-sends the edit it had not seen acknowledged
    session.begin_step()
    assert opt.param_groups[0]["lr"] == 0.25
    assert session.channel is not None
    acks = [m for m in session.channel.outbox if m["type"] == wire.ACK]
    assert [(a["ok"], a["step"]) for a in acks] == [(True, 0), (True, 0)]
    assert acks[1]["message"] == "already applied"


def test_discards_reach_batches_already_built(session: Session) -> None:
    data = [(np.zeros(2, dtype=np.float32), i) for i in range(64)]
    loader = WatchedLoader(data, session, "train", batch_size=8, is_training=True)
    session.begin_step()
    first = next(loader)
    assert len(first[1]) == 8
    loader.set_denied(np.arange(8, 64), True)
    assert np.asarray(next(loader)[1]).tolist() == list(range(8))  # the rest of the epoch is gone
    masked = loader._without_denied((np.zeros((4, 2)), np.array([0, 9, 10, 3]), np.array([0, 1, 2, 3])))
    assert masked[1].tolist() == [0, 3] and masked[2].tolist() == [0, 3]


def test_deny_commands_accept_a_packed_mask(session: Session) -> None:
    data = [(np.zeros(1, dtype=np.float32), 0) for _ in range(100_000)]
    loader = WatchedLoader(data, session, "train", batch_size=8, is_training=True)
    mask = np.zeros(100_000, dtype=bool)
    mask[::2] = True
    session._on_message({"type": wire.COMMAND, "cmd_id": "e1", "op": "deny",
                         "args": {"split": "train", "mask": wire.pack_mask(mask), "deny": True}})
    session.begin_step()
    assert loader.active_count() == 50_000


@pytest.mark.parametrize("with_torch", [True, False])
def test_what_an_item_carries_after_its_target_is_kept(session: Session, with_torch: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not with_torch:
        monkeypatch.setitem(__import__("sys").modules, "torch", None)  # the loader's numpy path
    data = [(np.full(2, i, dtype=np.float32), i % 3, np.array([i, i + 1.0]), {"file": f"{i}.png"})
            for i in range(16)]
    loader = WatchedLoader(data, session, "train", batch_size=4, is_training=True)
    inputs, ids, targets, boxes, meta = next(loader)
    ids = np.asarray(ids)
    assert np.asarray(boxes).tolist() == [[i, i + 1.0] for i in ids.tolist()]  # stacked, in the batch's order
    assert (meta["file"] if isinstance(meta, dict) else [m["file"] for m in meta]) == [f"{i}.png" for i in ids]
    assert np.asarray(targets).tolist() == [i % 3 for i in ids.tolist()]
    assert np.asarray(inputs)[:, 0].tolist() == ids.tolist()


@pytest.mark.parametrize(("rank", "world"), [("abc", "2"), ("1.5", ""), ("0", "zero"), ("-1", "2")])
def test_a_bad_rank_is_one_warning_and_a_single_process(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        rank: str, world: str) -> None:
    s = Session({"WEIGHTSLAB_RUNTIME_DIR": str(tmp_path / "rt"), "RANK": rank, "WORLD_SIZE": world})
    assert (s.rank, s.world_size) == (0, 1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"RANK={rank!r}" in lines[0] and "rank 0 of 1" in lines[0], lines


def test_torch_rank_and_world_size_are_read(tmp_path: Path) -> None:
    s = Session({"WEIGHTSLAB_RUNTIME_DIR": str(tmp_path / "rt"), "RANK": "3", "WORLD_SIZE": "4"})
    assert (s.rank, s.world_size) == (3, 4)
