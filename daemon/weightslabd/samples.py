"""The sample table: one row per (split, sample id), held as columns.

The trainer's records fill the signal, label, prediction and encounter columns; the user's edits
own `denied` and `tags`. Columns are numpy arrays sized to the split, so a lookup is an index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    tags: dict[int, set[str]] = field(default_factory=dict)

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

    def set_denied(self, ids: np.ndarray, deny: bool) -> int:
        ids = np.unique(self.valid(ids))
        changed = int((self.denied[ids] != deny).sum())
        self.denied[ids] = deny
        return changed

    def edit_tags(self, ids: np.ndarray, tags: list[str], mode: str) -> None:
        if mode not in ("override", "add", "remove"):
            raise ValueError(f"unknown tag edit mode {mode!r}: expected override, add or remove")
        for i in self.valid(ids).tolist():
            current = self.tags.get(i, set())
            if mode == "override":
                current = set(tags)
            elif mode == "add":
                current = current | set(tags)
            else:
                current = current - set(tags)
            if current:
                self.tags[i] = current
            else:
                self.tags.pop(i, None)

    def in_loop(self) -> int:
        return self.size - int(self.denied.sum())


class SampleTable:
    def __init__(self) -> None:
        self.splits: dict[str, SplitTable] = {}

    def ensure_split(self, name: str, size: int) -> SplitTable:
        table = self.splits.get(name)
        if table is None:
            table = self.splits[name] = SplitTable(name, size)
        elif size > table.size:
            table = self.splits[name] = _grown(table, size)
        return table

    def get(self, name: str) -> SplitTable | None:
        return self.splits.get(name)

    def counts(self) -> tuple[int, int, int]:
        total = sum(t.size for t in self.splits.values())
        denied = sum(int(t.denied.sum()) for t in self.splits.values())
        return total, total - denied, denied

    def unique_tags(self) -> list[str]:
        seen: set[str] = set()
        for t in self.splits.values():
            for tags in t.tags.values():
                seen |= tags
        return sorted(seen)


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
    new.tags = old.tags
    return new
