"""Attached against detached, block by block inside one session: issue 10's goals without the noise
between sessions.

`attached.py` compares whole sessions, and on the 2-core VM one session differs from the next by about
as much as the goals (first epoch <= 2 %, later epochs <= 0.5 %). What an attached session does that a
detached one does not is all on the other side of the ring: the daemon reads the records (a detached
shim writes them just the same, into a ring nobody reads) and answers, and in a first epoch the shim
also sends each new sample's preview. Both can be switched inside one session, so one attached session
runs its steps in blocks of --block timed steps (after 2 untimed ones), in groups of four (off, on, on,
off: drift within a group cancels):

- "On": the session as it is, attached.
- "Off": as if detached. The daemon is stopped (SIGSTOP) and, in a first epoch, the shim's mask of the
  previews the daemon has says it has them all, so an offer is the later epochs' lookup and nothing is
  sent: what a detached shim does.
- After each block, before the next switch, the daemon runs (SIGCONT) until it has gone quiet and the
  shim's records are all in the ring, so no block's work spills into the next: an "on" block has the
  daemon working beside it at its normal rate, an "off" block has nothing.

--phase first: every step is of samples the daemon has never seen (the benchmark's 4,096 samples under
a million ids, sample i being input i mod 4096), as in a first epoch: "on" blocks send a preview of each.
--phase later: the benchmark's 4,096 samples after one epoch, as in later epochs. Per group: own time
(wall less run-queue wait) and the training thread's CPU, on / off; on - off for the time in the shim's
calls, GIL waits and run-queue wait, as a share of an off step; the daemon's CPU a step in each state.
A detached session with the same switches is the control: its ratio shows the instrument's own bias
and noise. Per-session costs (the attach, a session's first two steps) are not in a block; the goals
are about steps. A first epoch here is a long one, as ImageNet's (20,000 steps of 64), where the
daemon's encoder must keep up with the trainer; `attached.py`'s first epochs are 64 steps.

--switch previews or daemon takes the first epoch's cost apart: off blocks that leave out only the
previews (the daemon stopped in every block, catching up between them) or only the daemon's running
beside the trainer (previews sent in every block).

    .venv/bin/python bench/attached_blocks.py [--phase first|later|both] [--switch all|previews|daemon]
                                              [--groups N] [--block N] [--quick] [--json FILE]
    .venv/bin/python bench/attached_blocks.py --pool FILE [FILE ...]   # earlier runs' groups, reported together
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import overhead  # noqa: E402
from overhead import BATCH, EPOCH, GOALS  # noqa: E402
from support.daemon import running_daemon, scratch_dir  # noqa: E402

QUIET_ABOVE = 0.01  # as attached.py: the daemon's rate at rest with a trainer attached is below this
QUIET_WINDOW_S = 0.05
LEAD = 2  # steps a block runs before it is timed: after the pause to settle, the machine warms up again
SPLIT = "train"


GROUP = (False, True, True, False)  # the state of each block of a group: off, on, on, off (A B B A)


def alternating_blocks(loop: overhead.Loop, clock: overhead.ThreadClock, groups: int, block: int,
                       switch: Callable[[bool], None], settle: Callable[[], None]) -> dict[str, list[float]]:
    """`groups` groups of four blocks of `block` timed steps, in the states of GROUP: `switch(state)`
    before each block (and `switch(False)` after an "on" one, whatever happens), then LEAD steps that
    are not timed (the block's state settles in), `settle()` after each block, before that switch back.
    Per group: "own" and "cpu", on / off (sums of the block medians: drift within a group cancels), and
    "blocked", "shim", "runq", on - off as a share of the off blocks' own time."""
    out: dict[str, list[float]] = {"own": [], "cpu": [], "blocked": [], "shim": [], "runq": []}
    for _ in range(groups):
        sums = {state: dict.fromkeys(out, 0.0) for state in (False, True)}
        for on in GROUP:
            switch(on)
            try:
                for _ in range(LEAD):
                    loop.step()
                figures = overhead.run_phase(loop, block, clock)
                settle()  # still in the block's state: what it left pending is done as it would be
            finally:
                if on:
                    switch(False)
            for measure in out:
                sums[on][measure] += figures[measure]
        on_, off = sums[True], sums[False]
        out["own"].append(on_["own"] / off["own"])
        out["cpu"].append(on_["cpu"] / off["cpu"])
        for measure in ("blocked", "shim", "runq"):
            out[measure].append((on_[measure] - off[measure]) / off["own"])
    return out


class ManySamples:
    """`size` ids over the samples of `base`: id i is sample i mod len(base)."""

    def __init__(self, base: Any, size: int) -> None:
        self.base, self.size = base, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Any:
        return self.base[i % len(self.base)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("first", "later", "both"), default="both")
    parser.add_argument("--switch", choices=("all", "previews", "daemon"), default="all",
                        help="what the off blocks leave out: all of it (as detached, the goals), only the "
                        "previews (the daemon stopped in both), or only the daemon (previews sent in both)")
    parser.add_argument("--groups", type=int, default=240, help="groups of four blocks a session")
    parser.add_argument("--block", type=int, default=8, help="steps a block")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 groups")
    parser.add_argument("--rounds", type=int, default=None, help="ignored (accepted for ./dev bench)")
    parser.add_argument("--steps", type=int, default=None, help="ignored (accepted for ./dev bench)")
    parser.add_argument("--json", type=Path, help="also write every group's figures to this file")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="JSON", help="measure nothing: report the "
                        "groups of earlier runs' --json files together (runs of one --switch)")
    args = parser.parse_args()
    if args.pool:
        runs = [json.loads(path.read_text()) for path in args.pool]
        if len({run["switch"] for run in runs}) > 1:
            parser.error("--pool: the runs differ in --switch")
        print(f"Pooled from {len(runs)} runs' --json files ({sum(run['groups'] for run in runs)} groups a row)")
        for phase in ("first", "later"):
            rows: dict[str, dict[str, Any]] = {}
            for run in runs:
                for label, row in run["results"].get(phase, []):
                    into = rows.setdefault(label, {"ratios": {}, "daemon_ms": {False: [], True: []}, "sent": 0,
                                                   "dropped": 0})
                    for measure_, values in row["ratios"].items():
                        into["ratios"].setdefault(measure_, []).extend(values)
                    for state in (False, True):
                        into["daemon_ms"][state] += row["daemon_ms"][str(state).lower()]
                    into["sent"] += row["sent"]
                    into["dropped"] += row["dropped"]
            if rows:
                report(phase, list(rows.items()), runs[0]["switch"] == "all")
        return
    split = overhead.cpu_split()
    if split is None:
        sys.exit("attached_blocks.py needs 2 CPUs: the training thread's and the daemon's")
    overhead.in_worker_environment()  # OMP threads and malloc's thresholds, as overhead.py's workers
    phases = ("first", "later") if args.phase == "both" else (args.phase,)
    groups = 4 if args.quick else args.groups
    results = measure(phases, args.switch, groups, args.block, split)
    if args.json is not None:
        args.json.write_text(json.dumps({"switch": args.switch, "groups": groups, "block": args.block,
                                         "results": results}))


def session_blocks(first: bool, what: str, attached: bool, dataset: Any, parts: tuple[Any, Any, Any], pid: int,
                   groups: int, block: int, split: overhead.CpuSplit) -> dict[str, Any]:
    """One session's groups of blocks (see the module docstring)."""
    import weightslab_shim

    weightslab_shim._session = None  # a new session, a new run
    loop = overhead.ShimLoop(attached, dataset, *parts)
    overhead.pin_threads(split[0], split[0] | split[1])
    clock = overhead.ThreadClock()
    previews = loop.session.previews
    real = previews.have[SPLIT]
    everything = np.ones_like(real)
    daemon_ms: dict[bool, list[float]] = {False: [], True: []}  # the daemon's CPU a step, by block state
    last = {"cpu": -1.0, "blocks": 0}

    def switch(on: bool) -> None:
        if first:  # --switch daemon: previews sent in both states
            previews.have[SPLIT] = real if on or what == "daemon" else everything
        # --switch previews: the daemon stopped in both states (it catches up while the blocks settle)
        os.kill(pid, signal.SIGCONT if on and what != "previews" else signal.SIGSTOP)

    def settle() -> None:
        """After a block: the daemon running and done with it, the shim's records all in the ring."""
        os.kill(pid, signal.SIGCONT)
        if not loop.session.flush(30):
            raise SystemExit("the shim's records did not reach the ring within 30 s")
        cpu, _ = overhead.quiet_cpu(pid, QUIET_ABOVE, QUIET_WINDOW_S)
        if last["cpu"] >= 0:
            state = GROUP[int(last["blocks"]) % len(GROUP)]
            daemon_ms[state].append((cpu - last["cpu"]) * 1e3 / (LEAD + block))
            last["blocks"] += 1
        last["cpu"] = cpu

    try:
        if first:
            previews.have[SPLIT] = everything  # the warm-up sends nothing: every later id is new
        overhead.run_phase(loop, EPOCH, clock)  # warm-up, not measured (in --phase later: the first epoch)
        settle()
        ratios = alternating_blocks(loop, clock, groups, block, switch, settle)
    finally:
        os.kill(pid, signal.SIGCONT)
    sent = int(real.sum())
    report = loop.report()
    if attached and report["attached"] < 1.0:
        raise SystemExit(f"a session was attached for only {report['attached']:.0%} of its steps")
    on_steps = groups * (len(GROUP) if what == "daemon" else GROUP.count(True)) * (LEAD + block)
    if first and attached and sent != on_steps * BATCH and not report["dropped"]:
        raise SystemExit(f"previews of {sent} samples were sent, {on_steps * BATCH} expected")
    return {"ratios": ratios, "daemon_ms": daemon_ms, "sent": sent if first else 0, "dropped": report["dropped"]}


Results = dict[str, list[tuple[str, dict[str, Any]]]]  # per phase: (session, its figures)


def measure(phases: tuple[str, ...], what: str, groups: int, block: int, split: overhead.CpuSplit) -> Results:
    results: Results = {}
    with scratch_dir("wl-bench-attached-blocks-") as root:
        runtime, alone = root / "rt", root / "no-daemon-rt"
        with running_daemon(root, runtime):
            pid = overhead.daemon_pid(runtime)
            if pid is None:
                raise SystemExit(f"no daemon.json in {runtime}")
            overhead.pin_process(pid, split[1])
            base, model, optimizer, criterion = overhead.problem()
            for phase in phases:
                first = phase == "first"
                steps = EPOCH + groups * len(GROUP) * (LEAD + block)
                dataset = ManySamples(base, steps * BATCH) if first else base
                for label, attached in (("attached", True), ("detached (control)", False)):
                    overhead.quiet_cpu(pid, QUIET_ABOVE)  # the run before is at rest
                    os.environ.update(WEIGHTSLAB_RUNTIME_DIR=str(runtime if attached else alone),
                                      WEIGHTSLAB_RUN_NAME=f"bench-attached-blocks-{phase}")
                    results.setdefault(phase, []).append((label, session_blocks(
                        first, what, attached, dataset, (model, optimizer, criterion), pid, groups, block, split)))
    off = {"all": "the daemon stopped and no preview sent, as detached", "previews": "no preview sent; the "
           "daemon stopped in every block", "daemon": "the daemon stopped; previews sent in every block"}[what]
    print(f"One session a row: {groups} groups of 4 blocks of {block} steps, off, on, on, off (off: {off}); "
          f"training thread on CPU {min(split[0])}, the daemon on CPU {min(split[1])}")
    for phase, rows in results.items():
        report(phase, rows, what == "all")
    return results


def report(phase: str, rows: list[tuple[str, dict[str, Any]]], goal: bool) -> None:
    what = "first epochs (every sample new)" if phase == "first" else "later epochs"
    print(f"\n{what}: on / off, per group: median [bootstrap 95 % interval]")
    print(f"  {'session':20s} {'own time':>26s} {'thread CPU':>26s} {'daemon CPU a step, off / on':>28s}"
          f" {'previews':>9s} {'dropped':>8s}")
    for label, row in rows:
        r, d = row["ratios"], row["daemon_ms"]
        daemon = f"{np.median(d[False]):.2f} / {np.median(d[True]):.2f} ms" if d[False] and d[True] else "-"
        print(f"  {label:20s} {overhead.fmt_ci(r['own'], 4):>26s} {overhead.fmt_ci(r['cpu'], 4):>26s}"
              f" {daemon:>28s} {row['sent']:9d} {row['dropped']:8d}")
    print(f"  on - off, % of an off step's own time: {'in the shim calls':>22s} {'blocked (GIL)':>22s} "
          f"{'run-queue wait':>22s}")
    for label, row in rows:
        cells = [overhead.fmt_ci([100 * v for v in row["ratios"][m]], 2) for m in ("shim", "blocked", "runq")]
        print(f"  {label:40s} " + " ".join(f"{c:>22s}" for c in cells))
    if goal:
        med, lo, hi = overhead.median_ci(rows[0][1]["ratios"]["own"])
        print(f"  goal: attached / detached <= {GOALS[phase]} in own time: {med:.4f} [{lo:.4f}, {hi:.4f}]: "
              f"{overhead.verdict(lo, hi, GOALS[phase])}")


if __name__ == "__main__":
    main()
