"""Per-sample signal history: append cost, break-by-slices curves over 100 million values, and memory.

1. Build: one `SignalStore` of --records records x 256 float32 values (default 390,625: 100M values),
   the ids being 1M sample ids drawn as epochs (a fresh permutation of the 1M ids per epoch, cut into
   batches of 256: no id repeats within a batch). Every record goes through `append` one by one, and
   each call is timed: the append cost per 256-value record.
2. Break-by-slices: `slice_curve` with a random 10% mask (the samples carrying a tag) and with no mask
   (all samples), capped at 200 points and uncapped, plus the last 10% of the steps; the best and the
   median of --repeats calls. Goal: <= 1000 ms for 100M values on 2 cores.
3. Memory: bytes allocated per value, and the process's resident memory growth while building.
4. The same store built with ids drawn with replacement (~3% of the batches then repeat an id: the
   per-instance fold path runs for those), and a detection-like store a tenth the size (85 samples a
   batch, 1 to 5 instances each with explicit instance indexes), timed the same way, both folds.

    .venv/bin/python bench/slices.py [--records N] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from weightslabd.store.sample_signals import SignalStore

BATCH = 256
SAMPLES = 1_000_000
GOAL_MS = 1000.0


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


Batch = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def epoch_batches(seed: int, records: int, replace: bool) -> Iterator[Batch]:
    """`records` batches of (ids int32, values float32, no instance indexes), generated an epoch at a time."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < records:
        ids = (rng.integers(0, SAMPLES, SAMPLES, dtype=np.int32) if replace
               else rng.permutation(SAMPLES).astype(np.int32))
        values = rng.random(SAMPLES, dtype=np.float32)
        for at in range(0, SAMPLES - BATCH + 1, BATCH):
            if done == records:
                return
            yield ids[at:at + BATCH], values[at:at + BATCH], None
            done += 1


def instance_batches(seed: int, records: int) -> Iterator[Batch]:
    """Detection-like: 85 samples a batch, each with 1..5 instances (explicit indexes): ~256 values a record."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < records:
        perm = rng.permutation(SAMPLES).astype(np.int32)
        for at in range(0, SAMPLES - 85 + 1, 85):
            if done == records:
                return
            per = rng.integers(1, 6, 85)
            ids = np.repeat(perm[at:at + 85], per)
            inst = np.arange(len(ids)) - np.repeat(np.cumsum(per) - per, per)
            yield ids, rng.random(len(ids), dtype=np.float32), inst
            done += 1


def build(batches: Iterator[Batch], records: int) -> tuple[SignalStore, np.ndarray, float, int]:
    """The store, the append times (ns), the build's wall seconds and its resident memory growth."""
    gc.collect()
    rss0 = rss_bytes()
    store = SignalStore("train", "loss")
    times = np.empty(records, dtype=np.int64)
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for step, (ids, values, inst) in enumerate(batches):
        a = clock()
        store.append(step, ids, values, inst)
        times[step] = clock() - a
    wall = time.perf_counter() - t0
    gc.collect()
    return store, times, wall, rss_bytes() - rss0


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best, median) milliseconds of `repeats` calls."""
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return min(ms), statistics.median(ms)


def print_appends(label: str, store: SignalStore, times: np.ndarray, wall: float, rss: int) -> None:
    us = times / 1e3
    print(f"\nBuild: {label}: {store.records:,} appends of {BATCH} values = {len(store):,} values "
          f"in {wall:.1f} s (data generation included)")
    head = (f"{'append (one record of 256)':<30} {'mean µs':>8} {'p50 µs':>7} {'p99 µs':>7} {'p99.9 µs':>8} "
            f"{'max µs':>8}")
    print(head)
    print("-" * len(head))
    print(f"{'SignalStore.append':<30} {us.mean():>8.1f} {np.percentile(us, 50):>7.1f} {np.percentile(us, 99):>7.1f} "
          f"{np.percentile(us, 99.9):>8.1f} {us.max():>8.0f}")
    n = len(store)
    print(f"memory: {store.nbytes() / 2**20:,.0f} MiB allocated = {store.nbytes() / n:.2f} bytes/value "
          f"({store.used_nbytes() / n:.2f} holding data); resident growth while building {rss / 2**20:,.0f} MiB "
          f"= {rss / n:.2f} bytes/value")


def print_curves(label: str, store: SignalStore, repeats: int, seed: int, how: str = "mean") -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random(SAMPLES) < 0.10
    last = int(store.slice_curve(None, 1).steps[-1])
    tail = (last - last // 10, last)
    cases = [
        ("10% mask, cap 200", mask, 200, None),
        ("10% mask, uncapped", mask, 0, None),
        ("all samples, cap 200", None, 200, None),
        ("all samples, uncapped", None, 0, None),
        ("10% mask, last 10% of steps", mask, 200, tail),
    ]
    goal = GOAL_MS * len(store) / 100e6
    print(f"\nslice_curve over {len(store):,} values ({label}, fold {how}), {repeats} calls each; "
          f"goal {GOAL_MS:.0f} ms per 100M values, so {goal:,.0f} ms here")
    head = f"{'case':<30} {'points':>7} {'of steps':>9} {'best ms':>8} {'median ms':>10}  goal"
    print(head)
    print("-" * len(head))
    for name, m, cap, step_range in cases:
        curve = store.slice_curve(m, cap, how, step_range)
        best, med = timed(partial(store.slice_curve, m, cap, how, step_range), repeats)
        verdict = "ok" if med <= goal else "MISSED"
        print(f"{name:<30} {len(curve):>7} {curve.total_points:>9,} {best:>8.0f} {med:>10.0f}  {verdict}")


def print_reads(store: SignalStore, repeats: int) -> None:
    ids = list(range(0, SAMPLES, SAMPLES // 10))
    best_t, med_t = timed(lambda: store.trajectory(ids, 200), repeats)
    best_s, med_s = timed(lambda: store.step_samples(store.records // 2, 100), repeats)
    print(f"trajectory of 10 samples (cap 200): best {best_t:.0f} ms, median {med_t:.0f} ms; "
          f"step_samples of one step: best {best_s * 1e3:.0f} µs, median {med_s * 1e3:.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=390_625, help="records of 256 values (default: 100M values)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case")
    parser.add_argument("--quick", action="store_true", help="smoke run: a tenth of the values")
    args = parser.parse_args()
    records = args.records // 10 if args.quick else args.records
    repeats = 2 if args.quick else args.repeats

    store, times, wall, rss = build(epoch_batches(1, records, replace=False), records)
    print_appends("epochs, no repeated id in a batch", store, times, wall, rss)
    print_curves("epochs", store, repeats, seed=2)
    print_reads(store, repeats)
    del store
    gc.collect()

    store, times, wall, rss = build(epoch_batches(3, records, replace=True), records)
    print_appends("ids drawn with replacement", store, times, wall, rss)
    print_curves("with replacement", store, max(1, repeats // 2), seed=4)
    del store
    gc.collect()

    store, times, wall, rss = build(instance_batches(5, records // 10), records // 10)
    print_appends("per-instance, explicit instance indexes, 1-5 a sample", store, times, wall, rss)
    for how in ("mean", "max"):
        print_curves("per-instance", store, max(1, repeats // 2), seed=6, how=how)

if __name__ == "__main__":
    main()
