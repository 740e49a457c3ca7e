"""The live schema a prompt carries: columns, their types and ranges, splits, tags in use; bounded."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from weightslabd.store.run import Run

MAX_COLUMNS = 60
MAX_TAGS = 40
MAX_CHARS = 4000  # the whole summary, so a run with thousands of signals cannot flood the prompt


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # number, text, bool
    low: float | None = None
    high: float | None = None
    missing: int = 0


@dataclass(frozen=True)
class TableSchema:
    rows: int
    splits: dict[str, int]
    columns: list[Column]
    tags: dict[str, int]
    hidden_columns: int = 0
    hyperparameters: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def text(self) -> str:
        """The summary as prompt text, at most MAX_CHARS characters."""
        lines = [f"{self.rows} samples; splits: " + ", ".join(f"{n} ({size})" for n, size in self.splits.items())]
        lines.append("columns (name: type, range):")
        for col in self.columns:
            if col.kind == "number" and col.low is not None:
                shown = f"  {col.name}: number, {col.low:.6g} .. {col.high:.6g}"
            else:
                shown = f"  {col.name}: {col.kind}"
            lines.append(shown + (f", {col.missing} missing (NaN)" if col.missing else ""))
        if self.hidden_columns:
            lines.append(f"  … and {self.hidden_columns} more numeric columns")
        tags = ", ".join(f"{t} ({n})" for t, n in list(self.tags.items())[:MAX_TAGS]) or "none"
        lines.append(f"tags in use: {tags}" + (" …" if len(self.tags) > MAX_TAGS else ""))
        if self.hyperparameters:
            lines.append("hyperparameters: " + ", ".join(self.hyperparameters))
        text = "\n".join(lines)
        return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 1] + "…"


def of_run(run: Run, lock_timeout: float) -> TableSchema:
    """Read under the run lock, once, in O(columns x rows) numpy work; never while a model is asked."""
    with run.holding(lock_timeout):
        frame = run.samples.frame()
        splits = {name: t.size for name, t in run.samples.splits.items()}
        names = frame.column_names()
        columns = [_column(name, frame.column(name)) for name in names[:MAX_COLUMNS]]
        tags = {tag: int(frame.has_tag(tag).sum()) for tag in run.samples.unique_tags()}
        hparams = sorted(str(k) for k in run.effective_hparams())[:40]
    return TableSchema(len(frame), splits, columns, tags, max(0, len(names) - MAX_COLUMNS), hparams)


def _column(name: str, values: np.ndarray) -> Column:
    if values.dtype.kind == "b":
        return Column(name, "bool")
    if values.dtype.kind not in "iuf":
        return Column(name, "text")
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    missing = len(values) - len(finite)
    if not len(finite):
        return Column(name, "number", missing=missing)
    return Column(name, "number", float(finite.min()), float(finite.max()), missing)
