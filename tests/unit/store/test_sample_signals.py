"""Per-sample signal history: slice curves, trajectories and step reads against a plain-Python reference."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightslabd.store.history import decimate_indexes
from weightslabd.store.sample_signals import SampleSignals, SignalStore, SliceCurve, fold_per_sample

Record = tuple[int, list[int], list[float], list[int] | None]


# -- the reference: one Python loop per value ---------------------------------------------------------

def ref_fold(values: Sequence[float], how: str) -> float:
    return max(values) if how == "max" else sum(values) / len(values)


def f32(v: float) -> float:
    return float(np.float32(v))


def ref_curve(records: list[Record], mask: Sequence[bool] | None, how: str,
              step_range: tuple[int, int] | None = None) -> list[tuple[int, float, float, float, int]]:
    per_step: dict[int, list[float]] = {}
    for step, ids, values, _ in records:
        if step_range is not None and not step_range[0] <= step <= step_range[1]:
            continue
        groups: dict[int, list[float]] = {}
        for i, v in zip(ids, values, strict=True):
            if mask is not None and not (i < len(mask) and mask[i]):
                continue
            if not math.isfinite(f32(v)):
                continue
            groups.setdefault(i, []).append(f32(v))
        if groups:
            per_step.setdefault(step, []).extend(ref_fold(g, how) for g in groups.values())
    return [(s, sum(v) / len(v), min(v), max(v), len(v)) for s, v in sorted(per_step.items())]


def ref_trajectory(records: list[Record], sample: int, how: str) -> list[tuple[int, float]]:
    per_step: dict[int, list[float]] = {}
    for step, ids, values, _ in records:
        for i, v in zip(ids, values, strict=True):
            if i == sample and math.isfinite(f32(v)):
                per_step.setdefault(step, []).append(f32(v))
    return [(s, ref_fold(v, how)) for s, v in sorted(per_step.items())]


def as_rows(curve: SliceCurve) -> list[tuple[int, float, float, float, int]]:
    return list(zip(curve.steps.tolist(), curve.means.tolist(), curve.mins.tolist(), curve.maxs.tolist(),
                    curve.counts.tolist(), strict=True))


def assert_rows(got: list[tuple[int, float, float, float, int]],
                want: list[tuple[int, float, float, float, int]]) -> None:
    assert [r[0] for r in got] == [r[0] for r in want]
    assert [r[4] for r in got] == [r[4] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g[1] == pytest.approx(w[1], rel=1e-9, abs=1e-9)
        assert g[2] == pytest.approx(w[2], rel=1e-12) and g[3] == pytest.approx(w[3], rel=1e-12)


def fill(store: SignalStore, records: list[Record]) -> None:
    for step, ids, values, inst in records:
        store.append(step, np.asarray(ids, dtype=np.int64), np.asarray(values, dtype=np.float32),
                     None if inst is None else np.asarray(inst))


# -- strategies ---------------------------------------------------------------------------------------

values_st = st.one_of(st.floats(-1e4, 1e4, width=32), st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def record_st(draw: st.DrawFn, max_id: int = 30, instances: bool = True) -> Record:
    step = draw(st.integers(0, 12))
    if instances and draw(st.booleans()):
        ids = draw(st.lists(st.integers(0, max_id), min_size=1, max_size=40))  # repeats: instances
    else:
        ids = draw(st.lists(st.integers(0, max_id), min_size=1, max_size=31, unique=True))
    values = draw(st.lists(values_st, min_size=len(ids), max_size=len(ids)))
    inst = list(range(len(ids))) if instances and draw(st.booleans()) else None
    return step, ids, values, inst


records_st = st.lists(record_st(), max_size=25)
mask_st = st.one_of(st.none(), st.lists(st.booleans(), max_size=34))
fold_st = st.sampled_from(["mean", "max"])
cap_st = st.sampled_from([0, 1, 2, 3, 5, 200])
chunk_st = st.sampled_from([1, 7, 40, 1 << 16])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_st, mask=mask_st, how=fold_st, cap=cap_st, chunk=chunk_st)
def test_slice_curve_matches_the_reference(records: list[Record], mask: list[bool] | None, how: str, cap: int,
                                           chunk: int) -> None:
    store = SignalStore(chunk_max=chunk)
    fill(store, records)
    want = ref_curve(records, mask, how)
    curve = store.slice_curve(None if mask is None else np.asarray(mask, dtype=bool), cap, how)
    assert curve.total_points == len(want)
    assert_rows(as_rows(curve), [want[i] for i in decimate_indexes(len(want), cap)])
    for arr, dtype in ((curve.steps, np.int64), (curve.means, np.float64), (curve.mins, np.float64),
                       (curve.maxs, np.float64), (curve.counts, np.int64)):
        assert arr.dtype == dtype


@settings(max_examples=150, deadline=None)
@given(records=records_st, mask=mask_st, how=fold_st, lo=st.integers(-1, 13), width=st.integers(0, 13))
def test_step_range_keeps_only_those_steps(records: list[Record], mask: list[bool] | None, how: str, lo: int,
                                           width: int) -> None:
    store = SignalStore(chunk_max=16)
    fill(store, records)
    step_range = (lo, lo + width)
    curve = store.slice_curve(None if mask is None else np.asarray(mask, dtype=bool), 0, how, step_range)
    assert_rows(as_rows(curve), ref_curve(records, mask, how, step_range))


@settings(max_examples=150, deadline=None)
@given(records=records_st, how=fold_st, cap=cap_st, samples=st.lists(st.integers(-2, 33), max_size=6))
def test_trajectory_matches_the_reference(records: list[Record], how: str, cap: int, samples: list[int]) -> None:
    store = SignalStore(chunk_max=16)
    fill(store, records)
    got = store.trajectory(samples, cap, how)
    assert sorted(got) == sorted(set(samples))
    for s in set(samples):
        want = ref_trajectory(records, s, how)
        want = [want[i] for i in decimate_indexes(len(want), cap)]
        steps, values = got[s]
        assert steps.tolist() == [w[0] for w in want]
        assert values.tolist() == pytest.approx([w[1] for w in want], rel=1e-9)


@settings(max_examples=150, deadline=None)
@given(records=records_st, how=fold_st, step=st.integers(0, 12), top=st.integers(0, 5))
def test_step_samples_highest_first(records: list[Record], how: str, step: int, top: int) -> None:
    store = SignalStore(chunk_max=16)
    fill(store, records)
    groups: dict[int, list[float]] = {}
    for s, ids, values, _ in records:
        if s == step:
            for i, v in zip(ids, values, strict=True):
                groups.setdefault(i, []).append(f32(v))
    folded = {i: (ref_fold([v for v in g if math.isfinite(v)], how) if any(map(math.isfinite, g)) else math.nan)
              for i, g in groups.items()}
    want = sorted(folded.items(), key=lambda kv: (math.isnan(kv[1]), -kv[1] if not math.isnan(kv[1]) else 0, kv[0]))
    if top:
        want = want[:top]
    got_ids, got_values, total = store.step_samples(step, top, how)
    assert total == len(groups)
    assert got_ids.tolist() == [w[0] for w in want]
    np.testing.assert_allclose(got_values, [w[1] for w in want], rtol=1e-9)


# -- fixed cases -----------------------------------------------------------------------------------------

def test_mean_curve_by_hand() -> None:
    store = SignalStore()
    store.append(0, np.array([0, 1, 2, 3]), np.array([1.0, 2.0, 3.0, 4.0]))
    store.append(1, np.array([3, 2]), np.array([10.0, 20.0]))
    store.append(2, np.array([0, 1]), np.array([5.0, 7.0]))
    mask = np.array([False, True, True, False])
    curve = store.slice_curve(mask, 0)
    assert curve.steps.tolist() == [0, 1, 2]
    assert curve.means.tolist() == [2.5, 20.0, 7.0]
    assert curve.mins.tolist() == [2.0, 20.0, 7.0]
    assert curve.maxs.tolist() == [3.0, 20.0, 7.0]
    assert curve.counts.tolist() == [2, 1, 1]
    assert store.slice_curve(None, 0).means.tolist() == [2.5, 15.0, 6.0]


def test_steps_without_a_masked_sample_are_absent() -> None:
    store = SignalStore()
    store.append(0, np.array([0, 1]), np.array([1.0, 2.0]))
    store.append(1, np.array([2, 3]), np.array([3.0, 4.0]))
    curve = store.slice_curve(np.array([True, False, False, False]), 0)
    assert curve.steps.tolist() == [0]
    assert curve.total_points == 1


def test_empty_mask_or_store_gives_an_empty_curve() -> None:
    store = SignalStore()
    empty = store.slice_curve(None, 200)
    assert len(empty) == 0 and empty.total_points == 0 and empty.steps.dtype == np.int64
    store.append(0, np.arange(4), np.ones(4))
    assert len(store.slice_curve(np.zeros(4, dtype=bool), 200)) == 0
    assert len(store.slice_curve(np.zeros(0, dtype=bool), 200)) == 0


def test_nan_values_are_not_counted() -> None:
    store = SignalStore()
    store.append(0, np.array([0, 1, 2]), np.array([1.0, np.nan, 3.0]))
    store.append(1, np.array([0, 1]), np.array([np.nan, np.inf]))
    store.append(2, np.array([0, 0, 1]), np.array([np.nan, 4.0, -np.inf]))  # instances
    curve = store.slice_curve(None, 0)
    assert curve.steps.tolist() == [0, 2]
    assert curve.means.tolist() == [2.0, 4.0]
    assert curve.counts.tolist() == [2, 1]


def test_downsampling_keeps_the_first_and_last_steps() -> None:
    store = SignalStore(chunk_max=100)
    for step in range(1000):
        store.append(step * 3, np.arange(10), np.full(10, float(step)))
    curve = store.slice_curve(None, 200)
    assert len(curve) == 200 and curve.total_points == 1000
    assert curve.steps[0] == 0 and curve.steps[-1] == 2997
    assert np.all(np.diff(curve.steps) > 0)
    assert curve.means.tolist() == (curve.steps // 3).astype(float).tolist()  # real points, none invented
    assert len(store.slice_curve(None, 0)) == 1000


def test_instances_fold_per_sample_before_the_mean() -> None:
    store = SignalStore()
    # sample 0 has three boxes, sample 1 one
    store.append(0, np.array([0, 1, 0, 0]), np.array([1.0, 10.0, 2.0, 6.0]))
    mean = store.slice_curve(None, 0, "mean")
    assert mean.means.tolist() == [(3.0 + 10.0) / 2] and mean.counts.tolist() == [2]
    assert mean.mins.tolist() == [3.0] and mean.maxs.tolist() == [10.0]
    worst = store.slice_curve(None, 0, "max")
    assert worst.means.tolist() == [(6.0 + 10.0) / 2]
    assert store.has_instances
    with pytest.raises(ValueError):
        store.slice_curve(None, 0, "median")


def test_records_at_keeps_the_instance_breakdown() -> None:
    store = SignalStore()
    store.append(5, np.array([3, 1, 3]), np.array([0.5, 0.1, 0.7]))  # implicit instance numbers
    store.append(5, np.array([2, 2]), np.array([0.2, 0.4]), instances=np.array([7, 3]))
    store.append(6, np.array([4]), np.array([1.0]))
    (ids_a, vals_a, inst_a), (ids_b, vals_b, inst_b) = store.records_at(5)
    assert ids_a.tolist() == [1, 3, 3] and inst_a is not None and inst_a.tolist() == [0, 0, 1]
    assert vals_a.tolist() == pytest.approx([0.1, 0.5, 0.7])
    assert ids_b.tolist() == [2, 2] and inst_b is not None and inst_b.tolist() == [7, 3]
    assert vals_b.tolist() == pytest.approx([0.2, 0.4])
    ((ids_c, _, inst_c),) = store.records_at(6)
    assert ids_c.tolist() == [4] and inst_c is None


def test_steps_out_of_order_and_repeated_are_pooled() -> None:
    store = SignalStore()
    store.append(10, np.array([0, 1]), np.array([1.0, 3.0]))
    store.append(5, np.array([2]), np.array([7.0]))
    store.append(10, np.array([2, 3]), np.array([5.0, 7.0]))  # an evaluation pass in two batches
    curve = store.slice_curve(None, 0)
    assert curve.steps.tolist() == [5, 10]
    assert curve.means.tolist() == [7.0, 4.0]
    assert curve.counts.tolist() == [1, 4]
    ids, values, total = store.step_samples(10, 2)
    assert ids.tolist() == [3, 2] and values.tolist() == [7.0, 5.0] and total == 4


def test_ids_past_the_mask_are_outside_it_and_bad_ids_are_dropped() -> None:
    store = SignalStore()
    store.append(0, np.array([0, 1, 50, -1, 2**40]), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert len(store) == 3
    curve = store.slice_curve(np.array([True, True]), 0)
    assert curve.means.tolist() == [1.5]
    assert store.slice_curve(None, 0).counts.tolist() == [3]


def test_append_checks_lengths_and_skips_empty_records() -> None:
    store = SignalStore()
    with pytest.raises(ValueError):
        store.append(0, np.arange(3), np.ones(2))
    with pytest.raises(ValueError):
        store.append(0, np.arange(3), np.ones(3), instances=np.arange(2))
    store.append(0, np.empty(0, dtype=np.int64), np.empty(0))
    assert store.records == 0 and len(store) == 0


def test_chunks_hold_whole_records_and_memory_is_reported() -> None:
    store = SignalStore(chunk_max=100)
    for step in range(50):
        store.append(step, np.arange(30), np.full(30, float(step)))
    store.append(50, np.arange(250), np.full(250, 50.0))  # larger than a chunk: a chunk of its own
    assert len(store) == 50 * 30 + 250
    assert store.nbytes() >= len(store) * 8
    assert store.used_nbytes() == len(store) * 8 + store.records * 17
    curve = store.slice_curve(None, 0)
    assert curve.means.tolist() == [float(s) for s in range(51)]
    assert curve.counts.tolist() == [30] * 50 + [250]


def test_fold_per_sample() -> None:
    ids = np.array([5, 2, 5, 9, 2, 5, 7])
    values = np.array([1.0, 4.0, 3.0, np.nan, 6.0, 8.0, 2.0])
    uids, mean = fold_per_sample(ids, values, "mean")
    assert uids.tolist() == [2, 5, 7, 9]
    assert mean[:3].tolist() == [5.0, 4.0, 2.0] and math.isnan(mean[3])
    _, worst = fold_per_sample(ids, values, "max")
    assert worst[:3].tolist() == [6.0, 8.0, 2.0] and math.isnan(worst[3])
    e_ids, e_vals = fold_per_sample(np.empty(0, dtype=np.int32), np.empty(0), "mean")
    assert e_ids.size == 0 and e_vals.size == 0
    with pytest.raises(ValueError):
        fold_per_sample(ids, values, "sum")


def test_container() -> None:
    signals = SampleSignals()
    assert signals.get("train", "loss") is None
    store = signals.store("train", "loss")
    assert signals.store("train", "loss") is store
    signals.store("val", "loss").append(0, np.arange(4), np.ones(4))
    store.append(0, np.arange(8), np.ones(8))
    assert signals.names() == [("train", "loss"), ("val", "loss")]
    assert signals.get("train", "loss") is store
    assert len(signals) == 12
    assert signals.nbytes() == store.nbytes() + signals.store("val", "loss").nbytes()


def test_readers_alongside_one_appender() -> None:
    """Readers see consistent, growing snapshots while chunks and the index grow under them."""
    store = SignalStore(chunk_max=512)
    n_records = 3000
    errors: list[BaseException] = []
    done = threading.Event()

    def append() -> None:
        try:
            rng = np.random.default_rng(0)
            for step in range(n_records):
                ids = rng.choice(1000, size=int(rng.integers(1, 100)), replace=bool(step % 3 == 0))
                store.append(step, ids, np.full(len(ids), float(step)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            last_values = last_steps = 0
            mask = np.arange(1000) % 2 == 0
            while not done.is_set() or last_steps < n_records:
                n = len(store)
                assert n >= last_values
                last_values = n
                curve = store.slice_curve(None, 0)
                assert curve.total_points >= last_steps
                last_steps = curve.total_points
                assert np.array_equal(curve.means, curve.steps.astype(float))  # each record: its step's value
                assert np.array_equal(curve.steps, np.arange(len(curve)))
                store.slice_curve(mask, 50, "max")
                store.trajectory([1, 2, 3], 20)
                store.step_samples(max(0, last_steps - 1), 5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=append)] + [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert store.records == n_records
