"""Per-sample history at rest (Parquet): the run's memory, reads from disk, opening, and disk use.

A `Run` (the daemon's own store code, in this process) with one split of --samples sample ids (1M) is fed
records through `apply_record`, as the ring delivers them: each record one step of --batch values of
the signal `loss` (ids drawn as epochs: a permutation of the split cut into batches). The compactor moves
full chunks (4 Mi values) to Parquet in the background. At each size of --values (cumulative):

- **RSS**: the process's resident memory once the compactor has caught up (after a gc), and
  above the process before the run was made (imports, numpy, pyarrow);
- **plot read**: the full-history curve as the Studio asks for it (`GetLatestLoggerData`, request_full_history,
  max_points 1000: `SignalHistory.read`), median of 5: its full chunks (64 Ki points) are at rest in
  `curves/` too, so it reads the row groups of the points it picks there and the rest from memory;
- **slices**: break-by-slices over every value (`slice_curve`, a 10% tag mask, 200 points), best of 2;
- **trajectory** of 10 samples and **step samples** of a step half way (read only the row groups they need);
- **disk**: Parquet bytes a value (LZ4) in `history/`, in the by-sample copy `history-by-sample/` (the
  trajectories' index), and `signals.log` bytes a value on disk (allocated blocks: the log is trimmed after
  each snapshot, background ones as the daemon takes them, store/log_trim.py).

At the end the run is closed (snapshot) and opened again: **open** seconds, and the RSS after it; then the
run folder's disk use a value, in all (Parquet, by-sample copy, curves, snapshot, signals.log). Last, the
plot read of a longer curve than the run's: --curve-points (4 Mi: a billion values in 256-value steps),
all but its last chunk at rest.

    .venv/bin/python bench/history_at_rest.py [--values 100M,300M] [--batch 4096] [--samples 1000000] [--quick]
    .venv/bin/python bench/history_at_rest.py --values 100M,1G      # the billion: ~17 min, ~14 GB of disk
"""

from __future__ import annotations

import argparse
import gc
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from weightslab_shim import records
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType
from weightslabd.store import parquet_curves, parquet_history, snapshot
from weightslabd.store.history import SignalHistory
from weightslabd.store.run import Run, RunOptions

OPTIONS = RunOptions(save_predictions_h5=False, preload_previews=False, trim_signals_log=True)


def on_disk(path: Path) -> int:
    """Bytes a file's allocated blocks take (a trimmed log's hole takes none)."""
    return path.stat().st_blocks * 512 if path.exists() else 0


def rss_mb() -> float:
    """VmRSS after a gc (no malloc_trim here: the compactor's own, after each pass, is what the daemon does)."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def count(text: str) -> int:
    scale = {"K": 10**3, "M": 10**6, "G": 10**9, "KI": 1 << 10, "MI": 1 << 20}
    text = text.strip().upper()
    unit = next((u for u in ("KI", "MI", "K", "M", "G") if text.endswith(u)), "")
    return int(float(text[:-len(unit)]) * scale[unit]) if unit else int(text)


def timed(fn: Callable[[], object], repeats: int, best: bool = False) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return min(times) if best else statistics.median(times)


class Feeder:
    def __init__(self, run: Run, samples: int, batch: int) -> None:
        self.run, self.samples, self.batch = run, samples, batch
        self.rng = np.random.default_rng(0)
        self.order = self.rng.permutation(samples).astype(np.int64)
        self.at = 0
        self.step = 0
        self.values = 0
        self.seconds = 0.0

    def feed(self, upto: int) -> None:
        began = time.perf_counter()
        while self.values < upto:
            if self.at + self.batch > self.samples:
                self.order = self.rng.permutation(self.samples).astype(np.int64)
                self.at = 0
            ids = self.order[self.at:self.at + self.batch]
            self.at += self.batch
            vals = self.rng.random(len(ids), dtype=np.float32)
            payload = records.encode([(f"ids{SEP}train{SEP}loss{SEP}0", ids), (f"sig{SEP}train{SEP}loss{SEP}0", vals)])
            self.step += 1
            self.run.apply_record(RecordType.STEP, self.step, memoryview(payload), self.step)
            self.values += len(ids)
        self.seconds += time.perf_counter() - began


def caught_up(run: Run, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while any(s.hot_full_chunks() for s in run.sample_signals.stores()):
        if time.monotonic() > deadline:
            raise SystemExit("the compactor did not catch up")
        time.sleep(0.05)  # a benchmark's wait on a background thread: polled, with a deadline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--values", default="100M,300M", help="sizes to measure at, cumulative (K, M, G)")
    p.add_argument("--batch", type=int, default=4096, help="values a record (a step's batch)")
    p.add_argument("--samples", type=int, default=1_000_000, help="sample ids of the split")
    p.add_argument("--quick", action="store_true", help="10M values, a smoke run")
    p.add_argument("--dir", type=Path, help="where the run folder goes (default: a temporary one)")
    p.add_argument("--curve-points", default="4Mi", help="points of the long curve whose plot read is timed last")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still removes its temporary folder
    sizes = [10 * 10**6] if args.quick else sorted(count(v) for v in args.values.split(","))
    base = rss_mb()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "run"
        run = Run.create(folder, {"run_id": "bench", "created": 0.0, "splits": {"train": args.samples}}, OPTIONS)
        table = run.samples.get("train")
        assert table is not None
        mask = np.random.default_rng(1).random(args.samples) < 0.1
        feeder = Feeder(run, args.samples, args.batch)
        print(f"history at rest: 1 split of {args.samples:,} samples, records of {args.batch} values, "
              f"process RSS before the run {base:,.0f} MB")
        head = (f"{'values':>14} {'records':>9} {'feed s':>7} {'RSS MB':>7} {'+run MB':>8} {'plot ms':>8} "
                f"{'slices ms':>10} {'traj ms':>8} {'step ms':>8} {'pq B/val':>9} {'idx B/val':>9} {'log B/val':>9}")
        print(head)
        print("-" * len(head))
        rows = []
        for size in sizes:
            feeder.feed(size)
            caught_up(run)
            store = run.sample_signals.get("train", "loss")
            assert store is not None
            rss = rss_mb()
            plot = timed(lambda h=run.history: h.read("loss", 0, 1000), 5)
            slices = timed(lambda s=store: s.slice_curve(mask, 200), 2, best=True)
            traj = timed(lambda s=store: s.trajectory(list(range(0, 10_000, 1000)), 0), 3)
            mid = feeder.step // 2
            step = timed(lambda s=store, m=mid: s.step_samples(m, 100), 3)
            n = len(store)
            at_rest = sum(part.used for part, _ in store.rows() if part is not None)
            pq_bytes = parquet_history.disk_bytes(folder) / max(1, at_rest)
            idx_bytes = parquet_history.disk_bytes(folder, parquet_history.BY_SAMPLE_DIR) / max(1, at_rest)
            log_bytes = on_disk(folder / "signals.log") / n
            rows.append((n, rss, slices))
            print(f"{n:>14,} {store.records:>9,} {feeder.seconds:>7.0f} {rss:>7,.0f} {rss - base:>8,.0f} "
                  f"{plot:>8.1f} {slices:>10.0f} {traj:>8.0f} {step:>8.1f} {pq_bytes:>9.2f} {idx_bytes:>9.2f} "
                  f"{log_bytes:>9.2f}")
        began = time.perf_counter()
        run.close()
        closed = time.perf_counter() - began
        del run, store
        before_open = rss_mb()
        began = time.perf_counter()
        reopened = Run.open(folder, OPTIONS)
        opened = time.perf_counter() - began
        print(f"\nclose (compaction + snapshot) {closed:.2f} s; open {opened:.2f} s "
              f"(from snapshot: {reopened.opened_from_snapshot}, records replayed {reopened.replayed_records}); "
              f"RSS after open {rss_mb():,.0f} MB (+{rss_mb() - before_open:,.0f} MB)")
        reopened.close()
        n = feeder.values
        parts = {"history/": parquet_history.disk_bytes(folder),
                 "history-by-sample/": parquet_history.disk_bytes(folder, parquet_history.BY_SAMPLE_DIR),
                 "curves/": parquet_history.disk_bytes(folder, parquet_curves.DIR),
                 "snapshot/": sum(on_disk(p) for p in (folder / snapshot.DIR).rglob("*") if p.is_file()),
                 "signals.log": on_disk(folder / "signals.log")}
        print(f"\ndisk after close, {n:,} values: " + ", ".join(f"{k} {v / n:.2f} B/val" for k, v in parts.items())
              + f"; in all {sum(parts.values()) / n:.2f} B/val = {sum(parts.values()) / n:.1f} GB per billion values "
              f"(signals.log {(folder / 'signals.log').stat().st_size / n:.2f} B/val untrimmed)")
        if len(rows) >= 2:
            (n0, r0, _), (n1, r1, s1) = rows[-2], rows[-1]
            slope = (r1 - r0) / (n1 - n0) * 1e9
            print(f"\nslope: {slope:,.0f} MB of RSS per billion values; projected at 1e9 values: "
                  f"{r1 + slope * (1e9 - n1) / 1e9:,.0f} MB (goal < 1,000 MB)")
            print(f"slices: {s1 / n1 * 1e9 / 1000:,.1f} s projected at 1e9 values (goal <= 10 s); "
                  f"{s1 / n1 * 1e8:,.0f} ms at 1e8 (goal <= 1,000 ms)")
        print(f"disk: Parquet {parquet_history.COMPRESSION} (values byte-stream-split), "
              f"{parquet_history.ROW_GROUP:,} rows a row group; values uniform in [0, 1)")
        long_curve(Path(tmp), count(args.curve_points))


def long_curve(tmp: Path, points: int) -> None:
    """The plot read of one curve of `points` points, its full chunks at rest (as the compactor leaves them)."""
    history = SignalHistory()
    rng = np.random.default_rng(2)
    values = rng.random(points)
    for i, v in enumerate(values.tolist()):
        history.append("loss", i, v, v - 0.1, v + 0.1, 1_700_000_000_000 + i)
    history.compact(tmp / "curve")
    in_memory = history.length("loss") - history.curves["loss"].base
    first = timed(lambda: history.read("loss", 0, 1000), 1)
    plot = timed(lambda: history.read("loss", 0, 1000), 5)
    per_point = parquet_history.disk_bytes(tmp / "curve", parquet_curves.DIR) / (points - in_memory)
    print(f"\nplot read of a {points:,}-point curve ({points - in_memory:,} at rest in "
          f"{len(history.curves['loss'].cold)} files, {in_memory:,} in memory), 1,000 points: {plot:.1f} ms "
          f"(median of 5; the first read {first:.1f} ms); {per_point:.1f} B a point on disk")


if __name__ == "__main__":
    main()
