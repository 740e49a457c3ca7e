"""The shim attached to a daemon against the shim detached, paired inside one process.

`overhead.py` runs each variant in a fresh process per round, so a ratio carries the difference between
two processes as well: on the 2-core development VM the training thread's CPU per step differs by
several percent from process to process, which no number of rounds brings under a 0.5 % goal. Here one
process trains the same model over and over in blocks, each block a new shim session (a new run): one
first epoch (the attached shim sends each sample's input once as a preview) and then --steps later
steps. Sessions alternate between a runtime directory where the benchmark's daemon runs (attached) and
one where no daemon ever runs (detached), in the order A B B A (so a steady drift of the machine
cancels); each attached block is compared with the detached block beside it. Each session starts once
the daemon has gone quiet (`overhead.quiet_cpu`): the end of the run before (written at rest) would
otherwise fall into the next session's first epoch, on 2 cores a ~1.5 % cost that has nothing to do
with the session measured (with no preview sent at all, the first epoch's attached/detached measured
1.015-1.157 without the wait, 0.995-1.001 with it). Each step is timed and
split as `overhead.py` does (own time = wall - run-queue wait; thread CPU; CPU inside the shim's calls);
the run-queue wait is shown apart as well, since the wait own time leaves out may be the shim's own
threads' (a woken publisher preempting the training thread), not only the machine's other load.
--processes repeats all of it in fresh processes, and the ratios of all of them are pooled. As in
`overhead.py`, malloc's thresholds are fixed (`overhead.FIXED_MALLOC`) unless --default-malloc.

    .venv/bin/python bench/attached.py [--pairs N] [--steps N] [--processes P] [--quick] [--no-pin] [--apart]
                                       [--json FILE]
    .venv/bin/python bench/attached.py --pool FILE [FILE ...]   # earlier runs' pairs, reported together
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402
from overhead import EPOCH, FORKSERVER, WORKER_TIMEOUT, CpuSplit  # noqa: E402
from support.daemon import running_daemon, scratch_dir  # noqa: E402

from weightslab_shim.ring import list_rings, unlink  # noqa: E402
from weightslab_shim.runtime import ring_prefix  # noqa: E402

MEASURES = ("own", "cpu", "shim", "blocked")
QUIET_ABOVE = 0.01  # the daemon between sessions, no trainer attached: ~0.2 % of a core (heartbeats, checks)
ORDER = (True, False, False, True)  # attached, detached, detached, attached: A B B A


def blocks(pairs: int, steps: int, runtime: Path, alone: Path, scratch: Path, split: CpuSplit | None,
           apart: bool) -> list[dict[str, Any]]:
    """In this (forked) process: 2 x `pairs` sessions in A B B A order, each a first epoch and `steps`
    later steps; per session, whether it was attached and run_phase's figures for both phases."""
    import weightslab_shim

    dataset, model, optimizer, criterion = overhead.problem()
    clock = overhead.ThreadClock()
    out: list[dict[str, Any]] = []
    daemon_pid = overhead.daemon_pid(runtime)
    if daemon_pid is None:
        raise RuntimeError(f"no daemon.json in {runtime}")
    for i in range(2 * pairs):
        attached = ORDER[i % len(ORDER)]
        overhead.quiet_cpu(daemon_pid, QUIET_ABOVE)  # the run before is at rest: not in this session
        os.environ["WEIGHTSLAB_RUNTIME_DIR"] = str(runtime if attached else alone)
        weightslab_shim._session = None  # a new session, a new run: its first epoch sends previews again
        loop = overhead.ShimLoop(attached, dataset, model, optimizer, criterion)
        if split is not None:
            overhead.pin_threads(split[0], split[1] if apart else split[0] | split[1])
        daemon = overhead.daemon_cpu(scratch) if attached else None
        first = overhead.run_phase(loop, EPOCH, clock)
        later = overhead.run_phase(loop, steps, clock)
        report = loop.report()
        if attached and report["attached"] < 1.0:
            raise RuntimeError(f"session {i} was attached for only {report['attached']:.0%} of its steps")
        after = overhead.daemon_cpu(scratch) if attached else None
        out.append({"attached": attached, "first": first, "later": later, "dropped": report["dropped"],
                    "daemon_ms": None if daemon is None or after is None
                    else (after - daemon) * 1000 / (EPOCH + steps)})
    return out


def process_main(pairs: int, steps: int, runtime: Path, alone: Path, scratch: Path, split: CpuSplit | None,
                 apart: bool, send: Any) -> None:
    log = os.open(scratch / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)  # the shim's own lines stay out of the table
    os.dup2(log, 2)
    os.environ.update(WEIGHTSLAB_RUN_NAME="bench-attached", TMPDIR=str(scratch))
    try:
        send.send((True, blocks(pairs, steps, runtime, alone, scratch, split, apart)))
    except Exception as exc:
        send.send((False, f"{type(exc).__name__}: {exc}"))


def run_process(pairs: int, steps: int, runtime: Path, alone: Path, scratch: Path, split: CpuSplit | None,
                apart: bool) -> list[dict[str, Any]]:
    result = overhead.run_forked(process_main, (pairs, steps, runtime, alone, scratch, split, apart),
                                 WORKER_TIMEOUT * pairs, scratch / "worker.log")
    return list(result)


def paired(sessions: list[dict[str, Any]], phase: str, measure: str) -> list[float]:
    """attached / detached for each attached session and the detached one beside it (A B | B A)."""
    out = []
    for i in range(0, len(sessions) - 1, 2):
        a, b = sessions[i], sessions[i + 1]
        att, det = (a, b) if a["attached"] else (b, a)
        out.append(att[phase][measure] / det[phase][measure])
    return out


def differences(sessions: list[dict[str, Any]], phase: str, measure: str) -> list[float]:
    """(attached - detached) in `measure`, as a share of the detached session's own time, pair by pair."""
    out = []
    for i in range(0, len(sessions) - 1, 2):
        a, b = sessions[i], sessions[i + 1]
        att, det = (a, b) if a["attached"] else (b, a)
        out.append((att[phase][measure] - det[phase][measure]) / det[phase]["own"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=12, help="attached/detached pairs per process")
    parser.add_argument("--steps", type=int, default=192, help="later-epoch steps per session")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 process, 2 pairs, 16 later steps")
    parser.add_argument("--no-pin", action="store_true", help="leave threads and the daemon on any CPU")
    parser.add_argument("--apart", action="store_true", help="keep the trainer's other threads (the shim's "
                        "publisher and control threads) off the training thread's CPU")
    parser.add_argument("--default-malloc", action="store_true", help="glibc's own mmap and trim thresholds "
                        "(more noise: see overhead.FIXED_MALLOC)")
    parser.add_argument("--json", type=Path, help="also write every session's figures to this file")
    parser.add_argument("--rounds", type=int, default=None, help="ignored (accepted for ./dev bench)")
    parser.add_argument("--pool", type=Path, nargs="+", metavar="JSON", help="measure nothing: report the "
                        "sessions of earlier runs' --json files together (their pairs pooled)")
    args = parser.parse_args()
    if args.pool:
        pooled = [s for path in args.pool for s in json.loads(path.read_text())]
        report(pooled, len(pooled) // 2, None, [], f"pooled from {len(args.pool)} runs' --json files", [])
        return
    pairs, steps, processes = (2, 16, 1) if args.quick else (args.pairs, args.steps, args.processes)
    overhead.worker_environment(args.default_malloc)
    FORKSERVER.set_forkserver_preload(["torch", "torch._dynamo", "weightslab_shim"])
    split = None if args.no_pin else overhead.cpu_split()
    if split is not None:
        os.sched_setaffinity(0, split[1])
    load = [os.getloadavg()[0]]
    sessions: list[dict[str, Any]] = []
    with scratch_dir("wl-bench-attached-") as root:
        runtime, alone = root / "rt", root / "no-daemon-rt"
        with running_daemon(root, runtime):
            os.environ["WEIGHTSLAB_RUNTIME_DIR"] = str(runtime)  # overhead.daemon_pid reads it
            if split is not None:
                overhead.pin_process(overhead.daemon_pid() or 0, split[1])
            for p in range(processes):
                scratch = root / f"process-{p}"
                scratch.mkdir()
                sessions += run_process(pairs, steps, runtime, alone, scratch, split, args.apart)
                load.append(os.getloadavg()[0])
                print(f"  process {p + 1}/{processes} done, load average {load[-1]:.2f}", file=sys.stderr)
        leftover = [name for rt in (runtime, alone) for name in list_rings(ring_prefix(rt))]
        for name in leftover:
            unlink(name)
    if args.json is not None:
        args.json.write_text(json.dumps(sessions, indent=1))
    others = "the trainer's other threads " + ("elsewhere" if args.apart else "on any CPU")
    placement = ("unpinned" if split is None
                 else f"training thread on CPU {min(split[0])}, the daemon elsewhere, {others}")
    report(sessions, pairs * processes, steps, load, placement, leftover)


def report(sessions: list[dict[str, Any]], pairs: int, steps: int | None, load: list[float], placement: str,
           leftover: list[str]) -> None:
    fmt = overhead.fmt_ci
    if steps is None:  # --pool: what the runs were is in their own reports
        print(f"The shim attached to a daemon against detached, paired in one process: {pairs} pairs of sessions, "
              f"{placement}")
    else:
        print(f"The shim attached to a daemon against detached, paired in one process: {pairs} pairs of sessions "
              f"(A B B A), each a first epoch ({EPOCH} steps, 64 new samples a step) then {steps} later steps; "
              f"load average {min(load):.2f}-{max(load):.2f}; {placement}; malloc thresholds "
              + ("glibc's" if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None else "fixed"))
    print()
    print("µs a step (median over sessions of each session's median; blocked and in shim: means)")
    print(f"  {'':<10}{'epoch':<8}" + "".join(f"{m:>12}" for m in MEASURES))
    for attached in (True, False):
        for phase in overhead.PHASES:
            row = [statistics.median(s[phase][m] for s in sessions if s["attached"] == attached) for m in MEASURES]
            print(f"  {'attached' if attached else 'detached':<10}{phase:<8}" + "".join(f"{v:12.1f}" for v in row))
    print()
    print("attached / detached, pair by pair: median [bootstrap 95 % interval]")
    print(f"  {'measure':<30}{'first epoch':>26}{'later epochs':>26}")
    for measure, name in (("own", "own time (wall - run queue)"), ("cpu", "training thread CPU"), ("wall", "wall")):
        print(f"  {name:<30}{fmt(paired(sessions, 'first', measure)):>26}{fmt(paired(sessions, 'later', measure)):>26}")
    print()
    print("attached - detached, as a share of the detached step's own time, pair by pair (%)")
    for measure, name in (("shim", "CPU inside the shim's calls"), ("blocked", "blocked (GIL)"),
                          ("runq", "run-queue wait")):  # own time leaves it out; the shim's threads add some
        first = [100 * d for d in differences(sessions, "first", measure)]
        later = [100 * d for d in differences(sessions, "later", measure)]
        print(f"  {name:<30}{fmt(first, 2):>26}{fmt(later, 2):>26}")
    events = [s for s in sessions if all("gc" in s[phase] for phase in overhead.PHASES)]  # older --json lack them
    if events:
        print()
        among = "" if len(events) == len(sessions) else f", {len(events)} of the {len(sessions)} sessions"
        print(f"the training thread's own events a step (means over sessions{among}, a first epoch's including "
              "the session's start): minor page faults, context switches, CPU in the garbage collector")
        print(f"  {'':<10}{'epoch':<8}{'faults':>12}{'switches':>12}{'gc µs':>12}")
        for attached in (True, False):
            for phase in overhead.PHASES:
                row = [statistics.mean(s[phase][m] for s in events if s["attached"] == attached)
                       for m in ("faults", "switches", "gc")]
                print(f"  {'attached' if attached else 'detached':<10}{phase:<8}" + "".join(f"{v:12.2f}" for v in row))
    print()
    for phase, goal in (("first", 1.02), ("later", 1.005)):
        _, lo, hi = overhead.median_ci(paired(sessions, phase, "own"))
        print(f"goal, {phase} epoch{'s' if phase == 'later' else ''}: attached <= {goal} x detached in own time: "
              f"[{lo:.3f}, {hi:.3f}] -> {overhead.verdict(lo, hi, goal)}")
    daemon = [s["daemon_ms"] for s in sessions if s["daemon_ms"] is not None]
    if daemon:
        print(f"daemon CPU per step over an attached session (all its threads): {statistics.median(daemon):.2f} ms")
    print(f"records dropped: {sum(s['dropped'] for s in sessions)}; shared-memory rings left: {len(leftover)}")


if __name__ == "__main__":
    main()
