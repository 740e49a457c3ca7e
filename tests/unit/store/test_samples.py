"""The sample table: per-split columns filled by the trainer's records and the user's edits."""

from __future__ import annotations

import numpy as np
import pytest

from weightslabd.store.samples import SampleTable, SplitTable


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def tag_map(table: SplitTable) -> dict[int, set[str]]:
    return {i: set(table.tags_of(i)) for i in range(table.size) if table.tags_of(i)}


def test_new_split_starts_empty() -> None:
    table = SplitTable("train", 5)
    assert table.encounters.tolist() == [0] * 5
    assert np.isnan(table.label).all() and np.isnan(table.prediction).all()
    assert not table.denied.any()
    assert table.last_step.tolist() == [-1] * 5
    assert table.tag_masks == {} and table.signals == {}
    assert table.in_loop() == 5


def test_set_signal_stores_last_value_and_step_per_sample() -> None:
    table = SplitTable("train", 6)
    table.set_signal("loss", ids(1, 3), np.array([0.5, 0.25]), step=7)
    table.set_signal("loss", ids(3, 4), np.array([0.125, 2.0]), step=8)
    col = table.signals["loss"]
    assert col.dtype == np.float32
    assert np.isnan(col[[0, 2, 5]]).all()  # never seen: NaN
    assert col[[1, 3, 4]].tolist() == [0.5, 0.125, 2.0]
    assert table.last_step.tolist() == [-1, 7, -1, 8, 8, -1]


def test_set_signal_ignores_out_of_range_ids() -> None:
    table = SplitTable("train", 4)
    table.set_signal("loss", ids(-1, 0, 4, 3, 1000, -7), np.array([9.0, 1.0, 9.0, 3.0, 9.0, 9.0]), step=2)
    col = table.signals["loss"]
    assert col[0] == 1.0 and col[3] == 3.0
    assert np.isnan(col[[1, 2]]).all()
    assert table.last_step.tolist() == [2, -1, -1, 2]


def test_set_signal_with_fewer_values_than_ids_uses_the_pairs_it_has() -> None:
    table = SplitTable("train", 4)
    table.set_signal("loss", ids(0, 1, 2), np.array([5.0]), step=1)
    assert table.signals["loss"][0] == 5.0
    assert np.isnan(table.signals["loss"][1:]).all()
    assert table.last_step.tolist() == [1, -1, -1, -1]


def test_encounters_count_each_step_a_sample_was_in_and_ignore_unknown_ids() -> None:
    table = SplitTable("train", 5)
    table.count_encounters(ids(0, 2, 4, 9, -1))
    table.count_encounters(ids(2, 3))
    assert table.encounters.tolist() == [1, 0, 2, 1, 1]


def test_set_batch_stores_scalar_targets_and_predictions() -> None:
    table = SplitTable("train", 4)
    table.set_labels(ids(0, 3, 7), np.array([1, 0, 5]), np.array([0.9, 0.2, 0.5]))
    assert table.label[[0, 3]].tolist() == [1.0, 0.0]
    assert table.prediction[[0, 3]].tolist() == [0.9, 0.2]
    assert np.isnan(table.label[[1, 2]]).all()


def test_set_batch_skips_targets_that_are_not_one_scalar_per_sample() -> None:
    table = SplitTable("train", 3)
    table.set_labels(ids(0, 1), np.zeros((2, 8, 8)), np.array([0.5]))  # masks; wrong length
    table.set_labels(ids(2,), np.array(["cat"]), None)  # not numeric
    assert np.isnan(table.label).all() and np.isnan(table.prediction).all()


def test_deny_and_restore_return_how_many_samples_changed() -> None:
    table = SplitTable("train", 10)
    assert table.set_denied(ids(1, 2, 3, 42, -1), True) == 3
    assert table.set_denied(ids(2, 3, 4), True) == 1  # 2 and 3 were already denied
    assert table.denied.nonzero()[0].tolist() == [1, 2, 3, 4]
    assert table.in_loop() == 6
    assert table.set_denied(ids(1, 5), False) == 1
    assert table.denied.nonzero()[0].tolist() == [2, 3, 4]


def test_deny_with_repeated_ids_counts_each_sample_once() -> None:
    table = SplitTable("train", 10)
    assert table.set_denied(ids(3, 3, 3), True) == 1


def test_tags_add_remove_and_override() -> None:
    table = SplitTable("train", 5)
    table.edit_tags(ids(0, 1, 9), ["hard", "blurry"], "add")
    table.edit_tags(ids(1, 2), ["hard"], "add")
    assert tag_map(table) == {0: {"hard", "blurry"}, 1: {"hard", "blurry"}, 2: {"hard"}}
    table.edit_tags(ids(0, 2), ["hard"], "remove")
    assert tag_map(table) == {0: {"blurry"}, 1: {"hard", "blurry"}}  # a sample left without tags has no entry
    table.edit_tags(ids(1, 3), ["clean"], "override")
    assert tag_map(table) == {0: {"blurry"}, 1: {"clean"}, 3: {"clean"}}
    table.edit_tags(ids(3,), [], "override")
    assert tag_map(table) == {0: {"blurry"}, 1: {"clean"}}


def test_ensure_split_creates_then_returns_the_same_table() -> None:
    samples = SampleTable()
    train = samples.ensure_split("train", 4)
    assert samples.ensure_split("train", 4) is train
    assert samples.ensure_split("train", 2) is train  # never shrinks
    assert train.size == 4
    assert samples.get("train") is train
    assert samples.get("val") is None


def test_growing_a_split_keeps_every_column_and_tag() -> None:
    samples = SampleTable()
    small = samples.ensure_split("train", 3)
    small.set_signal("loss", ids(0, 2), np.array([0.5, 1.5]), step=4)
    small.set_labels(ids(1, 1), np.array([2, 2]), np.array([0.75, 0.75]))
    small.count_encounters(ids(1,))
    small.count_encounters(ids(1,))
    small.set_denied(ids(2,), True)
    small.edit_tags(ids(0,), ["keep"], "add")

    big = samples.ensure_split("train", 6)
    assert big.size == 6 and samples.get("train") is big
    assert big.signals["loss"][[0, 2]].tolist() == [0.5, 1.5]
    assert np.isnan(big.signals["loss"][[1, 3, 4, 5]]).all()
    assert big.last_step.tolist() == [4, -1, 4, -1, -1, -1]
    assert big.encounters.tolist() == [0, 2, 0, 0, 0, 0]
    assert big.label[1] == 2.0 and big.prediction[1] == 0.75
    assert np.isnan(big.label[3:]).all()
    assert big.denied.tolist() == [False, False, True, False, False, False]
    assert tag_map(big) == {0: {"keep"}}
    big.set_signal("loss", ids(5,), np.array([9.0]), step=5)  # new rows are usable
    assert big.signals["loss"][5] == 9.0


def test_counts_and_unique_tags_span_all_splits() -> None:
    samples = SampleTable()
    assert samples.counts() == (0, 0, 0)
    assert samples.unique_tags() == []
    train = samples.ensure_split("train", 10)
    val = samples.ensure_split("val", 5)
    train.set_denied(ids(0, 1, 2), True)
    val.set_denied(ids(4,), True)
    train.edit_tags(ids(0, 1), ["zebra", "apple"], "add")
    val.edit_tags(ids(0,), ["apple", "mango"], "add")
    assert samples.counts() == (15, 11, 4)
    assert samples.unique_tags() == ["apple", "mango", "zebra"]


def test_unknown_tag_edit_mode_is_refused_and_changes_nothing() -> None:
    table = SplitTable("train", 4)
    table.edit_tags(np.array([1]), ["keep"], "add")
    with pytest.raises(ValueError, match="unknown tag edit mode 'Add'"):
        table.edit_tags(np.array([1]), ["keep"], "Add")
    assert tag_map(table) == {1: {"keep"}}


def test_frame_spans_splits_in_registration_order() -> None:
    samples = SampleTable()
    train = samples.ensure_split("train", 3)
    val = samples.ensure_split("val", 2)
    train.set_signal("loss", ids(0, 2), np.array([0.5, 1.5]), step=1)
    val.set_signal("acc", ids(1,), np.array([1.0]), step=1)
    train.edit_tags(ids(0, 2), ["b", "a"], "add")
    val.edit_tags(ids(1,), ["a"], "add")
    val.set_denied(ids(0,), True)
    frame = samples.frame()
    assert len(frame) == 5
    assert frame.column("origin").tolist() == ["train"] * 3 + ["val"] * 2
    assert frame.column("sample_id").tolist() == [0, 1, 2, 0, 1]
    assert frame.column("tags").tolist() == ["a;b", "", "a;b", "", "a"]
    assert frame.has_tag("a").tolist() == [True, False, True, False, True]
    assert frame.column("deny_listed").tolist() == [False, False, False, True, False]
    loss = frame.column("loss")
    assert loss[[0, 2]].tolist() == [0.5, 1.5] and np.isnan(loss[[1, 3, 4]]).all()
    assert frame.column_names()[-2:] == ["loss", "acc"]
    which, sid = frame.locate(np.array([4, 0, 2]))
    assert which.tolist() == [1, 0, 0] and sid.tolist() == [1, 0, 2]
    assert frame.row_of("val", 1) == 4 and frame.row_of("val", 2) is None
    with pytest.raises(KeyError):
        frame.column("nope")


def test_the_tags_column_names_every_tag_past_62() -> None:
    samples = SampleTable()
    table = samples.ensure_split("train", 6)
    names = [f"t{i:03d}" for i in range(200)]
    table.edit_tags(ids(0, 1), names, "add")
    table.edit_tags(ids(1,), ["t199"], "remove")
    table.edit_tags(ids(2,), ["t150"], "add")
    table.edit_tags(ids(3,), ["t000", "t150"], "add")
    column = samples.frame().column("tags").tolist()
    assert column == [";".join(names), ";".join(names[:-1]), "t150", "t000;t150", "", ""]


def test_a_tag_set_on_no_row_is_not_kept() -> None:
    table = SplitTable("train", 4)
    table.edit_tags(ids(), ["ghost"], "add")
    table.edit_tags(ids(9,), ["ghost"], "add")  # outside the split: no row
    assert table.tag_masks == {}
