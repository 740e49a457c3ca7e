"""An evaluation pass with torch, in one process: a real session, ring and DataLoader; no daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import weightslab_shim
from weightslab_shim import records
from weightslab_shim.ring import RecordType, RingReader
from weightslab_shim.session import Session
from weightslab_shim.wrappers import SignalFunction


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    s = Session({"WEIGHTSLAB_RUNTIME_DIR": str(tmp_path / "rt"), "WEIGHTSLAB_RING_MB": "1"})
    s.start()
    yield s
    s.close()


def eval_records(s: Session) -> list[tuple[int, dict[str, np.ndarray]]]:
    assert s.flush(5) and s.ring is not None
    reader = RingReader(s.ring.name)
    try:
        return [(r.step, records.decode(r.payload)) for r in reader.records() if r.type == RecordType.EVAL]
    finally:
        reader.close()


def test_a_pass_runs_without_gradients_in_eval_mode_and_records_per_sample_losses(session: Session) -> None:
    data = [(torch.full((3,), float(i)), i % 2) for i in range(10)]
    loader = weightslab_shim.WatchedLoader(data, session, "val", batch_size=4)
    loader.set_denied(np.array([9]), True)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5))
    grad_seen: list[bool] = []
    model.register_forward_hook(lambda m, i, o: grad_seen.append(torch.is_grad_enabled() or m.training))
    session.models.append(model)
    loss = SignalFunction(torch.nn.CrossEntropyLoss(reduction="none"), session, "loss")
    session.signal_functions.append(loss)
    session.step = 7
    ack: dict[str, Any] = session.evaluation.request({"id": "p1", "split": "val"})
    assert ack == {"queued": "p1", "total": 3}
    session.begin_step()  # the boundary runs the pass
    report = session.evaluation.report
    assert report is not None and report["pass"]["state"] == "done" and report["pass"]["current"] == 3
    assert grad_seen == [False, False, False] and model.training and session.step == 7
    (step, fields), = eval_records(session)
    assert step == 7  # the model age
    ids = np.concatenate([v for k, v in fields.items() if k.startswith("ids\x1fval\x1floss")])
    assert sorted(ids.tolist()) == list(range(9))  # the discarded sample left out
    preds = [k for k in fields if k.startswith("pred\x1fval")]
    assert preds  # class predictions of 2-column outputs


def test_a_failing_model_ends_the_pass_in_error_and_training_goes_on(session: Session) -> None:
    weightslab_shim.WatchedLoader([(torch.zeros(2), 0)] * 4, session, "val", batch_size=2)
    model = torch.nn.Linear(3, 2)  # wrong input size: raises inside the pass
    session.models.append(model)
    session.evaluation.request({"id": "p2", "split": "val"})
    session.begin_step()
    report = session.evaluation.report
    assert report is not None and report["pass"]["state"] == "error" and "RuntimeError" in report["pass"]["error"]
    assert model.training
    session.end_step(training=True)
    assert session.step == 1


def test_a_registered_evaluation_function_replaces_the_default(session: Session,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weightslab_shim, "_session", session)
    weightslab_shim.WatchedLoader([(torch.full((3,), float(i)), i) for i in range(6)], session, "val", batch_size=4)
    session.models += [torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)]  # two models: the default would refuse
    metric = weightslab_shim.watch_or_edit(lambda out, y: (out - y) ** 2, flag="metric", signal_name="err")
    seen: list[list[int]] = []

    def evaluate(batch: Any) -> None:
        inputs, ids, targets = batch
        seen.append(ids.tolist())
        metric(session.models[0](inputs)[:, 0] + session.models[1](inputs)[:, 0], targets, batch_ids=ids)

    assert weightslab_shim.watch_or_edit(evaluate, flag="evaluation") is evaluate
    session.evaluation.request({"id": "p3", "split": "val"})
    session.begin_step()
    assert seen == [[0, 1, 2, 3], [4, 5]]
    assert session.evaluation.report is not None and session.evaluation.report["pass"]["state"] == "done"
    (_, fields), = eval_records(session)
    assert any(k.startswith("sig\x1fval\x1ferr") for k in fields)
