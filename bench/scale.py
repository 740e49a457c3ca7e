"""The Studio's data plane at scale, over real gRPC: 1,000,000 samples and 100 million per-sample values.

One run is built in this process the way the daemon holds it (its sample table, tag masks, signal
history and per-sample signal store filled directly, previews written through `Run.apply_record`),
served by the real `ExperimentServicer` on a loopback grpcio server, and read by a client over TCP:

1. a page of 128 thumbnails from a warm cache (GetDataSamples, include_raw_data) - goal <= 30 ms;
2. a sort, and a filter, of the 1M rows (ApplyDataQuery) - goal <= 300 ms;
3. a full-history plot read reduced to 1,000 points per curve (GetLatestLoggerData) - goal <= 100 ms;
4. a break-by-slices curve over the 100M values (GetLatestLoggerData, break_by_slices) - goal <= 1 s;
5. the daemon's memory per million samples (sample table) and per million stored signal values.

Ingest is not timed here (see bench/publish.py and bench/overhead.py): the store is filled in bulk.

    .venv/bin/python bench/scale.py [--samples N] [--values N] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported: it reads this once

import grpc  # noqa: E402
import numpy as np

from weightslab_shim import records
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType
from weightslabd.api.servicer import ExperimentServicer
from weightslabd.ipc.control import ControlServer
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.store.run import Run, RunOptions
from weightslabd.store.runs import RunRegistry

BATCH = 256
CURVE_STEPS = 100_000
GOALS_MS = {"page of 128 thumbnails, warm": 30, "sort all rows": 300, "filter all rows": 300,
            "filter + sort all rows": 300, "full-history plot, 1,000 points/curve": 100,
            "break-by-slices curve": 1000}


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median, max) in ms over `repeats` calls, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


def build(folder: Path, samples: int, values: int, image_side: int) -> tuple[Run, dict[str, float]]:
    rng = np.random.default_rng(0)
    memory: dict[str, float] = {}
    run = Run.create(folder, {"run_id": "scale", "run_name": "scale", "created": time.time()},
                     RunOptions(preload_previews=False))
    gc.collect()
    before = rss()
    with run.lock:
        table = run.samples.ensure_split("train", samples)
        table.label[:] = rng.integers(0, 10, samples)
        table.prediction[:] = rng.integers(0, 10, samples)
        table.encounters[:] = rng.integers(0, 100, samples)
        table.last_step[:] = rng.integers(0, values // BATCH, samples)
        for name in ("loss", "accuracy"):
            table.signals[name] = rng.random(samples, dtype=np.float32)
            table.signals[name][rng.random(samples) < 0.01] = np.nan  # never seen
        table.edit_tags(np.flatnonzero(rng.random(samples) < 0.1), ["hard"], "add")
        table.edit_tags(np.flatnonzero(rng.random(samples) < 0.02), ["mislabeled"], "add")
        table.set_denied(np.flatnonzero(rng.random(samples) < 0.01), True)
    gc.collect()
    memory["table"] = (rss() - before) / samples * 1_000_000

    # Previews of the first pages go through the daemon's own path: stored, indexed, then encoded.
    for start in range(0, 512, 64):
        ids = np.arange(start, start + 64, dtype=np.int64)
        x = rng.random((64, 3, image_side, image_side), dtype=np.float32)
        payload = records.encode([(f"pids{SEP}train{SEP}0", ids), (f"x{SEP}train{SEP}0", x)])
        run.apply_record(RecordType.PREVIEW, 0, memoryview(payload), start)

    for name in ("loss", "accuracy", "lr"):
        steps = np.arange(CURVE_STEPS)
        for step, value in zip(steps.tolist(), rng.random(CURVE_STEPS).tolist(), strict=True):
            run.history.append(name, step, value, value - 0.1, value + 0.1, step)

    gc.collect()
    before = rss()
    store = run.sample_signals.store("train", "loss")
    order = rng.permutation(samples).astype(np.int32)
    chunk = rng.random(samples, dtype=np.float32)
    for record in range(values // BATCH):
        at = (record * BATCH) % (samples - BATCH)
        store.append(record, order[at:at + BATCH], chunk[at:at + BATCH])
    run._signal_home["loss"] = "train"  # as the first live record of "loss" would have set it
    gc.collect()
    memory["values"] = (rss() - before) / max(1, values) * 1_000_000
    return run, memory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--values", type=int, default=100_000_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--image-side", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="smoke run: 100,000 samples, 10M values, 3 repeats")
    args = p.parse_args()
    if args.quick:
        args.samples, args.values, args.repeats = 100_000, 10_000_000, 3

    with tempfile.TemporaryDirectory(prefix="wl-scale-") as tmp:
        t0 = time.perf_counter()
        run, memory = build(Path(tmp) / "run", args.samples, args.values, args.image_side)
        built_s = time.perf_counter() - t0
        registry = RunRegistry(None, Path(tmp))
        registry.runs[run.run_id] = run
        registry.make_current(run.run_id)
        control = ControlServer(Path(tmp), registry, hp_sync=True, heartbeat_timeout=10)
        servicer = ExperimentServicer(registry, control, lock_timeout=60)
        server = grpc.server(ThreadPoolExecutor(max_workers=4),
                             options=[("grpc.max_send_message_length", 256 << 20)])
        pb_grpc.add_ExperimentServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 256 << 20)])
        stub = pb_grpc.ExperimentServiceStub(channel)
        try:
            results = measure(stub, args.repeats, args.samples)
        finally:
            server.stop(None)
            run.close()

    print(f"\n## Data plane at scale: {args.samples:,} samples, {args.values:,} per-sample values "
          f"({args.image_side}x{args.image_side} RGB previews; built in {built_s:.1f} s)\n")
    print("| operation (over gRPC, loopback) | median ms | max ms | goal ms | ratio to goal |")
    print("|---|---:|---:|---:|---:|")
    for name, (median, worst) in results.items():
        goal = GOALS_MS.get(name)
        ratio = f"{median / goal:.2f}x" if goal else ""
        print(f"| {name} | {median:.1f} | {worst:.1f} | {goal or ''} | {ratio} |")
    print("\n| memory | MiB |")
    print("|---|---:|")
    print(f"| sample table, per 1M samples (2 signals, label, prediction, encounters, 2 tags, discards) "
          f"| {memory['table'] / 2**20:.1f} |")
    print(f"| per-sample signal store, per 1M values | {memory['values'] / 2**20:.2f} |")


def measure(stub: Any, repeats: int, samples: int) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}

    def page() -> None:
        reply = stub.GetDataSamples(pb.DataSamplesRequest(start_index=0, records_cnt=128, include_raw_data=True,
                                                          resize_width=128, resize_height=128), timeout=30)
        assert sum(any(s.name == "raw_data" for s in r.data_stats) for r in reply.data_records) == 128

    out["page of 128 thumbnails, warm"] = timed(page, repeats)

    def stats_page() -> None:
        stub.GetDataSamples(pb.DataSamplesRequest(start_index=5000, records_cnt=128), timeout=30)

    out["page of 128, stats only"] = timed(stats_page, repeats)

    def query(text: str) -> Callable[[], None]:
        def call() -> None:
            reply = stub.ApplyDataQuery(pb.DataQueryRequest(query=text), timeout=30)
            assert reply.success, reply.message
        return call

    out["sort all rows"] = timed(query("sortby loss desc"), repeats)
    out["filter all rows"] = timed(query("loss > 0.5 and label == 3"), repeats)
    out["filter + sort all rows"] = timed(query("has_tag hard and deny_listed == 0 sortby loss desc, label asc"),
                                         repeats)
    out["count (query \"\")"] = timed(query(""), repeats)
    stub.ApplyDataQuery(pb.DataQueryRequest(query="reset"), timeout=30)

    def plot() -> None:
        reply = stub.GetLatestLoggerData(pb.GetLatestLoggerDataRequest(request_full_history=True, max_points=1000),
                                         timeout=30)
        assert len(reply.points) <= 3 * 1000

    out["full-history plot, 1,000 points/curve"] = timed(plot, repeats)

    def slices() -> None:
        reply = stub.GetLatestLoggerData(pb.GetLatestLoggerDataRequest(
            request_full_history=True, break_by_slices=True, tags=["hard"], metric_names=["loss"]), timeout=60)
        assert reply.points

    out["break-by-slices curve"] = timed(slices, max(3, repeats // 2))

    def histogram() -> None:
        reply = stub.GetHistogram(pb.HistogramRequest(column="loss", max_bins=512), timeout=30)
        assert reply.success

    out["histogram of all rows, 512 bins"] = timed(histogram, repeats)
    return out


if __name__ == "__main__":
    main()
