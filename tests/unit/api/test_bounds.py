"""The bounds on what one request may ask (docs/data-plane.md, docs/query.md): each refusal is one
line naming the bound, raised before anything changes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from weightslabd.api import grid
from weightslabd.api.query import MAX_QUERY_CHARS, QueryError, View, parse
from weightslabd.store.samples import SampleTable


def run_of(**splits: int) -> Any:
    samples = SampleTable()
    for name, size in splits.items():
        samples.ensure_split(name, size)
    return SimpleNamespace(samples=samples, run_id="r1")


# -- the accumulated view --------------------------------------------------------------------------


def test_accumulating_stops_when_the_view_text_would_pass_the_query_bound() -> None:
    view = View()
    term = "origin != '" + "x" * 990 + "{}'"
    for i in range(100):
        try:
            view = view.apply(parse(term.format(i)), accumulate=True)
        except QueryError as exc:
            assert f"at most {MAX_QUERY_CHARS:,}" in str(exc) and "reset" in str(exc)
            break
    else:
        pytest.fail("the accumulated view never hit the bound")
    assert len(view.text()) <= MAX_QUERY_CHARS
    assert parse(view.text()).where == view.where  # every view is a query the parser accepts
    assert view.apply(parse(term.format("r")), accumulate=False).text() == term.format("r")  # replacing works
    assert view.apply(parse("reset"), accumulate=True) == View()


def test_a_sort_or_an_empty_query_accumulates_without_growing() -> None:
    view = View().apply(parse("loss > 1"), accumulate=True)
    for _ in range(1000):
        view = view.apply(parse("sortby loss desc"), accumulate=True)
    assert view.text() == "loss > 1 sortby loss desc"


# -- tags ----------------------------------------------------------------------------------------------


def test_tags_are_split_stripped_and_deduplicated() -> None:
    assert grid.split_tags(" hard ; blurry;;hard; needs review ") == ["hard", "blurry", "needs review"]
    assert grid.split_tags("") == []
    grid.check_tag("é-ü 漢字 (ok)!")  # printable is not only ASCII


@pytest.mark.parametrize(("text", "says"), [
    ("a" * 65, "at most 64"),
    ("line\nbreak", "newlines"),
    ("nul\x00", "control characters"),
    ("tab\there", "control characters"),
    ("esc\x1b[31m", "control characters"),
])
def test_a_bad_tag_is_named_in_one_short_line(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        grid.split_tags(text)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_a_tag_cannot_hold_the_separator_even_when_handed_over_alone() -> None:
    with pytest.raises(ValueError, match="without ';'"):
        grid.check_tag("a;b")


def test_the_tags_of_one_request_are_bounded_before_they_are_split() -> None:
    with pytest.raises(ValueError, match=f"at most {grid.MAX_TAG_TEXT:,}"):
        grid.split_tags("x;" * 1_000_000)


def test_distinct_tags_per_run_count_every_split_and_removal_always_fits() -> None:
    run = run_of(train=10, val=4)
    run.samples.get("train").edit_tags(np.arange(3), [f"t{i}" for i in range(grid.MAX_RUN_TAGS - 1)], "add")
    run.samples.get("val").edit_tags(np.arange(1), ["only-val"], "add")
    grid.check_tag_room(run, ["t0", "only-val"], "add")  # in use: no new tag
    with pytest.raises(ValueError, match=f"at most {grid.MAX_RUN_TAGS}"):
        grid.check_tag_room(run, ["new"], "add")
    with pytest.raises(ValueError, match=f"at most {grid.MAX_RUN_TAGS}"):
        grid.check_tag_room(run, ["new"], "override")
    grid.check_tag_room(run, ["new", "other"], "remove")
    run.samples.get("val").edit_tags(np.arange(1), ["only-val"], "remove")  # nobody carries it: freed
    grid.check_tag_room(run, ["new"], "add")


# -- sample ids ------------------------------------------------------------------------------------------


def test_ids_come_back_sorted_without_duplicates_per_split() -> None:
    run = run_of(train=10, val=4)
    assert grid.parse_edit_targets(run, [5, 5, 1, 5, 1], []) == {"train": [1, 5]}
    groups = grid.parse_edit_targets(run, [3, 9, 3, 0, 9], ["val", "train", "val", "val", "train"])
    assert groups == {"train": [9], "val": [0, 3]}
    assert grid.check_ids(run, "train", np.full(1000, 7)) == [7]


@pytest.mark.parametrize(("ids", "origins", "says"), [
    ([-1], [], "sample id -1 is outside split 'train' (0..9)"),
    ([3, 10], [], "sample id 10 is outside split 'train'"),
    ([99_999_999], [], "outside split"),
    ([1], ["nope" * 10_000], "unknown origin 'nopenope"),
    ([1, 2], ["train"], "sample_origins has 1 entries for 2 samples_ids"),
    ([], [], "nothing to edit"),
])
def test_bad_targets_are_refused(ids: list[int], origins: list[str], says: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        grid.parse_edit_targets(run_of(train=10), ids, origins)
    assert says in str(caught.value) and len(str(caught.value)) < 300


def test_too_many_ids_are_refused_before_they_are_looked_at() -> None:
    flood = np.zeros(grid.MAX_EDIT_IDS + 1, dtype=np.int64)
    with pytest.raises(ValueError, match=f"at most {grid.MAX_EDIT_IDS:,} per request"):
        grid.parse_edit_targets(run_of(train=10), flood, [])
    with pytest.raises(ValueError, match=f"at most {grid.MAX_EDIT_IDS:,} per request"):
        grid.check_ids(run_of(train=10), "train", flood)
    assert grid.parse_edit_targets(run_of(train=10), flood[:-1], []) == {"train": [0]}


def test_an_unknown_split_is_refused_without_echoing_all_of_it() -> None:
    with pytest.raises(ValueError, match="no split named") as caught:
        grid.check_ids(run_of(train=10), "x" * 100_000, [1])
    assert len(str(caught.value)) < 300


def test_an_id_past_int64_is_outside_the_split_not_a_crash() -> None:
    with pytest.raises(ValueError, match="outside split 'train'"):
        grid.check_ids(run_of(train=10), "train", [1, 2**70])
