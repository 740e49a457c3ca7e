"""The shim's CUDA path on a real GPU: what observing costs a CUDA training step, and proof that the
publish never synchronises the training stream. Under 5 minutes on one GPU.

A conv net on CUDA, batch 64 of 3x128x128, per-sample loss through the wrapped criterion (ids,
targets, predictions) and, each step, a 16 MiB CUDA tensor of raw predictions (64 x 256 x 256 float32,
what a segmentation head returns) published with `add_batch(preds_raw=...)`. Blocks of bare steps and
of shim steps alternate in one process (the bare loop makes no shim call); each block ends with one
`torch.cuda.synchronize()` outside the timed steps' work, so steps/s is the GPU's real rate.

Then `torch.profiler` records a block of each: every CUDA runtime call that waits for the device
(`cudaStreamSynchronize`, `cudaDeviceSynchronize`, `cudaEventSynchronize`) is counted per block; the
shim's block must add none to the bare one.

    ./dev gpu-check                   # = python bench/gpu.py --require-gpu
    python3 bench/gpu.py [--steps N] [--rounds R] [--quick] [--require-gpu]

Without a CUDA device it says so and exits 0 (so `./dev bench` runs everywhere), or 2 with --require-gpu.
On a GPU machine whose image lacks the daemon's packages, carry them as wheels (pyzmq, pydantic,
pydantic-settings, python-dotenv, structlog, grpcio-health-checking, cryptography, h5py, pillow) and
run from the checkout with PYTHONPATH=daemon:client_shim.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.daemon import running_daemon, scratch_dir  # noqa: E402

BATCH = 64
SIDE = 128
CLASSES = 10
RAW_SHAPE = (BATCH, 256, 256)  # float32: 16 MiB
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def build(torch: Any) -> tuple[Any, Any, Any, Any, Any]:
    from torch import nn

    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(256, CLASSES),
    ).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss(reduction="none")
    inputs = torch.randn(8 * BATCH, 3, SIDE, SIDE, device=dev)
    targets = torch.randint(0, CLASSES, (8 * BATCH,), device=dev)
    return model, optimizer, criterion, inputs, targets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="steps per block")
    p.add_argument("--rounds", type=int, default=10, help="bare/shim block pairs")
    p.add_argument("--quick", action="store_true", help="3 rounds of 30 steps")
    p.add_argument("--require-gpu", action="store_true", help="exit 2 when no CUDA device is present")
    args = p.parse_args()
    steps, rounds = (30, 3) if args.quick else (args.steps, args.rounds)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print("gpu.py: no CUDA device here: nothing measured" + ("" if args.require_gpu else " (skipped)"))
        return 2 if args.require_gpu else 0
    with scratch_dir("wl-bench-gpu-") as root:
        runtime = root / "rt"
        os.environ.update(WEIGHTSLAB_RUNTIME_DIR=str(runtime), WEIGHTSLAB_RING_MB="256",
                          WEIGHTSLAB_RUN_NAME="bench-gpu")
        with running_daemon(root, runtime):
            measure(torch, steps, rounds)
    return 0


def measure(torch: Any, steps: int, rounds: int) -> None:
    import weightslab_shim as wl

    model, optimizer, criterion, inputs, targets = build(torch)
    wl.watch_or_edit({"learning_rate": 0.01, "batch_size": BATCH}, flag="hyperparameters")
    model = wl.watch_or_edit(model, flag="model")
    optimizer = wl.watch_or_edit(optimizer, flag="optimizer")
    observed = wl.watch_or_edit(criterion, flag="loss", signal_name="train-loss")
    session = wl.session()
    session.start()
    deadline = time.monotonic() + 10
    while not (session.channel is not None and session.channel.attached.is_set()):
        if time.monotonic() > deadline:
            raise RuntimeError("the shim did not attach to the benchmark's daemon")
        time.sleep(0.01)
    raw = torch.randn(*RAW_SHAPE, device="cuda")
    all_ids = torch.arange(inputs.shape[0])
    cursor = [0]

    def batch() -> tuple[Any, Any, Any]:
        i = cursor[0] % (inputs.shape[0] // BATCH)
        cursor[0] += 1
        sl = slice(i * BATCH, (i + 1) * BATCH)
        return inputs[sl], all_ids[sl], targets[sl]

    def bare_step() -> None:
        x, _, y = batch()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).mean().backward()
        optimizer.step()

    def shim_step() -> None:
        with wl.guard_training_context:
            x, ids, y = batch()
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            observed(out, y, batch_ids=ids, preds=out.argmax(1)).mean().backward()
            optimizer.step()
            session.add_batch("train", ids, preds_raw=raw)  # 16 MiB on the device, every step

    def block(step: Any) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return steps / (time.perf_counter() - t0)

    for step in (bare_step, shim_step):  # warm-up: kernels chosen, pinned staging allocated
        block(step)
    rates: dict[str, list[float]] = {"bare": [], "shim": []}
    for r in range(rounds):
        order = [("bare", bare_step), ("shim", shim_step)][:: 1 if r % 2 == 0 else -1]
        for name, step in order:
            rates[name].append(block(step))
    waits = {name: profile(torch, step, min(steps, 30)) for name, step in (("bare", bare_step),
                                                                             ("shim", shim_step))}
    session.flush(10)
    dropped = session.dropped
    wl.close()
    report(torch, rates, waits, steps, rounds, dropped)


def profile(torch: Any, step: Any, steps: int) -> dict[str, int]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profile

    torch.cuda.synchronize()
    with run_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        time.sleep(0.2)  # the publisher thread's copies of the last steps land inside the trace
    torch.cuda.synchronize()
    counts = dict.fromkeys(WAITS, 0)
    for event in prof.events():
        if event.name in counts:
            counts[event.name] += 1
    return counts


def report(torch: Any, rates: dict[str, list[float]], waits: dict[str, dict[str, int]], steps: int,
           rounds: int, dropped: int) -> None:
    name = torch.cuda.get_device_name(0)
    print(f"\nGPU check: {name}, torch {torch.__version__}, conv net on batch {BATCH} x 3x{SIDE}x{SIDE}, "
          f"per-sample loss + a 16 MiB CUDA tensor published each step; {rounds} rounds x {steps} steps")
    ratios = [s / b for b, s in zip(rates["bare"], rates["shim"], strict=True)]
    print(f"{'variant':<8} {'steps/s':>8} {'(range)':>15}")
    for key in ("bare", "shim"):
        print(f"{key:<8} {statistics.median(rates[key]):>8.1f} {min(rates[key]):>7.1f}-{max(rates[key]):<7.1f}")
    print(f"shim / bare steps/s: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-"
          f"{max(ratios):.3f}); records dropped: {dropped}")
    print("device waits in a profiled block (CUDA runtime calls):")
    for call in WAITS:
        print(f"  {call:<24} bare {waits['bare'][call]:>4}   shim {waits['shim'][call]:>4}")
    added = sum(waits["shim"].values()) - sum(waits["bare"].values())
    print("the shim adds no synchronisation of the training stream" if added <= 0 else
          f"the shim ADDS {added} device waits")


if __name__ == "__main__":
    sys.exit(main())
