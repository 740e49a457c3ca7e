"""A 2-rank DDP loop (torchrun, gloo, CPU) bare vs with the shim attached to a daemon: steps/s and ratio.

Each variant runs in a fresh `torchrun --standalone --nproc_per_node=2` per round, the order shuffled
per round (seeded). Model: MLP 64-128-10 under DistributedDataParallel, batch 32 per rank, SGD, 2048
synthetic samples, one thread per rank. bare: DataLoader + DistributedSampler. shim: the shim's lines
(hyperparameters, data, model, optimizer, loss with batch_ids=, `with wl.guard_training_context:`),
its daemon attached: a job's commands go through StepSync, one 8-byte gloo broadcast per step, whose
time is reported on its own (µs/step), and against shim-nosync: the same shim loop, each rank taking
edits alone (no broadcast). Steps/s: rank 0's, after 32 warm-up steps.

    .venv/bin/python bench/ddp.py [--steps N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.daemon import daemon_env, running_daemon, scratch_dir, wait_rings_gone  # noqa: E402

WARMUP = 32


def worker(mode: str, steps: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(2048, 64, generator=gen), torch.randint(0, 10, (2048,), generator=gen)
    data = list(zip(xs, ys, strict=True))
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    if mode.startswith("shim"):
        import weightslab_shim as wl

        if mode == "shim-nosync":  # what StepSync costs: the same loop with each rank taking edits alone
            wl.session().sync = None
        wl.watch_or_edit({"learning_rate": 0.01}, flag="hyperparameters")
        loader = wl.watch_or_edit(data, flag="data", loader_name="train", batch_size=32, shuffle=True,
                                  is_training=True)
        wl.watch_or_edit(model, flag="model")
        wl.watch_or_edit(opt, flag="optimizer")
        loss_fn = wl.watch_or_edit(loss_fn, flag="loss", signal_name="loss")

        def step() -> None:
            with wl.guard_training_context:
                x, ids, y = next(loader)
                loss = loss_fn(model(x), y, batch_ids=ids)
                opt.zero_grad()
                loss.mean().backward()
                opt.step()
    else:
        from torch.utils.data import DataLoader, DistributedSampler

        sampler = DistributedSampler(data, shuffle=True, seed=0)
        plain = DataLoader(data, batch_size=32, sampler=sampler)
        batches = iter(plain)
        epoch = [0]

        def step() -> None:
            nonlocal batches
            try:
                x, y = next(batches)
            except StopIteration:
                epoch[0] += 1
                sampler.set_epoch(epoch[0])
                batches = iter(plain)
                x, y = next(batches)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()

    for _ in range(WARMUP):
        step()
    dist.barrier()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - began
    sync_us = 0.0
    if mode.startswith("shim"):
        import weightslab_shim as wl

        s = wl.session().sync
        if s is not None and s.exchanges:
            sync_us = s.seconds / s.exchanges * 1e6
        wl.session().flush()
        wl.close()
    if rank == 0:
        Path(out).write_text(json.dumps({"steps_per_s": steps / seconds, "sync_us": sync_us}))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker")
    p.add_argument("--out")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.out)
        return
    if args.quick:
        args.steps, args.rounds = 150, 1
    results: dict[str, list[dict[str, float]]] = {"bare": [], "shim": [], "shim-nosync": []}
    rng = random.Random(0)
    with scratch_dir("wl-bench-ddp-") as root, running_daemon(root) as runtime:
        env = daemon_env(root, runtime)
        for _ in range(args.rounds):
            modes = list(results)
            rng.shuffle(modes)
            for mode in modes:
                out = root / f"{mode}.json"
                subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                __file__, "--worker", mode, "--steps", str(args.steps), "--out", str(out)],
                               env=env, check=True, capture_output=True, timeout=300)
                results[mode].append(json.loads(out.read_text()))
        if not wait_rings_gone(runtime):
            raise SystemExit(f"shared-memory rings of this benchmark left in /dev/shm (runtime dir {runtime})")
    bare = statistics.median(r["steps_per_s"] for r in results["bare"])
    shim = statistics.median(r["steps_per_s"] for r in results["shim"])
    nosync = statistics.median(r["steps_per_s"] for r in results["shim-nosync"])
    sync = statistics.median(r["sync_us"] for r in results["shim"])
    print(f"2-rank DDP, gloo CPU, {args.steps} steps x {args.rounds} rounds (median)")
    print(f"  bare: {bare:8.1f} steps/s")
    print(f"  shim: {shim:8.1f} steps/s   ratio shim/bare {shim / bare:.3f}")
    print(f"  shim without StepSync: {nosync:8.1f} steps/s   ratio {nosync / bare:.3f}")
    print(f"  StepSync: {sync:.0f} µs/step in its broadcast (waiting for the slower rank included); "
          f"{(1 / shim - 1 / nosync) * 1e6:.0f} µs/step by steps/s")


if __name__ == "__main__":
    main()
