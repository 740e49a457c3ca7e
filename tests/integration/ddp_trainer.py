"""A 2-rank DDP loop (gloo, CPU) for tests/integration/test_distributed.py, run under torchrun.

Each rank appends what it really did per step to <log-dir>/rank<r>.jsonl: step, learning rate, batch
size, sample ids, epoch, per-sample losses, when the step began, torchrun's restart count, the world size
and a number drawn from the rank's own torch random state (seeded by its rank); with
--eval-size, each batch of an evaluation pass to <log-dir>/eval<r>.jsonl. The ranks stop together, at
the first step boundary after the --until file exists (agreed by an all-reduce, so no rank is left in a
collective)."""

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
    p.add_argument("--eval-size", type=int, default=0, help="an eval split of this many samples (0: none)")
    p.add_argument("--eval-sleep", type=float, default=0.0, help="seconds per evaluation batch")
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
    torch.manual_seed(100 + rank)  # each rank's own random state: a checkpoint keeps every rank's
    session = wl.session()
    if args.eval_size:  # each evaluation batch, through the DDP model, logged to <log-dir>/eval<r>.jsonl
        eval_data = [(torch.rand(4, generator=gen), torch.rand(1, generator=gen)) for _ in range(args.eval_size)]
        wl.watch_or_edit(eval_data, flag="data", loader_name="eval", batch_size=4, is_training=False)
        eval_log = open(Path(args.log_dir) / f"eval{rank}.jsonl", "a")  # noqa: SIM115 - open until exit

        def evaluate(batch: list[torch.Tensor]) -> None:
            x, ids, y = batch
            began = time.time()
            criterion(model(x), y, batch_ids=ids)
            time.sleep(args.eval_sleep)
            eval_log.write(json.dumps({"step": session.step, "ids": ids.tolist(), "began": began,
                                       "ended": time.time(), "training": model.training}) + "\n")
            eval_log.flush()

        wl.watch_or_edit(evaluate, flag="evaluation")
    stop = Path(args.until)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))  # torchrun's elastic restarts so far
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
                                      "losses": losses.tolist(), "began": began, "restart": restart,
                                      "world": dist.get_world_size(), "noise": float(torch.rand(1))}) + "\n")
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
