"""The Studio's sample grid: each client's view of the sample table, its pages, and its counts.

A view is a filter and a sort (see docs/query.md). Its rows are evaluated when the client sends a
query and again after any tag or discard edit, never on a page read: live losses change every
step, and a grid whose order moved between two page reads would show a sample twice.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightslabd.api.query import QueryError, View, parse
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store.previews import data_stat
from weightslabd.store.run import Run
from weightslabd.store.samples import SampleFrame

VIEW_IDLE = 3600.0  # a client silent this long loses its view (it falls back to the full table)
MAX_VIEWS = 1000
MAX_PAGE = 1024  # records per GetDataSamples; the Studio asks for at most 128
NATURAL_LANGUAGE_OFF = ("natural-language queries need the data-query agent, and none is configured; "
                        "use a structured query (see docs/query.md), e.g. 'loss > 0.5 sortby loss desc'")
SCALAR_STATS = ("label", "prediction", "encounters", "last_step")


@dataclass
class ClientView:
    view: View = field(default_factory=View)
    rows: np.ndarray | None = None  # None: every row, in table order
    edits_version: int = -1
    size: int = -1
    seen: float = field(default_factory=time.monotonic)


class GridViews:
    """One view per (client, run), forgotten after VIEW_IDLE of silence."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._views: OrderedDict[tuple[str, str], ClientView] = OrderedDict()

    def get(self, client: str, run_id: str) -> ClientView:
        now = time.monotonic()
        with self._lock:
            key = (client, run_id)
            view = self._views.pop(key, None) or ClientView()
            view.seen = now
            self._views[key] = view
            while self._views:
                oldest_key, oldest = next(iter(self._views.items()))
                if now - oldest.seen < VIEW_IDLE and len(self._views) <= MAX_VIEWS:
                    break
                del self._views[oldest_key]
            return view


def current_rows(run: Run, client: ClientView, frame: SampleFrame, *, refresh: bool = False) -> np.ndarray:
    """The client's rows, re-evaluated when asked or when an edit or a new split changed the table."""
    stale = client.edits_version != run.edits_version or client.size != len(frame)
    if client.rows is None or stale or refresh:
        client.rows = client.view.rows(frame)
        client.edits_version, client.size = run.edits_version, len(frame)
    return client.rows


def apply_query(run: Run, client: ClientView, request: Any, lock_timeout: float) -> Any:
    """ApplyDataQuery: change the client's view (or only count it, for an empty query)."""
    text = request.query.strip()
    message = ""
    success = True
    with run.holding(lock_timeout):
        frame = run.samples.frame()
        if request.is_natural_language and text:
            success, message = False, NATURAL_LANGUAGE_OFF
        elif text:
            try:
                new_view = client.view.apply(parse(text), bool(request.accumulate))
                rows = new_view.rows(frame)  # an unknown column fails here, before the view changes
            except QueryError as exc:
                success, message = False, f"query not applied: {exc}"
            else:
                client.view, client.rows = new_view, rows
                client.edits_version, client.size = run.edits_version, len(frame)
                message = f"{len(rows)} samples: {new_view.describe() or 'all samples'}"
        rows = current_rows(run, client, frame, refresh=not text)
        denied = frame.column("deny_listed")[rows]
        unique_tags = run.samples.unique_tags()
    discarded = int(denied.sum())
    return pb.DataQueryResponse(
        success=success, message=message, number_of_all_samples=len(rows),
        number_of_samples_in_the_loop=len(rows) - discarded, number_of_discarded_samples=discarded,
        unique_tags=unique_tags, agent_intent_type=pb.INTENT_FILTER if success and text else pb.INTENT_UNKNOWN)


@dataclass(frozen=True)
class PageRow:
    split: str
    sample_id: int
    stats: list[Any]
    task_type: str


def page(run: Run, client: ClientView, request: Any, lock_timeout: float) -> tuple[list[PageRow], str]:
    """The page's samples and their stats (all but the image), read under the run lock in one go."""
    start, count = int(request.start_index), int(request.records_cnt)
    if start < 0 or count < 0:
        raise ValueError(f"start_index and records_cnt must be >= 0, got {start} and {count}")
    wanted = set(request.stats_to_retrieve)
    with run.holding(lock_timeout):
        frame = run.samples.frame()
        rows = current_rows(run, client, frame)
        chosen = rows[start:start + min(count, MAX_PAGE)]
        which, ids = frame.locate(chosen)
        out = []
        for t, sid in zip(which.tolist(), ids.tolist(), strict=True):
            table = frame.tables[t]
            out.append(PageRow(table.name, sid, sample_stats(table, sid, wanted), table.task_type))
    note = "" if count <= MAX_PAGE else f"records_cnt capped at {MAX_PAGE}"
    return out, note


def sample_stats(table: Any, sid: int, wanted: set[str]) -> list[Any]:
    """The grid's stats for one sample (STUDIO-WIRE.md, data-stat conventions)."""
    def keep(name: str) -> bool:
        return not wanted or name in wanted

    stats = []
    if keep("origin"):
        stats.append(pb.DataStat(name="origin", type="string", value_string=table.name))
    if keep("deny_listed"):
        stats.append(pb.DataStat(name="deny_listed", type="scalar", shape=[1],
                                 value=[1.0 if table.denied[sid] else 0.0]))
    if keep("tags"):
        stats.append(pb.DataStat(name="tags", type="string", value_string=";".join(table.tags_of(sid))))
    if keep("task_type"):
        stats.append(pb.DataStat(name="task_type", type="string", value_string=table.task_type))
    for name in SCALAR_STATS:
        if keep(name):
            stats.append(pb.DataStat(name=name, type="scalar", shape=[1], value=[float(getattr(table, name)[sid])]))
    for name, column in table.signals.items():
        if keep(name):
            stats.append(pb.DataStat(name=name, type="scalar", shape=[1], value=[float(column[sid])]))
    return stats


def image_stat(encoded: bytes, task_type: str) -> Any:
    """`raw_data`: the encoded image, one float per byte (the cell makes a data URL of it)."""
    stat = data_stat(encoded)  # packed floats laid out directly: ~100x faster than value.extend
    if task_type == "segmentation":
        stat.thumbnail = encoded  # the segmentation cell prefers the bytes
    return stat


def parse_edit_targets(run: Run, ids: Sequence[int], origins: Sequence[str]) -> dict[str, list[int]]:
    """Group an edit's samples by split, checking every one first so a bad request changes nothing."""
    splits = list(run.samples.splits)
    if not ids:
        raise ValueError("samples_ids is empty: nothing to edit")
    if origins and len(origins) != len(ids):
        raise ValueError(f"sample_origins has {len(origins)} entries for {len(ids)} samples_ids")
    if not splits:
        raise ValueError("the run has registered no splits yet")
    groups: dict[str, list[int]] = {}
    for i, sid in enumerate(ids):
        split = origins[i] if origins else splits[0]
        table = run.samples.get(split)
        if table is None:
            raise ValueError(f"unknown origin {split!r} (splits: {', '.join(splits)})")
        if not 0 <= sid < table.size:
            raise ValueError(f"sample id {sid} is outside split {split!r} (0..{table.size - 1})")
        groups.setdefault(split, []).append(int(sid))
    return groups


def split_tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(";") if t.strip()]
