"""ApplyDataQuery's query engine on a synthetic 1,000,000-row sample table.

Times parse() alone, then each filter and sort the way the daemon runs them: parse, fold into a
fresh View, and View.rows() (mask, row indexes, sort). No daemon is started. The frame has three
float32 signals with 10 % NaN (never seen), int64 label and prediction (and a float64 copy of the
label with 1 % NaN, as the daemon's sample table stores it), int32 encounters, an origin
column of 3 split names (as a numpy object array and as a fixed-width str array) and one tag mask.
Goal: each whole query within 300 ms (the daemon's budget for one ApplyDataQuery).

    .venv/bin/python bench/query.py [--rows N] [--runs R] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from weightslabd.api.query import ArrayFrame, View, parse

GOAL_MS = 300.0
PARSE_GOAL_US = 1000.0


class SyntheticFrame(ArrayFrame):
    """Plain numpy columns like the daemon's view of one or more splits."""

    def __init__(self, rows: int, seed: int = 0) -> None:
        super().__init__({})
        rng = np.random.default_rng(seed)
        for name, scale in (("loss", 1.0), ("loss/eval", 1.5), ("confidence", 0.3)):
            values = rng.exponential(scale, rows).astype(np.float32)
            values[rng.random(rows) < 0.10] = np.nan
            self.columns[name] = values
        self.columns["label"] = rng.integers(0, 10, rows)
        self.columns["label_f"] = self.columns["label"].astype(np.float64)  # the daemon's dtype: NaN = unknown
        self.columns["label_f"][rng.random(rows) < 0.01] = np.nan
        self.columns["prediction"] = rng.integers(0, 10, rows)
        self.columns["encounters"] = rng.integers(0, 50, rows).astype(np.int32)
        splits = np.array(["train", "val", "test"], dtype=object)
        self.columns["origin"] = splits[rng.choice(3, rows, p=[0.8, 0.1, 0.1])]
        self.columns["origin_str"] = self.columns["origin"].astype(str)
        self.tags = {"hard": rng.random(rows) < 0.05}


CASES = [
    ("filter", "loss > 0.5 and label == 3"),
    ("between", "loss between 0.2 and 0.8"),
    ("contains, origin (object)", "origin contains 'rai'"),
    ("contains, origin (str)", "origin_str contains 'RAI'"),
    ("equals, origin (object)", "origin == val"),
    ("has_tag", "has_tag hard"),
    ("not / or / parentheses", "not (has_tag hard or origin_str == 'test') and loss != nan"),
    ("sort, one key", "sortby loss desc"),
    ("sort, two keys", "sortby label asc, loss desc"),
    ("sort, two keys, float label", "sortby label_f asc, loss desc"),
    ("sort, string key (object)", "sortby origin desc"),
    ("filter + sort", "loss > 0.5 and label == 3 sortby loss desc"),
    ("filter + sort, two keys", "origin_str != 'test' and encounters >= 10 sortby label, loss desc"),
]


def timed(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    samples = []
    result: object = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="smoke run for ./dev bench --quick: 200,000 rows, 3 runs")
    args = p.parse_args()
    if args.quick:
        args.rows, args.runs = 200_000, 3

    t0 = time.perf_counter()
    frame = SyntheticFrame(args.rows)
    build_s = time.perf_counter() - t0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nQuery engine on {args.rows:,} rows ({os.cpu_count()} CPUs, load average {load:.2f}, "
        f"numpy {np.__version__}; frame built in {build_s:.1f} s); median of {args.runs} runs"
    )

    text = CASES[-1][1]
    parse_s, _ = timed(lambda: parse(text), max(args.runs, 200))
    header = f"{'query':<28} {'ms':>8} {'rows out':>10}  {'goal':<10} text"
    print(header)
    print("-" * (len(header) + 40))
    print(f"{'parse only':<28} {parse_s * 1e3:>8.3f} {'':>10}  {'<= 1 ms':<10} {text}")
    missed = []
    for label, query in CASES:
        q = parse(query)
        seconds, rows = timed(lambda q=q: View().apply(q, accumulate=False).rows(frame), args.runs)  # type: ignore[misc]
        ms = seconds * 1e3
        verdict = "ok" if ms <= GOAL_MS else "MISSED"
        if ms > GOAL_MS:
            missed.append(label)
        count = len(rows) if isinstance(rows, np.ndarray) else 0
        print(f"{label:<28} {ms:>8.1f} {count:>10,}  {'<= 300 ms':<7} {verdict:<3} {query}")
    print(
        f"\nparse goal {'met' if parse_s * 1e6 <= PARSE_GOAL_US else 'MISSED'}; "
        f"query goal {'met for every query' if not missed else 'MISSED for: ' + ', '.join(missed)}"
    )


if __name__ == "__main__":
    main()
