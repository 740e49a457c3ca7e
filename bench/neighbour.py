"""What work on the other core does to the training thread's own CPU, with no shim at all.

In `attached.py` the attached training thread's CPU a step is ~0.6 % higher than the detached one's in
later epochs too, where the shim only writes a few small records every 4 or 5 steps and its measured
costs (CPU in its calls, GIL waits, run-queue wait) are ~0. What attached sessions add there is the
daemon's work on the other core (~1.1 ms a 12 ms step). This measures that kind of cost alone: the
bare training step of `overhead.py` on one CPU, and a neighbour process on the other that does, every
--period seconds, --busy seconds of work of one kind (or nothing):

  numpy    elementwise passes over a 1 MB float32 array (memory traffic, as the daemon's ingest has)
  python   a pure-Python loop (a busy core, next to no memory traffic)

Blocks of --steps steps rotate through idle and the kinds (the order reversed every other round, so a
steady drift of the machine cancels); each kind's block is compared with the idle block of its round,
as the log ratio of their median thread CPU a step.

    .venv/bin/python bench/neighbour.py [--rounds N] [--steps N] [--busy S] [--period S] [--quick]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import overhead  # noqa: E402

KINDS = ("numpy", "python")
IDLE = 0


def neighbour(cpus: set[int], kind: Any, stop: Any, busy: float, period: float) -> None:
    """The other core's process: `busy` seconds of work of kind `kind.value` (0: none) every `period`."""
    os.sched_setaffinity(0, cpus)
    import numpy as np

    block = np.random.default_rng(0).standard_normal(256 * 1024).astype(np.float32)  # 1 MB
    due = time.perf_counter()
    while not stop.value:
        due += period
        if kind.value:
            until = time.perf_counter() + busy
            while time.perf_counter() < until:
                if kind.value == 1:
                    out = block * 1.5
                    out += 1.0
                    out.sum()
                else:
                    sum(range(200))
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        else:
            due = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--steps", type=int, default=10, help="timed steps a block")
    parser.add_argument("--busy", type=float, default=0.0011, help="seconds of work a period (the daemon's "
                        "~1.1 ms a step)")
    parser.add_argument("--period", type=float, default=0.012, help="seconds (about one training step)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 rounds")
    args = parser.parse_args()
    rounds = 4 if args.quick else args.rounds
    split = overhead.cpu_split()
    if split is None:
        sys.exit("neighbour.py needs 2 CPUs: the training thread's and the neighbour's")
    overhead.in_worker_environment()  # OMP threads and malloc's thresholds, as overhead.py's workers
    measure(rounds, args.steps, args.busy, args.period, split)


def measure(rounds: int, steps: int, busy: float, period: float, split: overhead.CpuSplit) -> None:
    os.sched_setaffinity(0, split[0])
    dataset, model, optimizer, criterion = overhead.problem()
    inputs, targets = dataset.tensors
    batches = len(inputs) // overhead.BATCH
    count = 0

    def step() -> float:
        nonlocal count
        at = (count % batches) * overhead.BATCH
        count += 1
        started = time.thread_time()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(inputs[at:at + overhead.BATCH]), targets[at:at + overhead.BATCH]).mean().backward()
        optimizer.step()
        return time.thread_time() - started

    ctx = mp.get_context("fork")
    kind, stop = ctx.Value("i", IDLE), ctx.Value("i", 0)
    proc = ctx.Process(target=neighbour, args=(split[1], kind, stop, busy, period), daemon=True)
    proc.start()
    try:
        for _ in range(50):  # warm
            step()
        logs: dict[str, list[float]] = {name: [] for name in KINDS}
        order = [IDLE, *range(1, len(KINDS) + 1)]
        for r in range(rounds):
            median_of: dict[int, float] = {}
            for value in (order if r % 2 == 0 else order[::-1]):
                kind.value = value
                step()  # the neighbour's new kind under way
                median_of[value] = statistics.median(step() for _ in range(steps))
            for i, name in enumerate(KINDS, start=1):
                logs[name].append(math.log(median_of[i] / median_of[IDLE]))
    finally:
        stop.value = 1
        proc.join(5)
    print(f"The training step of overhead.py on CPU {min(split[0])}, a neighbour process on CPU "
          f"{min(split[1])} busy {busy * 1e3:.1f} ms every {period * 1e3:.0f} ms; {rounds} rounds of "
          f"{steps}-step blocks\n")
    print("neighbour busy / idle, training thread CPU a step: mean ratio [95 % interval]")
    for name in KINDS:
        values = logs[name]
        mean = statistics.mean(values)
        half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        print(f"  {name:8s} {math.exp(mean):.4f} [{math.exp(mean - half):.4f}, {math.exp(mean + half):.4f}]")


if __name__ == "__main__":
    main()
