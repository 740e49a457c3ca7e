"""Signal history: append-only curves, decimated reads that invent no values, incremental reads."""

from __future__ import annotations

import numpy as np
import pytest

from weightslabd.store.history import Points, SignalHistory, decimate_indexes


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 99, 100, 101, 1000, 12345])
@pytest.mark.parametrize("max_points", [2, 3, 10, 100, 999])
def test_decimation_keeps_first_and_last_within_the_budget(n: int, max_points: int) -> None:
    idx = decimate_indexes(n, max_points)
    assert len(idx) == min(n, max_points)
    assert np.all(np.diff(idx) > 0)  # distinct, in order
    if n:
        assert idx[0] == 0
        assert idx[-1] == n - 1
        assert idx.min() >= 0 and idx.max() < n


@pytest.mark.parametrize(("n", "max_points"), [(1000, 10), (1001, 7), (12345, 100), (50, 49)])
def test_decimation_is_evenly_spaced(n: int, max_points: int) -> None:
    gaps = np.diff(decimate_indexes(n, max_points))
    assert gaps.max() - gaps.min() <= 1


@pytest.mark.parametrize("max_points", [0, -1])
def test_zero_or_negative_budget_returns_every_point(max_points: int) -> None:
    assert decimate_indexes(500, max_points).tolist() == list(range(500))


def test_budget_of_one_keeps_the_latest_point() -> None:
    assert decimate_indexes(500, 1).tolist() == [499]


def fill(history: SignalHistory, name: str, n: int, start: int = 0) -> list[tuple[int, float, float, float, int]]:
    points = []
    for i in range(start, start + n):
        point = (i * 10, np.sin(i) + i / 1000, -1.0 - i, 1.0 + i, 1_700_000_000_000 + i)
        history.append(name, *point)
        points.append(point)
    return points


def as_tuples(pts: Points) -> list[tuple[int, float, float, float, int]]:
    return list(zip(pts.steps.tolist(), pts.values.tolist(), pts.vmin.tolist(), pts.vmax.tolist(),
                    pts.stamps.tolist(), strict=True))


def test_read_returns_every_point_with_all_columns() -> None:
    history = SignalHistory()
    points = fill(history, "loss", 50)
    pts = history.read("loss")
    assert pts.name == "loss"
    assert as_tuples(pts) == points
    assert pts.steps.dtype == np.int64 and pts.stamps.dtype == np.int64
    assert pts.values.dtype == np.float64
    assert pts.end == 50


def test_decimated_read_returns_a_subset_of_appended_points_in_order() -> None:
    history = SignalHistory()
    points = fill(history, "loss", 1000)
    pts = history.read("loss", max_points=37)
    got = as_tuples(pts)
    assert len(got) == 37
    assert got[0] == points[0] and got[-1] == points[-1]
    positions = [points.index(p) for p in got]  # each returned point is an appended one, columns aligned
    assert positions == sorted(set(positions))
    assert pts.end == 1000


def test_incremental_reads_resume_at_end() -> None:
    history = SignalHistory()
    first = fill(history, "acc", 30)
    pts = history.read("acc")
    assert as_tuples(pts) == first
    nothing = history.read("acc", start=pts.end)
    assert len(nothing.steps) == 0 and nothing.end == 30
    second = fill(history, "acc", 12, start=30)
    more = history.read("acc", start=pts.end)
    assert as_tuples(more) == second
    assert more.end == 42
    assert len(history.read("acc", start=100).steps) == 0


def test_incremental_read_is_decimated_within_its_own_range() -> None:
    history = SignalHistory()
    points = fill(history, "loss", 300)
    got = as_tuples(history.read("loss", start=100, max_points=10))
    assert len(got) == 10
    assert got[0] == points[100] and got[-1] == points[-1]


def test_curves_are_independent_and_counted() -> None:
    history = SignalHistory()
    fill(history, "loss", 5)
    fill(history, "acc", 3)
    assert history.names() == ["loss", "acc"]
    assert history.length("loss") == 5
    assert history.length("acc") == 3
    assert history.length("missing") == 0
    assert history.version == 8
    with pytest.raises(KeyError):
        history.read("missing")


def test_read_copies_so_later_appends_do_not_change_it() -> None:
    history = SignalHistory()
    fill(history, "loss", 3)
    pts = history.read("loss")
    fill(history, "loss", 1000, start=3)
    assert pts.steps.tolist() == [0, 10, 20]


def test_latest_is_none_without_points() -> None:
    assert SignalHistory().latest() is None


def test_latest_is_the_point_with_the_newest_stamp() -> None:
    history = SignalHistory()
    history.append("loss", 1, 0.9, 0.9, 0.9, 1000)
    history.append("acc", 1, 0.1, 0.1, 0.1, 1001)
    assert history.latest() == ("acc", 1, 0.1)
    history.append("loss", 2, 0.8, 0.8, 0.8, 1002)
    assert history.latest() == ("loss", 2, 0.8)


def test_latest_with_equal_stamps_is_the_last_appended() -> None:
    history = SignalHistory()
    history.append("loss", 1, 0.9, 0.9, 0.9, 1000)
    history.append("acc", 1, 0.1, 0.1, 0.1, 1000)
    history.append("loss", 2, 0.8, 0.8, 0.8, 1000)  # same millisecond: common within one step
    assert history.latest() == ("loss", 2, 0.8)
