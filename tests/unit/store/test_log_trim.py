"""Trimming signals.log: once a durable snapshot covers a prefix, its disk blocks go; a crash at any point of
a trim (a real SIGKILL included) and every case that used to need a full replay still open to the state
served before."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from weightslabd.store import compactor, log_trim, parquet_history, snapshot
from weightslabd.store.run import Run, RunOptions

from .test_snapshot import Feed, assert_same, crash, first_half, folder, full_replay, new_run, opened, wait_for

__all__ = ["folder"]  # the fixture, shared
TRIM = RunOptions(save_predictions_h5=False, trim_signals_log=True)
KEEP = RunOptions(save_predictions_h5=False)
TRIMMED_OPEN = "signals.log is trimmed and no usable snapshot covers its prefix: only the records after it are replayed"


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(compactor.CHUNK_ENV, "256")  # some chunks at rest in Parquet
    yield


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def many_steps(feed: Feed, first: int, count: int) -> None:
    for step in range(first, first + count):
        feed.step(step, [int(i) for i in feed.rng.integers(0, 48, 40)])


def crashed_run(folder: Path, options: RunOptions = KEEP) -> Path:
    """A run with a snapshot over most of its log, then a tail it does not cover, then a crash; the whole
    (untrimmed) folder is copied aside as the reference a full replay gives."""
    run = new_run(folder, options)
    feed = Feed(run)
    first_half(feed)
    many_steps(feed, 6, 150)
    run.compactor.compact_now()
    assert run.write_snapshot() is not None
    many_steps(feed, 156, 5)  # the tail
    crash(run)
    reference = folder.parent / "reference"
    shutil.copytree(folder, reference)
    return reference


def test_a_trim_gives_back_the_covered_prefix_and_reopens_to_the_served_state(folder: Path) -> None:
    reference = crashed_run(folder)
    want = full_replay(reference)
    log_path = folder / "signals.log"
    size, before = log_path.stat().st_size, allocated(log_path)
    got, run = opened(folder, TRIM)  # a run from before trimming: trimmed at open, from its snapshot
    assert run.opened_from_snapshot and run.replayed_records == 5
    assert_same(got, want)
    assert log_path.stat().st_size == size  # offsets stay: a hole, not a shorter file
    assert allocated(log_path) < before - size * 3 // 4, (allocated(log_path), before, size)
    assert log_trim.read(folder) is not None
    again, run = opened(folder, TRIM)  # and again, from the snapshot written at that close
    assert run.opened_from_snapshot and run.replayed_records == 0
    assert_same(again, want)


@pytest.mark.parametrize("point", ["marked", "half-punched", "punched"])
def test_a_crash_at_any_point_of_a_trim_opens_to_the_same_state(folder: Path, point: str) -> None:
    reference = crashed_run(folder)
    want = full_replay(reference)
    loaded = snapshot.load(folder / snapshot.DIR)
    assert loaded is not None
    mark = loaded.cut.signals
    log_trim.write(folder, mark)  # the mark is durable before any block goes
    if point != "marked":
        end = log_trim.hole_end(mark)
        assert log_trim.punch(folder / "signals.log", end // 2 // log_trim.BLOCK * log_trim.BLOCK
                              if point == "half-punched" else end)
    got, run = opened(folder, KEEP)  # even a daemon that does not trim reads a trimmed log right
    assert run.opened_from_snapshot and run.replayed_records == 5
    assert_same(got, want)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", ["trim-marked", "trimmed"])
def test_sigkill_during_a_trim_opens_to_the_same_state(folder: Path, point: str) -> None:
    reference = crashed_run(folder)
    want = full_replay(reference)
    script = ("import sys; from pathlib import Path; from weightslabd.store.run import Run, RunOptions; "
              "Run.open(Path(sys.argv[1]), RunOptions(save_predictions_h5=False, trim_signals_log=True))")
    env = dict(os.environ, **{parquet_history.PAUSE_ENV: point})
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], env=env)
    try:
        wait_for(lambda: (folder / f".paused-{point}").exists() or proc.poll() is not None, 30, f"a pause at {point}")
        assert proc.poll() is None, "the opening process ended before the trim"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (folder / f".paused-{point}").unlink()
    assert log_trim.read(folder) is not None
    got, run = opened(folder, TRIM)
    assert run.opened_from_snapshot
    assert_same(got, want)


def test_a_changed_fold_after_a_trim_keeps_the_values_as_they_were_folded(folder: Path) -> None:
    run = new_run(folder, TRIM)
    feed = Feed(run)
    first_half(feed)  # sample 7's instances, folded with "mean"
    many_steps(feed, 6, 150)
    run.close()  # snapshot, then the trim
    assert log_trim.read(folder) is not None
    served, _ = opened(folder, TRIM)
    with capture_logs() as logs:
        got, run = opened(folder, RunOptions(save_predictions_h5=False, trim_signals_log=True,
                                             instance_aggregation="max"))
    assert run.opened_from_snapshot and not [e for e in logs if "snapshot ignored" in e["event"]]
    served.pop("aggregation"), got.pop("aggregation")  # the setting itself is the new one
    assert_same(got, served)


def test_a_split_grown_after_a_trim_keeps_its_samples_and_adds_empty_ones(folder: Path) -> None:
    run = new_run(folder, TRIM)
    feed = Feed(run)
    first_half(feed)
    many_steps(feed, 6, 150)
    run.close()
    served, _ = opened(folder, TRIM)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"] = 60  # the trainer registered more samples
    (folder / "manifest.json").write_text(json.dumps(manifest))
    run = Run.open(folder, TRIM)
    try:
        assert run.opened_from_snapshot
        table = run.samples.splits["train"]
        assert table.size == 60
        _, signals, encounters, *_ = served["table train"]
        assert table.signals["loss"][:48].tobytes() == signals["loss"][2]
        assert np.isnan(table.signals["loss"][48:]).all() and (table.encounters[48:] == 0).all()
        assert table.encounters[:48].tobytes() == encounters[2]
    finally:
        run.close()


@pytest.mark.parametrize("damage", ["meta", "parquet", "older"])
def test_a_lost_snapshot_of_a_trimmed_log_replays_the_tail_and_cuts_nothing(folder: Path, damage: str) -> None:
    crashed_run(folder)
    opened(folder, TRIM)  # trimmed at open; closed with a snapshot at the same point
    root = folder / snapshot.DIR
    aside = folder.parent / "older-snapshot"
    shutil.copytree(root, aside)
    later = Run.open(folder, TRIM)
    feed = Feed(later, seed=1)
    feed.position = later.last_position
    many_steps(feed, 200, 3)  # records the snapshot does not cover
    if damage == "older":
        assert later.write_snapshot() is not None  # and a trim to its end
    crash(later)
    size = (folder / "signals.log").stat().st_size
    if damage == "meta":
        (root / (root / snapshot.CURRENT).read_text().strip() / snapshot.META).write_bytes(b"damaged")
    elif damage == "parquet":
        next((folder / parquet_history.DIR).rglob("*.parquet")).unlink()
    else:  # a snapshot from before the last trim put back: it covers less than the log still has
        shutil.rmtree(root)
        shutil.copytree(aside, root)
    with capture_logs() as logs:
        run = Run.open(folder, TRIM)
    try:
        assert not run.opened_from_snapshot and run.replayed_records == (0 if damage == "older" else 3)
        assert [e for e in logs if e["event"] == TRIMMED_OPEN]
        assert (folder / "signals.log").stat().st_size == size  # nothing cut: the tail is all there
    finally:
        crash(run)


def test_a_trimmed_run_whose_split_grows_under_named_samples_keeps_taking_snapshots(folder: Path) -> None:
    run = new_run(folder, TRIM)
    feed = Feed(run)
    first_half(feed)
    many_steps(feed, 6, 100)
    assert run.write_snapshot() is not None and log_trim.read(folder) is not None
    feed.step(200, [1, 50])  # 50: past the split's 48 samples, dropped as served
    with run.lock:
        run.samples.ensure_split("train", 60)  # then the split grows under it: a replay would keep 50's value
    feed.step(201, [2, 55])
    assert run.write_snapshot() is not None  # untrimmed, snapshots would stop here until a reopen
    served = run.samples.splits["train"].signals["loss"].copy()
    run.close()
    reopened = Run.open(folder, TRIM)
    try:
        assert reopened.opened_from_snapshot and reopened.replayed_records == 0
        got = reopened.samples.splits["train"].signals["loss"]
        assert got.tobytes() == served.tobytes() and np.isnan(got[50]) and not np.isnan(got[55])
    finally:
        reopened.close()


@pytest.mark.parametrize("mark", [b"damaged", b"00000000\n[1]"])
def test_a_damaged_trim_mark_refuses_the_run_in_one_line_and_cuts_nothing(folder: Path, mark: bytes) -> None:
    run = new_run(folder, TRIM)
    many_steps(Feed(run), 0, 100)
    run.close()
    size = (folder / "signals.log").stat().st_size
    (folder / log_trim.FILE).write_bytes(mark)
    with pytest.raises(ValueError, match="signals.trim: damaged"):
        Run.open(folder, TRIM)
    assert (folder / "signals.log").stat().st_size == size
