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
# Bounds on an edit (docs/data-plane.md), checked before anything changes, in O(request size):
MAX_EDIT_IDS = 1_000_000  # sample ids in one request, as sent (duplicates count; they are dropped before any work)
MAX_TAG_CHARS = 64  # one tag: printable characters, no ';' (the separator of the `tags` stat)
MAX_RUN_TAGS = 256  # distinct tags in use in a run: each costs a byte per sample of every split it is on
MAX_TAG_TEXT = MAX_RUN_TAGS * (MAX_TAG_CHARS + 1)  # the `;`-joined tags of one request
NATURAL_LANGUAGE_OFF = ("natural-language queries need the data-query agent, and none is configured; "
                        "use a structured query (see docs/query.md), e.g. 'loss > 0.5 sortby loss desc'")
SCALAR_STATS = ("label", "prediction", "encounters", "last_step")


@dataclass
class ClientView:
    view: View = field(default_factory=View)
    rows: np.ndarray | None = None  # None: every row, in table order
    limit: int | None = None  # only the view's first rows (the agent's "the 50 highest-loss samples")
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
        client.rows = client.view.rows(frame)[:client.limit]
        client.edits_version, client.size = run.edits_version, len(frame)
    return client.rows


def apply_query(run: Run, client: ClientView, request: Any, lock_timeout: float) -> Any:
    """ApplyDataQuery with a structured query (natural language goes to the agent first).

    An empty query is what the Studio sends when a page loads: the client starts from the full table,
    so a new browser context (same address and User-Agent, hence the same view key) never inherits an
    old page's filter or sort."""
    text = request.query.strip()
    if request.is_natural_language and text:
        return counted(run, client, lock_timeout, success=False, message=NATURAL_LANGUAGE_OFF)
    return apply_text(run, client, text or "reset", bool(request.accumulate), lock_timeout)


def apply_text(run: Run, client: ClientView, text: str, accumulate: bool, lock_timeout: float,
               limit: int | None = None) -> Any:
    """Fold one structured query into the client's view and count it; a bad query changes nothing.
    `limit` keeps the view's first rows only (any later query lifts it)."""
    with run.holding(lock_timeout):
        frame = run.samples.frame()
        try:
            new_view = client.view.apply(parse(text), accumulate)
            rows = new_view.rows(frame)[:limit]  # an unknown column fails here, before the view changes
        except QueryError as exc:
            success, message = False, f"query not applied: {exc}"
        else:
            client.view, client.rows, client.limit = new_view, rows, limit
            client.edits_version, client.size = run.edits_version, len(frame)
            shown = new_view.describe() or "all samples"
            success, message = True, f"{len(rows)} samples: {shown}" + (f", first {limit}" if limit else "")
        return _counts(run, client, frame, success, message)


def counted(run: Run, client: ClientView, lock_timeout: float, *, success: bool, message: str,
            intent: Any = None) -> Any:
    """The client's counts with a reply that changed no view (a refusal, an edit, an analysis)."""
    with run.holding(lock_timeout):
        return _counts(run, client, run.samples.frame(), success, message, intent)


def _counts(run: Run, client: ClientView, frame: SampleFrame, success: bool, message: str,
            intent: Any = None) -> Any:
    rows = current_rows(run, client, frame)
    discarded = int(frame.column("deny_listed")[rows].sum())
    if intent is None:
        intent = pb.INTENT_FILTER if success else pb.INTENT_UNKNOWN
    return pb.DataQueryResponse(
        success=success, message=message, number_of_all_samples=len(rows),
        number_of_samples_in_the_loop=len(rows) - discarded, number_of_discarded_samples=discarded,
        unique_tags=run.samples.unique_tags(), agent_intent_type=intent)


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
    """Group an edit's samples by split, checking every one first so a bad request changes nothing.

    Each split's ids come back sorted and without duplicates; the work is vectorised, so a request
    costs O(its size) whatever it holds."""
    splits = list(run.samples.splits)
    if not len(ids):
        raise ValueError("samples_ids is empty: nothing to edit")
    if len(ids) > MAX_EDIT_IDS:
        raise ValueError(f"{len(ids):,} sample ids in one edit; at most {MAX_EDIT_IDS:,} per request")
    if len(origins) and len(origins) != len(ids):
        raise ValueError(f"sample_origins has {len(origins)} entries for {len(ids)} samples_ids")
    if not splits:
        raise ValueError("the run has registered no splits yet")
    named = set(origins) if len(origins) else {splits[0]}
    for split in named:  # only known names go on: an unknown one of any length stops here
        if split not in run.samples.splits:
            raise ValueError(f"unknown origin {short_repr(split)} (splits: {', '.join(splits)})")
    all_ids = np.asarray(ids, dtype=np.int64)
    which = np.asarray(origins) if len(named) > 1 else None
    groups: dict[str, list[int]] = {}
    for split in [s for s in splits if s in named]:
        picked = all_ids if which is None else all_ids[which == split]
        groups[split] = check_ids(run, split, picked)
    return groups


def check_ids(run: Run, split: str, ids: Sequence[int] | np.ndarray) -> list[int]:
    """The ids of one split's edit, sorted and without duplicates; ValueError (nothing changed) when
    there are too many, the split is unknown or an id lies outside it."""
    if len(ids) > MAX_EDIT_IDS:
        raise ValueError(f"{len(ids):,} sample ids in one edit; at most {MAX_EDIT_IDS:,} per request")
    table = run.samples.get(split)
    if table is None:
        raise ValueError(f"no split named {short_repr(split)} in run {run.run_id}")
    try:
        unique = _sorted_unique(np.array(ids, dtype=np.int64))
    except OverflowError:  # an id typed past int64 (the CLI's): outside every split
        raise ValueError(f"a sample id is outside split {split!r} (0..{table.size - 1})") from None
    outside = unique[(unique < 0) | (unique >= table.size)]
    if outside.size:
        raise ValueError(f"sample id {int(outside[0])} is outside split {split!r} (0..{table.size - 1})")
    return [int(i) for i in unique.tolist()]


def _sorted_unique(ids: np.ndarray) -> np.ndarray:
    """np.unique by a sort in place (numpy's hash-based unique is several times slower on distinct ids)."""
    ids.sort()
    return ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if ids.size else ids


def split_tags(text: str) -> list[str]:
    """The tags a `;`-joined text names, each checked (check_tag), without duplicates; ValueError
    (nothing changed) for a text longer than MAX_TAG_TEXT or any bad tag."""
    if len(text) > MAX_TAG_TEXT:
        raise ValueError(f"the tags of one edit are {len(text):,} characters; at most {MAX_TAG_TEXT:,}")
    tags = list(dict.fromkeys(t.strip() for t in text.split(";") if t.strip()))
    for tag in tags:
        check_tag(tag)
    return tags


def check_tag(tag: str) -> None:
    if len(tag) > MAX_TAG_CHARS:
        raise ValueError(f"tag {short_repr(tag)} is {len(tag):,} characters; a tag is at most {MAX_TAG_CHARS}")
    if ";" in tag or not tag.isprintable():
        raise ValueError(f"tag {short_repr(tag)} has a character a tag cannot hold: tags are printable text "
                         "without ';', newlines or control characters")


def check_tag_room(run: Run, tags: Sequence[str], mode: str) -> None:
    """ValueError unless the run can take `tags` within MAX_RUN_TAGS distinct tags (call it under the
    run lock, before journaling); removing tags always fits."""
    if mode == "remove":
        return
    in_use = set(run.samples.unique_tags())
    new = [t for t in dict.fromkeys(tags) if t not in in_use]
    if new and len(in_use) + len(new) > MAX_RUN_TAGS:
        raise ValueError(f"{len(new)} new tags would make {len(in_use) + len(new)} distinct tags in the run; "
                         f"at most {MAX_RUN_TAGS} (remove unused tags first)")


def short_repr(text: str, limit: int = 40) -> str:
    """repr() of a user's text, cut to `limit` characters: an error stays one short line."""
    shown = repr(text[:limit])
    return shown if len(text) <= limit else f"{shown[:-1]}…{shown[-1]} ({len(text):,} characters)"
