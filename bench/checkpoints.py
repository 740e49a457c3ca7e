"""Checkpoint pause: how long the training thread waits per checkpoint, against a plain torch.save.

The shim's checkpoint copies the state to host memory on the training thread (tensors cloned to the
CPU) and writes it in a background thread (temporary file, fsync, rename). Here, for a model of about
--mb megabytes (float32 linear layers) and its optimizer:

- pause: what `Checkpointer.save` costs the training thread (the capture);
- write: the background thread's time for the same checkpoint (torch.save, fsync, rename, prune);
- plain torch.save: the same state dicts saved on the training thread (no fsync), what a loop would
  otherwise stop for; the ratio is pause / plain.

The first checkpoint allocates the host copy (fresh pages); later ones copy into the last one's
tensors. Each figure is the median of --repeats checkpoints (each waited for before the next, so they do not
queue), in one process with no daemon (the file is written where the daemon's run folder would be).

    .venv/bin/python bench/checkpoints.py [--mb 100] [--repeats 5] [--optimizer sgd|adam] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from weightslab_shim.session import Session


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=float, default=100.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--quick", action="store_true", help="smoke run: a 16 MB model, 2 checkpoints")
    args = p.parse_args()
    if args.quick:
        args.mb, args.repeats = 16.0, 2
    width = 2048
    layers = max(1, round(args.mb * 1024 * 1024 / 4 / (width * width)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    params = sum(p.numel() for p in model.parameters())
    opt: torch.optim.Optimizer = (torch.optim.SGD(model.parameters(), lr=0.01) if args.optimizer == "sgd"
                                  else torch.optim.Adam(model.parameters(), lr=1e-3))
    model(torch.randn(4, width)).sum().backward()
    opt.step()  # the optimizer holds its state (Adam: two tensors per parameter)
    with tempfile.TemporaryDirectory(prefix="wl-bench-ckpt-") as tmp:
        session = Session(env={})
        session.models.append(model)
        session.optimizers.append(opt)
        session.register_hparams({"learning_rate": 0.01, "checkpoint_keep_last": 2})
        ckpt = session.checkpoints
        ckpt.folder = Path(tmp)  # as a daemon's welcome would name it
        pauses, writes, plains, sizes = [], [], [], []
        for i in range(args.repeats):
            began = time.perf_counter()
            ckpt.save("bench")
            pauses.append(time.perf_counter() - began)
            if not ckpt.wait(120):
                sys.exit("a checkpoint write did not finish in 120 s")
            writes.append(ckpt.written[-1].write_s)
            sizes.append(ckpt.written[-1].nbytes)
            began = time.perf_counter()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, Path(tmp) / f"plain-{i}.pt")
            plains.append(time.perf_counter() - began)
            (Path(tmp) / f"plain-{i}.pt").unlink()
    pause, write, plain = (statistics.median(v) for v in (pauses, writes, plains))
    print(f"model: {layers} x Linear({width}, {width}), {params / 1e6:.1f} M parameters, optimizer {args.optimizer}; "
          f"checkpoint file {statistics.median(sizes) / 1e6:.1f} MB; median of {args.repeats}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print()
    print("| what | seconds | vs plain torch.save |")
    print("|---|---|---|")
    print(f"| pause on the training thread (capture to host memory) | {pause:.3f} | {pause / plain:.2f}x |")
    print(f"| the first checkpoint's pause (its host copy is allocated) | {pauses[0]:.3f} | {pauses[0] / plain:.2f}x |")
    print(f"| background write (torch.save + fsync + rename) | {write:.3f} | {write / plain:.2f}x |")
    print(f"| plain torch.save on the training thread (no fsync) | {plain:.3f} | 1.00x |")


if __name__ == "__main__":
    main()
