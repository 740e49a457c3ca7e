"""`weightslabd export`: a real daemon's run, exported while the daemon serves it, opens with the very
snippets docs/data-at-rest.md shows, and holds what the daemon served."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store import compactor, parquet_curves

from .harness import Daemon, Trainer, history, run_folder, wait_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-at-rest.md"
STEPS, BATCH = 40, 16


def snippets() -> dict[str, str]:
    text = DOC.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- snippet: (\w+) -->\n```python\n(.*?)```", text, re.S)}


def export(env: dict[str, str], run: str, to: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weightslabd", "export", run, "--to", str(to)], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(90)
def test_an_exported_run_opens_in_pandas_and_duckdb_as_the_docs_show(env: dict[str, str], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(env, **{compactor.CHUNK_ENV: "128",  # some chunks at rest, one still in memory
                       parquet_curves.CHUNK_ENV: "16"})  # the curves' too
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        stub = daemon.stub()
        Trainer(env, tmp_path, "--steps", str(STEPS), "--batch", str(BATCH)).wait(60)
        wait_for(lambda: len([p for p in history(stub) if p.metric_name == "loss"]) >= STEPS, 10, "every step")
        for ids, tag in (([1, 2, 3], "hard"), ([3, 4], "odd")):
            assert stub.EditDataSample(pb.DataEditsRequest(stat_name="tags", string_value=tag, type=pb.EDIT_ACCUMULATE,
                                                           samples_ids=ids, sample_origins=["train"] * len(ids)),
                                       timeout=10).success
        assert stub.EditDataSample(pb.DataEditsRequest(stat_name="deny_listed", bool_value=True, type=pb.EDIT_OVERRIDE,
                                                       samples_ids=[5, 6], sample_origins=["train"] * 2),
                                   timeout=10).success
        step_values = sorted(stub.GetStepSamples(pb.StepSamplesRequest(metric_name="loss", model_age=7),
                                                 timeout=10).sample_values)
        served = [(p.model_age, p.metric_value, p.value_min, p.value_max, p.timestamp)
                  for p in history(stub) if p.metric_name == "loss"]
        folder = run_folder(tmp_path)
        done = export(env, folder.name, tmp_path / "export")  # by run id, the daemon still serving it
        assert done.returncode == 0, done.stderr
        assert export(env, folder.name, tmp_path / "export").returncode == 2  # not empty: refused, one line
        bad = export(env, "no-such-run", tmp_path / "other")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no run 'no-such-run'" in bad.stderr
    finally:
        daemon.stop()
    assert not list(folder.glob(".export*"))

    monkeypatch.chdir(tmp_path)  # the snippets name the folder `export`
    found = snippets()
    assert {"pandas", "duckdb", "polars"} <= set(found)
    ran: dict[str, dict[str, Any]] = {}
    for name in ("pandas", "duckdb", "polars"):  # all three are dev dependencies
        scope: dict[str, Any] = {}
        exec(compile(found[name], f"data-at-rest.md:{name}", "exec"), scope)  # noqa: S102 - the docs' own code
        ran[name] = scope

    samples, hist = ran["pandas"]["samples"], ran["pandas"]["history"]
    assert len(samples) == 256 and set(samples["split"]) == {"train"}
    train = samples.set_index("sample_id")
    assert list(train.loc[3, "tags"]) == ["hard", "odd"] and list(train.loc[1, "tags"]) == ["hard"]
    assert train.loc[5, "discarded"] and not train.loc[1, "discarded"]
    losses = hist[hist["signal"] == "loss"]
    assert len(losses) == STEPS * BATCH
    assert sorted(losses[losses["step"] == 7]["value"].tolist()) == pytest.approx(step_values)
    curve, kept = ran["duckdb"]["curve"], ran["duckdb"]["kept"]
    mean7 = curve[(curve["signal"] == "loss") & (curve["step"] == 7)]["mean"].iloc[0]
    assert mean7 == pytest.approx(sum(step_values) / len(step_values), rel=1e-5)
    assert len(kept) == 254
    assert ran["polars"]["curve"].height == len(curve)
    import pandas as pd

    edits = pd.read_parquet(tmp_path / "export" / "edits.parquet")
    assert list(edits["kind"]) == ["tags", "tags", "deny"]
    curves = pd.read_parquet(tmp_path / "export" / "curves")
    loss = curves[curves["name"] == "loss"].sort_values("step")
    assert [(int(s), v, lo, hi, int(t.value // 10**6)) for s, v, lo, hi, t in
            zip(loss["step"], loss["value"], loss["min"], loss["max"], loss["time"], strict=True)] == served
    at_rest = sorted((folder / parquet_curves.DIR).rglob("*.parquet"))
    exported = sorted((tmp_path / "export" / parquet_curves.DIR).rglob("*.parquet"))
    assert at_rest and {p.name for p in at_rest} < {p.name for p in exported}  # the daemon's files, and the hot one
    assert all((tmp_path / "export" / p.relative_to(folder)).read_bytes() == p.read_bytes() for p in at_rest)
    assert os.path.getsize(tmp_path / "export" / "tags.parquet") > 0
