"""A small training loop driven by the shim, for integration tests. numpy only (fast to start); the
optimizer is a stand-in with `param_groups`, like torch's. At exit it writes a status JSON: steps run,
the learning rate its optimizer ended with, its hyperparameters, and the sample ids of every step."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import weightslab_shim as wl


class Optimizer:
    def __init__(self, lr: float) -> None:
        self.param_groups = [{"lr": lr}]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--status", required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--mutate-hp-at", type=int, default=-1, help="the loop itself sets hp['custom_knob'] then")
    p.add_argument("--set-lr-after", metavar="FILE", help="once this file exists, the loop itself sets the learning "
                   "rate to 0.7 at its next step (once; the step is in the status as lr_set_at)")
    p.add_argument("--instances", action="store_true",
                   help="also record 'box': two instances per sample, valued id and id + 100")
    p.add_argument("--image-files", help="write each sample's image as a 40x24 PNG here (sample 7's is named but "
                                         "missing) and name them to the shim")
    p.add_argument("--hp", action="append", default=[], help="KEY=VALUE: an extra hyperparameter of the run")
    p.add_argument("--until", help="run until this file exists (at most --steps steps)")
    p.add_argument("--shape", default="1,4,4", help="C,H,W of each sample's input (floats in [0, 1))")
    p.add_argument("--attach-first", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for the daemon's welcome before the first step (exit 3 without it): "
                        "inputs become previews only while attached, and a loaded machine can take longer to "
                        "attach than a paced run takes to end")
    args = p.parse_args()

    hp = wl.watch_or_edit({"learning_rate": 0.1, "training_steps_to_do": args.steps, "batch_size": args.batch,
                           **dict(kv.split("=", 1) for kv in args.hp)}, flag="hyperparameters")
    rng = np.random.default_rng(0)
    shape = tuple(int(n) for n in args.shape.split(","))
    data = [(rng.random(shape, dtype=np.float32), int(i % 10)) for i in range(args.size)]
    paths = None
    if args.image_files:
        from PIL import Image

        folder = Path(args.image_files)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [str(folder / f"{i}.png") for i in range(args.size)]
        for i, path in enumerate(paths):
            if i != 7:
                Image.new("RGB", (40, 24), (i % 256, 0, 0)).save(path)
    loader = wl.watch_or_edit(data, flag="data", loader_name="train", batch_size=args.batch, shuffle=True,
                              is_training=True, preview_paths=paths)
    optimizer = wl.watch_or_edit(Optimizer(hp["learning_rate"]), flag="optimizer")
    criterion = wl.watch_or_edit(lambda out, y: (out - y) ** 2, flag="loss", signal_name="loss")
    if args.attach_first:
        session = wl.session()
        session.start()
        if session.channel is None or not session.channel.attached.wait(args.attach_first):
            sys.stderr.write(f"trainer: not attached within {args.attach_first} s\n")
            sys.exit(3)
    seen: list[list[int]] = []
    steps_at_start: list[int] = []
    done = 0
    stop = Path(args.until) if args.until else None
    lr_file = Path(args.set_lr_after) if args.set_lr_after else None
    lr_set_at = -1
    while done < args.steps and not (stop is not None and done % 50 == 0 and stop.exists()):
        with wl.guard_training_context:
            steps_at_start.append(wl.session().step)
            if wl.session().step == args.mutate_hp_at:
                hp["custom_knob"] = args.mutate_hp_at
            if lr_file is not None and lr_set_at < 0 and lr_file.exists():  # a schedule in user code
                hp["learning_rate"] = optimizer.param_groups[0]["lr"] = 0.7
                lr_set_at = wl.session().step
            x, ids, y = next(loader)
            out = x.mean(axis=(1, 2, 3)) * 10
            criterion(out, y, batch_ids=ids, preds=np.round(out))
            seen.append([int(i) for i in ids])
            if args.instances:
                boxes = np.stack([ids, ids + 100], axis=1).reshape(-1).astype(np.float32)
                wl.save_signals({"box": boxes}, batch_ids=np.repeat(ids, 2))
            wl.save_signals({"lr": np.asarray(optimizer.param_groups[0]["lr"])})
        done += 1
        if args.step_sleep:
            time.sleep(args.step_sleep)
    session = wl.session()
    session.flush()
    status = {"steps": session.step, "lr": optimizer.param_groups[0]["lr"], "hparams": hp, "seen": seen,
              "step_of": steps_at_start, "lr_set_at": lr_set_at, "dropped": session.dropped,
              "dropped_by": {"ring": session.ring.dropped if session.ring else 0,
                             "publisher": session.publisher.dropped if session.publisher else 0}}
    wl.close()
    with open(args.status, "w") as f:
        json.dump(status, f)


if __name__ == "__main__":
    main()
