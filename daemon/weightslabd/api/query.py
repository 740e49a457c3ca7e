"""The structured query language of ApplyDataQuery: filter and sort the sample table.

`parse()` turns the Studio's text into a `Query` (a filter expression, sort keys, or `reset`);
a `View` holds one client's current filter and order and folds queries into it; evaluation is
vectorised numpy over any `Frame`. Grammar, semantics and examples: docs/query.md.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

import numpy as np

MAX_QUERY_CHARS = 10_000  # a Studio query is one line; this bounds parse time and memory
NATURAL_ORDER = "index"  # a column every frame has unless it names one itself: the row's position in the table
MAX_DEPTH = 100  # nesting of parentheses and `not`: keeps recursion far from Python's limit
_MAX_FIXED_WIDTH_BYTES = 256 << 20  # larger text columns stay variable-width (one long string must not cost GBs)
_STRING_DTYPE: Any = getattr(getattr(np, "dtypes", None), "StringDType", None)  # numpy >= 2 only


class QueryError(ValueError):
    """A query that does not parse or does not fit the table. The message is one line for the Studio."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position  # 1-based character position in the query text, when the parser knows it


class Frame(Protocol):
    """The table a query runs on: n rows; columns by name."""

    def __len__(self) -> int: ...

    def column_names(self) -> list[str]: ...

    def column(self, name: str) -> np.ndarray:
        """Length n; numeric (float/int/bool) or object/str dtype; raises KeyError if unknown."""
        ...

    def has_tag(self, tag: str) -> np.ndarray:
        """Bool mask, length n."""
        ...


class ArrayFrame:
    """A Frame over a dict of numpy columns and a dict of tag masks: for tools, tests and benchmarks."""

    def __init__(self, columns: dict[str, np.ndarray], tags: dict[str, np.ndarray] | None = None) -> None:
        self.columns = columns
        self.tags = tags or {}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def column_names(self) -> list[str]:
        return list(self.columns)

    def column(self, name: str) -> np.ndarray:
        return self.columns[name]

    def has_tag(self, tag: str) -> np.ndarray:
        mask = self.tags.get(tag)
        return mask if mask is not None else np.zeros(len(self), dtype=bool)


# --------------------------------------------------------------------------------------------
# The AST
# --------------------------------------------------------------------------------------------

ValueKind = Literal["number", "string", "bool", "nan"]
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Value:
    """A literal. `text` is the number as written, the unquoted string, `true`/`false` or `nan`."""

    kind: ValueKind
    text: str

    def number(self) -> float | int | None:
        """The value as a number, or None for a string that does not read as one."""
        if self.kind == "bool":
            return 1 if self.text == "true" else 0
        if self.kind == "nan":
            return float("nan")
        if self.kind == "number" and _INT.fullmatch(self.text):
            value = int(self.text)
            return value if -(2**63) <= value < 2**63 else float(value)  # numpy compares int64-range ints exactly
        try:
            return float(self.text)
        except ValueError:
            return None

    def __str__(self) -> str:
        return _quote(self.text) if self.kind == "string" else self.text


@dataclass(frozen=True)
class Compare:
    column: str
    op: str  # one of == != < <= > >=
    value: Value

    def __str__(self) -> str:
        return f"{_name(self.column)} {self.op} {self.value}"

    def mask(self, ctx: _Context) -> np.ndarray:
        col = ctx.column(self.column)
        if _is_numeric(col):
            return _compare_numeric(col, self.op, _as_number(self.value, self.column))
        op, text = _OPS[self.op], self.value.text
        return ctx.strings(self.column).test(lambda t: op(t, text))


@dataclass(frozen=True)
class Between:
    column: str
    low: Value
    high: Value

    def __str__(self) -> str:
        return f"{_name(self.column)} between {self.low} and {self.high}"

    def mask(self, ctx: _Context) -> np.ndarray:
        col = ctx.column(self.column)
        if _is_numeric(col):
            bounds = _as_number(self.low, self.column), _as_number(self.high, self.column)
            return _compare_numeric(col, ">=", bounds[0]) & _compare_numeric(col, "<=", bounds[1])
        low, high = self.low.text, self.high.text
        return ctx.strings(self.column).test(lambda t: (t >= low) & (t <= high))


@dataclass(frozen=True)
class Contains:
    column: str
    text: str

    def __str__(self) -> str:
        return f"{_name(self.column)} contains {_quote(self.text)}"

    def mask(self, ctx: _Context) -> np.ndarray:
        needle = self.text.lower()
        return ctx.strings(self.column).test(lambda t: np.char.find(_lower(t), needle) >= 0)


@dataclass(frozen=True)
class HasTag:
    tag: str

    def __str__(self) -> str:
        return f"has_tag {_quote(self.tag)}"

    def mask(self, ctx: _Context) -> np.ndarray:
        # a copy: And/Or combine masks in place, and this one may be the frame's own
        return ctx.checked(np.array(ctx.frame.has_tag(self.tag), dtype=bool), f"has_tag({self.tag!r})")


@dataclass(frozen=True)
class Not:
    operand: Node

    def __str__(self) -> str:
        simple = isinstance(self.operand, (Compare, Between, Contains, HasTag, Not))
        return f"not {self.operand}" if simple else f"not ({self.operand})"

    def mask(self, ctx: _Context) -> np.ndarray:
        return ~self.operand.mask(ctx)


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]  # two or more; never an And (flattened)

    def __str__(self) -> str:
        return " and ".join(f"({x})" if isinstance(x, Or) else str(x) for x in self.operands)

    def mask(self, ctx: _Context) -> np.ndarray:
        out = self.operands[0].mask(ctx).copy()
        for x in self.operands[1:]:
            out &= x.mask(ctx)
        return out


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]  # two or more; never an Or (flattened)

    def __str__(self) -> str:
        return " or ".join(f"({x})" if isinstance(x, Or) else str(x) for x in self.operands)

    def mask(self, ctx: _Context) -> np.ndarray:
        out = self.operands[0].mask(ctx).copy()
        for x in self.operands[1:]:
            out |= x.mask(ctx)
        return out


Node: TypeAlias = Compare | Between | Contains | HasTag | Not | And | Or


def conjunction(*nodes: Node) -> Node:
    """`a and b and …`, flattened so repeated accumulation does not deepen the tree."""
    parts: list[Node] = []
    for node in nodes:
        parts.extend(node.operands if isinstance(node, And) else (node,))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def disjunction(*nodes: Node) -> Node:
    parts: list[Node] = []
    for node in nodes:
        parts.extend(node.operands if isinstance(node, Or) else (node,))
    return parts[0] if len(parts) == 1 else Or(tuple(parts))


@dataclass(frozen=True)
class SortKey:
    column: str
    descending: bool = False

    def __str__(self) -> str:
        return f"{_name(self.column)} {'desc' if self.descending else 'asc'}"


@dataclass(frozen=True)
class Query:
    where: Node | None = None  # filter expression (None = no filter in this query)
    order: tuple[SortKey, ...] = ()  # empty = no sort in this query
    reset: bool = False

    def __str__(self) -> str:
        """The canonical text: parse(str(q)) == q."""
        if self.reset:
            return "reset"
        return _text_of(self.where, self.order, " ")

    def mask(self, frame: Frame) -> np.ndarray:
        """Bool mask over all rows (all True if where is None)."""
        ctx = _Context(frame)
        return ctx.where(self.where)

    def sort(self, frame: Frame, rows: np.ndarray) -> np.ndarray:
        """`rows` (int64 row indexes) reordered by self.order; stable, NaN last."""
        return _sort(_Context(frame), self.order, np.asarray(rows, dtype=np.int64))


@dataclass
class View:
    """A client's current view: which rows, in which order, and the text that produced it."""

    where: Node | None = None
    order: tuple[SortKey, ...] = ()

    def apply(self, query: Query, accumulate: bool) -> View:
        """The view after `query`: reset clears both; a filter replaces the current one, or is ANDed
        with it when accumulating; sort keys replace the order; a query with neither keeps both.
        QueryError when the ANDed filter's text would pass MAX_QUERY_CHARS (the view is a query too)."""
        if query.reset:
            return View()
        where = self.where
        if query.where is not None:
            where = conjunction(self.where, query.where) if accumulate and self.where is not None else query.where
        if accumulate and self.where is not None and query.where is not None:
            size = len(str(where))  # O(the view's text), which this bound keeps small
            if size > MAX_QUERY_CHARS:
                raise QueryError(f"the accumulated filter would be {size:,} characters (at most "
                                 f"{MAX_QUERY_CHARS:,}); send 'reset' or a query without accumulate")
        return View(where, query.order or self.order)

    def rows(self, frame: Frame) -> np.ndarray:
        """Int64 row indexes of the view, filtered then sorted (unsorted = row order)."""
        ctx = _Context(frame)
        if self.where is None:
            rows = np.arange(ctx.n, dtype=np.int64)
        else:
            rows = np.flatnonzero(ctx.where(self.where)).astype(np.int64, copy=False)
        return _sort(ctx, self.order, rows)

    def describe(self) -> str:
        """E.g. "loss > 0.5 and has_tag 'bad', sorted by loss desc"; "all rows" when empty."""
        if self.where is None and not self.order:
            return "all rows"
        text = _text_of(self.where, self.order, ", sorted by ", sortby=False)
        return text if self.where is not None else f"all rows, sorted by {text}"

    def text(self) -> str:
        """The view as one query that rebuilds it from a reset view."""
        return _text_of(self.where, self.order, " ")


def _text_of(where: Node | None, order: tuple[SortKey, ...], join: str, sortby: bool = True) -> str:
    keys = ", ".join(str(k) for k in order)
    if sortby and keys:
        keys = f"sortby {keys}"
    return join.join(part for part in (str(where) if where is not None else "", keys) if part)


# --------------------------------------------------------------------------------------------
# Lexer
# --------------------------------------------------------------------------------------------

# '-' may sit inside a name (the Studio's stats are named like `train-loss-CE`): with no arithmetic in
# the language, `a-b` can only be a name, and a number after an operator (`loss>-1`) starts a new token.
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_TOKEN = re.compile(
    r"""
    (?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-](?:inf|nan)(?![A-Za-z0-9_./]))
    |(?P<word>[A-Za-z_][A-Za-z0-9_./-]*)
    |(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<name>`(?:[^`\\]|\\.)*`)
    |(?P<op>==|!=|>=|<=|=|>|<)
    |(?P<punct>[(),])
    """,
    re.VERBOSE | re.DOTALL | re.IGNORECASE,
)
_TAG_WORD = re.compile(r"""[^\s()'"`,]+""")  # a bare tag may hold '-', ':' and the like
_SPACE = re.compile(r"\s*")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)

_STRUCTURAL = frozenset({"and", "or", "not", "has_tag", "not_has_tag", "sortby", "sort_by", "order_by", "orderby"})
_KEYWORDS = _STRUCTURAL | {
    "between", "contains", "sort", "order", "by", "asc", "desc", "ascending", "descending",
    "reset", "true", "false", "nan", "inf", "infinity",
}  # fmt: skip


class _Token(NamedTuple):
    kind: str  # num, word, str, name, op, punct, end
    text: str  # as written, except str and name: unquoted and unescaped
    pos: int  # 0-based offset in the query text
    end: int = -1  # offset just past the token (sort keys are cut from the text with it)


_SORT_WORDS = frozenset({"sortby", "sort_by", "orderby", "order_by"})
_SORT_CHUNK = re.compile(r"[^\s,`]+")  # after a sort keyword: any run of characters a stat name may hold


def _lex(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos, n = 0, len(text)
    tag_mode = False  # right after has_tag / not_has_tag (and its '('): a bare word is a tag name
    sort_mode = False  # after `sortby` (or `sort by`): the Studio sends stat names as they are, spaces and all
    while True:
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]  # \s* always matches
        if pos >= n:
            tokens.append(_Token("end", "", n))
            return tokens
        if tag_mode and text[pos] not in "()'\"`,":
            m = _TAG_WORD.match(text, pos)
            assert m is not None  # the character is not one _TAG_WORD excludes
            tokens.append(_Token("str", m.group(), pos, m.end()))
            pos, tag_mode = m.end(), False
            continue
        if sort_mode and text[pos] not in ",`":
            m = _SORT_CHUNK.match(text, pos)
            assert m is not None  # the character is not one _SORT_CHUNK excludes
            tokens.append(_Token("word", m.group(), pos, m.end()))
            pos = m.end()
            continue
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            if ch in "'\"`":
                what = "column name" if ch == "`" else "string"
                raise _error(text, pos, f"unterminated {what}: no closing {ch}")
            raise _error(text, pos, f"unexpected character {ch!r}")
        kind = m.lastgroup or ""
        raw = m.group()
        if kind in ("str", "name"):
            raw = _ESCAPE.sub(r"\1", raw[1:-1])
            if kind == "name" and not raw:
                raise _error(text, pos, "empty column name ``")
        tokens.append(_Token(kind, raw, pos, m.end()))
        if kind == "word" and (raw.lower() in _SORT_WORDS or (
                raw.lower() == "by" and len(tokens) > 1 and tokens[-2].kind == "word"
                and tokens[-2].text.lower() in ("sort", "order"))):
            sort_mode = True
        if kind == "word" and raw.lower() in ("has_tag", "not_has_tag"):
            tag_mode = True
        elif not (tag_mode and raw == "("):
            tag_mode = False
        pos = m.end()


def _error(text: str, pos: int, message: str) -> QueryError:
    """`message at position N: "…text^rest…"`: one line, the caret just before the offending character."""
    before = text[max(0, pos - 40) : pos]
    after = text[pos : pos + 20]
    excerpt = ("…" if pos > 40 else "") + before + "^" + after + ("…" if pos + 20 < len(text) else "")
    excerpt = re.sub(r"\s", " ", excerpt)
    return QueryError(f'{message} at position {pos + 1}: "{excerpt}"', pos + 1)


# --------------------------------------------------------------------------------------------
# Parser: recursive descent, one token of lookahead (two for `sort by`)
# --------------------------------------------------------------------------------------------


def parse(text: str) -> Query:
    """Parse a structured query; raises QueryError (one line, with the position) when it does not parse."""
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query too long: {len(text)} characters (at most {MAX_QUERY_CHARS})")
    return _Parser(text).query()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _lex(text)
        self.i = 0
        self.depth = 0

    # -- helpers ---------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> _Token:
        tok = self.peek()
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def fail(self, message: str, tok: _Token | None = None) -> QueryError:
        return _error(self.text, (tok or self.peek()).pos, message)

    @staticmethod
    def is_word(tok: _Token, *words: str) -> bool:
        return tok.kind == "word" and tok.text.lower() in words

    def at_sort(self) -> bool:
        tok = self.peek()
        return self.is_word(tok, "sortby", "sort_by", "orderby", "order_by") or (
            self.is_word(tok, "sort", "order") and self.is_word(self.peek(1), "by")
        )

    def expect_punct(self, ch: str, message: str) -> None:
        if self.peek().kind != "punct" or self.peek().text != ch:
            raise self.fail(message + _found(self.peek()))
        self.take()

    # -- grammar ---------------------------------------------------------------------------

    def query(self) -> Query:
        first, second = self.peek(), self.peek(1)
        if self.is_word(first, "reset") and second.kind != "op" and not self.is_word(second, "between", "contains"):
            self.take()
            if self.peek().kind != "end":
                raise self.fail(f"'reset' stands alone; found {_shown(self.peek())} after it")
            return Query(reset=True)
        where = None if self.at_sort() or first.kind == "end" else self.expr()
        order = self.sort_clause() if self.at_sort() else ()
        tok = self.peek()
        if tok.kind != "end":
            wanted = "'and', 'or', 'sortby' or the end" if order == () else "',' or the end"
            raise self.fail(f"unexpected {_shown(tok)}; expected {wanted}")
        return Query(where, order)

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"query nested too deeply (more than {MAX_DEPTH} levels)")
        parts = [self.and_expr()]
        while self.is_word(self.peek(), "or"):
            self.take()
            parts.append(self.and_expr())
        self.depth -= 1
        return disjunction(*parts)

    def and_expr(self) -> Node:
        parts = [self.not_expr()]
        while self.is_word(self.peek(), "and"):
            self.take()
            parts.append(self.not_expr())
        return conjunction(*parts)

    def not_expr(self) -> Node:
        if not self.is_word(self.peek(), "not"):
            return self.primary()
        self.take()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"query nested too deeply (more than {MAX_DEPTH} levels)")
        node = Not(self.not_expr())
        self.depth -= 1
        return node

    def primary(self) -> Node:
        tok = self.peek()
        if tok.kind == "punct" and tok.text == "(":
            self.take()
            inner = self.expr()
            self.expect_punct(")", f"unclosed '(' from position {tok.pos + 1}: expected ')'")
            return inner
        if self.is_word(tok, "has_tag", "not_has_tag"):
            self.take()
            tagged = HasTag(self.tag(tok.text))
            return Not(tagged) if tok.text.lower() == "not_has_tag" else tagged
        column = self.column("expected a column name, 'not', 'has_tag' or '('")
        tok = self.peek()
        if tok.kind == "op":
            self.take()
            return Compare(column, "==" if tok.text == "=" else tok.text, self.value(f"'{tok.text}'"))
        if self.is_word(tok, "between"):
            self.take()
            low = self.value("'between'")
            if not self.is_word(self.peek(), "and"):
                raise self.fail("expected 'and' between the bounds of 'between'" + _found(self.peek()))
            self.take()
            return Between(column, low, self.value("'and'"))
        if self.is_word(tok, "contains"):
            self.take()
            return Contains(column, self.value("'contains'").text)
        raise self.fail(
            f"expected a comparison (== != < <= > >= between contains) after column {column!r}" + _found(tok)
        )

    def tag(self, keyword: str) -> str:
        parens = self.peek().kind == "punct" and self.peek().text == "("
        if parens:
            self.take()
        tok = self.peek()
        if tok.kind not in ("str", "word", "num", "name"):
            raise self.fail(f"expected a tag name after '{keyword}'" + _found(tok))
        self.take()
        if parens:
            self.expect_punct(")", f"expected ')' after the tag name of '{keyword}'")
        return tok.text

    def column(self, message: str) -> str:
        tok = self.peek()
        if tok.kind == "name" or (tok.kind == "word" and tok.text.lower() not in _STRUCTURAL):
            self.take()
            return tok.text
        raise self.fail(message + _found(tok))

    def sort_column(self) -> str:
        """A sort key's column: a backquoted name, or the words up to its direction, `,` or the end, as
        written (`sortby my loss desc` sorts by `my loss`)."""
        first = self.peek()
        if first.kind == "name":
            self.take()
            return first.text
        if first.kind != "word" or self.is_word(first, "asc", "ascending", "desc", "descending"):
            raise self.fail("expected a column to sort by" + _found(first))
        last = first
        while True:
            self.take()
            tok = self.peek()
            if tok.kind != "word" or self.is_word(tok, "asc", "ascending", "desc", "descending"):
                return self.text[first.pos:last.end]
            last = tok

    def value(self, after: str) -> Value:
        tok = self.peek()
        if tok.kind == "num":
            self.take()
            lowered = tok.text.lower()
            if lowered.endswith("nan"):
                return Value("nan", "nan")
            return Value("number", lowered if lowered.endswith("inf") else tok.text)
        if tok.kind == "str":
            self.take()
            return Value("string", tok.text)
        if tok.kind == "word" and tok.text.lower() not in _STRUCTURAL:
            self.take()
            word = tok.text.lower()
            if word in ("true", "false"):
                return Value("bool", word)
            if word == "nan":
                return Value("nan", "nan")
            if word in ("inf", "infinity"):
                return Value("number", "inf")
            return Value("string", tok.text)  # a bare word is a string
        raise self.fail(f"expected a value after {after}" + _found(tok))

    def sort_clause(self) -> tuple[SortKey, ...]:
        if self.is_word(self.take(), "sort", "order"):
            self.take()  # the 'by' that at_sort() saw
        keys = []
        while True:
            column = self.sort_column()
            descending = False
            if self.is_word(self.peek(), "asc", "ascending", "desc", "descending"):
                descending = self.take().text.lower().startswith("desc")
            keys.append(SortKey(column, descending))
            if not (self.peek().kind == "punct" and self.peek().text == ","):
                return tuple(keys)
            self.take()


def _found(tok: _Token) -> str:
    """', found X' for a message, or nothing at the end of the query, where the caret says it all."""
    return "" if tok.kind == "end" else f", found {_shown(tok)}"


def _shown(tok: _Token) -> str:
    if tok.kind == "end":
        return "the end of the query"
    if tok.kind == "str":
        return _quote(tok.text)
    if tok.kind == "name":
        return _name(tok.text)
    return f"'{tok.text}'"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _name(column: str) -> str:
    """A column as the parser reads it back: plain when it can be, else backquoted."""
    if _IDENT.fullmatch(column) and column.lower() not in _KEYWORDS:
        return column
    return "`" + column.replace("\\", "\\\\").replace("`", "\\`") + "`"


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

_OPS: dict[str, np.ufunc] = {
    "==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
}  # fmt: skip
_SAMPLE_ROWS = 10_000  # object columns: distinct values in these first rows decide whether to factorize
_MAX_DISTINCT = 65_536  # more distinct strings than this: work on every row's text instead


class _Context:
    """One evaluation over one frame: columns and their string forms are fetched or converted once."""

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self.n = len(frame)
        self._columns: dict[str, np.ndarray] = {}
        self._strings: dict[str, _Strings] = {}

    def where(self, node: Node | None) -> np.ndarray:
        if node is None:
            return np.ones(self.n, dtype=bool)
        return self.checked(node.mask(self), "the filter")

    def checked(self, array: np.ndarray, what: str) -> np.ndarray:
        if array.shape != (self.n,):
            raise QueryError(f"{what} has shape {array.shape}; the table has {self.n} rows")
        return array

    def column(self, name: str) -> np.ndarray:
        col = self._columns.get(name)
        if col is None:
            col = self._columns[name] = self.checked(np.asarray(self._fetch(name)), f"column {name!r}")
        return col

    def _fetch(self, name: str) -> np.ndarray:
        try:
            return self.frame.column(name)
        except KeyError:
            pass
        known = sorted(self.frame.column_names())
        folded = [c for c in known if c.lower() == name.lower()]
        if len(folded) == 1:  # `Loss` finds `loss` when that is the only match
            try:
                return self.frame.column(folded[0])
            except KeyError:
                pass
        if name.lower() == NATURAL_ORDER and not folded:  # the Studio's "clear sort" sends `sortby index asc`
            return np.arange(self.n, dtype=np.int64)
        shown = ", ".join(known[:20]) + (", …" if len(known) > 20 else "")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise QueryError(f"unknown column {name!r} (known: {shown or 'none'}){hint}")

    def strings(self, name: str) -> _Strings:
        strings = self._strings.get(name)
        if strings is None:
            strings = self._strings[name] = _Strings.of(self.column(name))
        return strings


class _Strings:
    """A column's string form: one text per row, or the sorted distinct texts and a code per row."""

    def __init__(self, texts: np.ndarray, codes: np.ndarray | None = None) -> None:
        self.texts = texts
        self.codes = codes

    @classmethod
    def of(cls, col: np.ndarray) -> _Strings:
        kind = col.dtype.kind
        if kind == "U" or (_STRING_DTYPE is not None and isinstance(col.dtype, _STRING_DTYPE)):
            return cls(col)  # already vectorised text; comparisons on it cost a few ms
        if kind == "O":
            factors = _factorize(col)
            return cls(*factors) if factors is not None else cls(_as_text(col))
        if kind in "biuf":
            # `contains` on a number: format each distinct value once (codes follow numeric order, not text order)
            distinct, codes = np.unique(col, return_inverse=True)
            return cls(distinct.astype(str), codes.reshape(-1))
        return cls(_as_text(col))

    def test(self, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """fn applied to every row's text; with codes, to each distinct text once."""
        result = np.asarray(fn(self.texts), dtype=bool)
        return result if self.codes is None else result[self.codes]

    def ranks(self, rows: np.ndarray) -> np.ndarray:
        """Dense ranks (0 = smallest text) of the given rows, for sorting."""
        if self.codes is not None:
            return self.codes[rows]
        return _dense_ranks(self.texts[rows])


def _factorize(col: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Sorted distinct texts and a code per row for an object column of few distinct values, else None."""
    values = col.tolist()
    try:
        if len(set(values[:_SAMPLE_ROWS])) > _SAMPLE_ROWS // 2:
            return None  # mostly distinct (paths, captions): hashing them all would be wasted
        distinct = set(values)
    except TypeError:  # unhashable cells (lists)
        return None
    if len(distinct) > _MAX_DISTINCT:
        return None
    text_of = {value: str(value) for value in distinct}
    ordered = sorted(set(text_of.values()))
    rank = {text: i for i, text in enumerate(ordered)}
    code_of = {value: rank[text] for value, text in text_of.items()}
    codes = np.fromiter(map(code_of.__getitem__, values), dtype=np.intp, count=len(values))  # C-level loop
    return np.array(ordered, dtype=str), codes


def _is_numeric(col: np.ndarray) -> bool:
    return col.dtype.kind in "biuf"


def _as_number(value: Value, column: str) -> float | int:
    number = value.number()
    if number is None:
        raise QueryError(f"column {column!r} is numeric; {value} is not a number")
    return number


def _compare_numeric(col: np.ndarray, op: str, value: float | int) -> np.ndarray:
    if value != value:  # nan: `== nan` finds missing values, `!= nan` present ones; any other test is false
        missing = np.isnan(col) if col.dtype.kind == "f" else np.zeros(len(col), dtype=bool)
        if op == "==":
            return missing
        if op == "!=":
            return ~missing
        return np.zeros(len(col), dtype=bool)
    with np.errstate(all="ignore"):  # a float32 column against 1e300: inf, no warning
        return np.asarray(_OPS[op](col, value), dtype=bool)


def _as_text(col: np.ndarray) -> np.ndarray:
    """The column's string form as a str (`U`) array, or numpy's variable-width strings when that would be huge."""
    if col.dtype.kind == "S":
        return np.char.decode(col, "utf-8", "replace")
    if _STRING_DTYPE is None or col.dtype.kind != "O":
        return col.astype(str)
    variable = col.astype(_STRING_DTYPE())  # length-safe first: one long string must not widen every row
    width = max(int(np.char.str_len(variable).max()) if len(variable) else 1, 1)
    if len(variable) * width * 4 > _MAX_FIXED_WIDTH_BYTES:
        return variable
    return variable.astype(f"U{width}")  # fixed width: faster compares, and _lower's ASCII path


def _lower(text: np.ndarray) -> np.ndarray:
    """Lowercase for `contains`; ASCII-only `U` arrays fold arithmetically, far faster than np.char.lower."""
    if text.dtype.kind != "U" or text.size == 0 or text.dtype.itemsize == 0 or not text.dtype.isnative:
        return np.char.lower(text)
    text = np.ascontiguousarray(text)  # a strided column cannot be viewed as code points
    codes = text.view(np.uint32).reshape(len(text), text.dtype.itemsize // 4)
    if codes.max() > 127:
        return np.char.lower(text)
    upper = (codes >= 65) & (codes <= 90)
    return (codes + (upper.astype(np.uint32) << 5)).view(text.dtype).reshape(len(text))


# Sorting. Each key becomes an unsigned code that orders like the key (NaN largest, descending
# inverted), and the codes are combined, primary key highest, into one integer per row. Up to 16
# bits: one stable radix sort. Up to 64 bits with the row position in the low bits: one plain sort
# of distinct numbers, which is stable by construction (about 3x faster than lexsort). Wider: lexsort.


def _sort(ctx: _Context, order: tuple[SortKey, ...], rows: np.ndarray) -> np.ndarray:
    if not order:
        return rows
    for key in order:
        ctx.column(key.column)  # an unknown column fails even when there is nothing to sort
    if len(rows) < 2:
        return rows
    codes = [_sort_code(ctx, key, rows) for key in order]
    key_bits = sum(bits for _, bits in codes)
    position_bits = (len(rows) - 1).bit_length()
    if key_bits <= 16:
        return rows[np.argsort(_combined(codes, 0, np.uint16), kind="stable")]
    if key_bits + position_bits > 64:
        return rows[np.lexsort([code for code, _ in reversed(codes)])]  # lexsort: last key is primary; stable
    unsigned = np.uint32 if key_bits + position_bits <= 32 else np.uint64
    packed = _combined(codes, position_bits, unsigned)
    packed |= np.arange(len(rows), dtype=unsigned)
    packed.sort()
    return rows[(packed & unsigned((1 << position_bits) - 1)).astype(np.intp)]


def _combined(codes: list[tuple[np.ndarray, int]], shift: int, unsigned: type[np.unsignedinteger]) -> np.ndarray:
    """The codes side by side in one unsigned integer per row, the first key in the highest bits."""
    out = np.zeros(len(codes[0][0]), dtype=unsigned)
    for code, bits in reversed(codes):
        out |= (code << np.uint64(shift)).astype(unsigned)
        shift += bits
    return out


def _sort_code(ctx: _Context, key: SortKey, rows: np.ndarray) -> tuple[np.ndarray, int]:
    """(uint64 code per row that sorts like the key, how many low bits it uses)."""
    col = ctx.column(key.column)
    if col.dtype.kind == "f":
        return _float_code(col[rows], key.descending)
    if col.dtype.kind in "biu":
        return _span_code(col[rows].astype(np.uint8) if col.dtype.kind == "b" else col[rows], key.descending)
    return _span_code(ctx.strings(key.column).ranks(rows), key.descending)


def _span_code(values: np.ndarray, descending: bool) -> tuple[np.ndarray, int]:
    low, high = values.min(), values.max()
    if values.dtype.kind == "u":
        code = values.astype(np.uint64) - np.uint64(low)
    else:  # int64 difference wraps for huge spans; its uint64 view is still the exact offset
        code = (values.astype(np.int64) - np.int64(low)).view(np.uint64)
    span = int(high) - int(low)
    return (np.uint64(span) - code if descending else code), span.bit_length()


def _float_code(values: np.ndarray, descending: bool) -> tuple[np.ndarray, int]:
    missing = np.isnan(values)
    present = values[~missing].astype(np.float64)  # float64: offsets of float32 values up to 2**32 are exact
    with np.errstate(all="ignore"):
        low, high = (present.min(), present.max()) if present.size else (0.0, 0.0)
        whole = bool(high - low < 2**32) and bool(np.array_equal(present, np.floor(present)))
    if whole:  # labels and counts stored as float (NaN = unknown): a few bits, not 32 or 64
        span = int(high - low)
        code = np.full(len(values), span + 1, dtype=np.uint64)  # NaN last, ascending or descending
        offsets = (present - low).astype(np.uint64)
        code[~missing] = np.uint64(span) - offsets if descending else offsets
        return code, (span + 1).bit_length()
    with np.errstate(all="ignore"):
        narrow = values.astype(np.float32)
        exact = values.dtype.itemsize <= 4 or bool(np.array_equal(narrow, values, equal_nan=True))
    x = (narrow if exact else values.astype(np.float64)) + 0.0  # + 0.0 turns -0.0 into 0.0: equal keys, equal codes
    unsigned, width = (np.uint32, 32) if exact else (np.uint64, 64)
    raw = x.view(unsigned)
    negative = (raw >> unsigned(width - 1)).astype(bool)
    code = np.where(negative, ~raw, raw | unsigned(1 << (width - 1)))  # IEEE bits -> unsigned order
    if descending:
        code = ~code
    code[missing] = np.iinfo(unsigned).max  # NaN last, ascending or descending
    return code.astype(np.uint64), width


def _dense_ranks(text: np.ndarray) -> np.ndarray:
    """0 for the smallest string, equal strings equal ranks."""
    ranks = np.empty(len(text), dtype=np.int64)
    if len(text) == 0:
        return ranks
    order = np.argsort(text, kind="stable")
    ordered = text[order]
    steps = np.empty(len(text), dtype=np.int64)
    steps[0] = 0
    steps[1:] = ordered[1:] != ordered[:-1]
    ranks[order] = np.cumsum(steps)
    return ranks
