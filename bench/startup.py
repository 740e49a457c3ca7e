"""Start-up: how long opening a run takes, replaying all of signals.log and from a snapshot.

1. Build a run folder the way the daemon does: `Run.create`, then `Run.apply_record` of encoded records as
   the ring delivers them: --records STEP records of split `train` (1,000,000 samples), each with 256 sample
   ids and losses, targets and predictions, a scalar `lr`, and the run's hyperparameters in the first one;
   an EVAL record of split `val` every 1,000 steps; PREVIEW records (64 inputs of 3x32x32 each) over the
   first steps. Predictions go to predictions.h5, as with the daemon's defaults.
2. Snapshots: one written by `Run.write_snapshot` (a full one) --tail records before the end, then the tail,
   then `Run.close`, which writes the snapshot the next start opens from (incremental: unchanged chunk files
   are hard links to the previous snapshot's).
3. Open (`Run.open`), each from a cold start of the Run but with the files in the page cache: from the
   close's snapshot (nothing to replay), from the older snapshot (the tail to replay), and without a
   snapshot (every record replayed, as before snapshots). The three opened states are compared.

    .venv/bin/python bench/startup.py [--records N] [--tail N] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import structlog

from weightslab_shim import records
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType
from weightslabd.store import snapshot
from weightslabd.store.run import Run, RunOptions

BATCH = 256
SAMPLES = 1_000_000
VAL_SAMPLES = 10_000
EVAL_EVERY = 1000
PREVIEWS = 64


class Builder:
    """Encoded records, fed to a run through apply_record with increasing ring positions."""

    def __init__(self, run: Run, seed: int = 0) -> None:
        self.run = run
        self.rng = np.random.default_rng(seed)
        self.position = 0
        self.perm = np.empty(0, dtype=np.int64)

    def _feed(self, rtype: int, step: int, fields: list[tuple[str, np.ndarray]]) -> None:
        self.position += 1
        self.run.apply_record(rtype, step, memoryview(records.encode(fields)), self.position)

    def _batch(self) -> np.ndarray:
        if len(self.perm) < BATCH:  # epochs: a fresh permutation of the sample ids
            self.perm = self.rng.permutation(SAMPLES).astype(np.int64)
        ids, self.perm = self.perm[:BATCH], self.perm[BATCH:]
        return ids

    def step(self, step: int) -> None:
        ids = self._batch()
        fields = [(f"ids{SEP}train{SEP}loss{SEP}0", ids),
                  (f"sig{SEP}train{SEP}loss{SEP}0", self.rng.random(BATCH, dtype=np.float32)),
                  (f"tgt{SEP}train{SEP}0", ids % 10), (f"pred{SEP}train{SEP}0", self.rng.integers(0, 10, BATCH)),
                  (f"scalar{SEP}lr{SEP}4", np.array([0.1], dtype=np.float64))]
        if step == 0:
            fields.append(("hp", records.json_field({"learning_rate": 0.1, "batch_size": BATCH})))
        self._feed(RecordType.STEP, step, fields)
        if step < SAMPLES // PREVIEWS and step * PREVIEWS < 4096:  # inputs of the first 4096 samples drawn
            x = self.rng.random((PREVIEWS, 3, 32, 32), dtype=np.float32)
            self._feed(RecordType.PREVIEW, step, [(f"pids{SEP}train{SEP}0", ids[:PREVIEWS]), (f"x{SEP}train{SEP}0", x)])
        if step % EVAL_EVERY == EVAL_EVERY - 1:
            vids = np.arange(BATCH, dtype=np.int64) + (step // EVAL_EVERY * BATCH) % VAL_SAMPLES
            self._feed(RecordType.EVAL, step + 1, [(f"ids{SEP}val{SEP}loss{SEP}0", vids),
                                                   (f"sig{SEP}val{SEP}loss{SEP}0",
                                                    self.rng.random(BATCH, dtype=np.float32))])


def timed_open(folder: Path, options: RunOptions) -> tuple[Run, float]:
    gc.collect()
    t0 = time.perf_counter()
    run = Run.open(folder, options)
    return run, time.perf_counter() - t0


def fingerprint(run: Run) -> tuple[object, ...]:
    """Enough of a run's state to tell two opens apart (the unit tests compare all of it)."""
    train = run.samples.splits["train"]
    store = run.sample_signals.get("train", "loss")
    curve = store.slice_curve(None, 0) if store is not None else None
    return (run.step, run.last_position, len(run.sample_signals), run.history.latest(),
            {n: run.history.length(n) for n in run.history.names()}, float(np.nansum(train.signals["loss"])),
            int(train.encounters.sum()), float(np.nansum(train.label)), int(run.preview_store.masks()["train"].sum()),
            None if curve is None else float(curve.means.sum()), sorted(run.hparams.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=100_000, help="STEP records of 256 values (390,625: 100M values)")
    p.add_argument("--tail", type=int, default=snapshot.EVERY_RECORDS,
                   help="records after the older snapshot (default: the background snapshot interval)")
    p.add_argument("--dir", help="where to build the run folder (default: a temporary directory)")
    p.add_argument("--quick", action="store_true", help="smoke run: 5,000 records, a tail of 500")
    args = p.parse_args()
    if args.quick:
        args.records, args.tail = 5_000, 500
    args.tail = min(args.tail, args.records // 2)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # the table only
    base = Path(tempfile.mkdtemp(prefix="wl-startup-", dir=args.dir))
    folder, aside = base / "run", base / "older-snapshot"
    # No background snapshots while building: the two written below are the ones measured.
    options = RunOptions(snapshot_every_records=0)
    try:
        run = Run.create(folder, {"run_id": "startup", "created": time.time(),
                                  "splits": {"train": SAMPLES, "val": VAL_SAMPLES}}, options)
        feed = Builder(run)
        t0 = time.perf_counter()
        for step in range(args.records - args.tail):
            feed.step(step)
        full = run.write_snapshot()
        assert full is not None
        t_full = full.seconds
        full_bytes = snapshot.disk_bytes(folder / snapshot.DIR)
        shutil.copytree(folder / snapshot.DIR, aside)
        for step in range(args.records - args.tail, args.records):
            feed.step(step)
        build = time.perf_counter() - t0 - t_full
        applied = feed.position
        values = len(run.sample_signals)
        t_close = time.perf_counter()
        run.close()
        t_close = time.perf_counter() - t_close
        last = run._snapshot
        assert last is not None
        del run, feed
        log_bytes = (folder / "signals.log").stat().st_size + (folder / "previews.log").stat().st_size
        close_bytes = snapshot.disk_bytes(folder / snapshot.DIR)

        opened, t_snap = timed_open(folder, options)
        want = fingerprint(opened)
        opened.close()
        del opened
        shutil.rmtree(folder / snapshot.DIR)
        shutil.copytree(aside, folder / snapshot.DIR)
        opened, t_tail = timed_open(folder, options)
        same_tail = fingerprint(opened) == want
        opened.close()
        del opened
        opened, t_replay = timed_open(folder, RunOptions(snapshots=False))
        same_full = fingerprint(opened) == want
        opened.close()
        del opened
    finally:
        shutil.rmtree(base, ignore_errors=True)

    mib = 2**20
    print(f"\n## Start-up: {args.records:,} STEP records of {BATCH} values ({values:,} per-sample values), "
          f"{applied:,} records in all with previews and evaluations; logs {log_bytes / mib:,.0f} MiB")
    print(f"built through Run.apply_record in {build:.1f} s ({build / applied * 1e6:.0f} µs a record, "
          "encoding included)\n")
    print("| open (Run.open, files in the page cache) | records replayed | seconds | µs a record | vs full replay |")
    print("|---|---:|---:|---:|---:|")
    print(f"| full replay, no snapshot | {applied:,} | {t_replay:.2f} | {t_replay / applied * 1e6:.0f} | 1.0× |")
    tail_records = applied - int(full.meta["state"]["last_position"])
    print(f"| snapshot + tail of {args.tail:,} steps | {tail_records:,} | {t_tail:.2f} | | "
          f"{t_replay / t_tail:.0f}× faster |")
    print(f"| snapshot written at close | 0 | {t_snap:.2f} | | {t_replay / t_snap:.0f}× faster |")
    print("\n| snapshot write | seconds | MiB written | MiB hard-linked | MiB on disk |")
    print("|---|---:|---:|---:|---:|")
    print(f"| full, {args.records - args.tail:,} steps in | {t_full:.2f} | {full.bytes_written / mib:,.0f} | "
          f"{full.bytes_linked / mib:,.0f} | {full_bytes / mib:,.0f} |")
    print(f"| at close, {args.tail:,} steps later (Run.close in all: {t_close:.2f} s) | {last.seconds:.2f} | "
          f"{last.bytes_written / mib:,.0f} | {last.bytes_linked / mib:,.0f} | {close_bytes / mib:,.0f} |")
    print(f"\nsame state as the full replay: from the close's snapshot (reference), from the older snapshot + "
          f"tail: {same_tail}, full replay: {same_full}")
    if not (same_tail and same_full):
        raise SystemExit("the opened states differ")


if __name__ == "__main__":
    main()
