"""The daemon's memory across runs: eleven short trainings one after another against one daemon, and its
resident memory (VmRSS) after each; then a restart of the daemon over those eleven runs.

    .venv/bin/python bench/runs_memory.py [--runs N] [--steps N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.daemon import running_daemon, scratch_dir  # noqa: E402

TRAINER = r"""
import sys
import numpy as np
import weightslab_shim as wl
steps, size = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
data = [(rng.random((3, 32, 32), dtype=np.float32), int(i % 10)) for i in range(size)]
loader = wl.watch_or_edit(data, flag="data", loader_name="train", batch_size=64, shuffle=True, is_training=True)
loss = wl.watch_or_edit(lambda out, y: (out - y) ** 2, flag="loss", signal_name="loss")
wl.session().start()
for _ in range(steps):
    with wl.guard_training_context:
        x, ids, y = next(loader)
        loss(x.mean(axis=(1, 2, 3)), y, batch_ids=ids)
wl.close()
"""


def rss_mb(runtime: Path) -> float:
    pid = json.loads((runtime / "daemon.json").read_text())["pid"]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def released(log: Path) -> int:
    return log.read_text(errors="replace").count('"run released from memory"')


def settle(runtime: Path, log: Path, releases: int) -> float:
    """RSS once the daemon has released the runs it should have (in the background; a daemon that does not
    release runs is given 3 s)."""
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and released(log) < releases:
        time.sleep(0.05)
    return rss_mb(runtime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=11)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    runs, steps = (3, 50) if args.quick else (args.runs, args.steps)
    with scratch_dir("wl-bench-runs-") as root:
        runtime = root / "rt"
        env = dict(os.environ, WEIGHTSLAB_RUNTIME_DIR=str(runtime))
        after: list[float] = []
        with running_daemon(root, runtime):
            start = rss_mb(runtime)
            for n in range(runs):
                subprocess.run([sys.executable, "-c", TRAINER, str(steps), str(args.samples)], env=env, check=True,
                               timeout=300, capture_output=True)
                after.append(settle(runtime, root / "daemon.log", n))  # every ended run but the current one
        with running_daemon(root, runtime):
            restarted = settle(runtime, root / "daemon.log", 0)
    print(f"\nDaemon memory across {runs} runs of {steps} steps ({args.samples} samples of 3x32x32, batch 64): "
          "VmRSS MB")
    print(f"  at start {start:.0f}; after each run: " + ", ".join(f"{m:.0f}" for m in after))
    print(f"  growth over the runs: {after[-1] - after[0]:+.0f} MB; restarted over all {runs} runs: {restarted:.0f} MB")


if __name__ == "__main__":
    main()
