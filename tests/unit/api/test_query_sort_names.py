"""Every name the grid shows sorts from the metadata panel as the Studio sends it (spaces and symbols
included), and `index` — the Studio's "clear sort" — is the natural order."""

from __future__ import annotations

import numpy as np
import pytest

from weightslabd.api.query import ArrayFrame, QueryError, View, parse


def rows(text: str, frame: ArrayFrame, view: View | None = None) -> list[int]:
    return (view or View()).apply(parse(text), accumulate=False).rows(frame).tolist()


FRAME = ArrayFrame({"loss": np.array([0.5, 2.0, 1.0, 3.0]), "my loss": np.array([4.0, 1.0, 3.0, 2.0]),
                    "loss (ema) [x]": np.array([1.0, 2.0, 4.0, 3.0]), "acc@1 #2": np.array([2.0, 1.0, 4.0, 3.0])})


@pytest.mark.parametrize(("text", "expected"), [
    ("sortby my loss desc", [0, 2, 3, 1]),
    ("sortby my loss", [1, 3, 2, 0]),
    ("sortby loss (ema) [x] desc", [2, 3, 1, 0]),
    ("sortby acc@1 #2 desc, loss asc", [2, 3, 0, 1]),
    ("loss > 0.7 sortby my loss descending", [2, 3, 1]),
    ("sort by my loss desc", [0, 2, 3, 1]),
])
def test_names_with_spaces_and_symbols_sort(text: str, expected: list[int]) -> None:
    assert rows(text, FRAME) == expected
    assert rows(str(parse(text)), FRAME) == expected  # the canonical text (backquoted names) reads back the same


def test_index_is_the_natural_order_and_clears_a_sort() -> None:
    sorted_view = View().apply(parse("loss > 0.7 sortby loss desc"), accumulate=False)
    assert sorted_view.rows(FRAME).tolist() == [3, 1, 2]
    cleared = sorted_view.apply(parse("sortby index asc"), accumulate=False)  # the Studio's third click
    assert cleared.rows(FRAME).tolist() == [1, 2, 3]  # the filter stays, the order is the table's
    assert rows("sortby index desc", FRAME) == [3, 2, 1, 0]
    assert rows("index < 2", FRAME) == [0, 1]
    own = ArrayFrame({"index": np.array([9, 7, 8])})  # a column really named index wins
    assert rows("sortby index asc", own) == [1, 2, 0]


def test_a_sort_clause_still_says_what_is_wrong() -> None:
    with pytest.raises(QueryError, match="expected ',' or the end at position 21"):
        parse("sortby my loss desc label")
    with pytest.raises(QueryError, match="expected a column to sort by"):
        parse("sortby desc")
    with pytest.raises(QueryError, match="unknown column 'my los'"):
        rows("sortby my los desc", FRAME)
