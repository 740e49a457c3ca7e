"""A daemon stopped cleanly writes each run's snapshot; the next one opens the run from it, replays
nothing, and serves exactly what the first one served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store import log_trim, snapshot

from .harness import Daemon, Trainer, base_env, history, run_folder, wait_for

STEPS = 150


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """This file's daemons keep all of signals.log (log_trim.py): the snapshot is then only an accelerator."""
    return dict(base_env(tmp_path), **{log_trim.KEEP_ENV: "1"})


def served(stub: Any) -> dict[str, Any]:
    """What the Studio reads: every history point, pages of every sample with their stats, the counts."""
    points = [(p.metric_name, p.model_age, p.metric_value) for p in history(stub)]
    counts = stub.ApplyDataQuery(pb.DataQueryRequest(query=""), timeout=10)
    rows = []
    for start in (0, 128):
        page = stub.GetDataSamples(pb.DataSamplesRequest(start_index=start, records_cnt=128), timeout=10)
        assert page.success
        rows += [(r.sample_id, sorted((s.name, s.type, tuple(s.value), s.value_string) for s in r.data_stats))
                 for r in page.data_records]
    return {"points": points, "rows": rows, "counts": (counts.number_of_all_samples,
                                                       counts.number_of_samples_in_the_loop,
                                                       counts.number_of_discarded_samples, list(counts.unique_tags))}


def last_open(daemon: Daemon) -> dict[str, Any]:
    return [e for e in daemon.log_events() if e.get("event") == "run opened"][-1]


def test_a_run_reopens_from_its_snapshot_after_a_clean_stop(daemon: Daemon, env: dict[str, str],
                                                            tmp_path: Path) -> None:
    Trainer(env, tmp_path, "--steps", str(STEPS), "--step-sleep", "0.002", "--instances").wait(60)
    stub = daemon.stub()
    wait_for(lambda: len([p for p in history(stub) if p.metric_name == "loss"]) >= STEPS, 10, "every step")
    edit = stub.EditDataSample(pb.DataEditsRequest(stat_name="tags", string_value="hard", type=pb.EDIT_ACCUMULATE,
                                                   samples_ids=[1, 2, 3], sample_origins=["train"] * 3), timeout=10)
    assert edit.success
    before = served(stub)
    assert len(before["rows"]) == 256 and before["counts"][3] == ["hard"]

    daemon.stop()  # SIGTERM: a clean stop closes the run, which writes its snapshot
    root = run_folder(tmp_path) / snapshot.DIR
    assert (root / snapshot.CURRENT).is_file()
    daemon.start()
    opened = last_open(daemon)
    assert opened["from_snapshot"] is True and opened["replayed_records"] == 0, opened
    assert served(daemon.stub()) == before

    # Without it, the same again from the whole log (the snapshot is only an accelerator).
    daemon.stop()
    for entry in root.iterdir():
        if entry.is_dir():
            (entry / snapshot.META).write_bytes(b"damaged")
    daemon.start()
    opened = last_open(daemon)
    assert opened["from_snapshot"] is False and opened["replayed_records"] >= STEPS, opened
    assert [e for e in daemon.log_events() if e.get("event") == "snapshot ignored, replaying the whole log"]
    assert served(daemon.stub()) == before
