"""What a preview costs, per batch of 64 new samples: on the training thread, on the publisher's thread,
and in bytes per sample in the ring (then in previews.log), for the inputs as they were sent before
(`hold(_take(...))`: the full input, copied on the training thread, in its own dtype) and as they are sent
now (`previews.reduce`: picked, thinned to at most 256 px a side and 8-bit, all of it off the training
thread for a CPU batch). Both paths run in the same process, interleaved.

    .venv/bin/python bench/previews.py [--repeats N] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from weightslab_shim.previews import reduce
from weightslab_shim.session import _take
from weightslab_shim.tensors import hold

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    repeats = 5 if args.quick else args.repeats
    torch.set_num_threads(1)
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


if __name__ == "__main__":
    main()
