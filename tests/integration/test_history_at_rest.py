"""History at rest: a daemon killed (SIGKILL) at a random point of a compaction (of the per-sample history, or
of the step curves) loses nothing and uses no half-written file; the restarted daemon serves exactly what it
served, with the history and the curves in Parquet."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store import compactor, log_trim, parquet_curves, parquet_history, snapshot

from .harness import Daemon, Trainer, history, run_folder, wait_for
from .test_snapshots import last_open, served

STEPS = 60
CHUNK = 64  # values a chunk: the trainer's 16-sample batches fill one every 4 steps
CURVE_CHUNK = 8  # points a curve's chunk


def reads(stub: Any) -> dict[str, Any]:
    """What the Studio reads, the per-sample history's reads too (slices, trajectories, step samples)."""
    out = served(stub)
    full = stub.GetLatestLoggerData(pb.GetLatestLoggerDataRequest(request_full_history=True), timeout=10)
    out["curves"] = ([(c.metric_name, c.first_step, c.last_step, c.point_count, c.value_min, c.value_max)
                      for c in full.curves],
                     [(p.metric_name, p.model_age, p.metric_value, p.value_min, p.value_max, p.timestamp)
                      for p in full.points])
    few = stub.GetLatestLoggerData(pb.GetLatestLoggerDataRequest(request_full_history=True, max_points=7), timeout=10)
    out["decimated"] = [(p.metric_name, p.model_age, p.metric_value, p.timestamp) for p in few.points]
    slices = stub.GetLatestLoggerData(pb.GetLatestLoggerDataRequest(request_full_history=True, break_by_slices=True,
                                                                    tags=["hard"]), timeout=10)
    out["slices"] = [(p.metric_name, p.model_age, p.metric_value, p.sample_count) for p in slices.points]
    traj = stub.GetSignalTrajectory(pb.GetSignalTrajectoryRequest(signal_name="loss",
                                                                  sample_ids=[str(i) for i in range(0, 256, 7)]),
                                    timeout=10)
    out["trajectories"] = [(t.sample_id, list(t.value)) for t in traj.trajectories]
    out["step samples"] = [list(stub.GetStepSamples(pb.StepSamplesRequest(metric_name="loss", model_age=step),
                                                    timeout=10).sample_values) for step in (0, 17, STEPS - 1)]
    return out


def history_files(folder: Path) -> list[Path]:
    return sorted(p for sub in (parquet_history.DIR, parquet_curves.DIR) for p in (folder / sub).rglob("*")
                  if p.is_file())


def kill_paused_at(daemon: Daemon, env: dict[str, str], folder: Path, point: str, before: dict[str, Any]) -> None:
    """The daemon (started with the pause hook) stopped at `point` of a compaction: SIGKILL it, start it
    again without the hook, and check it serves `before` and left no temporary file in use."""
    wait_for(lambda: list(folder.rglob(f".paused-{point}")), 20, f"the compactor to pause at {point!r}")
    assert reads(daemon.stub()) == before  # served from memory meanwhile
    daemon.kill()  # SIGKILL, the compaction half done
    left = [p for p in history_files(folder) if p.name.startswith(".")]
    assert left and (not point.endswith("written")
                     or [p for p in left if p.name.startswith(parquet_history.TMP_PREFIX)])
    daemon.env = env
    daemon.start()
    assert reads(daemon.stub()) == before, point
    assert not [p for p in left if p.exists()]  # the crash's temporary file and marker: removed, never read
    daemon.stop()  # SIGTERM: everything compacted, then a snapshot naming the files
    parts = [p for p in history_files(folder) if p.suffix == ".parquet"]
    assert parts and all(pq.read_metadata(p).num_rows > 0 for p in parts)
    curves = [p for p in parts if p.is_relative_to(folder / parquet_curves.DIR)]
    assert sum(pq.read_metadata(p).num_rows for p in curves) >= STEPS - CURVE_CHUNK  # the loss curve at least


@pytest.mark.timeout(120)
def test_sigkill_at_random_points_of_a_compaction_loses_nothing(env: dict[str, str], tmp_path: Path) -> None:
    pick = random.Random()  # every point is covered over a few runs: one of the history's, one of the curves'
    points = [pick.choice(parquet_history.POINTS), pick.choice(parquet_curves.POINTS)]
    pick.shuffle(points)
    trimming = dict(env, **{compactor.CHUNK_ENV: str(CHUNK), parquet_curves.CHUNK_ENV: str(CURVE_CHUNK)})
    env = dict(trimming, **{log_trim.KEEP_ENV: "1"})  # the whole log kept: the second part replays it all
    daemon = Daemon(dict(env, **{parquet_history.PAUSE_ENV: points[0]}), tmp_path / "daemon.log").start()
    try:
        stub = daemon.stub()
        Trainer(env, tmp_path, "--steps", str(STEPS), "--step-sleep", "0.002").wait(60)
        wait_for(lambda: len([p for p in history(stub) if p.metric_name == "loss"]) >= STEPS, 10, "every step")
        edit = stub.EditDataSample(pb.DataEditsRequest(stat_name="tags", string_value="hard", type=pb.EDIT_ACCUMULATE,
                                                       samples_ids=list(range(0, 256, 3)),
                                                       sample_origins=["train"] * 86), timeout=10)
        assert edit.success
        before = reads(stub)
        folder = run_folder(tmp_path)
        kill_paused_at(daemon, env, folder, points[0], before)  # paused while the trainer's records came in

        # Again from the log alone: the reopening daemon compacts while it replays.
        shutil.rmtree(folder / parquet_history.DIR)
        shutil.rmtree(folder / parquet_curves.DIR, ignore_errors=True)
        shutil.rmtree(folder / snapshot.DIR)
        daemon.env = dict(env, **{parquet_history.PAUSE_ENV: points[1]})
        daemon.start()
        kill_paused_at(daemon, env, folder, points[1], before)

        daemon.start()
        opened = last_open(daemon)
        assert opened["from_snapshot"] is True and opened["replayed_records"] == 0, opened
        assert reads(daemon.stub()) == before

        # Trimming, as by default: the reopening daemon gives back the log's prefix its snapshot covers,
        # and a SIGKILL after that still opens to the same state.
        daemon.stop()
        log_path = folder / "signals.log"
        size, whole = log_path.stat().st_size, os.stat(log_path).st_blocks * 512
        daemon.env = trimming
        daemon.start()
        assert reads(daemon.stub()) == before
        assert log_trim.read(folder) is not None and log_path.stat().st_size == size
        assert os.stat(log_path).st_blocks * 512 < whole // 2, (os.stat(log_path).st_blocks * 512, whole)
        daemon.kill()
        daemon.start()
        assert last_open(daemon)["from_snapshot"] is True
        assert reads(daemon.stub()) == before
    finally:
        daemon.stop()
