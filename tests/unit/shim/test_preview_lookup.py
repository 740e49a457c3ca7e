"""Which samples the attached shim sends a preview of: each once; none looked up again once the daemon
has them all (the later epochs' hot path); a batch holding an id twice, or a preview record that was
dropped, never leaves a sample without one. A real session and ring, attached to a real ZeroMQ socket
answering as the daemon does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from weightslab_shim import wire
from weightslab_shim.runtime import control_endpoint
from weightslab_shim.session import Session
from weightslab_shim.tensors import Staged


@pytest.fixture
def attached(tmp_path: Path) -> Iterator[Session]:
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(control_endpoint(runtime))
    session = Session({"WEIGHTSLAB_RUNTIME_DIR": str(runtime), "WEIGHTSLAB_RING_MB": "1"})
    session.register_split("train", 6)
    session.start()
    try:
        assert router.poll(5000), "no hello from the shim"
        ident, _ = router.recv_multipart()
        router.send_multipart([ident, wire.encode({"type": wire.WELCOME, "previews": {}})])
        deadline = time.monotonic() + 5
        while not (session.channel and session.channel.attached.is_set()):
            assert time.monotonic() < deadline, "the shim did not take the welcome"
            time.sleep(0.005)
        yield session
        closing = threading.Thread(target=session.close)
        closing.start()
        while closing.is_alive():  # the daemon's part of a clean end: END_OK once the ring is drained
            if router.poll(50) and wire.decode(router.recv_multipart()[1])["type"] == wire.END:
                router.send_multipart([ident, wire.encode({"type": wire.END_OK})])
        closing.join()
    finally:
        session.close()
        router.close(0)
        ctx.term()


def sent(session: Session) -> list[int]:
    """Sample ids of the previews queued since the last call (the step's preview fields)."""
    ids = [int(i) for name, value in session._previews if name.startswith("pids")
           for i in value.array()]
    session._previews.clear()
    return ids


def note(session: Session, ids: list[int]) -> list[int]:
    session.note_inputs("train", torch.tensor(ids), torch.rand(len(ids), 3, 4, 4), torch.zeros(len(ids)))
    return sent(session)


def test_each_sample_once_then_no_lookup(attached: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    assert note(attached, [4, 1, 5]) == [4, 1, 5]  # a whole batch of new samples, in its order
    assert note(attached, [1, 0, 2]) == [0, 2]  # 1 was sent: only the new ones
    assert note(attached, [3, 2]) == [3]
    looked_up = []
    real = np.flatnonzero
    monkeypatch.setattr(np, "flatnonzero", lambda a: looked_up.append(1) or real(a))
    assert note(attached, [0, 1, 2, 3, 4, 5]) == []
    assert looked_up == []  # the daemon has them all: the step does not look them up


def test_a_repeated_id_leaves_no_sample_out(attached: Session) -> None:
    assert note(attached, [0, 0, 1, 1, 2]) == [0, 0, 1, 1, 2]  # 5 ids, 3 samples: 3 still lack one
    assert note(attached, [3, 4]) == [3, 4]
    assert note(attached, [5, 0]) == [5]


def test_a_dropped_preview_is_sent_again(attached: Session) -> None:
    assert note(attached, [0, 1, 2, 3, 4, 5]) == [0, 1, 2, 3, 4, 5]
    assert note(attached, [2]) == []
    # The publisher could not write the record of 2 and 3 (ring full): they are offered again.
    attached._unmark_previews([("pids\x1ftrain\x1f0", Staged(np.array([2, 3])))])
    assert note(attached, [2, 3, 4]) == [2, 3]
