"""What a (re)attaching trainer is sent: discards and restores it never acknowledged, each under its edit's
id (so the ack journals it as applied), large ones as a packed mask, then the run's full deny lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weightslab_shim import wire
from weightslabd.ipc.control import DENY_IDS_MAX, unacked_denies
from weightslabd.store.run import Run


def test_unacked_discards_are_resent_under_their_edit_ids_in_journal_order(tmp_path: Path) -> None:
    size = DENY_IDS_MAX * 2
    run = Run.create(tmp_path / "r", {"run_id": "r", "created": 0.0, "splits": {"train": size}})
    try:
        many = list(range(0, DENY_IDS_MAX + 1))
        first = run.journal_edit({"kind": "deny", "split": "train", "ids": [1, 2, 3], "deny": True})
        run.journal_edit({"kind": "hparams", "values": {"learning_rate": 0.5}})
        second = run.journal_edit({"kind": "deny", "split": "train", "ids": many, "deny": True})
        third = run.journal_edit({"kind": "deny", "split": "train", "ids": [2], "deny": False})
        with run.lock:
            sent = unacked_denies(run)
        assert [(seq, op) for seq, op, _ in sent] == [(first, "deny"), (second, "deny"), (third, "deny")]
        assert sent[0][2] == {"split": "train", "ids": [1, 2, 3], "deny": True}
        assert sent[2][2] == {"split": "train", "ids": [2], "deny": False}
        packed = sent[1][2]
        assert set(packed) == {"split", "mask", "deny"} and packed["deny"] is True
        assert np.flatnonzero(wire.unpack_mask(packed["mask"], size)).tolist() == many
        run.record_applied(first, 7, True)  # acknowledged: never sent again
        with run.lock:
            assert [seq for seq, _, _ in unacked_denies(run)] == [second, third]
    finally:
        run.close()


def test_an_old_unacked_edit_is_not_resent_over_a_newer_acknowledged_one(tmp_path: Path) -> None:
    """An edit left unacknowledged while a later edit of the same hyperparameter was acknowledged: the later one
    owns the value. Re-sent whole at the next attach, the old edit would set the old value after the new one
    in any trainer process that had not applied it already (the shim's dedup is per process); the daemon's
    own rule keeps the newest. The same after a reopen (the journal replayed)."""
    run = Run.create(tmp_path / "r", {"run_id": "r", "created": 0.0, "splits": {"train": 4}})
    try:
        old = run.journal_edit({"kind": "hparams", "values": {"learning_rate": 0.015, "batch_size": 8}})
        new = run.journal_edit({"kind": "hparams", "values": {"learning_rate": 0.02}})
        run.record_applied(new, 40, True)
        resent = [(seq, args) for seq, op, args in run.commands_to_resend() if op == "set_hparams"]
        assert resent == [(old, {"batch_size": 8})]  # the old edit's other value is still its own to send
        run.record_applied(old, 41, True)  # its late ack: the newer value stays the daemon's
        assert run.effective_hparams()["learning_rate"] == 0.02 and run.effective_hparams()["batch_size"] == 8
        folder = run.folder
    finally:
        run.close()
    run = Run.open(folder)
    try:
        assert run.effective_hparams()["learning_rate"] == 0.02
        assert [op for _, op, _ in run.commands_to_resend() if op == "set_hparams"] == []
    finally:
        run.close()
