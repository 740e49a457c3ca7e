"""What a preview costs, per batch of 64 new samples: on the training thread, on the publisher's thread,
and in bytes per sample in the ring, for the inputs as they were sent before (`hold(_take(...))`: the
full input, copied on the training thread, in its own dtype) and as they are sent now
(`previews.reduce`: picked, thinned to at most 256 px a side and 8-bit, all of it off the training
thread for a CPU batch). Both paths run in the same process, interleaved.

Then what the training thread pays to offer a batch (`PreviewOffers`): picked on the training thread as
before (the lookup of the samples the daemon lacks, their image paths and whether the daemon can read
them, the fields of the record) against kept for the publisher's thread as now, for a batch whose
samples have no file and for one whose samples are image files the daemon reads.

Then what the daemon pays (`--daemon-only` runs only this): the daemon's own run store
(`Run.apply_record`, as its ingest thread calls it; default settings, so preload on with 2,000
cached thumbnails, and again with WL_PRELOAD_IMAGE_OVERVIEW off) is fed the records a first epoch
sends, 64 new samples a step, paced so that the daemon keeps up: one preview record (8-bit inputs as
the shim sends them, synthetic 1/f-noise images with a photo's spectrum) and one step record (ids, a
per-sample loss, targets, predictions). Reported: CPU on the ingest thread per preview, CPU of all
the daemon's threads per preview until every background thread is idle again (encoding and
preloading included), CPU per step record, and the bytes at rest per sample (the previews' files
over the samples). The same script runs the code of another checkout, for a before/after:

    .venv/bin/python bench/previews.py [--repeats N] [--quick] [--daemon-only] [--steps N]
    PYTHONPATH=/tmp/prev/daemon:/tmp/prev/client_shim .venv/bin/python bench/previews.py --daemon-only
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from weightslab_shim import records
from weightslab_shim.preview_offers import Fields, PreviewOffers
from weightslab_shim.previews import reduce
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType
from weightslab_shim.tensors import hold
from weightslab_shim.tensors import take as _take
from weightslabd.store.run import Run, RunOptions

SHAPES = {"MNIST 1x28x28": (1, 28, 28), "CIFAR 3x32x32": (3, 32, 32), "ImageNet 3x224x224": (3, 224, 224),
          "large 3x512x512": (3, 512, 512)}
BATCH = 64


def before(batch: Any, picked: np.ndarray) -> Any:
    return hold(_take(batch, picked))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter_ns()
    out = fn()
    return (time.perf_counter_ns() - t0) / 1000, out


def measure(shape: tuple[int, ...], repeats: int) -> dict[str, tuple[float, float, int]]:
    batch = torch.rand(BATCH, *shape)
    picked = np.arange(BATCH)
    out: dict[str, tuple[list[float], list[float], int]] = {"before": ([], [], 0), "after": ([], [], 0)}
    for _ in range(repeats):
        for name, path in (("before", before), ("after", reduce)):
            train_us, held = timed(lambda path=path: path(batch, picked))  # type: ignore[misc]
            publish_us, array = timed(held.array)
            train, publish, _ = out[name]
            train.append(train_us)
            publish.append(publish_us)
            out[name] = (train, publish, array.nbytes // BATCH)
    return {k: (statistics.median(t), statistics.median(p), b) for k, (t, p, b) in out.items()}


def offer_costs(repeats: int, folder: Path) -> dict[str, tuple[float, float]]:
    """Training-thread µs (thread CPU, median) to offer one CIFAR-sized batch of 64 new samples: picked
    there (before) and kept for the publisher (now); without files, and with each sample's image file."""
    batch, ids, targets = torch.rand(BATCH, 3, 32, 32), torch.arange(BATCH), torch.zeros(BATCH, dtype=torch.long)
    files = []
    for i in range(BATCH):
        files.append(folder / f"{i}.png")
        files[-1].write_bytes(b"")  # only its existence and mode matter here
    out = {}
    for label, path_of in (("no files", None), ("image files", lambda i: str(files[i]))):
        times: dict[str, list[float]] = {"before": [], "now": []}
        for _ in range(repeats):
            for name in times:
                offers = PreviewOffers()
                offers.budget, offers.reads_files = 8 << 20, True
                offers.register("train", BATCH)
                fields: Fields = []
                t0 = time.thread_time_ns()
                if name == "before":
                    offers.pick(fields, ("train", ids, batch, targets, path_of))
                else:
                    offers.offer("train", ids, batch, targets, path_of)
                times[name].append((time.thread_time_ns() - t0) / 1000)
        out[label] = (statistics.median(times["before"]), statistics.median(times["now"]))
    return out


def natural(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """uint8 CHW noise with equal energy per octave, like a photo's spectrum (as bench/thumbnails.py)."""
    channels, side = shape[0], shape[1]
    rng = np.random.default_rng(seed)
    acc = np.zeros((side, side, channels), np.float32)
    octave = 1
    while 2 ** octave <= side:
        small = rng.standard_normal((2 ** octave, 2 ** octave, channels)).astype(np.float32)
        acc += np.stack([np.asarray(Image.fromarray(small[:, :, c]).resize((side, side), Image.Resampling.BICUBIC))
                         for c in range(channels)], axis=-1) / octave
        octave += 1
    acc = (acc - acc.min()) / max(float(acc.max() - acc.min()), 1e-9) * 255
    return np.moveaxis(acc.astype(np.uint8), -1, 0)


def idle(run: Run) -> bool:
    """Every background thread of the run's previews is done (this checkout's, or an older one's)."""
    store = getattr(run, "preview_store", None)
    if store is not None and not store.wait_idle(0.05):
        return False
    cache = run.preview_cache.stats()
    return cache["queued"] == 0 and cache["preloading"] == 0


def daemon_costs(shape: tuple[int, ...], steps: int, preload: bool = True) -> dict[str, float]:
    """Feed `steps` first-epoch steps (a preview record and a step record of BATCH new samples each)."""
    distinct = [natural(shape, seed) for seed in range(16)]  # encoded sizes of these: like photos
    size = steps * BATCH
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        run = Run.create(folder, {"run_id": "bench", "created": 0.0, "splits": {"train": size}},
                         RunOptions(preload_previews=preload))
        previews, steprecs = [], []
        rng = np.random.default_rng(0)
        for step in range(steps):
            ids = np.arange(step * BATCH, (step + 1) * BATCH, dtype=np.int64)
            x = np.stack([distinct[int(i) % len(distinct)] for i in ids])
            previews.append(records.encode([(f"pids{SEP}train{SEP}0", ids), (f"x{SEP}train{SEP}0", x)]))
            losses = rng.random(BATCH, np.float32)
            steprecs.append(records.encode([
                (f"ids{SEP}train{SEP}loss{SEP}0", ids), (f"sig{SEP}train{SEP}loss{SEP}0", losses),
                (f"tgt{SEP}train{SEP}0", ids % 10), (f"pred{SEP}train{SEP}0", (ids + step) % 10)]))
        position = 0
        began_all, ingest_ns = time.process_time_ns(), 0
        deadline = time.monotonic() + 600
        for step, payload in enumerate(previews):
            position += 1
            t0 = time.thread_time_ns()
            run.apply_record(RecordType.PREVIEW, step, memoryview(payload), position)
            ingest_ns += time.thread_time_ns() - t0
            # paced as a trainer the daemon keeps up with (a record faster than that is thinned or dropped)
            while not idle(run) and time.monotonic() < deadline:
                time.sleep(0.002)  # a benchmark's poll: it measures CPU, and sleeping costs none
        all_ns = time.process_time_ns() - began_all
        t0 = time.thread_time_ns()
        for step, payload in enumerate(steprecs):
            position += 1
            run.apply_record(RecordType.STEP, step, memoryview(payload), position)
        step_ns = time.thread_time_ns() - t0
        store = getattr(run, "preview_store", None)
        pressure = store.stats()["thinned"] + store.stats()["dropped"] if store is not None else 0
        run.close()
        at_rest = sum(p.stat().st_size for p in folder.glob("previews*"))
        assert pressure == 0, "thinned or dropped: not the paced first epoch this measures"
    return {"ingest_us": ingest_ns / 1000 / size, "all_us": all_ns / 1000 / size, "step_us": step_ns / 1000 / steps,
            "bytes": at_rest / size}


def daemon_table(steps: int) -> None:
    encoded = importlib.util.find_spec("weightslabd.store.preview_store") is not None
    version = "one encoded image per sample" if encoded else "raw inputs in previews.log"
    print(f"\nDaemon CPU, first epoch ({steps} steps of {BATCH} new samples; previews at rest: {version}); "
          "µs of CPU per preview on the ingest thread and on all threads until idle, per step record; "
          "bytes at rest per sample")
    head = (f"{'input':<20} {'ingest µs/preview':>17} {'all µs/preview':>15} {'(no preload)':>12} "
            f"{'µs/step record':>15} {'B/sample':>9}")
    print(head)
    print("-" * len(head))
    for label, shape in SHAPES.items():
        if shape[1] > 256:
            continue  # the shim thins it to 256 px first: the 224 px row shows the daemon's share
        r, bare = daemon_costs(shape, steps), daemon_costs(shape, steps, preload=False)
        print(f"{label:<20} {r['ingest_us']:>17.1f} {r['all_us']:>15.1f} {bare['all_us']:>12.1f} "
              f"{r['step_us']:>15.0f} {r['bytes']:>9.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--daemon-only", action="store_true", help="only the daemon's table")
    p.add_argument("--steps", type=int, default=40, help="first-epoch steps fed to the daemon's store")
    args = p.parse_args()
    repeats = 5 if args.quick else args.repeats
    torch.set_num_threads(1)
    if args.daemon_only:
        daemon_table(8 if args.quick else args.steps)
        return
    print(f"\nPreviews of {BATCH} new samples (float32 CPU batch), median of {repeats}; µs on the training thread, "
          "µs on the publisher's thread, bytes per sample in the ring")
    head = (f"{'input':<20} {'train µs':>9} {'(before)':>9} {'publish µs':>10} {'(before)':>9} "
            f"{'B/sample':>9} {'(before)':>9}")
    print(head)
    print("-" * len(head))
    for label, shape in SHAPES.items():
        r = measure(shape, repeats)
        (ta, pa, ba), (tb, pb, bb) = r["after"], r["before"]
        print(f"{label:<20} {ta:>9.0f} {tb:>9.0f} {pa:>10.0f} {pb:>9.0f} {ba:>9d} {bb:>9d}")
    print(f"\nOffering a batch of {BATCH} new 3x32x32 samples, training-thread CPU µs, median of {repeats}")
    print(f"{'samples':<20} {'picked there (before)':>22} {'kept for the publisher (now)':>29}")
    with tempfile.TemporaryDirectory() as folder:
        for label, (was, now) in offer_costs(repeats, Path(folder)).items():
            print(f"{label:<20} {was:>22.1f} {now:>29.1f}")
    daemon_table(8 if args.quick else args.steps)


if __name__ == "__main__":
    main()
