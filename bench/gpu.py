"""The shim's CUDA path on a real GPU: what observing costs a CUDA training step, in a first epoch (every
step sends its samples' previews, reduced on the device) and later; that the shim never synchronises
the training stream; and that the device's previews are the host's. Under 5 minutes on one GPU.

A conv net on CUDA, batch 64 of 3x128x128, per-sample loss through the wrapped criterion (ids,
targets, predictions) and, each step, a 16 MiB CUDA tensor of raw predictions (64 x 256 x 256 float32,
what a segmentation head returns) published with `add_batch(preds_raw=...)`. Each step offers its
batch for previews, as the shim's loader does (`note_inputs`). Three kinds of block alternate in one
process: bare (no shim call), shim (later epochs: the daemon has every preview, so the offer is a
lookup) and first (a first epoch: 64 samples the daemon has not seen a step, picked, thinned and scaled
to 8 bits on the GPU, only the small result copied to the host). Each block ends with one
`torch.cuda.synchronize()` outside the timed steps' work, so steps/s is the GPU's real rate.

Then `torch.profiler` records a block of each: every CUDA runtime call that waits for the device
(`cudaStreamSynchronize`, `cudaDeviceSynchronize`, `cudaEventSynchronize`) is counted per block; the
shim's blocks must add none to the bare one. Last, the device reduction (`reduce_on_device`) of a
3x224x224 batch (kept whole: the modal's resolution) and of a 3x512x512 one (thinned to 256 px) is
compared with the host's (`to_uint8` in numpy): at most 1 apart (float32 against float64 rounding).

    ./dev gpu-check                   # = python bench/gpu.py --require-gpu
    python3 bench/gpu.py [--steps N] [--rounds R] [--quick] [--require-gpu]

Without a CUDA device it says so and runs the same code on the CPU, small and quick (a dry run that keeps
the script working; its figures say nothing of a GPU), or exits 2 with --require-gpu.
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
CLASSES = 10
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
KINDS = ("bare", "shim", "first")


class Device:
    """Where the benchmark runs: the GPU, or the CPU for a dry run (smaller, and nothing to wait for)."""

    def __init__(self, torch: Any, cuda: bool) -> None:
        self.torch, self.cuda = torch, cuda
        self.name = "cuda" if cuda else "cpu"
        self.side = 128 if cuda else 32
        self.raw_shape = (BATCH, 256, 256) if cuda else (BATCH, 32, 32)  # float32: 16 MiB on the GPU

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def label(self) -> str:
        if self.cuda:
            return self.torch.cuda.get_device_name(0)
        return "CPU dry run (no CUDA device here: these figures say nothing of a GPU)"


def build(dev: Device) -> tuple[Any, Any, Any, Any, Any]:
    torch = dev.torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(256, CLASSES),
    ).to(dev.name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss(reduction="none")
    inputs = torch.randn(8 * BATCH, 3, dev.side, dev.side, device=dev.name)
    targets = torch.randint(0, CLASSES, (8 * BATCH,), device=dev.name)
    return model, optimizer, criterion, inputs, targets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="steps per block")
    p.add_argument("--rounds", type=int, default=10, help="rounds of one block of each kind")
    p.add_argument("--quick", action="store_true", help="3 rounds of 30 steps")
    p.add_argument("--require-gpu", action="store_true", help="exit 2 when no CUDA device is present")
    args = p.parse_args()
    steps, rounds = (30, 3) if args.quick else (args.steps, args.rounds)
    try:
        import torch
    except ImportError:
        print("gpu.py: torch is not installed: nothing measured")
        return 2 if args.require_gpu else 0
    cuda = torch.cuda.is_available()
    if not cuda:
        print("gpu.py: no CUDA device here" + (": nothing measured" if args.require_gpu else
                                               "; a dry run of the same code on the CPU follows"))
        if args.require_gpu:
            return 2
        steps, rounds = 3, 1
        torch.set_num_threads(1)
    dev = Device(torch, cuda)
    with scratch_dir("wl-bench-gpu-") as root:
        runtime = root / "rt"
        os.environ.update(WEIGHTSLAB_RUNTIME_DIR=str(runtime), WEIGHTSLAB_RING_MB="256",
                          WEIGHTSLAB_RUN_NAME="bench-gpu")
        with running_daemon(root, runtime):
            failures = measure(dev, steps, rounds)
    failures += agreement(dev)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def measure(dev: Device, steps: int, rounds: int) -> list[str]:
    import weightslab_shim as wl

    torch = dev.torch
    model, optimizer, criterion, inputs, targets = build(dev)
    wl.watch_or_edit({"learning_rate": 0.01, "batch_size": BATCH}, flag="hyperparameters")
    model = wl.watch_or_edit(model, flag="model")
    optimizer = wl.watch_or_edit(optimizer, flag="optimizer")
    observed = wl.watch_or_edit(criterion, flag="loss", signal_name="train-loss")
    session = wl.session()
    # Ids 0..511 are the inputs' own (sent once, in the warm-up); a first-epoch block's ids are new ones.
    profile_steps = min(steps, 30)
    first_steps = steps * (rounds + 1) + profile_steps
    split_size = inputs.shape[0] + BATCH * first_steps
    session.register_split("train", split_size)
    session.start()
    deadline = time.monotonic() + 10
    while not (session.channel is not None and session.channel.attached.is_set()):
        if time.monotonic() > deadline:
            raise RuntimeError("the shim did not attach to the benchmark's daemon")
        time.sleep(0.01)
    raw = torch.randn(*dev.raw_shape, device=dev.name)
    all_ids = torch.arange(inputs.shape[0])
    cursor, fresh = [0], [inputs.shape[0]]

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

    def observed_step(first: bool) -> None:
        with wl.guard_training_context:
            x, ids, y = batch()
            if first:  # samples the daemon has no preview of yet: the pick and reduction run on the device
                ids = torch.arange(fresh[0], fresh[0] + BATCH)
                fresh[0] += BATCH
            session.note_inputs("train", ids, x, y)  # what the shim's loader does with each batch
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            observed(out, y, batch_ids=ids, preds=out.argmax(1)).mean().backward()
            optimizer.step()
            session.add_batch("train", ids, preds_raw=raw)  # 16 MiB on the device, every step

    step_of = {"bare": bare_step, "shim": lambda: observed_step(False), "first": lambda: observed_step(True)}

    def block(step: Any) -> float:
        dev.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        dev.synchronize()
        return steps / (time.perf_counter() - t0)

    cursor_first = fresh[0]
    for kind in ("bare", "shim"):  # warm-up: kernels chosen, pinned staging allocated, ids 0..511 sent
        block(step_of[kind])
    for _ in range(inputs.shape[0] // BATCH):
        observed_step(False)
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for r in range(rounds):
        order = KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)]
        for kind in order:
            rates[kind].append(block(step_of[kind]))
    waits = {kind: profile(dev, step_of[kind], profile_steps) for kind in KINDS}
    flushed = session.flush(30)
    dropped = session.dropped
    offered_first = fresh[0] - cursor_first
    have = int(session.previews.have["train"].sum())
    wl.close()
    report(dev, rates, waits, steps, rounds, dropped)
    failures = []
    if not flushed:
        failures.append("the daemon did not take every record within 30 s")
    if have != inputs.shape[0] + offered_first and not dropped:  # a dropped record's previews are offered again
        failures.append(f"previews sent of {have} samples, {inputs.shape[0] + offered_first} offered")
    print(f"previews: {have} samples sent ({offered_first} in first-epoch blocks, reduced on {dev.name})")
    added = {kind: sum(waits[kind].values()) - sum(waits["bare"].values()) for kind in ("shim", "first")}
    failures += [f"the shim's {kind} blocks add {n} device waits" for kind, n in added.items() if n > 0]
    return failures


def profile(dev: Device, step: Any, steps: int) -> dict[str, int]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.cuda else [])
    dev.synchronize()
    with run_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        time.sleep(0.2)  # the publisher thread's copies of the last steps land inside the trace
    dev.synchronize()
    counts = dict.fromkeys(WAITS, 0)
    for event in prof.events():
        if event.name in counts:
            counts[event.name] += 1
    return counts


def agreement(dev: Device) -> list[str]:
    """The device reduction against the host's, for an input the modal shows whole and one it thins."""
    import numpy as np

    from weightslab_shim.previews import _reduce_host, reduce_on_device

    torch = dev.torch
    failures = []
    print("previews reduced on the device against the host (max |difference| of 8-bit values):")
    for shape in ((3, 224, 224), (3, 512, 512)):
        batch = torch.randn(16, *shape, device=dev.name) * 3 + 1
        picked = np.arange(16)[::-3].copy()
        got = reduce_on_device(torch, batch, picked).cpu().numpy()
        want = _reduce_host(batch.cpu().numpy(), picked)
        if got.shape != want.shape:
            failures.append(f"device previews of {shape} came out {got.shape[1:]}, the host's {want.shape[1:]}")
            continue
        diff = int(np.abs(got.astype(int) - want.astype(int)).max())
        print(f"  {len(picked)} x {'x'.join(map(str, shape))} -> {'x'.join(map(str, got.shape[1:]))}: {diff}")
        if diff > 1:
            failures.append(f"device previews of {shape} differ from the host's by up to {diff}")
    return failures


def report(dev: Device, rates: dict[str, list[float]], waits: dict[str, dict[str, int]], steps: int,
           rounds: int, dropped: int) -> None:
    torch = dev.torch
    print(f"\nGPU check: {dev.label()}, torch {torch.__version__}, conv net on batch {BATCH} x "
          f"3x{dev.side}x{dev.side}, per-sample loss + a {4 * BATCH * dev.raw_shape[1] * dev.raw_shape[2] / 2**20:.3g} "
          f"MiB tensor published each step; {rounds} round(s) of {steps} steps a block")
    print(f"{'variant':<28} {'steps/s':>8} {'(range)':>15} {'vs bare':>8} {'(range)':>13}")
    names = {"bare": "bare", "shim": "shim, later epochs", "first": "shim, first epoch (previews)"}
    for kind in KINDS:
        ratios = [s / b for b, s in zip(rates["bare"], rates[kind], strict=True)]
        print(f"{names[kind]:<28} {statistics.median(rates[kind]):>8.1f} {min(rates[kind]):>7.1f}-"
              f"{max(rates[kind]):<7.1f} {statistics.median(ratios):>8.3f} {min(ratios):>6.3f}-{max(ratios):.3f}")
    print(f"records dropped: {dropped} (the ring was full: the shim drops rather than wait)")
    print("device waits in a profiled block (CUDA runtime calls):")
    for call in WAITS:
        print(f"  {call:<24} " + "   ".join(f"{kind} {waits[kind][call]:>4}" for kind in KINDS))
    added = max(sum(waits[k].values()) for k in ("shim", "first")) - sum(waits["bare"].values())
    print("the shim adds no synchronisation of the training stream" if added <= 0 else
          f"the shim ADDS {added} device waits")


if __name__ == "__main__":
    sys.exit(main())
