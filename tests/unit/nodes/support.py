"""What the nodes tests share: a job id, ring step records, a run's curve."""

from __future__ import annotations

import numpy as np

from weightslab_shim import records
from weightslab_shim.records import SEP
from weightslabd.store.run import Run

JOB = "job-" + "ab" * 8


def step(s: int, rank: int) -> memoryview:
    ids = np.asarray([4 * rank + s % 4], dtype=np.int64)
    return memoryview(records.encode([(f"ids{SEP}train{SEP}loss{SEP}0", ids),
                                      (f"sig{SEP}train{SEP}loss{SEP}0", np.asarray([float(s + rank)], np.float32))]))


def curve(run: Run) -> dict[int, float]:
    c = run.history.curves.get("loss")
    return {} if c is None else {int(s): float(v) for s, v in zip(c.steps, c.values, strict=True)}


