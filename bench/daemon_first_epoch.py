"""Where the daemon's CPU goes while a trainer's first epoch sends previews: the daemon's CPU (all its
threads, its process CPU clock) for the attach, then per step over successive spans of steps, each span
measured once the daemon has gone quiet (its encoder included), less what the daemon uses at rest with
the trainer attached (measured first, and printed: heartbeats, liveness checks, the ring's idle looks).
The trainer is bench/overhead.py's shim loop (small CNN, 3x32x32 inputs, batch 64, 4096 samples: an
epoch is 64 steps).

    .venv/bin/python bench/daemon_first_epoch.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import overhead  # noqa: E402
from support.daemon import daemon_env, running_daemon, scratch_dir  # noqa: E402

REST_WINDOW_S = 2.0
REST_LIMIT = 0.05  # at most 5 % of a core at rest, else the measure is meaningless


def quiet_cpu(root: Path, rest_rate: float) -> tuple[float, float]:
    """(CPU seconds, monotonic time) once the benchmark's daemon has stopped working on what it was sent."""
    pid = overhead.daemon_pid()
    if pid is None:
        raise SystemExit("the daemon's daemon.json has no pid")
    return overhead.quiet_cpu(pid, rest_rate)


def rest_rate(root: Path) -> float:
    """The daemon's CPU seconds per second at rest, once it has settled (at most REST_LIMIT)."""
    quiet_cpu(root, REST_LIMIT)
    before, began = overhead.daemon_cpu(root), time.monotonic()
    time.sleep(REST_WINDOW_S)  # a measuring window
    after, at = overhead.daemon_cpu(root), time.monotonic()
    assert before is not None and after is not None
    return (after - before) / (at - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="spans up to the end of the first epoch only")
    parser.add_argument("--steps", type=int, default=None, help="ignored (accepted for ./dev bench)")
    parser.add_argument("--rounds", type=int, default=None, help="ignored (accepted for ./dev bench)")
    args, _ = parser.parse_known_args()
    spans = (1, 7, 24, 32) if args.quick else (1, 7, 24, 32, 64, 128)

    data, model, optimizer, criterion = overhead.problem()
    with scratch_dir("wl-bench-first-epoch-") as root:
        runtime = root / "rt"
        with running_daemon(root, runtime):
            os.environ.update(daemon_env(root, runtime))
            idle = rest_rate(root)
            start, _ = quiet_cpu(root, idle)
            loop = overhead.ShimLoop(True, data, model, optimizer, criterion)
            rest = rest_rate(root)
            last, last_at = quiet_cpu(root, rest)
            print(f"daemon CPU at rest: {1000 * idle:.2f} ms a second alone, {1000 * rest:.2f} attached")
            print(f"daemon CPU above that, ms (epoch = {overhead.EPOCH} steps, {overhead.BATCH} new samples a "
                  "step in the first)")
            print(f"  {'attach':<16}{1000 * (last - start):10.1f}")
            done = 0
            for n in spans:
                for _ in range(n):
                    loop.step()
                loop.session.flush()
                now, at = quiet_cpu(root, rest)
                print(f"  steps {done:>4}-{done + n:<5} {1000 * (now - last - rest * (at - last_at)) / n:10.2f} a step")
                done, last, last_at = done + n, now, at
            loop.report()


if __name__ == "__main__":
    main()
