"""A training loop with a model, a loss and an evaluation split, for tests/integration/test_evaluation.py.
numpy only. The model sleeps `--eval-sleep` s per batch in eval mode (a slow pass), and hangs inside a batch
while the file `--stuck-when` exists (a trainer stuck inside a batch). At exit the status JSON holds each training
step's (step, time, model.training) and the time of each evaluation batch."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import weightslab_shim as wl


class Model:
    def __init__(self, eval_sleep: float, stuck_when: Path | None) -> None:
        self.training = True
        self.eval_sleep = eval_sleep
        self.stuck_when = stuck_when
        self.eval_batches: list[float] = []

    def eval(self) -> None:
        self.training = False

    def train(self, mode: bool = True) -> None:
        self.training = mode

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.training:
            self.eval_batches.append(time.time())
            if self.stuck_when is not None and self.stuck_when.exists():
                time.sleep(3600)
            if self.eval_sleep:
                time.sleep(self.eval_sleep)
        return np.asarray(x.mean(axis=(1, 2, 3)) * 10)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--status", required=True)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--eval-size", type=int, default=40)
    p.add_argument("--eval-batch", type=int, default=8)
    p.add_argument("--eval-sleep", type=float, default=0.0)
    p.add_argument("--stuck-when", help="an evaluation batch hangs while this file exists")
    p.add_argument("--hp", action="append", default=[], help="KEY=INT: an extra hyperparameter")
    p.add_argument("--until", help="stop at the first step boundary where this file exists")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    wl.watch_or_edit({"learning_rate": 0.1, "training_steps_to_do": args.steps,
                      **{k: int(v) for k, v in (kv.split("=", 1) for kv in args.hp)}}, flag="hyperparameters")
    train = wl.watch_or_edit([(rng.random((1, 4, 4), dtype=np.float32), i % 10) for i in range(64)], flag="data",
                             loader_name="train", batch_size=8, shuffle=True, is_training=True)
    wl.watch_or_edit([(rng.random((1, 4, 4), dtype=np.float32), i % 10) for i in range(args.eval_size)],
                     flag="data", loader_name="eval", batch_size=args.eval_batch)
    model = wl.watch_or_edit(Model(args.eval_sleep, Path(args.stuck_when) if args.stuck_when else None), flag="model")
    criterion = wl.watch_or_edit(lambda out, y: (out - y) ** 2, flag="loss", signal_name="loss")
    steps: list[tuple[int, float, bool]] = []
    stop = Path(args.until) if args.until else None
    while len(steps) < args.steps and not (stop is not None and stop.exists()):
        with wl.guard_training_context:
            steps.append((wl.session().step, time.time(), model.training))
            x, ids, y = next(train)
            out = model(x)
            criterion(out, y, batch_ids=ids, preds=np.round(out))
        if args.step_sleep:
            time.sleep(args.step_sleep)
    wl.session().flush()
    status: dict[str, Any] = {"steps": steps, "eval_batches": model.eval_batches, "training": model.training,
                              "torch": "torch" in sys.modules}
    wl.close()
    Path(args.status).write_text(json.dumps(status))


if __name__ == "__main__":
    main()
