"""History at rest: a store whose full chunks went to Parquet reads exactly as the same store in memory,
rebuilt from its image too (what a snapshot holds), and its files are written atomically."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightslabd.store import parquet_history, sample_signals
from weightslabd.store.sample_signals import SignalStore

from .test_sample_signals import Record, fill, fold_st, record_st


def _plain(x: object) -> object:
    """NaN as a string, so that equal reads compare equal."""
    if isinstance(x, float) and x != x:
        return "nan"
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def reads(store: SignalStore, how: str, mask: np.ndarray | None, step_range: tuple[int, int] | None) -> list[object]:
    curve = store.slice_curve(mask, 0, how, step_range)
    out: list[object] = [[a.tolist() for a in (curve.steps, curve.means, curve.mins, curve.maxs, curve.counts)]]
    for wanted in (list(range(32)), [3, 17, 18]):
        traj = store.trajectory(wanted, 0, how)
        out.append({k: (s.tolist(), v.tolist()) for k, (s, v) in traj.items()})
    for step in range(13):
        ids, vals, total = store.step_samples(step, 0, how)
        out.append((ids.tolist(), vals.tolist(), total))
        out.append([(i.tolist(), v.tolist(), None if n is None else n.tolist()) for i, v, n in store.records_at(step)])
    return [_plain(o) for o in out]


@pytest.fixture
def small_row_groups() -> object:
    before = parquet_history.ROW_GROUP, parquet_history.ROW_GROUP_BY_SAMPLE
    parquet_history.ROW_GROUP = 5  # several row groups a chunk: reads must take only the ones they need
    parquet_history.ROW_GROUP_BY_SAMPLE = 3
    yield
    parquet_history.ROW_GROUP, parquet_history.ROW_GROUP_BY_SAMPLE = before


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(records=st.lists(record_st(), min_size=1, max_size=25), how=fold_st, chunk=st.sampled_from([7, 40]),
       mask_seed=st.integers(0, 3), lo=st.integers(0, 12), width=st.integers(0, 12))
def test_a_compacted_store_reads_as_the_one_in_memory(small_row_groups: object, records: list[Record], how: str,
                                                       chunk: int, mask_seed: int, lo: int, width: int) -> None:
    hot, cold = SignalStore("train", "loss", chunk), SignalStore("train", "loss", chunk)
    fill(hot, records)
    fill(cold, records)
    mask = None if mask_seed == 0 else np.random.default_rng(mask_seed).random(34) < 0.5
    with tempfile.TemporaryDirectory() as tmp:
        moved = cold.compact(Path(tmp))
        assert moved == hot.hot_full_chunks() and cold.hot_full_chunks() == 0
        assert cold.used_nbytes() <= hot.used_nbytes()
        again = SignalStore.from_image(cold.image(), chunk)  # as a snapshot brings it back
        for step_range in (None, (lo, lo + width)):
            expected = reads(hot, how, mask, step_range)
            assert reads(cold, how, mask, step_range) == expected
            assert reads(again, how, mask, step_range) == expected
        shutil.rmtree(Path(tmp) / parquet_history.BY_SAMPLE_DIR, ignore_errors=True)  # then read by column
        assert reads(SignalStore.from_image(cold.image(), chunk), how, mask, None) == reads(hot, how, mask, None)
        fill(cold, records[:3])  # appends go on after a compaction
        fill(hot, records[:3])
        assert reads(cold, how, mask, None) == reads(hot, how, mask, None)


def test_files_are_named_by_content_and_a_second_write_finds_them(tmp_path: Path) -> None:
    store = SignalStore("train", "loss", 8)
    for step in range(10):
        store.append(step, np.arange(8), np.full(8, step, dtype=np.float32))
    assert store.compact(tmp_path) == 9
    files = sorted((tmp_path / parquet_history.DIR).rglob("*.parquet"))
    assert len(files) == 9 and len(list((tmp_path / parquet_history.BY_SAMPLE_DIR).rglob("*.parquet"))) == 9
    stamps = [f.stat().st_mtime_ns for f in files]
    twin = SignalStore("train", "loss", 8)
    for step in range(10):
        twin.append(step, np.arange(8), np.full(8, step, dtype=np.float32))
    assert twin.compact(tmp_path) == 9  # a replay: the same files, not written again
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert not list((tmp_path / parquet_history.DIR).rglob(f"{parquet_history.TMP_PREFIX}*"))


def test_a_write_that_fails_leaves_no_file_and_the_chunk_in_memory(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = SignalStore("train", "loss", 8)
    for step in range(3):
        store.append(step, np.arange(8), np.ones(8, dtype=np.float32))

    def refuse(path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(parquet_history, "fsync_path", refuse)
    with pytest.raises(OSError):
        store.compact(tmp_path)
    assert store.hot_full_chunks() == 2
    assert not [p for p in (tmp_path / parquet_history.DIR).rglob("*") if p.is_file()]
    assert store.slice_curve(None, 0).counts.tolist() == [8, 8, 8]


def test_temporaries_of_a_crash_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / parquet_history.DIR / "s-x"
    folder.mkdir(parents=True)
    (folder / f"{parquet_history.TMP_PREFIX}c000000-0.parquet.1.2").write_bytes(b"half")
    (folder / "c000000-00000000.parquet").write_bytes(b"kept")
    assert parquet_history.remove_temporaries(tmp_path) == 1
    assert [p.name for p in folder.iterdir()] == ["c000000-00000000.parquet"]


def _numpy_member(lookup: pa.Array, ids: np.ndarray) -> np.ndarray:
    """The gather break-by-slices did before `_member` (numpy indexing): what it must still equal."""
    return np.asarray(lookup.to_numpy(zero_copy_only=False)).view(bool)[ids]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(records=st.lists(record_st(), min_size=1, max_size=25), how=fold_st, mask_seed=st.integers(1, 3),
       step_range=st.one_of(st.none(), st.tuples(st.integers(0, 6), st.integers(6, 12))))
def test_break_by_slices_is_bit_for_bit_the_former_implementation(small_row_groups: object, records: list[Record],
                                                                  how: str, mask_seed: int,
                                                                  step_range: tuple[int, int] | None) -> None:
    mask = np.random.default_rng(mask_seed).random(34) < 0.5
    store = SignalStore("train", "loss", 40)
    fill(store, records)
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(2):  # in memory, then at rest
            got = store.slice_curve(mask, 0, how, step_range)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(sample_signals, "_member", _numpy_member)
                want = store.slice_curve(mask, 0, how, step_range)
            assert [a.tobytes() for a in (got.steps, got.means, got.mins, got.maxs, got.counts)] == \
                   [a.tobytes() for a in (want.steps, want.means, want.mins, want.maxs, want.counts)]
            store.compact(Path(tmp))


def test_files_of_older_daemons_with_nullable_columns_read_alike(tmp_path: Path) -> None:
    store = SignalStore("train", "loss", 8)
    for step in range(3):
        store.append(step, np.arange(8)[::-1], np.arange(8, dtype=np.float32) + step)
    store.compact(tmp_path)
    want = reads(store, "mean", None, None)
    for path in (tmp_path / parquet_history.DIR).rglob("*.parquet"):  # rewritten as before: nullable columns
        table = pq.read_table(path)
        older = pa.schema([pa.field(f.name, f.type, nullable=True) for f in table.schema],
                          metadata=table.schema.metadata)
        pq.write_table(table.cast(older), path, compression="lz4")
        assert pq.read_schema(path).field("value").nullable
    image = store.image()
    chunks = tuple(c if c.part is None else dataclasses.replace(c, part=parquet_history.ColdPart(c.part.path))
                   for c in image.chunks)  # opened again, as a snapshot's load does
    again = SignalStore.from_image(dataclasses.replace(image, chunks=chunks), 8)
    assert reads(again, "mean", None, None) == want
