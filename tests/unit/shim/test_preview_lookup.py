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
from waiting import wait_for

from weightslab_shim import records, wire
from weightslab_shim.preview_offers import PreviewOffers
from weightslab_shim.ring import RecordType, RingReader
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
    """Sample ids of the previews this step's record carries (built here, as the publisher would)."""
    record = session.previews.take()
    fields = [] if record is None else record if isinstance(record, list) else record()
    return [int(i) for name, value in fields if name.startswith("pids") for i in value.array()]


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


def test_no_lookup_when_the_daemon_had_every_preview_at_the_welcome(attached: Session,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon restarted mid-run (or a resumed run) has every sample's preview already: after one lookup
    that finds nothing to send, the steps neither keep their batch nor look it up again."""
    attached.previews.welcome({"train": wire.pack_mask(np.ones(6, dtype=bool))}, {"train": 6}, False)
    assert note(attached, [4, 1, 5]) == []
    looked_up = []
    real = np.flatnonzero
    monkeypatch.setattr(np, "flatnonzero", lambda a: looked_up.append(1) or real(a))
    attached.note_inputs("train", torch.tensor([0, 2]), torch.rand(2, 3, 4, 4))
    assert attached.previews.take() is None  # nothing kept for the publisher
    assert looked_up == []
    attached.previews.unmark([("pids\x1ftrain\x1f0", Staged(np.array([2])))])  # a drop: 2 is offered again
    assert note(attached, [0, 2]) == [2]


def test_a_repeated_id_leaves_no_sample_out(attached: Session) -> None:
    assert note(attached, [0, 0, 1, 1, 2]) == [0, 0, 1, 1, 2]  # 5 ids, 3 samples: 3 still lack one
    assert note(attached, [3, 4]) == [3, 4]
    assert note(attached, [5, 0]) == [5]


def test_a_dropped_preview_is_sent_again(attached: Session) -> None:
    assert note(attached, [0, 1, 2, 3, 4, 5]) == [0, 1, 2, 3, 4, 5]
    assert note(attached, [2]) == []
    # The publisher could not write the record of 2 and 3 (ring full): they are offered again.
    attached.previews.unmark([("pids\x1ftrain\x1f0", Staged(np.array([2, 3])))])
    assert note(attached, [2, 3, 4]) == [2, 3]


def test_a_cpu_batch_is_picked_and_reduced_on_the_publishers_thread(attached: Session,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The training thread only keeps the batch; the lookup and the 8-bit reduction run where the record
    is written, and the record in the ring carries every new sample's preview."""
    threads: list[str] = []
    real_pick = PreviewOffers.pick
    monkeypatch.setattr(PreviewOffers, "pick", lambda self, fields, offer: threads.append(
        threading.current_thread().name) or real_pick(self, fields, offer))
    reader = RingReader(attached.ring.name)
    try:
        inputs = torch.rand(4, 3, 8, 8)
        attached.begin_step()
        attached.note_inputs("train", torch.tensor([5, 2, 0, 2]), inputs, torch.tensor([1, 2, 3, 2]))
        assert threads == []  # nothing looked up on the training thread
        attached.end_step(training=True)
        assert attached.flush(5)
        assert threads == ["weightslab-publisher"]
        previews = wait_for(lambda: [records.decode(r.payload) for r in reader.records()
                                     if r.type == RecordType.PREVIEW], 5, "the preview record in the ring")
        assert len(previews) == 1
        fields = previews[0]
        assert fields["pids\x1ftrain\x1f0"].tolist() == [5, 2, 0, 2]
        assert fields["ptgt\x1ftrain\x1f0"].tolist() == [1, 2, 3, 2]
        pixels = fields["x\x1ftrain\x1f0"]
        assert pixels.dtype == np.uint8 and pixels.shape == (4, 3, 8, 8)
        assert np.array_equal(pixels[0], np.floor(inputs[0].numpy() * 255 + 0.5).astype(np.uint8))
        assert attached.previews.have["train"].tolist() == [True, False, True, False, False, True]
    finally:
        reader.close()


def test_a_built_record_that_fails_to_be_written_gives_its_samples_back(attached: Session) -> None:
    """The publisher hands the record itself back when writing it raised: what its build marked is unmarked."""
    attached.note_inputs("train", torch.tensor([1, 2]), torch.rand(2, 3, 4, 4))
    record = attached.previews.take()
    assert record is not None and not isinstance(record, list)
    assert [int(i) for name, value in record() if name.startswith("pids") for i in value.array()] == [1, 2]
    attached._dropped(RecordType.PREVIEW, record)
    assert note(attached, [2, 1, 3]) == [2, 1, 3]
