"""Read-only aggregates the daemon computes for an analysis plan, over a real sample frame."""

from __future__ import annotations

import numpy as np
import pytest

from weightslabd.agent.analysis import compute
from weightslabd.agent.plan import AnalysisPlan
from weightslabd.api.query import QueryError
from weightslabd.store.samples import SampleFrame, SplitTable


def frame() -> SampleFrame:
    train, val = SplitTable("train", 6), SplitTable("val", 4)
    train.set_signal("loss", np.arange(6), np.array([0.5, 1.0, 2.0, 4.0, np.nan, 3.0], dtype=np.float32), 1)
    val.set_signal("loss", np.arange(4), np.array([1.0, 1.0, 2.0, 6.0], dtype=np.float32), 1)
    train.set_labels(np.arange(6), np.array([0, 1, 0, 1, 0, 1]), None)
    val.set_labels(np.arange(4), np.array([1, 1, 0, 0]), None)
    train.edit_tags(np.array([0, 3]), ["cats"], "add")
    val.set_denied(np.array([3]), True)
    return SampleFrame([train, val])


def run(**fields: object) -> str:
    step = AnalysisPlan(action="analysis", **fields)  # type: ignore[arg-type]
    return compute(step, frame(), ["cats"])


def test_counts_means_and_extremes() -> None:
    assert run(stat="count") == "count of samples: 10"
    assert run(stat="count", query="deny_listed == 1") == "count of samples where deny_listed == 1: 1"
    assert run(stat="count", group_by="split") == "count of samples by split: train: 6; val: 4"
    assert run(stat="mean", column="loss") == "mean of loss: 2.27778 (n=9)"  # the NaN is left out
    assert run(stat="max", column="Loss", group_by="split") == "max of Loss by split: train: 4 (n=5); val: 6 (n=4)"
    assert run(stat="min", column="loss", group_by="tag") == "min of loss by tag: cats: 0.5 (n=2); untagged: 1 (n=7)"
    assert run(stat="sum", column="loss", query="label == 0", group_by="label") == (
        "sum of loss where label == 0 by label: label 0: 10.5 (n=4)")
    assert run(stat="quantiles", column="loss", quantiles=(0.5,)) == "quantiles of loss: q0.5=2 (n=9)"
    assert run(stat="mean", column="loss", query="loss > 100") == (
        "mean of loss where loss > 100: n/a (no value among 0 samples)")


@pytest.mark.parametrize(("fields", "why"), [
    ({"stat": "mean", "column": "nope"}, "unknown column 'nope'"),
    ({"stat": "mean"}, "'mean' needs a column"),
    ({"stat": "mean", "column": "tags"}, "is not numeric"),
    ({"stat": "count", "query": "lss > 1"}, "unknown column 'lss'"),
])
def test_a_bad_analysis_is_one_line(fields: dict[str, object], why: str) -> None:
    with pytest.raises(QueryError, match=why):
        run(**fields)
