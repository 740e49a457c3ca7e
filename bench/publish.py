"""The publish path: what one step costs the trainer, and how fast bulk bytes go through the ring.

1. One step record through the real `Session` code path (begin_step, add_scalar x2, add_signal,
   add_batch, end_step) with a private weightslabd attached and draining. Calls run back to back in
   bursts of half a ring, then the benchmark waits for the daemon to catch up (untimed): a tight loop
   outruns any reader, and a dropped record is cheaper than a committed one. Rows "back to back" call
   publish with nothing between (the shim's publisher thread then competes with the caller for the
   GIL); the "0.5 ms apart" row sleeps between calls, as a step's compute would, during which torch
   releases the GIL and the publisher thread works (caches are colder then, too). Each call is timed
   with perf_counter_ns; percentiles are over every call (the trainer pays the hand-over whether the
   publisher thread later commits or drops the record), and drops are counted after each burst, once
   the publisher thread has drained. Steady state:
   timing starts after one full pass through the ring, so its shared-memory pages are mapped.
2. A 16 MiB record through `RingWriter.write` (reserve, copy with the checksum summed chunk by chunk, commit)
   while another process drains it, against a plain 16 MiB copy between two preallocated numpy
   buffers, interleaved in the same run.

    .venv/bin/python bench/publish.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weightslab_shim.ring import RecordType, RingReader, RingWriter, list_rings, unlink
from weightslab_shim.runtime import ring_prefix
from weightslab_shim.session import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.daemon import running_daemon, scratch_dir  # noqa: E402

GOAL_P50_US = 20.0
GOAL_P99_US = 100.0
GOAL_MEMCPY_FRACTION = 0.70
BLOCKED_US = 1000.0  # a publish this slow counts as having blocked the trainer
BULK_BYTES = 16 << 20
BULK_RING_BYTES = 64 << 20
ATTACH_TIMEOUT = 10.0
DRAIN_TIMEOUT = 30.0
PACE = 0.0005  # seconds between publishes: a 2000 steps/s training loop, faster than any real one


@dataclass
class PublishResult:
    label: str
    record_bytes: int
    timed: list[int]  # ns per committed publish
    dropped: int
    drained_per_s: float  # records per second the daemon took in, bursts and catch-up together

    def pct(self, q: float) -> float:
        return float(np.percentile(self.timed, q)) / 1000 if self.timed else float("nan")


def attached_session(runtime: Path) -> Session:
    session = Session({"WEIGHTSLAB_RUNTIME_DIR": str(runtime), "WEIGHTSLAB_RUN_NAME": "bench-publish"})
    session.register_split("train", 1 << 16)
    session.start()
    channel = session.channel
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while channel is None or not channel.attached.is_set():
        if channel is None or time.monotonic() > deadline:
            raise RuntimeError("the shim did not attach to the benchmark's weightslabd")
        time.sleep(0.01)
    return session


def step_arrays(n: int, as_torch: bool) -> tuple[Any, Any, Any, Any]:
    """ids, per-sample values, targets, predictions of one batch of n samples."""
    rng = np.random.default_rng(0)
    arrays = (np.arange(n, dtype=np.int64), rng.random(n, dtype=np.float32),
              rng.integers(0, 10, n), rng.integers(0, 10, n))
    if not as_torch:
        return arrays
    import torch

    return tuple(torch.from_numpy(a) for a in arrays)  # type: ignore[return-value]


def measure_publish(session: Session, label: str, n: int, as_torch: bool, iterations: int,
                    pace: float = 0.0) -> PublishResult:
    ids, values, targets, preds = step_arrays(n, as_torch)
    ring = session.ring
    assert ring is not None

    def publish() -> None:
        session.begin_step()
        session.add_scalar("lr", 0.01)
        session.add_scalar("grad-norm", 1.5)
        # What a wrapped criterion does: the loss per sample, with the batch's targets and predictions.
        session.add_signal("train-loss", "train", ids, values, targets, preds)
        session.end_step(training=True)

    def burst(count: int, into: list[int]) -> int:
        """`count` publishes back to back, then a wait for the daemon; returns how many were dropped.
        The publisher thread drops a record after the call has returned (its queue or the ring full), so
        drops are counted once it has handed over or dropped every record of the burst."""
        before = dropped()
        for _ in range(count):
            t0 = time.perf_counter_ns()
            publish()
            into.append(time.perf_counter_ns() - t0)
            if pace:
                time.sleep(pace)  # the step's compute: torch releases the GIL there, as this does
        caught_up()
        return dropped() - before

    def dropped() -> int:
        return int(session.dropped)

    def caught_up() -> None:
        session.flush(DRAIN_TIMEOUT)  # the publisher thread has written everything into the ring
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while probe.read_position < probe.write_position:
            if time.monotonic() > deadline:
                raise RuntimeError("weightslabd stopped draining the ring")
            time.sleep(0.0005)

    probe = RingReader(ring.name)  # only looks at the positions; the daemon is the reader
    try:
        caught_up()
        start = probe.write_position
        publish()
        session.flush(DRAIN_TIMEOUT)
        record_bytes = probe.write_position - start
        if record_bytes <= 0:
            raise RuntimeError("the first record was dropped from an empty ring")
        # Half a ring per burst, then wait for the daemon: back-to-back calls while it drains, and
        # no drops from a reader that a tight loop outruns (its sustained rate is reported instead).
        # At most 200: the publisher thread queues up to 256 records before it drops.
        per_burst = max(1, min(200, ring.capacity // (2 * record_bytes)))
        while probe.write_position - start < ring.capacity:  # one pass: every ring page mapped
            burst(per_burst, [])
        timed: list[int] = []
        drops = 0
        t0 = time.perf_counter()
        while len(timed) < iterations:
            drops += burst(min(per_burst, iterations - len(timed)), timed)
        rate = len(timed) / (time.perf_counter() - t0)
    finally:
        probe.close()
    return PublishResult(label, record_bytes, timed, drops, rate)


# -- 16 MiB through the ring vs memcpy -------------------------------------------------------------------


@dataclass
class BulkResult:
    memcpy_ns: float
    ring_ns: float
    writes: int
    dropped: int

    @property
    def fraction(self) -> float:
        return self.memcpy_ns / self.ring_ns


def drain(name: str) -> None:
    """The reader process: accept (checksum-verify) every record until the writer has closed."""
    reader = RingReader(name)
    print("ready", flush=True)
    while True:
        count = 0
        for _ in reader.records():
            reader.advance()
            count += 1
        if count == 0:
            if reader.writer_closed and reader.pending() == 0:
                break
            time.sleep(0.0002)
    reader.close()


def measure_bulk(repeats: int) -> BulkResult:
    src = np.random.default_rng(0).integers(0, 256, BULK_BYTES, dtype=np.uint8)
    dst = np.empty_like(src)
    src_view, dst_view = src.data, dst.data
    copies: list[Callable[[], None]] = [lambda: np.copyto(dst, src),
                                        lambda: dst_view.__setitem__(slice(None), src_view)]
    writer = RingWriter(f"wl.bench.{os.getpid()}.", BULK_RING_BYTES, "bench-publish-bulk")
    reader = subprocess.Popen([sys.executable, __file__, "--drain", writer.name], stdout=subprocess.PIPE, text=True)
    memcpy: list[list[int]] = [[], []]
    total: list[int] = []
    drops = 0
    try:
        if reader.stdout is None or reader.stdout.readline().strip() != "ready":
            raise RuntimeError("the ring reader process did not start")
        warmup = 2 * BULK_RING_BYTES // BULK_BYTES  # two passes: every ring page mapped
        i = 0
        while len(total) < repeats:
            for k, copy in enumerate(copies):
                t0 = time.perf_counter_ns()
                copy()
                memcpy[k].append(time.perf_counter_ns() - t0)
            t0 = time.perf_counter_ns()
            if not writer.write(RecordType.STEP, i, src_view):
                drops += 1
                time.sleep(0.002)  # the reader is behind: let it catch up, and time the next one
                continue
            t1 = time.perf_counter_ns()
            i += 1
            if i > warmup:
                total.append(t1 - t0)
        writer.mark_closed()
        reader.wait(timeout=30)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        writer.close(unlink_segment=True)
    best_memcpy = min(statistics.median(m[warmup:]) for m in memcpy)
    return BulkResult(best_memcpy, statistics.median(total), len(total), drops)


# -- the table ---------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_publish(results: list[PublishResult]) -> None:
    print("\nPublish path: one step record via Session (begin_step, 2 scalars, add_signal with "
          f"targets+preds, end_step); weightslabd attached and draining; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    head = (f"{'record':<34} {'bytes':>7} {'calls':>6} {'p50 µs':>7} {'p99 µs':>7} {'max µs':>8} "
            f"{'>1ms':>5} {'dropped':>7} {'drained/s':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        slow = sum(t > BLOCKED_US * 1000 for t in r.timed)
        print(f"{r.label:<34} {r.record_bytes:>7} {len(r.timed):>6} {r.pct(50):>7.1f} {r.pct(99):>7.1f} "
              f"{max(r.timed, default=0) / 1000:>8.0f} {slow:>5} {r.dropped:>7} {r.drained_per_s:>9.0f}")
    for goal in (r for r in results if r.label.startswith("256 floats, torch")):
        print(f"goal for {goal.label}: p50 <= {GOAL_P50_US:.0f} µs: {verdict(goal.pct(50) <= GOAL_P50_US)}"
              f" ({goal.pct(50):.1f}); p99 <= {GOAL_P99_US:.0f} µs: {verdict(goal.pct(99) <= GOAL_P99_US)}"
              f" ({goal.pct(99):.1f})")
    print("(calls in bursts of half a ring, the daemon draining meanwhile; >1ms: calls that held the trainer "
          "over a millisecond; drained/s: records per second the daemon sustained, catch-up included)")


def print_bulk(b: BulkResult) -> None:
    def gbps(ns: float) -> float:
        return BULK_BYTES / ns  # bytes per ns == GB/s

    print(f"\nBulk: one 16 MiB record through a 64 MiB ring (RingWriter.write: copy, word sum of each chunk "
          "while in cache, commit), reader process draining and verifying; "
          f"median of {b.writes} writes")
    print(f"  plain memcpy (numpy, preallocated)  {b.memcpy_ns / 1e3:8.0f} µs  {gbps(b.memcpy_ns):5.2f} GB/s")
    print(f"  ring write                          {b.ring_ns / 1e3:8.0f} µs  {gbps(b.ring_ns):5.2f} GB/s"
          f"  = {b.fraction:.0%} of memcpy (goal >= {GOAL_MEMCPY_FRACTION:.0%}: "
          f"{verdict(b.fraction >= GOAL_MEMCPY_FRACTION)})")
    print(f"  dropped (ring full, reader behind)  {b.dropped:8d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20000, help="timed publishes of the 256-float record")
    parser.add_argument("--quick", action="store_true", help="smoke run: about a tenth of the work")
    parser.add_argument("--drain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain:
        drain(args.drain)
        return
    iterations = 2000 if args.quick else args.iterations
    with scratch_dir("wl-bench-publish-") as root:
        with running_daemon(root) as runtime:
            session = attached_session(runtime)
            results = [
                # numpy first: the first rows of a run pay for warming the daemon's ingest path.
                measure_publish(session, "256 floats, numpy, back to back", 256, False, iterations),
                measure_publish(session, "256 floats, torch, back to back", 256, True, iterations),
                measure_publish(session, "256 floats, torch, 0.5 ms apart", 256, True, iterations // 2, PACE),
                measure_publish(session, "4096 floats, torch, back to back", 4096, True, max(iterations // 8, 100)),
            ]
            session.close()
        leftover = list_rings(ring_prefix(runtime))
        for name in leftover:
            unlink(name)
    print_publish(results)
    print(f"shared-memory rings left in /dev/shm after the session closed: {len(leftover)}")
    print_bulk(measure_bulk(10 if args.quick else 40))


if __name__ == "__main__":
    main()
