"""Does the daemon's work on the other core slow an attached trainer? Asked inside one session.

`attached.py` compares whole sessions, attached against detached, and on the 2-core VM one session
differs from the next by more than the later-epoch goal (0.5 %). Here one attached session, past its
first epoch, runs its steps in blocks of --block steps, in groups of four: the daemon runs during the
first and the last block of a group and is stopped (SIGSTOP, then SIGCONT) during the two between. The
shim keeps writing its records into the ring while the daemon is stopped; the daemon reads them once it
runs again, so each running block carries the work of two blocks. Per group, the ratio of the running
blocks' median step to the stopped blocks' (own time: wall less run-queue wait; and the training
thread's CPU) says what that doubled work costs the trainer; drift within a group cancels (A B B A).

With --first the blocks are those of first epochs instead, where the daemon ingests and encodes a
preview of every sample: each session's first epoch (64 steps) makes 64 / (4 x --block) groups, and new
sessions are started until --groups groups are measured.

A detached session (no daemon work either way, the same signals sent to the daemon) is the control: its
ratio shows the instrument's own bias and noise.

    .venv/bin/python bench/daemon_blocks.py [--groups N] [--block N] [--first] [--quick]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import overhead  # noqa: E402
from overhead import EPOCH  # noqa: E402
from support.daemon import running_daemon, scratch_dir  # noqa: E402

QUIET_ABOVE = 0.01  # as attached.py: the daemon done with what it was sent before the blocks begin
GROUP = (False, True, True, False)  # stopped? running, stopped, stopped, running


def blocks(loop: Any, clock: overhead.ThreadClock, pid: int, groups: int, block: int) -> dict[str, list[float]]:
    """Per group, running / stopped for own time and thread CPU (sums of the block medians)."""
    out: dict[str, list[float]] = {"own": [], "cpu": []}
    for _ in range(groups):
        run = {"own": 0.0, "cpu": 0.0}
        stop = {"own": 0.0, "cpu": 0.0}
        for stopped in GROUP:
            if stopped:
                os.kill(pid, signal.SIGSTOP)
            try:
                figures = overhead.run_phase(loop, block, clock)
            finally:
                if stopped:
                    os.kill(pid, signal.SIGCONT)
            for measure in out:
                (stop if stopped else run)[measure] += figures[measure]
        for measure in out:
            out[measure].append(run[measure] / stop[measure])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=150, help="groups of four blocks per session")
    parser.add_argument("--block", type=int, default=8, help="steps a block")
    parser.add_argument("--first", action="store_true", help="the blocks of first epochs, not later ones")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 groups")
    parser.add_argument("--rounds", type=int, default=None, help="ignored (accepted for ./dev bench)")
    parser.add_argument("--steps", type=int, default=None, help="ignored (accepted for ./dev bench)")
    args = parser.parse_args()
    split = overhead.cpu_split()
    if split is None:
        sys.exit("daemon_blocks.py needs 2 CPUs: the training thread's and the daemon's")
    overhead.in_worker_environment()  # OMP threads and malloc's thresholds, as overhead.py's workers
    if args.first and EPOCH % (len(GROUP) * args.block):
        parser.error(f"--first needs --block to divide an epoch ({EPOCH} steps) into groups of {len(GROUP)}")
    measure(4 if args.quick else args.groups, args.block, args.first, split)


def measure(groups: int, block: int, first: bool, split: overhead.CpuSplit) -> None:
    import weightslab_shim

    rows = []
    with scratch_dir("wl-bench-daemon-blocks-") as root:
        runtime, alone = root / "rt", root / "no-daemon-rt"
        with running_daemon(root, runtime):
            os.environ.update(WEIGHTSLAB_RUNTIME_DIR=str(runtime), WEIGHTSLAB_RUN_NAME="bench-daemon-blocks")
            pid = overhead.daemon_pid()
            if pid is None:
                raise SystemExit(f"no daemon.json in {runtime}")
            overhead.pin_process(pid, split[1])
            dataset, model, optimizer, criterion = overhead.problem()
            clock = overhead.ThreadClock()
            per_session = EPOCH // (len(GROUP) * block) if first else groups
            for label, attached in (("attached", True), ("detached (control)", False)):
                ratios: dict[str, list[float]] = {"own": [], "cpu": []}
                daemon_s, dropped = 0.0, 0
                while len(ratios["own"]) < groups:
                    overhead.quiet_cpu(pid, QUIET_ABOVE)  # the run before is at rest
                    os.environ["WEIGHTSLAB_RUNTIME_DIR"] = str(runtime if attached else alone)
                    weightslab_shim._session = None  # a new session, a new run: it sends previews again
                    loop = overhead.ShimLoop(attached, dataset, model, optimizer, criterion)
                    overhead.pin_threads(split[0], split[0] | split[1])
                    if not first:
                        overhead.run_phase(loop, EPOCH, clock)  # the first epoch, not measured here
                        overhead.quiet_cpu(pid, QUIET_ABOVE)
                    before = overhead.process_cpu(pid) or 0.0
                    for measure_, values in blocks(loop, clock, pid, min(per_session, groups), block).items():
                        ratios[measure_] += values
                    if first:
                        overhead.quiet_cpu(pid, QUIET_ABOVE)  # its previews encoded: the work they caused
                    daemon_s += (overhead.process_cpu(pid) or 0.0) - before
                    report = loop.report()
                    if attached and report["attached"] < 1.0:
                        raise SystemExit(f"a session was attached for only {report['attached']:.0%} of its steps")
                    dropped += report["dropped"]
                steps = len(ratios["own"]) * len(GROUP) * block
                rows.append((label, ratios, daemon_s * 1e3 / steps, dropped))
    where = "inside first epochs (previews sent)" if first else "one session at a time, past its first epoch"
    print(f"Steps {where}: {groups} groups of 4 blocks of {block} steps, the daemon running, stopped, "
          f"stopped, running; training thread on CPU {min(split[0])}, the daemon on CPU {min(split[1])}\n")
    print("running / stopped, per group: median [bootstrap 95 % interval]")
    print(f"  {'session':20s} {'own time':>26s} {'thread CPU':>26s} {'daemon CPU a step':>18s} {'dropped':>8s}")
    for label, ratios, daemon_ms, dropped in rows:
        print(f"  {label:20s} {overhead.fmt_ci(ratios['own'], 4):>26s} {overhead.fmt_ci(ratios['cpu'], 4):>26s}"
              f" {daemon_ms:15.3f} ms {dropped:8d}")
    print("\nThe running blocks carry the daemon's work of two blocks: what it costs a normal attached step "
          "is about half the attached ratio's excess over the control's." + (" (--first: the daemon's CPU a "
          "step includes its encoding once quiet.)" if first else ""))


if __name__ == "__main__":
    main()
