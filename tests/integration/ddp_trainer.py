"""A 2-rank DDP loop (gloo, CPU) for tests/integration/test_distributed.py, run under torchrun.

Each rank appends what it really did per step to <log-dir>/rank<r>.jsonl: step, learning rate, batch
size, sample ids, epoch, per-sample losses, when the step began and torchrun's restart count. The ranks
stop together, at the first step boundary after the --until file exists (agreed by an all-reduce, so no
rank is left in a collective)."""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

import weightslab_shim as wl


def init_group() -> None:
    """The gloo group, its store keys under this attempt's prefix: torchrun's agent keeps one store across
    elastic restarts, and a restarted group otherwise may read the first attempt's (dead) addresses."""
    env = os.environ
    world = int(env["WORLD_SIZE"])
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False,
                          timeout=timedelta(seconds=30))
    attempt = dist.PrefixStore(f"attempt{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group("gloo", store=attempt, rank=int(env["RANK"]), world_size=world)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--log-dir", required=True)
    p.add_argument("--until", required=True)
    p.add_argument("--step-sleep", type=float, default=0.01)
    p.add_argument("--max-steps", type=int, default=5000)
    args = p.parse_args()
    init_group()
    rank = dist.get_rank()
    (Path(args.log_dir) / f"rank{rank}.pid").write_text(str(os.getpid()))  # the test ends us if it fails
    torch.manual_seed(0)
    hp = wl.watch_or_edit({"learning_rate": 0.01, "batch_size": 4}, flag="hyperparameters")
    gen = torch.Generator().manual_seed(1)
    data = [(torch.rand(4, generator=gen), torch.rand(1, generator=gen)) for _ in range(40)]
    loader = wl.watch_or_edit(data, flag="data", loader_name="train", batch_size=4, shuffle=True, is_training=True,
                              seed=3)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    wl.watch_or_edit(model, flag="model")
    optimizer = wl.watch_or_edit(torch.optim.SGD(model.parameters(), lr=hp["learning_rate"]), flag="optimizer")
    criterion = wl.watch_or_edit(torch.nn.MSELoss(reduction="none"), flag="loss", signal_name="loss")
    stop = Path(args.until)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # torchrun's elastic restarts so far
    session = wl.session()
    with open(Path(args.log_dir) / f"rank{rank}.jsonl", "a") as log:
        for _ in range(args.max_steps):
            flag = torch.tensor([int(stop.exists())])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                break
            with wl.guard_training_context:
                step, began = session.step, time.time()  # began: when the boundary let this step start
                x, ids, y = next(loader)
                losses = criterion(model(x), y, batch_ids=ids).mean(dim=1)
                optimizer.zero_grad()
                losses.mean().backward()  # DDP's all-reduce: a rank out of step would hang here
                optimizer.step()
                log.write(json.dumps({"step": step, "lr": optimizer.param_groups[0]["lr"], "bs": len(ids),
                                      "ids": ids.tolist(), "epoch": loader.sampler.epoch - 1,
                                      "losses": losses.tolist(), "began": began, "restart": restart}) + "\n")
                log.flush()
            if rank == 0 and step % 7 == 0:  # rank 0 alone evaluates now and then: no rank may wait for it
                with wl.guard_testing_context, torch.no_grad():
                    model.module(x)
            time.sleep(args.step_sleep)
    session.flush()
    wl.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
