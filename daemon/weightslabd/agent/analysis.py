"""Read-only aggregates of the sample table, computed by the daemon (never by model-written code)."""

from __future__ import annotations

import numpy as np

from weightslabd.agent.plan import MAX_GROUPS, AnalysisPlan
from weightslabd.api.query import QueryError, parse
from weightslabd.store.samples import SampleFrame


def compute(step: AnalysisPlan, frame: SampleFrame, tags: list[str]) -> str:
    """The aggregate as one short text for the chat; QueryError for an unknown column or a bad query."""
    query = parse(step.query) if step.query.strip() else None
    mask = query.mask(frame) if query is not None else np.ones(len(frame), dtype=bool)
    values = None
    if step.stat != "count":
        if not step.column:
            raise QueryError(f"'{step.stat}' needs a column")
        names = {n.lower(): n for n in frame.column_names()}
        column = names.get(step.column.lower())
        if column is None:
            raise QueryError(f"unknown column {step.column!r} (known: {', '.join(frame.column_names()[:20])})")
        values = frame.column(column)
        if values.dtype.kind not in "biuf":
            raise QueryError(f"column {column!r} is not numeric; '{step.stat}' needs numbers")
        values = values.astype(np.float64)
    groups = _groups(step.group_by, frame, mask, tags)
    parts = [f"{name}: {_stat(step, values, rows)}" for name, rows in groups]
    where = f" where {step.query.strip()}" if step.query.strip() else ""
    of = f" of {step.column}" if step.stat != "count" else " of samples"
    by = f" by {step.group_by}" if step.group_by != "none" else ""
    head = f"{step.stat}{of}{where}{by}"
    if step.group_by == "none":
        return f"{head}: {_stat(step, values, groups[0][1])}"
    return f"{head}: " + "; ".join(parts) if parts else f"{head}: no groups"


def _groups(by: str, frame: SampleFrame, mask: np.ndarray, tags: list[str]) -> list[tuple[str, np.ndarray]]:
    if by == "none":
        return [("all", np.flatnonzero(mask))]
    if by == "split":
        origin = frame.column("origin")
        return [(t.name, np.flatnonzero(mask & (origin == t.name))) for t in frame.tables]
    if by == "tag":
        out = [(tag, np.flatnonzero(mask & frame.has_tag(tag))) for tag in tags[:MAX_GROUPS]]
        tagged = np.zeros(len(frame), dtype=bool)
        for tag in tags:
            tagged |= frame.has_tag(tag)
        return [*out, ("untagged", np.flatnonzero(mask & ~tagged))]
    labels = frame.column("label")
    chosen = labels[mask]
    distinct, counts = np.unique(chosen[np.isfinite(chosen)], return_counts=True)
    top = distinct[np.argsort(-counts, kind="stable")[:MAX_GROUPS]]
    return [(f"label {_number(float(v))}", np.flatnonzero(mask & (labels == v))) for v in sorted(top)]


def _stat(step: AnalysisPlan, values: np.ndarray | None, rows: np.ndarray) -> str:
    if step.stat == "count" or values is None:
        return f"{len(rows):,}"
    picked = values[rows]
    finite = picked[np.isfinite(picked)]
    if not len(finite):
        return f"n/a (no value among {len(rows):,} samples)"
    note = f" (n={len(finite):,})"
    if step.stat == "mean":
        return _number(float(finite.mean())) + note
    if step.stat == "min":
        return _number(float(finite.min())) + note
    if step.stat == "max":
        return _number(float(finite.max())) + note
    if step.stat == "sum":
        return _number(float(finite.sum())) + note
    qs = np.quantile(finite, list(step.quantiles))
    return ", ".join(f"q{q:g}={_number(float(v))}" for q, v in zip(step.quantiles, qs, strict=True)) + note


def _number(value: float) -> str:
    return f"{value:.6g}"
