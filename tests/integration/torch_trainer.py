"""A tiny torch training loop for the checkpoint tests: every source of randomness a real loop has
(shuffled loader, dropout, numpy and Python noise, Adam's state), small enough to run 100 steps in a
second. Each step appends {step, ids, losses} to --log; at exit it writes a status JSON."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

import weightslab_shim as wl


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--status", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--max-steps", type=int, default=1000, help="loop iterations at most")
    p.add_argument("--pause-at", type=int, default=-1, help="the loop pauses itself whenever it reaches this step")
    p.add_argument("--until", help="stop at the next step boundary once this file exists")
    p.add_argument("--hp", action="append", default=[], help="KEY=INT: an extra hyperparameter")
    p.add_argument("--width", type=int, default=16)
    args = p.parse_args()

    torch.manual_seed(0)
    hp = wl.watch_or_edit({"learning_rate": 0.01, **{k: int(v) for k, v in (kv.split("=", 1) for kv in args.hp)}},
                          flag="hyperparameters")
    gen = torch.Generator().manual_seed(1)
    data = [(torch.rand(4, generator=gen), torch.rand(1, generator=gen)) for _ in range(64)]
    loader = wl.watch_or_edit(data, flag="data", loader_name="train", batch_size=8, shuffle=True, is_training=True,
                              seed=3)
    model = wl.watch_or_edit(torch.nn.Sequential(torch.nn.Linear(4, args.width), torch.nn.ReLU(),
                                                 torch.nn.Dropout(0.3), torch.nn.Linear(args.width, 1)), flag="model")
    optimizer = wl.watch_or_edit(torch.optim.Adam(model.parameters(), lr=hp["learning_rate"]), flag="optimizer")
    criterion = wl.watch_or_edit(torch.nn.MSELoss(reduction="none"), flag="loss", signal_name="loss")
    stop = Path(args.until) if args.until else None
    session = wl.session()
    with open(args.log, "a") as log:
        for _ in range(args.max_steps):
            if stop is not None and stop.exists():
                break
            if session.step == args.pause_at:
                session.paused = True  # waits at the boundary below until the test resumes it
            with wl.guard_training_context:
                step = session.step
                x, ids, y = next(loader)
                x = x + torch.from_numpy(np.random.normal(0, 0.01, x.shape).astype(np.float32)) * random.random()
                out = model(x)
                losses = criterion(out, y, batch_ids=ids).mean(dim=1)
                optimizer.zero_grad()
                losses.mean().backward()
                optimizer.step()
                log.write(json.dumps({"step": step, "ids": ids.tolist(), "losses": losses.tolist()}) + "\n")
                log.flush()
    session.flush()
    session.checkpoints.wait()
    status = {"steps": session.step, "loaded": session.checkpoints.loaded, "hparams": hp,
              "denied": np.flatnonzero(loader.sampler.denied).tolist(), "errors": session.errors}
    wl.close()
    with open(args.status, "w") as f:
        json.dump(status, f)


if __name__ == "__main__":
    main()
