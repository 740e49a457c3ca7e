"""Step curves at rest: a history whose full curve chunks went to Parquet reads exactly as the same history in
memory, rebuilt from its image too (what a snapshot holds); its files are atomic and named by content."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightslabd.store import parquet_curves, parquet_history
from weightslabd.store.history import Points, SignalHistory


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parquet_curves, "ROW_GROUP", 3)  # several row groups a file: reads pick theirs


def fill(history: SignalHistory, names: list[str], n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        name = names[i % len(names)]
        v = float(rng.random()) if i % 11 else float("nan")
        history.append(name, int(rng.integers(0, 5)) + i, v, v - 1, v + 1, 1_700_000_000_000 + i)


def plain(p: Points) -> tuple[object, ...]:
    return (p.name, p.steps.tolist(), np.nan_to_num(p.values, nan=-7).tolist(), np.nan_to_num(p.vmin, nan=-7).tolist(),
            np.nan_to_num(p.vmax, nan=-7).tolist(), p.stamps.tolist(), p.end,
            [a.dtype.str for a in (p.steps, p.values, p.vmin, p.vmax, p.stamps)])


def reads(h: SignalHistory) -> list[object]:
    latest = h.latest()
    out: list[object] = [h.names(), h.version, latest and (latest[0], latest[1], repr(latest[2]))]
    for name in h.names():
        n = h.length(name)
        out.append((n, h.span(name)))
        for start in sorted({0, 1, n // 3, n - 1, n, n + 2}):
            for max_points in (0, 1, 2, 5, 1000):
                out.append(plain(h.read(name, max(0, start), max_points)))
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 120), chunk=st.sampled_from([1, 4, 16]), curves=st.integers(1, 3))
def test_a_compacted_history_reads_as_the_one_in_memory(monkeypatch: pytest.MonkeyPatch, n: int, chunk: int,
                                                       curves: int) -> None:
    monkeypatch.setenv(parquet_curves.CHUNK_ENV, str(chunk))
    with tempfile.TemporaryDirectory() as tmp:  # one folder an example (pytest's tmp_path is the test's)
        compacted_reads_as_in_memory(Path(tmp), n, chunk, curves)


def compacted_reads_as_in_memory(folder: Path, n: int, chunk: int, curves: int) -> None:
    names = ["loss", "acc/val", "lr"][:curves]
    hot, cold = SignalHistory(), SignalHistory()
    fill(hot, names, n)
    fill(cold, names, n)
    due = cold.hot_full_chunks()
    assert cold.compact(folder) == due and cold.hot_full_chunks() == 0
    assert all(len(c.steps) >= 1 and len(c.steps) <= chunk for c in cold.curves.values())  # only the hot chunk
    want = reads(hot)
    assert reads(cold) == want
    again = SignalHistory()
    again.adopt(*cold.image())  # as a snapshot brings it back: files named, points in memory copied
    assert reads(again) == want
    aside = folder / "aside"
    if (folder / parquet_curves.POINTS_DIR).is_dir():  # without the fixed-width companions: the files decoded
        (folder / parquet_curves.POINTS_DIR).rename(aside)
        assert reads(cold) == want
        aside.rename(folder / parquet_curves.POINTS_DIR)
    fill(cold, names, 7, seed=1)  # appends go on after a compaction
    fill(hot, names, 7, seed=1)
    cold.compact(folder)
    assert reads(cold) == reads(hot)
    files = sorted((folder / parquet_curves.DIR).rglob("*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == sum(c.base for c in cold.curves.values())


def test_files_are_named_by_content_and_a_replay_finds_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parquet_curves.CHUNK_ENV, "4")
    kicks: list[int] = []
    history = SignalHistory(lambda: kicks.append(1))
    fill(history, ["loss"], 18)
    assert len(kicks) == 4 and history.hot_full_chunks() == 4  # told at every fifth point, 4 + 1 of them
    assert history.compact(tmp_path) == 4
    files = sorted((tmp_path / parquet_curves.DIR).rglob("*.parquet"))
    assert [f.name[:11] for f in files] == ["p0000000000", "p0000000004", "p0000000008", "p0000000012"]
    stamps = [f.stat().st_mtime_ns for f in files]
    twin = SignalHistory()
    fill(twin, ["loss"], 18)
    assert twin.compact(tmp_path) == 4  # a replay: the same files, not written again
    assert [f.stat().st_mtime_ns for f in files] == stamps
    table = pq.read_table(files[1]).to_pandas()  # the export's columns: the daemon's own files
    assert list(table.columns) == ["name", "step", "value", "min", "max", "time"] and set(table["name"]) == {"loss"}
    assert table["step"].tolist() == history.read("loss", 4).steps[:4].tolist()
    companions = sorted((tmp_path / parquet_curves.POINTS_DIR).rglob("*.points"))
    assert [c.stem for c in companions] == [f.stem for f in files]
    assert all(c.stat().st_size == 4 * parquet_curves.POINT.itemsize for c in companions)


def test_a_write_that_fails_leaves_no_file_and_the_points_in_memory(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parquet_curves.CHUNK_ENV, "4")
    history = SignalHistory()
    fill(history, ["loss"], 10)
    want = reads(history)

    def refuse(path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(parquet_history, "fsync_path", refuse)  # the one durable writer (place_durably)
    with pytest.raises(OSError):
        history.compact(tmp_path)
    assert history.hot_full_chunks() == 2
    assert not [p for p in (tmp_path / parquet_curves.DIR).rglob("*") if p.is_file()]
    assert not list(tmp_path.rglob(f"{parquet_history.TMP_PREFIX}*"))
    assert reads(history) == want


def test_temporaries_of_a_crash_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / parquet_curves.DIR / "c-x"
    folder.mkdir(parents=True)
    (folder / f"{parquet_history.TMP_PREFIX}p0000000000-0.parquet.1.2").write_bytes(b"half")
    (folder / "p0000000000-00000000.parquet").write_bytes(b"kept")
    assert parquet_curves.remove_temporaries(tmp_path) == 1
    assert [p.name for p in folder.iterdir()] == ["p0000000000-00000000.parquet"]


def test_an_image_whose_files_do_not_follow_one_another_is_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parquet_curves.CHUNK_ENV, "4")
    history = SignalHistory()
    fill(history, ["loss"], 13)
    history.compact(tmp_path)
    version, images = history.image()
    img = images[0]
    broken = type(img)(img.name, img.steps, img.values, img.vmin, img.vmax, img.stamps, img.last_append,
                       img.parts[1:])
    with pytest.raises(ValueError, match="starts at point 4, not 0"):
        SignalHistory().adopt(version, [broken])
