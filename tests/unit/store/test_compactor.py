"""A run whose full history chunks went to Parquet (compactor.py) serves, after any reopening, exactly
the state a full replay of its logs builds; its snapshots name the files instead of copying the values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from weightslabd.store import compactor, parquet_curves, parquet_history, snapshot

from .test_snapshot import NO_H5, Feed, assert_same, first_half, folder, full_replay, new_run, opened, second_half

__all__ = ["folder"]  # the fixture, shared


@pytest.fixture(autouse=True)
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(compactor.CHUNK_ENV, "4")  # a chunk every few records
    monkeypatch.setenv(parquet_curves.CHUNK_ENV, "2")  # and every two points of a curve
    yield


def parquet_files(folder: Path, sub: str = parquet_history.DIR) -> list[Path]:
    return sorted((folder / sub).rglob("*.parquet"))


def test_compacted_chunks_are_named_by_the_snapshot_and_reopen_as_the_full_replay(folder: Path) -> None:
    run = new_run(folder)
    feed = Feed(run)
    first_half(feed)
    run.compactor.compact_now()  # what the background thread has not moved yet
    assert run.sample_signals.stores()[0].hot_full_chunks() == 0 and parquet_files(folder)
    assert run.write_snapshot() is not None
    second_half(feed)
    run.close()  # the background compactor stops first: the snapshot names every file it wrote
    meta = json.loads((folder / snapshot.DIR / (folder / snapshot.DIR / snapshot.CURRENT).read_text().strip()
                       / snapshot.META).read_bytes().partition(b"\n")[2])
    named = [c["parquet"] for s in meta["stores"] for c in s["chunks"] if "parquet" in c]
    assert named and {folder / n for n in named} <= set(parquet_files(folder))
    curves = [e["parquet"] for _, _, parts in meta["history"]["curves"] for e in parts]
    assert curves and {folder / n for n in curves} == set(parquet_files(folder, parquet_curves.DIR))
    assert all(entry[2] <= 2 for key, entry in meta["arrays"].items() if key.startswith("h"))  # only hot points
    files = {p: p.stat().st_mtime_ns for p in parquet_files(folder) + parquet_files(folder, parquet_curves.DIR)}

    want = full_replay(folder)  # rebuilds every chunk in memory; compacting again finds the same files
    assert {p: p.stat().st_mtime_ns for p in parquet_files(folder) + parquet_files(folder, parquet_curves.DIR)} == files
    got, reopened = opened(folder)
    assert reopened.opened_from_snapshot and reopened.replayed_records == 0
    assert_same(got, want)


def test_a_missing_history_file_makes_the_snapshot_unusable_not_the_run(folder: Path) -> None:
    run = new_run(folder)
    feed = Feed(run)
    first_half(feed)
    second_half(feed)
    run.compactor.compact_now()
    run.close()
    want = full_replay(folder)
    named = parquet_files(folder)
    named[0].unlink()
    got, reopened = opened(folder)
    assert not reopened.opened_from_snapshot  # a full replay instead, which writes the file again
    assert_same(got, want)
    assert parquet_files(folder) == named


def test_a_missing_curve_file_makes_the_snapshot_unusable_not_the_run(folder: Path) -> None:
    run = new_run(folder)
    feed = Feed(run)
    first_half(feed)
    second_half(feed)
    run.close()
    want = full_replay(folder)
    named = parquet_files(folder, parquet_curves.DIR)
    named[1].unlink()
    got, reopened = opened(folder)
    assert not reopened.opened_from_snapshot  # a full replay instead, which writes the file again
    assert_same(got, want)
    assert parquet_files(folder, parquet_curves.DIR) == named


def test_without_compaction_nothing_goes_to_disk(folder: Path) -> None:
    from weightslabd.store.run import RunOptions

    run = new_run(folder, RunOptions(save_predictions_h5=False, compact_history=False))
    feed = Feed(run)
    first_half(feed)
    run.close()
    assert parquet_files(folder) == [] and parquet_files(folder, parquet_curves.DIR) == []
    assert NO_H5.compact_history
