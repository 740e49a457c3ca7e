"""GetHistogram: the distribution of one column over a client's current view.

Numeric columns get at most `max_bins` equal-width bins (clamped to 512, as the Studio clamps its
slider); text columns, and `tags` (one bar per tag), get one bar per value. Every bin and bar is
broken down by split and by discarded, so the Studio can stack them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from weightslabd.api.grid import ClientView, current_rows
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store.run import Run

MAX_BINS = 512
NO_TAG = "(no tag)"


def clamp_bins(requested: int) -> int:
    return MAX_BINS if requested <= 0 else min(int(requested), MAX_BINS)


def of_view(run: Run, client: ClientView, request: Any, lock_timeout: float) -> Any:
    column = request.column.strip()
    with run.holding(lock_timeout):
        frame = run.samples.frame()
        rows = current_rows(run, client, frame)
        names = frame.column_names()
        if column not in names:
            return pb.HistogramResponse(success=False, message=f"unknown column {column!r} (known: {', '.join(names)})")
        tagged = column == "tags"  # counted from the tag masks, one bar per tag: no joined text needed
        values = np.empty(0) if tagged else frame.column(column)[rows]
        split_of = np.searchsorted(frame.offsets, rows, side="right") - 1
        denied = frame.column("deny_listed")[rows]
        split_names = [t.name for t in frame.tables]
        tag_masks = {tag: frame.has_tag(tag)[rows] for tag in run.samples.unique_tags()} if tagged else {}
    group = split_of * 2 + denied.astype(np.int64)  # (split, discarded) as one code
    response = pb.HistogramResponse(success=True, total_rows=len(rows))
    if tagged:
        response.is_categorical = True
        _tag_bars(response, tag_masks, group, split_names)
    elif values.dtype.kind in "OUSb":
        response.is_categorical = True
        _category_bars(response, values, group, split_names)
    else:
        _numeric_bins(response, values.astype(np.float64), group, split_names, clamp_bins(request.max_bins))
    return response


def _sub_bars(target: Any, counts: np.ndarray, split_names: list[str]) -> None:
    for code in np.flatnonzero(counts).tolist():
        target.add(origin=split_names[code // 2], discarded=bool(code % 2), count=int(counts[code]))


def _numeric_bins(response: Any, values: np.ndarray, group: np.ndarray, split_names: list[str], bins: int) -> None:
    finite = np.isfinite(values)
    values, group = values[finite], group[finite]
    if values.size == 0:
        response.message = "no finite values in this column"
        return
    low, high = float(values.min()), float(values.max())
    if low == high:
        bins = 1
    edges = np.linspace(low, high, bins + 1)
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sums = np.bincount(index, weights=values, minlength=bins)
    groups = 2 * len(split_names)
    by_group = np.bincount(index * groups + group, minlength=bins * groups).reshape(bins, groups)
    for b in range(bins):
        if counts[b] == 0:
            continue
        bin_ = response.bins.add(min=float(edges[b]), max=float(edges[b + 1]), avg=float(sums[b] / counts[b]),
                                 count=int(counts[b]))
        _sub_bars(bin_.sub_bars, by_group[b], split_names)
    if not finite.all():
        response.message = f"{int((~finite).sum())} rows without a value left out"


def _category_bars(response: Any, values: np.ndarray, group: np.ndarray, split_names: list[str]) -> None:
    labels, index = np.unique(values.astype(str), return_inverse=True)
    index = index.reshape(-1)
    groups = 2 * len(split_names)
    by_group = np.bincount(index * groups + group, minlength=len(labels) * groups).reshape(len(labels), groups)
    for i, label in enumerate(labels.tolist()):
        bar = response.categorical_bars.add(label=label or "(empty)", count=int(by_group[i].sum()))
        _sub_bars(bar.sub_bars, by_group[i], split_names)


def _tag_bars(response: Any, masks: dict[str, np.ndarray], group: np.ndarray, split_names: list[str]) -> None:
    groups = 2 * len(split_names)
    tagged = np.zeros(len(group), dtype=bool)
    bars = []
    for tag, mask in masks.items():
        tagged |= mask
        bars.append((tag, mask))
    for tag, mask in [*bars, (NO_TAG, ~tagged)]:
        counts = np.bincount(group[mask], minlength=groups)
        bar = response.categorical_bars.add(label=tag, count=int(counts.sum()))
        _sub_bars(bar.sub_bars, counts, split_names)
