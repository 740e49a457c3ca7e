"""The sample table: one row per (split, sample id), held as columns.

The trainer's records fill the signal, label, prediction and encounter columns; the user's edits
own `denied` and the tag masks. Columns are numpy arrays sized to the split, so a lookup is an
index and a filter over a million rows is one vectorised expression. `SampleFrame` presents all
splits as one table to the query engine and the grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import DTypeLike

# Columns every row has, beside one column per signal (see SampleFrame.column).
BASE_COLUMNS = ("sample_id", "origin", "label", "prediction", "encounters", "deny_listed", "tags", "last_step")
# The columns the trainer's records fill besides the signals (what a snapshot keeps; denied and tags are the journal's).
RECORD_COLUMNS = ("encounters", "label", "prediction", "last_step")


@dataclass
class TableImage:
    """What the trainer's records made of one split: its signal and record columns (copies)."""

    size: int
    signals: dict[str, np.ndarray]
    columns: dict[str, np.ndarray]  # RECORD_COLUMNS
    task_type: str


@dataclass
class SplitTable:
    name: str
    size: int
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # last value per sample, NaN = never
    encounters: np.ndarray = field(init=False)
    label: np.ndarray = field(init=False)
    prediction: np.ndarray = field(init=False)
    denied: np.ndarray = field(init=False)
    last_step: np.ndarray = field(init=False)
    tag_masks: dict[str, np.ndarray] = field(default_factory=dict)  # tag -> which samples carry it
    task_type: str = "classification"

    def __post_init__(self) -> None:
        n = self.size
        self.encounters = np.zeros(n, dtype=np.int32)
        self.label = np.full(n, np.nan, dtype=np.float64)
        self.prediction = np.full(n, np.nan, dtype=np.float64)
        self.denied = np.zeros(n, dtype=bool)
        self.last_step = np.full(n, -1, dtype=np.int64)

    def valid(self, ids: np.ndarray) -> np.ndarray:
        return ids[(ids >= 0) & (ids < self.size)]

    def set_signal(self, name: str, ids: np.ndarray, values: np.ndarray, step: int) -> None:
        col = self.signals.get(name)
        if col is None:
            col = self.signals[name] = np.full(self.size, np.nan, dtype=np.float32)
        ok = (ids >= 0) & (ids < self.size)
        n = min(len(ids), len(values))
        ok = ok[:n]
        col[ids[:n][ok]] = values[:n][ok]
        self.last_step[ids[:n][ok]] = step

    def count_encounters(self, unique_ids: np.ndarray) -> None:
        self.encounters[self.valid(unique_ids)] += 1

    def set_labels(self, ids: np.ndarray, targets: np.ndarray | None, preds: np.ndarray | None) -> None:
        ok = (ids >= 0) & (ids < self.size)
        good = ids[ok]
        for column, values in ((self.label, targets), (self.prediction, preds)):
            # Only one scalar per sample fits a column; richer targets (masks) stay in the store.
            if values is not None and values.ndim == 1 and len(values) == len(ids) and values.dtype.kind in "fiub":
                column[good] = values[ok]
        if targets is not None and targets.ndim >= 3 and len(targets) == len(ids):
            self.task_type = "segmentation"  # a per-pixel target per sample

    def set_denied(self, ids: np.ndarray, deny: bool) -> int:
        ids = np.unique(self.valid(ids))
        changed = int((self.denied[ids] != deny).sum())
        self.denied[ids] = deny
        return changed

    def edit_tags(self, ids: np.ndarray, tags: list[str], mode: str) -> None:
        if mode not in ("override", "add", "remove"):
            raise ValueError(f"unknown tag edit mode {mode!r}: expected override, add or remove")
        rows = self.valid(ids)
        if mode == "override":
            for mask in self.tag_masks.values():
                mask[rows] = False
        for tag in tags:
            if tag not in self.tag_masks:
                if mode == "remove":
                    continue
                self.tag_masks[tag] = np.zeros(self.size, dtype=bool)
            self.tag_masks[tag][rows] = mode != "remove"
        # A tag nobody carries is no longer "in use" (nor held: a mask is a byte per sample). Only the
        # tags this edit cleared can have emptied, and a new one set on no row.
        emptied = list(self.tag_masks) if mode == "override" else [t for t in tags if t in self.tag_masks]
        for tag in [t for t in emptied if not self.tag_masks[t].any()]:
            del self.tag_masks[tag]

    def record_image(self) -> TableImage:
        """Copies of the columns records fill: a consistent cut when taken under the run lock."""
        return TableImage(self.size, {name: col.copy() for name, col in self.signals.items()},
                          {name: getattr(self, name).copy() for name in RECORD_COLUMNS}, self.task_type)

    def adopt_records(self, image: TableImage) -> None:
        """Take the record columns of `image` (a split of the same size); denied and tags stay."""
        self.check_records(image)
        self.signals = dict(image.signals)
        for name in RECORD_COLUMNS:
            setattr(self, name, image.columns[name])
        self.task_type = image.task_type

    def check_records(self, image: TableImage) -> None:
        """Raise ValueError unless `image` fits this split (size, columns, dtypes)."""
        if image.size != self.size:
            raise ValueError(f"split {self.name!r}: an image of {image.size} samples for a table of {self.size}")
        wanted = [(name, col, np.dtype(np.float32)) for name, col in image.signals.items()]
        wanted += [(name, image.columns[name], getattr(self, name).dtype) for name in RECORD_COLUMNS]
        for name, col, dtype in wanted:
            if col.shape != (self.size,) or col.dtype != dtype:
                raise ValueError(f"split {self.name!r}: column {name!r} is {col.dtype}{col.shape}, "
                                 f"not {dtype}({self.size},)")

    def tags_of(self, sample_id: int) -> list[str]:
        return sorted(t for t, m in self.tag_masks.items() if m[sample_id])

    def in_loop(self) -> int:
        return self.size - int(self.denied.sum())


class SampleTable:
    def __init__(self) -> None:
        self.splits: dict[str, SplitTable] = {}  # in registration order: the Studio lists them so
        self.layout = 0  # bumps when a split is added or grows: records applied before saw another layout

    def ensure_split(self, name: str, size: int) -> SplitTable:
        table = self.splits.get(name)
        if table is None:
            table = self.splits[name] = SplitTable(name, size)
            self.layout += 1
        elif size > table.size:
            table = self.splits[name] = _grown(table, size)
            self.layout += 1
        return table

    def get(self, name: str) -> SplitTable | None:
        return self.splits.get(name)

    def counts(self) -> tuple[int, int, int]:
        total = sum(t.size for t in self.splits.values())
        denied = sum(int(t.denied.sum()) for t in self.splits.values())
        return total, total - denied, denied

    def unique_tags(self) -> list[str]:
        return sorted({tag for t in self.splits.values() for tag in t.tag_masks})

    def frame(self) -> SampleFrame:
        return SampleFrame(list(self.splits.values()))


class SampleFrame:
    """Every split as one table: rows in split registration order, then by sample id.

    Columns are built on first use and kept for the frame's life (one query or one page), so a
    frame is a consistent snapshot when built under the run lock and cheap when most columns go
    unused."""

    def __init__(self, tables: list[SplitTable]) -> None:
        self.tables = tables
        sizes = np.array([t.size for t in tables], dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self._columns: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def signal_names(self) -> list[str]:
        return list(dict.fromkeys(name for t in self.tables for name in t.signals))

    def column_names(self) -> list[str]:
        return [*BASE_COLUMNS, *self.signal_names()]

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(split index, sample id) of each row."""
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        return which, rows - self.offsets[which]

    def row_of(self, split: str, sample_id: int) -> int | None:
        for i, t in enumerate(self.tables):
            if t.name == split and 0 <= sample_id < t.size:
                return int(self.offsets[i]) + sample_id
        return None

    def column(self, name: str) -> np.ndarray:
        col = self._columns.get(name)
        if col is None:
            col = self._columns[name] = self._build(name)
        return col

    def has_tag(self, tag: str) -> np.ndarray:
        return self._concat(lambda t: t.tag_masks.get(tag, np.zeros(t.size, dtype=bool)), bool)

    def _build(self, name: str) -> np.ndarray:
        if name == "sample_id":
            return self._concat(lambda t: np.arange(t.size, dtype=np.int64), np.int64)
        if name in ("origin", "split"):
            names = np.array([t.name for t in self.tables] or [""])
            return np.repeat(names[: len(self.tables)], [t.size for t in self.tables])
        if name in ("label", "prediction", "encounters", "last_step"):
            return self._concat(lambda t: np.asarray(getattr(t, name)), np.float64)
        if name in ("deny_listed", "discarded", "denied"):
            return self._concat(lambda t: t.denied, bool)
        if name == "tags":
            return self._concat(_joined_tags, object)
        if name in self.signal_names():
            return self._concat(lambda t: t.signals.get(name, np.full(t.size, np.nan, dtype=np.float32)),
                                np.float32)
        raise KeyError(name)

    def _concat(self, part: Callable[[SplitTable], np.ndarray], dtype: DTypeLike) -> np.ndarray:
        if not self.tables:
            return np.empty(0, dtype=dtype)
        return np.concatenate([part(t) for t in self.tables])


def _joined_tags(table: SplitTable) -> np.ndarray:
    """Each sample's tags as the `;`-joined text the Studio shows, one join per distinct tag set."""
    names = sorted(table.tag_masks)
    group = np.zeros(table.size, dtype=np.int64)  # rows with the same tags so far share a number
    for start in range(0, len(names), _TAG_BITS):
        code = np.zeros(table.size, dtype=np.int64)  # a bit per tag of this chunk
        for bit, tag in enumerate(names[start:start + _TAG_BITS]):
            code |= table.tag_masks[tag].astype(np.int64) << bit
        if start:
            code = np.unique(np.stack([group, code], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
        group = code
    _, first, inverse = np.unique(group, return_index=True, return_inverse=True)
    texts = np.array([";".join(table.tags_of(int(row))) for row in first.tolist()], dtype=object)
    return texts[inverse.reshape(-1)]


_TAG_BITS = 62  # tags per int64 code in _joined_tags


def _grown(old: SplitTable, size: int) -> SplitTable:
    new = SplitTable(old.name, size)
    n = old.size
    new.encounters[:n] = old.encounters
    new.label[:n] = old.label
    new.prediction[:n] = old.prediction
    new.denied[:n] = old.denied
    new.last_step[:n] = old.last_step
    for name, col in old.signals.items():
        grown = np.full(size, np.nan, dtype=np.float32)
        grown[:n] = col
        new.signals[name] = grown
    for tag, mask in old.tag_masks.items():
        new.tag_masks[tag] = np.concatenate([mask, np.zeros(size - n, dtype=bool)])
    new.task_type = old.task_type
    return new
