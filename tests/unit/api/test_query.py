"""The structured query language of ApplyDataQuery: parsing, evaluation, sorting, views, errors."""

from __future__ import annotations

import math
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightslabd.api.query import (
    MAX_DEPTH,
    MAX_QUERY_CHARS,
    And,
    ArrayFrame,
    Between,
    Compare,
    Contains,
    HasTag,
    Node,
    Not,
    Or,
    Query,
    QueryError,
    SortKey,
    Value,
    View,
    parse,
)

NAN = float("nan")


def table() -> ArrayFrame:
    return ArrayFrame(
        {
            "loss": np.array([0.1, NAN, 0.7, 0.5, 0.9, 0.5], dtype=np.float32),
            "label": np.array([3, 1, 3, 2, 3, 0]),
            "origin": np.array(["train", "val", "Train", "test", "train", "val"], dtype=object),
            "name": np.array(["cat_01", "Dog_02", "cat_03", "bird", "CAT_05", "dog"]),
            "denied": np.array([False, True, False, False, True, False]),
            "loss/eval": np.array([1.0, 2.0, NAN, 4.0, 5.0, 6.0]),
        },
        {"bad": np.array([1, 0, 0, 1, 1, 0], dtype=bool), "low-conf": np.array([0, 1, 0, 0, 0, 1], dtype=bool)},
    )


def rows(text: str, frame: ArrayFrame | None = None) -> list[int]:
    return View().apply(parse(text), accumulate=False).rows(frame if frame is not None else table()).tolist()


def num(text: str) -> Value:
    return Value("number", text)


def s(text: str) -> Value:
    return Value("string", text)


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["==", "!=", ">", "<", ">=", "<="])
def test_each_comparison_operator_parses(op: str) -> None:
    assert parse(f"loss {op} 0.5") == Query(Compare("loss", op, num("0.5")))
    assert parse(f"loss{op}0.5") == Query(Compare("loss", op, num("0.5")))


def test_single_equals_is_double_equals() -> None:
    assert parse("label = 3") == parse("label == 3")


def test_values_of_every_kind() -> None:
    cases = {
        "3": num("3"), "-2": num("-2"), "+4": num("+4"), "0.25": num("0.25"), ".5": num(".5"), "1e-3": num("1e-3"),
        "-1.5E+2": num("-1.5E+2"), "inf": num("inf"), "-inf": num("-inf"), "nan": Value("nan", "nan"),
        "NaN": Value("nan", "nan"), "true": Value("bool", "true"), "FALSE": Value("bool", "false"),
        "'a b'": s("a b"), '"x\'y"': s("x'y"), r"'it\'s'": s("it's"), r'"back\\slash"': s("back\\slash"),
        "train": s("train"), "val.v2/x": s("val.v2/x"), '""': s(""),
    }  # fmt: skip
    for text, value in cases.items():
        assert parse(f"x == {text}").where == Compare("x", "==", value), text
    assert num("1e-3").number() == 0.001 and num("-2").number() == -2 and isinstance(num("7").number(), int)
    assert math.isnan(Value("nan", "nan").number() or 0.0)
    assert s("abc").number() is None and s("2.5").number() == 2.5 and Value("bool", "true").number() == 1


def test_column_names_plain_and_backquoted() -> None:
    assert parse("loss/eval > 1").where == Compare("loss/eval", ">", num("1"))
    assert parse("signals.train_loss_2 > 1").where == Compare("signals.train_loss_2", ">", num("1"))
    assert parse("`loss-eval (ema)` > 1").where == Compare("loss-eval (ema)", ">", num("1"))
    assert parse(r"`odd\`name` > 1").where == Compare("odd`name", ">", num("1"))
    assert parse("`and` > 1").where == Compare("and", ">", num("1"))  # a keyword, backquoted, is a name


def test_between_contains_and_tags() -> None:
    assert parse("loss between 0.1 and 0.5").where == Between("loss", num("0.1"), num("0.5"))
    assert parse("origin contains 'RAI'").where == Contains("origin", "RAI")
    assert parse("name contains cat").where == Contains("name", "cat")
    for text in ("has_tag bad", "has_tag(bad)", "has_tag 'bad'", 'has_tag("bad")', "HAS_TAG ( bad )"):
        assert parse(text).where == HasTag("bad"), text
    assert parse("has_tag low-conf").where == HasTag("low-conf")  # bare tags may hold '-'
    assert parse("not_has_tag bad").where == Not(HasTag("bad"))
    assert parse("not_has_tag(low-conf)").where == Not(HasTag("low-conf"))
    assert parse("has_tag 'two words'").where == HasTag("two words")


def test_and_binds_tighter_than_or() -> None:
    a, b, c = (Compare(x, ">", num("1")) for x in "abc")
    assert parse("a > 1 or b > 1 and c > 1").where == Or((a, And((b, c))))
    assert parse("a > 1 and b > 1 or c > 1").where == Or((And((a, b)), c))
    assert parse("(a > 1 or b > 1) and c > 1").where == And((Or((a, b)), c))
    assert parse("a > 1 and (b > 1 and c > 1)").where == And((a, b, c))  # flattened
    assert parse("not a > 1 and b > 1").where == And((Not(a), b))
    assert parse("not (a > 1 and b > 1)").where == Not(And((a, b)))
    assert parse("not not a > 1").where == Not(Not(a))
    assert parse("((a > 1))").where == a


def test_keywords_are_case_insensitive() -> None:
    assert parse("a > 1 AND b < 2 Or NOT c == 3 SortBy a DESC") == parse("a > 1 and b < 2 or not c == 3 sortby a desc")
    assert parse("X BETWEEN 1 AND 2").where == Between("X", num("1"), num("2"))


def test_sort_clause_forms() -> None:
    expected = (SortKey("loss", True), SortKey("label", False))
    for text in (
        "sortby loss desc, label asc",
        "sort by loss desc, label",
        "ORDER BY loss DESC , label ASC",
        "sortby loss descending,label ascending",
    ):
        assert parse(text) == Query(None, expected), text
    assert parse("sortby loss").order == (SortKey("loss", False),)
    q = parse("loss > 0.5 and label == 3 sortby loss desc")
    assert q.where == And((Compare("loss", ">", num("0.5")), Compare("label", "==", num("3"))))
    assert q.order == (SortKey("loss", True),) and not q.reset


def test_sort_and_order_can_still_be_column_names() -> None:
    assert parse("order == 3").where == Compare("order", "==", num("3"))
    assert parse("sort > 1 sortby order desc").order == (SortKey("order", True),)


def test_reset_and_empty_queries() -> None:
    assert parse("reset") == Query(reset=True)
    assert parse("  RESET  ") == Query(reset=True)
    assert parse("reset == 1").where == Compare("reset", "==", num("1"))  # a column called reset
    assert parse("") == Query() and parse("   ") == Query()


def test_str_is_canonical_and_parses_back() -> None:
    for text in (
        "loss > 0.5 and has_tag 'bad' sortby loss desc, label asc",
        "`a b` contains 'x\\'y'",
        "not (a == 1 or b != 'q') and c between -1 and 1e3",
        "reset",
        "sortby x asc",
        "not not has_tag t",
    ):
        q = parse(text)
        assert parse(str(q)) == q, text
    assert str(parse("x = train")) == "x == 'train'"
    assert str(parse("(a > 1 or b > 1) and c > 1")) == "(a > 1 or b > 1) and c > 1"


# --- evaluation --------------------------------------------------------------------------------


def test_numeric_comparisons_and_nan() -> None:
    # loss: [0.1, nan, 0.7, 0.5, 0.9, 0.5]
    assert rows("loss > 0.5") == [2, 4]
    assert rows("loss >= 0.5") == [2, 3, 4, 5]
    assert rows("loss < 0.5") == [0]
    assert rows("loss <= 0.5") == [0, 3, 5]
    assert rows("loss == 0.5") == [3, 5]
    assert rows("loss == 0.1") == [0]  # float32 column against the literal 0.1: equal as written
    assert rows("loss != 0.5") == [0, 1, 2, 4]  # NaN != anything
    assert rows("not loss > 0.5") == [0, 1, 3, 5]
    assert rows("loss == nan") == [1] and rows("loss != nan") == [0, 2, 3, 4, 5]
    assert rows("loss > nan") == [] and rows("loss between nan and 1") == []
    assert rows("loss > -inf") == [0, 2, 3, 4, 5]
    assert rows("label == nan") == [] and rows("label != nan") == [0, 1, 2, 3, 4, 5]
    assert rows("label == '3'") == [0, 2, 4]  # a quoted number is still a number
    assert rows("label > 10000000000000000000000") == [] and rows("label < 1e300") == [0, 1, 2, 3, 4, 5]
    assert rows("denied == true") == [1, 4] and rows("denied != TRUE") == [0, 2, 3, 5]


def test_between_is_inclusive() -> None:
    assert rows("loss between 0.5 and 0.7") == [2, 3, 5]
    assert rows("label between 1 and 2") == [1, 3]
    assert rows("label between 3 and 1") == []
    assert rows("origin between t and trz") == [0, 3, 4]  # strings: lexicographic


def test_string_columns_compare_lexicographically() -> None:
    # origin: ["train", "val", "Train", "test", "train", "val"] (object); name: a str array
    assert rows("origin == train") == [0, 4]  # equality is case-sensitive
    assert rows("origin != 'train'") == [1, 2, 3, 5]
    assert rows("origin < 'train'") == [2, 3]  # 'Train' < 'test' < 'train' by code point
    assert rows("origin >= val") == [1, 5]
    assert rows("name > 'bird'") == [0, 2, 5]
    assert rows("name <= Dog_02") == [1, 4]


def test_contains_is_case_insensitive_on_every_kind_of_column() -> None:
    assert rows("origin contains 'RAI'") == [0, 2, 4]
    assert rows("name contains CAT") == [0, 2, 4]
    assert rows("name contains '_0'") == [0, 1, 2, 4]
    assert rows("name contains ''") == [0, 1, 2, 3, 4, 5]
    assert rows("label contains 3") == [0, 2, 4]  # on the string form of a number
    assert rows("loss contains nan") == [1]
    unicode = ArrayFrame({"w": np.array(["ÄPFEL", "äpfel", "Birne"])})
    assert rows("w contains 'äp'", unicode) == [0, 1]
    assert rows("w contains 'ÄP'", unicode) == [0, 1]
    strided = ArrayFrame({"w": np.array(["AB", "x", "cd", "y", "ab", "z"])[::2]})
    assert rows("w contains 'ab'", strided) == [0, 2]


def test_object_columns_with_mixed_cells_use_their_string_form() -> None:
    frame = ArrayFrame({"o": np.array(["3", 3, None, "x", 3.5, b"by"], dtype=object)})
    assert rows("o == 3", frame) == [0, 1]
    assert rows("o == None", frame) == [2]
    assert rows("o contains '3'", frame) == [0, 1, 4]
    assert rows("sortby o", frame) == [0, 1, 4, 2, 5, 3]  # '3' '3' '3.5' 'None' "b'by'" 'x'
    many = np.array([f"img_{i:05d}" for i in range(20_000)], dtype=object)  # too many distinct: per-row text
    big = ArrayFrame({"path": many})
    assert rows("path contains '_1999'", big) == list(range(19990, 20000))
    assert rows("path > img_19997 sortby path desc", big) == [19999, 19998]
    assert rows("o == '[1]'", ArrayFrame({"o": _objects([1], [2], [1])})) == [0, 2]  # unhashable cells


def _objects(*cells: object) -> np.ndarray:
    out = np.empty(len(cells), dtype=object)
    out[:] = list(cells)
    return out


def test_numpy_variable_width_strings() -> None:
    frame = ArrayFrame({"t": np.array(["Ab", "cD", "ab", "b"], dtype=np.dtypes.StringDType())})
    assert rows("t contains AB", frame) == [0, 2]
    assert rows("t >= b", frame) == [1, 3]
    assert rows("sortby t desc", frame) == [1, 3, 2, 0]


def test_has_tag_and_boolean_combinations() -> None:
    assert rows("has_tag bad") == [0, 3, 4]
    assert rows("not_has_tag bad") == [1, 2, 5]
    assert rows("has_tag(low-conf)") == [1, 5]
    assert rows("has_tag nobody") == []
    assert rows("has_tag bad or has_tag low-conf") == [0, 1, 3, 4, 5]
    assert rows("has_tag bad and label == 3") == [0, 4]
    assert rows("label == 0 or label == 1 and denied == true") == [1, 5]
    assert rows("(label == 0 or label == 1) and denied == true") == [1]
    frame = table()
    before = frame.tags["bad"].copy()
    rows("has_tag bad and label == 3", frame)
    assert (frame.tags["bad"] == before).all()  # the frame's own mask is never combined in place


def test_mask_covers_all_rows() -> None:
    frame = table()
    assert parse("sortby loss").mask(frame).tolist() == [True] * 6
    assert parse("label == 3").mask(frame).tolist() == [True, False, True, False, True, False]


# --- sorting -----------------------------------------------------------------------------------


def test_sort_puts_nan_last_both_ways() -> None:
    assert rows("sortby loss") == [0, 3, 5, 2, 4, 1]
    assert rows("sortby loss desc") == [4, 2, 3, 5, 0, 1]
    assert rows("sortby `loss/eval` desc") == [5, 4, 3, 1, 0, 2]


def test_sort_is_stable_and_multi_key() -> None:
    # ties keep the current order: rows 3 and 5 share loss 0.5, rows 0, 2, 4 share label 3
    assert rows("sortby label desc") == [0, 2, 4, 3, 1, 5]
    assert rows("sortby label desc, loss desc") == [4, 2, 0, 3, 1, 5]
    assert rows("sortby denied, origin desc, label") == [5, 0, 3, 2, 1, 4]
    q = parse("sortby label desc")
    assert q.sort(table(), np.array([4, 0, 2, 5], dtype=np.int64)).tolist() == [4, 0, 2, 5]
    assert q.sort(table(), np.array([2, 4, 0], dtype=np.int64)).tolist() == [2, 4, 0]


def test_sort_keys_of_every_width() -> None:
    big = np.array([2**62, -(2**62), 5, 2**62, -3])  # a span over 2**63: the lexsort path
    assert rows("sortby b", ArrayFrame({"b": big})) == [1, 4, 2, 0, 3]
    assert rows("sortby b desc", ArrayFrame({"b": big})) == [0, 3, 2, 4, 1]
    fine = np.array([0.1, 0.1 + 1e-12, -0.0, 0.0, NAN, -1e300])  # not float32-exact: 64-bit codes
    assert rows("sortby f", ArrayFrame({"f": fine})) == [5, 2, 3, 0, 1, 4]  # -0.0 == 0.0 keeps order
    assert rows("sortby f desc", ArrayFrame({"f": fine})) == [1, 0, 2, 3, 5, 4]
    unsigned = np.array([2**64 - 1, 0, 7], dtype=np.uint64)
    assert rows("sortby u desc", ArrayFrame({"u": unsigned})) == [0, 2, 1]
    labels = np.array([3.0, NAN, 0.0, 9.0, NAN, 3.0, -1.0])  # whole floats with NaN: a narrow code
    assert rows("sortby l", ArrayFrame({"l": labels})) == [6, 2, 0, 5, 3, 1, 4]
    assert rows("sortby l desc", ArrayFrame({"l": labels})) == [3, 0, 5, 2, 6, 1, 4]
    assert rows("sortby l", ArrayFrame({"l": np.array([NAN, NAN])})) == [0, 1]
    assert rows("sortby l desc", ArrayFrame({"l": np.array([np.inf, 1.0, -np.inf])})) == [0, 1, 2]
    spaced = np.array([2**25 + 4, 2**25, 1.0, 2**25 + 8], dtype=np.float32)  # whole, but f32 offsets would round
    assert rows("sortby x", ArrayFrame({"x": spaced})) == [2, 1, 0, 3]
    assert rows("sortby e", ArrayFrame({"e": np.array([], dtype=np.float32)})) == []
    assert rows("sortby e", ArrayFrame({"e": np.array([1.0])})) == [0]


def _reference_order(columns: dict[str, np.ndarray], keys: list[tuple[str, bool]], order: list[int]) -> list[int]:
    """Stable multi-key sort with Python's sorted(), NaN last: the specification of Query.sort."""
    out = list(order)
    for name, descending in reversed(keys):
        col = columns[name]
        present = [i for i in out if not (col.dtype.kind == "f" and math.isnan(col[i]))]
        missing = [i for i in out if i not in set(present)]
        texts = col.dtype.kind in "OU"
        # reverse=True keeps equal items in their original order: "ties keep the current order"
        out = sorted(present, key=lambda i: str(col[i]) if texts else col[i].item(), reverse=descending)  # noqa: B023
        out += missing
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            st.lists(st.sampled_from([0.0, -0.0, 0.5, -1.5, 2.0, NAN, 1e300, 1 / 3]), min_size=n, max_size=n),
            st.lists(st.integers(-3, 3), min_size=n, max_size=n),
            st.lists(st.sampled_from(["a", "B", "b", "ab", ""]), min_size=n, max_size=n),
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.lists(st.sampled_from([1.0, NAN, 0.25, -2.0]), min_size=n, max_size=n),
            st.lists(st.sampled_from([1.0, NAN, 7.0, -2.0, 0.0, -0.0]), min_size=n, max_size=n),
        )
    ),
    st.lists(st.tuples(st.sampled_from(["f", "i", "s", "u", "b", "g", "w"]), st.booleans()), min_size=1, max_size=4),
    st.randoms(use_true_random=False),
)
def test_sort_matches_a_python_reference(data: tuple, keys: list[tuple[str, bool]], rnd: object) -> None:
    floats, ints, strs, bools, float32s, wholes = data
    columns = {
        "f": np.array(floats, dtype=np.float64),
        "i": np.array(ints, dtype=np.int64),
        "s": np.array(strs, dtype=object),
        "u": np.array(strs, dtype=str),
        "b": np.array(bools, dtype=bool),
        "g": np.array(float32s, dtype=np.float32),
        "w": np.array(wholes, dtype=np.float64),  # whole numbers in a float column, like the daemon's labels
    }
    frame = ArrayFrame(columns)
    start = list(range(len(floats)))
    rnd.shuffle(start)  # type: ignore[attr-defined]
    text = "sortby " + ", ".join(f"{name} {'desc' if d else 'asc'}" for name, d in keys)
    got = parse(text).sort(frame, np.array(start, dtype=np.int64)).tolist()
    assert got == _reference_order(columns, keys, start)


# --- views -------------------------------------------------------------------------------------


def test_view_replace_accumulate_keep_and_reset() -> None:
    frame = table()
    view = View().apply(parse("label == 3"), accumulate=False)
    assert view.rows(frame).tolist() == [0, 2, 4]
    view = view.apply(parse("has_tag bad"), accumulate=True)  # ANDed
    assert view.rows(frame).tolist() == [0, 4]
    assert view.where == And((Compare("label", "==", num("3")), HasTag("bad")))
    view = view.apply(parse("sortby loss desc"), accumulate=False)  # a sort alone keeps the filter
    assert view.rows(frame).tolist() == [4, 0]
    view = view.apply(parse("loss < 0.8"), accumulate=False)  # a filter alone replaces the filter, keeps the order
    assert view.rows(frame).tolist() == [2, 3, 5, 0]
    view = view.apply(parse("sortby label"), accumulate=True)  # an order always replaces the order
    assert view.order == (SortKey("label"),) and view.rows(frame).tolist() == [5, 3, 0, 2]  # ties: row order
    assert view.apply(parse(""), accumulate=False) == view  # neither: unchanged
    assert view.apply(parse(""), accumulate=True) == view
    for accumulate in (False, True):
        cleared = view.apply(parse("reset"), accumulate)
        assert cleared == View() and cleared.rows(frame).tolist() == [0, 1, 2, 3, 4, 5]


def test_view_accumulation_stays_flat() -> None:
    view = View()
    for i in range(500):
        view = view.apply(parse(f"label != {i}"), accumulate=True)
    assert isinstance(view.where, And) and len(view.where.operands) == 500
    assert view.rows(table()).tolist() == []  # label 0..3 all excluded
    assert parse(view.text()).where == view.where


def test_view_apply_returns_a_new_view() -> None:
    view = View()
    new = view.apply(parse("label == 3 sortby loss"), accumulate=False)
    assert view == View() and new is not view


def test_describe() -> None:
    assert View().describe() == "all rows"
    view = View().apply(parse("loss > 0.5 and has_tag(bad) sortby loss desc"), accumulate=False)
    assert view.describe() == "loss > 0.5 and has_tag 'bad', sorted by loss desc"

    def described(text: str) -> str:
        return View().apply(parse(text), accumulate=False).describe()

    assert described("sortby loss desc, label") == "all rows, sorted by loss desc, label asc"
    assert described("`loss/eval` > 1 or origin == val") == "loss/eval > 1 or origin == 'val'"
    assert described("`a b` contains x") == "`a b` contains 'x'"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("loss >= ", 9, "expected a value after '>='"),
        ("loss >> 3", 7, "expected a value after '>', found '>'"),
        ("loss 3", 6, "expected a comparison"),
        ("(loss > 1", 10, "unclosed '(' from position 1"),
        ("loss > 1)", 9, "unexpected ')'"),
        ("loss > 1 label < 2", 10, "expected 'and', 'or', 'sortby' or the end"),
        ("loss between 1 2", 16, "expected 'and' between the bounds"),
        ("loss > 'abc", 8, "unterminated string"),
        ("`loss > 1", 1, "unterminated column name"),
        ("loss @ 1", 6, "unexpected character '@'"),
        ("has_tag", 8, "expected a tag name after 'has_tag'"),
        ("has_tag(bad", 12, "expected ')' after the tag name"),
        ("sortby", 7, "expected a column to sort by"),
        ("sortby loss desc label", 18, "expected ',' or the end"),
        ("reset loss", 7, "'reset' stands alone"),
        ("and > 1", 1, "expected a column name"),
        ("label == or", 10, "expected a value after '=='"),
        ("``", 1, "empty column name"),
        ("a > 1 and", 10, "expected a column name"),
    ],
)
def test_parse_errors_name_the_position_on_one_line(text: str, position: int, fragment: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse(text)
    message = str(caught.value)
    assert fragment in message, message
    assert f"at position {position}:" in message and caught.value.position == position, message
    assert "\n" not in message
    excerpt = message.split(": ", 1)[1] if message.count(": ") == 1 else message.rsplit(': "', 1)[1]
    assert "^" in excerpt
    assert excerpt.replace("^", "", 1).strip('"') in f"{text}", message  # the caret sits inside the query text


def test_error_excerpt_is_trimmed_and_flattened() -> None:
    text = "label == 1 and\n" + "x > 1 and " * 10 + "loss >> 1" + " and y < 2" * 10
    with pytest.raises(QueryError) as caught:
        parse(text)
    message = str(caught.value)
    assert "\n" not in message and "…" in message and ">^>" in message and len(message) < 160


def test_unknown_columns_are_reported_at_apply_time_with_the_known_ones() -> None:
    q = parse("lss > 1")  # parses: columns are the frame's business
    with pytest.raises(QueryError) as caught:
        View().apply(q, False).rows(table())
    message = str(caught.value)
    assert message.startswith("unknown column 'lss' (known: denied, label, loss, loss/eval, name, origin)"), message
    assert "did you mean 'loss'?" in message and "\n" not in message
    with pytest.raises(QueryError, match="unknown column 'zzz'"):
        parse("sortby zzz").sort(table(), np.array([], dtype=np.int64))
    wide = ArrayFrame({f"c{i:02d}": np.zeros(2) for i in range(30)})
    with pytest.raises(QueryError, match=r"\(known: c00, c01, .*c19, …\)"):
        parse("nope == 1").mask(wide)


def test_column_names_fall_back_to_a_unique_case_insensitive_match() -> None:
    assert rows("LOSS > 0.5") == rows("loss > 0.5")
    clash = ArrayFrame({"a": np.arange(3), "A": np.arange(3)})
    with pytest.raises(QueryError, match="unknown column"):
        parse("x > 1").mask(clash)


def test_numeric_column_against_a_non_number_is_an_error() -> None:
    with pytest.raises(QueryError, match="column 'loss' is numeric; 'high' is not a number"):
        rows("loss > high")
    with pytest.raises(QueryError, match="is not a number"):
        rows("label between 1 and x")


def test_columns_and_tags_must_fit_the_table() -> None:
    frame = ArrayFrame({"a": np.arange(4), "b": np.arange(3)}, {"t": np.ones(2, dtype=bool)})
    with pytest.raises(QueryError, match="column 'b' has shape"):
        parse("b > 1").mask(frame)
    with pytest.raises(QueryError, match="has_tag"):
        parse("has_tag t").mask(frame)


def test_limits_on_size_and_nesting() -> None:
    with pytest.raises(QueryError, match="too long"):
        parse("a > 1 and " * (MAX_QUERY_CHARS // 10) + "a > 1")
    with pytest.raises(QueryError, match="nested too deeply"):
        parse("(" * (MAX_DEPTH + 1) + "a > 1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(QueryError, match="nested too deeply"):
        parse("not " * (MAX_DEPTH + 1) + "a > 1")
    deep = "(" * (MAX_DEPTH - 1) + "a > 1" + ")" * (MAX_DEPTH - 1)
    assert parse(deep).where == Compare("a", ">", num("1"))


# --- properties ---------------------------------------------------------------------------------

SOUP = [
    "loss", "label", "origin", "`x y`", "and", "or", "not", "(", ")", ",", "==", "=", "!=", "<", ">=", "between",
    "contains", "has_tag", "not_has_tag", "sortby", "sort", "order", "by", "asc", "desc", "reset", "3", "-1e-3",
    ".5", "nan", "true", "'s'", '"q', "`", "\\", "bad-tag", "@", "\n", " ",
]  # fmt: skip


@settings(max_examples=400, deadline=1000)
@given(st.text(max_size=200))
def test_random_text_only_ever_raises_query_error(text: str) -> None:
    try:
        parse(text)
    except QueryError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=600, deadline=1000)
@given(st.lists(st.sampled_from(SOUP), max_size=30), st.sampled_from(["", " "]))
def test_token_soup_only_ever_raises_query_error(parts: list[str], sep: str) -> None:
    text = sep.join(parts)
    try:
        q = parse(text)
    except QueryError as exc:
        assert "\n" not in str(exc) and exc.position is None or 1 <= (exc.position or 1) <= len(text) + 1
        return
    assert parse(str(q)) == q
    try:
        View().apply(q, accumulate=True).rows(table())
    except QueryError:
        pass  # unknown columns and type mismatches are the frame's to report


# A generator of valid queries over the test table, and a per-row reference evaluator.

NUMERIC = ["loss", "label", "loss/eval", "denied"]
TEXT = ["origin", "name"]
number_values = st.one_of(
    st.integers(-5, 5).map(lambda i: num(str(i))),
    st.sampled_from(["0.5", "0.1", "1e-3", "-2.5", "inf", "-inf", "0.7"]).map(num),
    st.just(Value("nan", "nan")),
    st.booleans().map(lambda b: Value("bool", "true" if b else "false")),
)
text_values = st.text(alphabet="aAtTr_ 0'\"\\é", max_size=5).map(s)
tags = st.sampled_from(["bad", "low-conf", "none", "a b"])


def leaves() -> st.SearchStrategy[Node]:
    ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
    return st.one_of(
        st.builds(Compare, st.sampled_from(NUMERIC), ops, number_values),
        st.builds(Compare, st.sampled_from(TEXT), ops, text_values),
        st.builds(Between, st.sampled_from(NUMERIC), number_values, number_values),
        st.builds(Between, st.sampled_from(TEXT), text_values, text_values),
        st.builds(Contains, st.sampled_from(NUMERIC + TEXT), st.text(alphabet="aTr_0.5n", max_size=3)),
        st.builds(HasTag, tags),
    )


nodes = st.recursive(
    leaves(),
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: _flat(And, xs)),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: _flat(Or, xs)),
    ),
    max_leaves=8,
)


def _flat(kind: type[And] | type[Or], parts: list[Node]) -> Node:
    flat: list[Node] = []
    for p in parts:
        flat.extend(p.operands if isinstance(p, kind) else (p,))
    return kind(tuple(flat))


def reference(node: Node, frame: ArrayFrame, i: int) -> bool:
    """One row, in plain Python: what the vectorised engine must agree with."""
    if isinstance(node, Not):
        return not reference(node.operand, frame, i)
    if isinstance(node, And):
        return all(reference(x, frame, i) for x in node.operands)
    if isinstance(node, Or):
        return any(reference(x, frame, i) for x in node.operands)
    if isinstance(node, HasTag):
        return bool(frame.has_tag(node.tag)[i])
    col = frame.column(node.column)
    if isinstance(node, Contains):
        return node.text.lower() in str(col[i]).lower()
    cell = col[i].item() if col.dtype.kind != "O" else col[i]
    if col.dtype.kind in "biuf":
        x = float(cell)

        def literal(value: Value) -> float:  # a literal meets a float32 column rounded to float32, as typed
            v = float(value.number() or 0.0)
            return float(np.float32(v)) if col.dtype == np.float32 and abs(v) < 3e38 else v

        if isinstance(node, Between):
            lo, hi = literal(node.low), literal(node.high)
            return lo <= x <= hi  # any NaN: False
        v = literal(node.value)
        if math.isnan(v):
            return {"==": math.isnan(x), "!=": not math.isnan(x)}.get(node.op, False)
        return {"==": x == v, "!=": x != v, "<": x < v, "<=": x <= v, ">": x > v, ">=": x >= v}[node.op]
    t = str(cell)
    if isinstance(node, Between):
        return node.low.text <= t <= node.high.text
    v2 = node.value.text
    return {"==": t == v2, "!=": t != v2, "<": t < v2, "<=": t <= v2, ">": t > v2, ">=": t >= v2}[node.op]


@settings(max_examples=300, deadline=None)
@given(nodes, st.lists(st.tuples(st.sampled_from(NUMERIC + TEXT), st.booleans()), max_size=3))
def test_generated_queries_round_trip_and_match_the_reference(where: Node, keys: list[tuple[str, bool]]) -> None:
    query = Query(where, tuple(SortKey(c, d) for c, d in keys))
    text = str(query)
    assert parse(text) == query, text
    frame = table()
    got = View().apply(parse(text), accumulate=False).rows(frame)
    expected = [i for i in range(len(frame)) if reference(where, frame, i)]
    assert sorted(got.tolist()) == expected, text
    assert got.dtype == np.int64


@settings(max_examples=200, deadline=1000)
@given(st.text(alphabet=string.ascii_letters + string.digits + "_./- `'\"\\()", max_size=40))
def test_backquoted_names_and_quoted_strings_round_trip(raw: str) -> None:
    q = Query(Compare(raw or "x", "==", s(raw)), (SortKey(raw or "x", True),))
    assert parse(str(q)) == q
    assert parse(str(Query(HasTag(raw)))) == Query(HasTag(raw))


def test_a_hyphen_inside_a_name_is_part_of_it_as_the_studio_sends_stat_names() -> None:
    frame = ArrayFrame({"train-loss-CE": np.array([0.5, 2.0, 1.0], dtype=np.float32), "loss": np.array([1.0, 2, 3])})
    assert View().apply(parse("sortby train-loss-CE desc"), False).rows(frame).tolist() == [1, 2, 0]
    assert parse("train-loss-CE > 0.9").mask(frame).tolist() == [False, True, True]
    assert parse("loss>-1").mask(frame).all()  # after an operator, '-' starts a number
    assert str(parse("sortby `train-loss-CE` desc")) == "sortby train-loss-CE desc"
