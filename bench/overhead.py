"""Training overhead: a small CNN on CPU, bare vs the shim (with and without a daemon) vs other loggers.

Two baselines, in the same run: `bare` is a plain torch DataLoader loop (what a user switches from),
and `bare + shim sampler` is the same loop over the shim's own loader (ids and the deny-aware sampler)
with nothing observed, so the shim against it is the cost of observation alone.

Every variant runs the same model, data and seeds in a fresh process per round (one shim session
per process, forked from a server that has imported torch once); the variants are interleaved over
rounds in a shuffled order, so drift of the machine hits them all alike. Rounds are short (one first
epoch, then --steps more), so many fit: a ratio is the median over rounds of (variant / baseline in the
same round), with a bootstrap 95 % interval.

Besides wall time, each step is split with the kernel's schedstat of the training thread: its CPU time,
its wait for a core (run queue: other processes' load, which a loaded machine adds at random), and the
rest, time it was blocked (in this loop, waiting for the GIL). "own" = wall - run-queue wait is the step
without the machine's other load. The shim variants also time the training thread inside the shim's
calls (wrappers put on here, not in the shim), which bounds the shim's direct cost whatever the noise.
With 2 CPUs or more the training thread runs on the first CPU and the daemon on the others, so the
daemon's work never queues the training thread; the trainer's other threads (the shim's publisher and
control threads) run on any CPU (--no-pin leaves all placement to the scheduler).

    .venv/bin/python bench/overhead.py [--steps N] [--rounds R] [--quick] [--variants a,b] [--no-pin]
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from weightslab_shim.ring import list_rings, unlink
from weightslab_shim.runtime import ring_prefix

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.daemon import running_daemon, scratch_dir  # noqa: E402

BATCH = 64
SAMPLES = 4096
CLASSES = 10
SEED = 0
LR = 0.01
EPOCH = SAMPLES // BATCH  # steps; the first epoch is timed apart: the shim sends previews then
ATTACH_TIMEOUT = 10.0
WORKER_TIMEOUT = 300.0
# Workers fork from a server that has imported torch once: a fresh process per variant and round
# (one shim session each) that starts in a fraction of a second, so more rounds fit.
FORKSERVER = multiprocessing.get_context("forkserver")
# glibc's malloc serves torch's large tensors with mmap and moves its mmap threshold with the history of
# frees, so the same loop takes ~200 to ~1,000 page faults a step (about 1 ms of kernel time in a 13 ms
# step) depending on what ran before: one session's steps differ from the next by up to 10 %, whatever
# the variant. Fixed thresholds (big blocks stay in the heap and are reused) take that out of every
# variant alike; --default-malloc leaves glibc's defaults.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


def worker_environment(default_malloc: bool) -> None:
    """Settings every worker inherits, set before the fork server starts (it imports torch)."""
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if not default_malloc:
        os.environ.update(FIXED_MALLOC)


IN_WORKER_ENVIRONMENT = "WL_BENCH_IN_WORKER_ENVIRONMENT"  # set in a script run again by in_worker_environment


def in_worker_environment() -> None:
    """For a script that measures in its own process: run it again (same arguments) with the workers'
    settings, since malloc reads its thresholds when the process starts; a no-op in that second run."""
    if os.environ.get(IN_WORKER_ENVIRONMENT) != "1":
        worker_environment(False)
        os.environ[IN_WORKER_ENVIRONMENT] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    requires: str | None = None  # a module that must be importable
    version: str | None = None  # the exact distribution version required, if any
    logs: str = ""


VARIANTS = (
    Variant("bare", "bare torch loop", logs="nothing (loss.mean() only)"),
    Variant("bare-sampler", "bare + shim loader", logs="nothing; the shim's ids and deny-aware sampler"),
    Variant("shim", "shim + daemon", logs="per-sample loss, ids, targets, preds -> ring -> weightslabd"),
    Variant("shim-alone", "shim, no daemon", logs="same records into a ring nobody reads"),
    Variant("tensorboard", "TensorBoard", "tensorboard",
            logs="add_scalar(mean loss) + add_histogram(64 per-sample losses)"),
    Variant("wandb", "W&B offline", "wandb", logs="log({mean loss, Histogram(64 per-sample losses)})"),
    Variant("weightslab", "WeightsLab 2.0.3", "weightslab", "2.0.3", logs="same lines as the shim, in-process"),
)


def missing(v: Variant) -> str | None:
    """Why a variant cannot run here, or None."""
    if v.requires is None:
        return None
    if importlib.util.find_spec(v.requires) is None:
        return "not installed"
    if v.version is not None:
        try:
            have = importlib.metadata.version(v.requires)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"
        if have != v.version:
            return f"not installed ({have} found, {v.version} wanted)"
    return None


# -- the worker: one variant, one round, in its own process ------------------------------------------


class Loop:
    """One variant's training step, plus what it reports; `step` is the only part that is timed."""

    shim_ns = 0  # CPU ns the training thread has spent inside the shim's calls so far (ShimLoop counts them)

    def step(self) -> None:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each timed step, outside the timing."""

    def report(self) -> dict[str, Any]:
        """Called after timing; also closes what the variant opened."""
        return {}


def problem() -> tuple[Any, Any, Any, Any]:
    """The benchmark's training problem, seeded, on one torch thread: (dataset, model, optimizer, criterion)."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    inputs = torch.randn(SAMPLES, 3, 32, 32, generator=gen)
    targets = torch.randint(0, CLASSES, (SAMPLES,), generator=gen)
    dataset = torch.utils.data.TensorDataset(inputs, targets)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, CLASSES),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    return dataset, model, optimizer, nn.CrossEntropyLoss(reduction="none")


def worker(key: str, steps: int, scratch: Path, split: CpuSplit | None) -> dict[str, Any]:
    dataset, model, optimizer, criterion = problem()
    loop: Loop
    if key in ("shim", "shim-alone"):
        loop = ShimLoop(key == "shim", dataset, model, optimizer, criterion)
    elif key == "bare-sampler":
        loop = SamplerLoop(dataset, model, optimizer, criterion)
    elif key == "weightslab":
        loop = WatchedLoop(importlib.import_module("weightslab"), dataset, model, optimizer, criterion)
    else:
        loop = PlainLoop(key, dataset, model, optimizer, criterion, scratch)
    if split is not None:
        pin_threads(split[0], split[0] | split[1])  # after the shim has started its threads
    clock = ThreadClock()
    daemon = daemon_cpu(scratch) if key == "shim" else None
    first = run_phase(loop, EPOCH, clock)
    daemon_mid = daemon_cpu(scratch) if daemon is not None else None
    later = run_phase(loop, steps, clock)
    result = {"first": first, "later": later, **loop.report()}  # the shim's report flushes: the daemon has it all
    if daemon is not None and daemon_mid is not None:
        end = daemon_cpu(scratch)
        result["daemon_first_ms"] = (daemon_mid - daemon) * 1000 / EPOCH
        result["daemon_later_ms"] = (end - daemon_mid) * 1000 / steps if end is not None else float("nan")
    return result


class ThreadClock:
    """The calling thread's CPU time (`time.thread_time_ns`: schedstat's own CPU figure lags by up to a
    scheduler tick) and run-queue wait in ns (/proc/thread-self/schedstat, one pread; 0 where the kernel
    keeps no schedstat)."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self.fd = None
        self.thread = threading.get_ident()
        self.gc_ns = 0  # CPU this thread has spent in the garbage collector (a collection runs in the
        self._gc_began = 0  # thread whose allocation set it off, so another thread's objects can cost it)
        gc.callbacks.append(self._collected)

    def read(self) -> tuple[int, int]:
        wait = int(os.pread(self.fd, 128, 0).split()[1]) if self.fd is not None else 0
        return time.thread_time_ns(), wait

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != self.thread:
            return
        if phase == "start":
            self._gc_began = time.thread_time_ns()
        else:
            self.gc_ns += time.thread_time_ns() - self._gc_began


def thread_events() -> tuple[int, int]:
    """The calling thread's (minor page faults, context switches) so far; (0, 0) where /proc lacks them."""
    try:
        faults = int(Path("/proc/thread-self/stat").read_text().rsplit(")", 1)[1].split()[7])
        status = Path("/proc/thread-self/status").read_text().splitlines()
        switches = sum(int(line.split()[1]) for line in status
                       if line.split(":")[0] in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
    except (OSError, ValueError, IndexError):
        return 0, 0
    return faults, switches


def run_phase(loop: Loop, n: int, clock: ThreadClock) -> dict[str, float]:
    """`n` timed steps; per step (µs): wall median, own (wall - run queue) median, thread CPU median, and
    means of run-queue wait, blocked time, time inside the shim, CPU of the process's other threads and
    the thread's CPU in the garbage collector ("gc"); per step, the thread's minor page faults and context
    switches (counts read once a phase)."""
    wall, span, cpu, runq, shim = [], [], [], [], []
    others = other_threads_cpu()
    faults, switches = thread_events()
    gc_ns = clock.gc_ns
    for _ in range(n):
        a = time.perf_counter_ns()
        c0, q0 = clock.read()
        s0 = loop.shim_ns
        t0 = time.perf_counter_ns()
        loop.step()
        t1 = time.perf_counter_ns()
        c1, q1 = clock.read()
        b = time.perf_counter_ns()
        wall.append(t1 - t0)
        span.append(b - a)  # the window the kernel's figures cover (the step and the two reads)
        cpu.append(c1 - c0)
        runq.append(q1 - q0)
        shim.append(loop.shim_ns - s0)
        loop.after_step()
    others = other_threads_cpu() - others
    faults_after, switches_after = thread_events()
    own = [w - q for w, q in zip(span, runq, strict=True)]
    return {"wall": statistics.median(wall) / 1e3, "own": statistics.median(own) / 1e3,
            "cpu": statistics.median(cpu) / 1e3, "runq": statistics.mean(runq) / 1e3,
            "blocked": statistics.mean(o - c for o, c in zip(own, cpu, strict=True)) / 1e3,
            "shim": statistics.mean(shim) / 1e3, "others": others / n / 1e3,
            "wall_mean": statistics.mean(wall) / 1e3, "faults": (faults_after - faults) / n,
            "switches": (switches_after - switches) / n, "gc": (clock.gc_ns - gc_ns) / n / 1e3}


def other_threads_cpu() -> int:
    """CPU ns of this process's threads other than the calling one (publisher, control, ZeroMQ's)."""
    me = threading.get_native_id()
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != me:
            total += _task_cpu(Path("/proc/self/task", tid))
    return total


def _task_cpu(task: Path) -> int:
    try:
        return int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        try:  # no schedstat: utime + stime in clock ticks
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0  # the thread has ended


CpuSplit = tuple[set[int], set[int]]


def cpu_split() -> CpuSplit | None:
    """(the training thread's CPU, everyone else's), or None with fewer than 2 CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) >= 2 else None


def pin_threads(mine: set[int], rest: set[int]) -> None:
    """The training (calling) thread on `mine`, this process's other threads on `rest`; threads started later
    by the training thread inherit `mine`."""
    me = threading.get_native_id()
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), mine if int(tid) == me else rest)
        except OSError:
            pass  # the thread has ended


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` onto `cpus` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def daemon_pid(runtime: Path | None = None) -> int | None:
    """The pid of the daemon of `runtime` (default: $WEIGHTSLAB_RUNTIME_DIR), from its daemon.json."""
    try:
        folder = runtime if runtime is not None else Path(os.environ["WEIGHTSLAB_RUNTIME_DIR"])
        return int(json.loads((folder / "daemon.json").read_text())["pid"])
    except (OSError, KeyError, ValueError):
        return None


def process_cpu(pid: int) -> float | None:
    """CPU seconds process `pid` has used so far, all its threads, ended ones included: its process CPU
    clock (Linux's clock id for another process, as clock_getcpuclockid(3) makes it; nanoseconds), else
    /proc/<pid>/stat (clock ticks)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except OSError:
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


QUIET_CPU_S = 0.003  # the daemon is quiet when it used less than this over QUIET_WINDOW_S, above its rate at rest
QUIET_WINDOW_S = 0.3
QUIET_TIMEOUT_S = 60.0


def quiet_cpu(pid: int, rest_rate: float, window: float = QUIET_WINDOW_S) -> tuple[float, float]:
    """(CPU seconds, monotonic time) once daemon `pid` has stopped working on what it was sent: it used
    less than QUIET_CPU_S over a `window` of seconds, above `rest_rate` (its CPU seconds per second at rest)."""
    deadline = time.monotonic() + QUIET_TIMEOUT_S
    before, began = process_cpu(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(window)  # a measuring window, not a synchronisation
        now, at = process_cpu(pid), time.monotonic()
        if before is not None and now is not None and now - before - rest_rate * (at - began) < QUIET_CPU_S:
            return now, at
        before, began = now, at
    raise SystemExit(f"the daemon did not go quiet within {QUIET_TIMEOUT_S:.0f} s")


def daemon_cpu(scratch: Path) -> float | None:
    """CPU seconds the benchmark's daemon has used so far (see process_cpu)."""
    pid = daemon_pid()
    return None if pid is None else process_cpu(pid)


def _endless(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


class PlainLoop(Loop):
    """bare, TensorBoard and W&B: a plain DataLoader, and the logger's calls after the optimizer step."""

    def __init__(self, key: str, dataset: Any, model: Any, optimizer: Any, criterion: Any,
                 scratch: Path) -> None:
        import torch

        loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True,
                                             generator=torch.Generator().manual_seed(SEED))
        self.batches = _endless(loader)
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.count = 0
        self.log: Callable[[int, Any], None] = lambda n, per_sample: None
        self.close: Callable[[], Any] = lambda: None
        if key == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(scratch / "tb"))

            def log_tb(n: int, per_sample: Any) -> None:
                writer.add_scalar("train/loss", per_sample.mean().item(), n)
                writer.add_histogram("train/per_sample_loss", per_sample, n)

            self.log, self.close = log_tb, writer.close
        elif key == "wandb":
            import wandb

            run = wandb.init(mode="offline", dir=str(scratch), project="weightslabd-bench")

            def log_wandb(n: int, per_sample: Any) -> None:
                run.log({"train/loss": per_sample.mean().item(),
                         "train/per_sample_loss": wandb.Histogram(per_sample.numpy())}, step=n)

            self.log, self.close = log_wandb, run.finish

    def step(self) -> None:
        x, y = next(self.batches)
        self.optimizer.zero_grad(set_to_none=True)
        per_sample = self.criterion(self.model(x), y)
        per_sample.mean().backward()
        self.optimizer.step()
        self.log(self.count, per_sample.detach())
        self.count += 1

    def report(self) -> dict[str, Any]:
        self.close()
        return {}


class SamplerLoop(Loop):
    """The bare loop over the very loader the shim builds (its sampler and id-carrying items), unobserved."""

    def __init__(self, dataset: Any, model: Any, optimizer: Any, criterion: Any) -> None:
        import torch

        from weightslab_shim.data import DenyAwareBatchSampler, _Indexed

        sampler = DenyAwareBatchSampler(len(dataset), BATCH, shuffle=True, seed=SEED)
        self.batches = _endless(torch.utils.data.DataLoader(_Indexed(dataset), batch_sampler=sampler))
        self.model, self.optimizer, self.criterion = model, optimizer, criterion

    def step(self) -> None:
        x, _ids, y = next(self.batches)
        self.optimizer.zero_grad(set_to_none=True)
        self.criterion(self.model(x), y).mean().backward()
        self.optimizer.step()


class WatchedLoop(Loop):
    """The loop as a WeightsLab user writes it; `wl` is the shim or WeightsLab itself.

    WeightsLab 2.0.3 was not exercised on the machine that wrote this (it pins another torch)."""

    def __init__(self, wl: Any, dataset: Any, model: Any, optimizer: Any, criterion: Any) -> None:
        self.wl = wl
        wl.watch_or_edit({"learning_rate": LR, "batch_size": BATCH}, flag="hyperparameters")
        self.loader = wl.watch_or_edit(dataset, flag="data", loader_name="train", batch_size=BATCH,
                                       shuffle=True, is_training=True)
        self.model = wl.watch_or_edit(model, flag="model")
        self.optimizer = wl.watch_or_edit(optimizer, flag="optimizer")
        self.criterion = wl.watch_or_edit(criterion, flag="loss", signal_name="train-loss")

    def step(self) -> None:
        with self.wl.guard_training_context:
            x, ids, y = next(self.loader)
            self.optimizer.zero_grad(set_to_none=True)
            out = self.model(x)
            loss = self.criterion(out, y, batch_ids=ids, preds=out.argmax(1))
            loss.mean().backward()
            self.optimizer.step()


class ShimLoop(WatchedLoop):
    # What the training thread calls in the shim at each step (the loop's own lines reach these).
    TIMED_SESSION = ("begin_step", "end_step", "note_inputs", "add_signal", "add_scalar", "add_batch")
    TIMED_LOADER = ("_without_denied",)

    def __init__(self, expect_daemon: bool, *args: Any) -> None:
        import weightslab_shim

        super().__init__(weightslab_shim, *args)
        self.session = weightslab_shim.session()
        self.attached_steps = 0
        self.steps = 0
        for obj, names in ((self.session, self.TIMED_SESSION), (self.loader, self.TIMED_LOADER)):
            for name in names:
                setattr(obj, name, self._timed(getattr(obj, name)))
        self.session.start()  # its threads exist before they are pinned; attached or not
        if expect_daemon:
            self.wait_attached()

    def _timed(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """`call`, adding its CPU time to `shim_ns` (an instance attribute shadows the method). CPU time: a
        wait for the GIL shows as blocked, a wait for the core as run queue."""

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time_ns()
            try:
                return call(*args, **kwargs)
            finally:
                self.shim_ns += time.thread_time_ns() - t0

        return timed_call

    def _attached(self) -> bool:
        channel = self.session.channel
        return channel is not None and channel.attached.is_set()

    def wait_attached(self) -> None:
        """Attach before the first step, so the first epoch is the one that sends the previews."""
        deadline = time.monotonic() + ATTACH_TIMEOUT
        while not self._attached() and time.monotonic() < deadline:
            time.sleep(0.01)

    def after_step(self) -> None:
        self.steps += 1
        self.attached_steps += self._attached()

    def report(self) -> dict[str, Any]:
        self.session.flush()
        result = {"dropped": self.session.dropped, "attached": self.attached_steps / max(1, self.steps)}
        self.wl.close()
        return result


# -- the parent: interleave the workers, print the tables --------------------------------------------

PHASES = ("first", "later")
Summary = dict[str, float]  # one phase of one worker: run_phase's figures


@dataclass
class Rows:
    """Per variant, per round: each phase's figures and what the worker reported besides."""

    phases: dict[str, dict[int, dict[str, Summary]]] = field(default_factory=dict)
    extras: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    leftover_rings: list[str] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # load average at the start, after each round, at the end
    pinned: str = "no"

    def metric(self, key: str, phase: str, name: str) -> dict[int, float]:
        return {r: p[phase][name] for r, p in self.phases.get(key, {}).items()}


def run_worker(v: Variant, steps: int, runtime: Path, scratch: Path, split: CpuSplit | None) -> dict[str, Any]:
    """One variant, one round, in a fresh process forked from a server that has torch imported."""
    env = {"WEIGHTSLAB_RUNTIME_DIR": str(runtime), "WEIGHTSLAB_RUN_NAME": f"bench-{v.key}",
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(scratch)}
    return dict(run_forked(worker_main, (v.key, steps, scratch, env, split), WORKER_TIMEOUT, scratch / "worker.log"))


def run_forked(target: Callable[..., None], args: tuple[Any, ...], timeout: float, log: Path) -> Any:
    """target(*args, send) in a process forked from the server, which sends one (ok, result) pair: the
    result, or RuntimeError with what it sent instead. The process is joined (killed after `timeout`
    and 30 s more)."""
    receive, send = FORKSERVER.Pipe(duplex=False)
    proc = FORKSERVER.Process(target=target, args=(*args, send))
    proc.start()
    send.close()
    ok, result = False, "no result"
    try:
        if receive.poll(timeout):
            ok, result = receive.recv()
        else:
            result = f"no result within {timeout:.0f} s"
    except EOFError:
        pass  # it died before sending: the exit code and its log say why
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if not ok:
        raise RuntimeError(f"failed ({result}, exit code {proc.exitcode}, log {log})")
    return result


def worker_main(key: str, steps: int, scratch: Path, env: dict[str, str], split: CpuSplit | None,
                send: Connection) -> None:
    log = os.open(scratch / "worker.log", os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(log, 1)  # the shim's and W&B's own lines stay out of the table
    os.dup2(log, 2)
    os.environ.update(env, TMPDIR=str(scratch))  # read by the shim's session and W&B, created here
    tempfile.tempdir = str(scratch)  # W&B's temp dirs go with the scratch dir (the fork inherits /tmp)
    try:
        send.send((True, worker(key, steps, scratch, split)))
    except Exception as exc:
        send.send((False, f"{type(exc).__name__}: {exc}"))


def measure(variants: list[Variant], steps: int, rounds: int, pin: bool) -> Rows:
    rows = Rows(load=[os.getloadavg()[0]])
    split = cpu_split() if pin else None
    if split is not None:
        rows.pinned = f"training thread on CPU {min(split[0])}, the daemon and this script on CPU " \
                      f"{','.join(map(str, sorted(split[1])))}, the trainer's other threads on any"
        os.sched_setaffinity(0, split[1])
    with scratch_dir("wl-bench-overhead-") as root:
        runtime, alone = root / "rt", root / "no-daemon-rt"  # no daemon ever runs in `alone`
        with running_daemon(root, runtime):
            pid = json.loads((runtime / "daemon.json").read_text())["pid"]
            if split is not None:
                pin_process(pid, split[1])
            interleave(rows, variants, steps, rounds, root, runtime, alone, split)
        rows.leftover_rings = [name for rt in (runtime, alone) for name in list_rings(ring_prefix(rt))]
        for name in rows.leftover_rings:
            unlink(name)
    rows.load.append(os.getloadavg()[0])
    return rows


def interleave(rows: Rows, variants: list[Variant], steps: int, rounds: int, root: Path, runtime: Path,
               alone: Path, split: CpuSplit | None) -> None:
    for r in range(rounds):
        order = list(variants)
        random.Random(r).shuffle(order)  # no variant always runs right after the same neighbour
        for v in order:
            if v.key in rows.failed:
                continue
            scratch = root / f"{v.key}-{r}"
            scratch.mkdir()
            try:
                res = run_worker(v, steps, alone if v.key == "shim-alone" else runtime, scratch, split)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                rows.failed[v.key] = str(exc)
                continue
            rows.phases.setdefault(v.key, {})[r] = {ph: res.pop(ph) for ph in PHASES}
            rows.extras.setdefault(v.key, []).append(res)
        rows.load.append(os.getloadavg()[0])
        if (r + 1) % 5 == 0 or r + 1 == rounds:
            print(f"  round {r + 1}/{rounds} done, load average {rows.load[-1]:.2f}", file=sys.stderr)


def ratios(meds: dict[int, float], base: dict[int, float]) -> list[float]:
    """variant / baseline, round by round."""
    return [meds[r] / base[r] for r in meds if r in base and base[r]]


def median_ci(values: list[float], resamples: int = 2000) -> tuple[float, float, float]:
    """The median and a percentile-bootstrap 95 % interval for it (seeded: the same data, the same interval)."""
    if not values:
        return (float("nan"),) * 3
    med = statistics.median(values)
    if len(values) < 3:
        return med, float("nan"), float("nan")
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return med, meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def fmt_ci(values: list[float], digits: int = 3) -> str:
    med, lo, hi = median_ci(values)
    return f"{med:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def print_table(rows: Rows, steps: int, rounds: int) -> None:
    import torch

    print(f"\nTraining overhead: 2-conv CNN (8, 16 channels), CPU, torch {torch.__version__}, 1 thread, "
          f"batch {BATCH}, {SAMPLES} samples 3x32x32, {CLASSES} classes; {rounds} rounds x ({EPOCH} first-epoch "
          f"+ {steps} later) steps per variant, each in its own process; {os.cpu_count()} CPUs, pinned: "
          f"{rows.pinned}; load average {rows.load[0]:.2f} at the start, {rows.load[-1]:.2f} at the end, "
          f"{max(rows.load):.2f} at most")
    if max(rows.load) > (os.cpu_count() or 1):
        print(f"NOTE: the machine was loaded (load average up to {max(rows.load):.1f} on {os.cpu_count()} CPUs): "
              "wall times carry other processes' work; own time and thread CPU still carry their cache and memory "
              "traffic. The direct measures (in shim, blocked) are the ones to trust.")
    head = (f"{'variant':<19} {'µs/step':>8} {'vs bare':>7} {'(range)':>11} {'vs loader':>9} {'+µs/step':>8} "
            f"{'epoch 1':>7} {'dropped':>7}  logs per step")
    print(head)
    print("-" * len(head))
    bare = rows.metric("bare", "later", "wall")
    bare_first = rows.metric("bare", "first", "wall")
    loader = rows.metric("bare-sampler", "later", "wall")
    for v in VARIANTS:
        why = missing(v) or rows.failed.get(v.key)
        meds = rows.metric(v.key, "later", "wall")
        if not why and not meds:
            continue  # not asked for (--variants)
        if why or not meds:
            print(f"{v.label:<19} {why or 'no result'}")
            continue
        steady, first = ratios(meds, bare), ratios(rows.metric(v.key, "first", "wall"), bare_first)
        vs_loader = ratios(meds, loader)
        added = [meds[r] - bare[r] for r in meds if r in bare]
        extras = rows.extras[v.key]
        dropped = str(sum(e["dropped"] for e in extras)) if "dropped" in extras[0] else ""
        note = v.logs
        if v.key == "shim":
            attached = statistics.mean(e["attached"] for e in extras)
            note += f" (attached for {attached:.0%} of steps)"
        print(f"{v.label:<19} {statistics.median(meds.values()):>8.0f} {_med(steady):>7.3f} "
              f"{min(steady, default=float('nan')):>5.2f}-{max(steady, default=float('nan')):<5.2f} "
              f"{_med(vs_loader):>9.3f} {_med(added):>+8.0f} {_med(first):>7.3f} {dropped:>7}  {note}")
    print("(µs/step: median over rounds of each round's median wall time per step after the first epoch; vs bare "
          "and +µs/step: median of the per-round ratio and difference to the DataLoader loop; vs loader: the same "
          "ratio to the bare loop over the shim's own loader, i.e. the cost of observation alone; epoch 1: the "
          "ratio to bare over the first epoch, when the attached shim also sends each sample's input once as a "
          "preview)")
    where_time_goes(rows)
    shim_against(rows)
    print(f"shared-memory rings left in /dev/shm after the runs: {len(rows.leftover_rings)}")


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def where_time_goes(rows: Rows) -> None:
    cols = (("wall", "wall"), ("own", "own"), ("cpu", "thread CPU"), ("runq", "run queue"),
            ("blocked", "blocked"), ("shim", "in shim"), ("others", "other thr."))
    print("\nWhere a step's time goes, µs (median over rounds; wall, own = wall - run queue and thread CPU are "
          "each round's median step, the rest its mean per step):")
    head = f"  {'variant':<19} {'epoch':<6}" + "".join(f" {label:>10}" for _, label in cols)
    print(head)
    for v in VARIANTS:
        if v.key not in rows.phases:
            continue
        for phase, label in (("first", "first"), ("later", "later")):
            cells = "".join(f" {_med(list(rows.metric(v.key, phase, m).values())):>10.1f}" for m, _ in cols)
            print(f"  {v.label:<19} {label:<6}{cells}")
    print("  (run queue: the training thread ready but another process on its CPU; blocked: neither running nor "
          "queued, i.e. waiting for the GIL; in shim: CPU time inside the shim's session calls and its loader's "
          "deny filter, timed by the benchmark; other thr.: CPU of the trainer process's other threads, the shim's "
          "publisher and control threads)")


GOALS = {"first": 1.02, "later": 1.005}  # issue 10: attached vs detached


def shim_against(rows: Rows) -> None:
    """The attached shim against each baseline, first epoch (previews sent) and later epochs apart."""
    if "shim" not in rows.phases:
        return
    n = len(rows.phases["shim"])
    print(f"\nshim + daemon against each baseline: median of the per-round ratio [bootstrap 95 % interval], "
          f"{n} rounds")
    print(f"  {'baseline':<34} {'measure':<12} {'first epoch':>24} {'later epochs':>24}")
    for key, label in (("shim-alone", "the shim detached (no daemon)"),
                       ("bare-sampler", "bare loop over the shim's loader"), ("bare", "bare DataLoader loop")):
        if key not in rows.phases:
            continue
        for metric, name in (("wall", "wall"), ("own", "own time"), ("cpu", "thread CPU")):
            cells = [fmt_ci(ratios(rows.metric("shim", ph, metric), rows.metric(key, ph, metric))) for ph in PHASES]
            print(f"  {label:<34} {name:<12} {cells[0]:>24} {cells[1]:>24}")
            label = ""
    if "shim-alone" in rows.phases:
        direct(rows)
    extras = [e for e in rows.extras.get("shim", []) if "daemon_first_ms" in e]
    if extras:
        first_ms = statistics.median(e["daemon_first_ms"] for e in extras)
        later_ms = statistics.median(e["daemon_later_ms"] for e in extras)
        print(f"  daemon CPU per step (ms, all its threads): first epoch {first_ms:.2f}, later {later_ms:.2f} "
              f"({BATCH} previews a step in the first epoch)")


def direct(rows: Rows) -> None:
    """What attaching adds to the training thread, from its own clocks, as a share of the detached step."""
    print("\n  attached - detached, per step, as a share of the detached step's own time (median of per-round "
          "differences [95 % interval]):")
    shares: dict[tuple[str, str], list[float]] = {}
    for metric, label in (("shim", "CPU inside the shim's calls"), ("blocked", "blocked (GIL)"),
                          ("direct", "direct: in shim + blocked"),
                          ("cpu", "training thread CPU"), ("own", "own time (= the step without run queue)")):
        cells = []
        for ph in PHASES:
            if metric == "direct":
                got = [a + b for a, b in zip(shares[("shim", ph)], shares[("blocked", ph)], strict=True)]
            else:
                att, det = rows.metric("shim", ph, metric), rows.metric("shim-alone", ph, metric)
                base = rows.metric("shim-alone", ph, "own")
                got = [(att[r] - det[r]) / base[r] * 100 for r in sorted(att) if r in det]
            shares[(metric, ph)] = got
            cells.append(fmt_ci(got, 2) + " %")
        print(f"    {label:<42} first {cells[0]:>26}   later {cells[1]:>26}")
    for ph in PHASES:
        own = ratios(rows.metric("shim", ph, "own"), rows.metric("shim-alone", ph, "own"))
        _, lo, hi = median_ci(own)
        _, dlo, dhi = median_ci(shares[("direct", ph)])
        goal = GOALS[ph]
        print(f"  goal, {ph} epoch{'s' if ph == 'later' else ''}: attached <= {goal} x detached. End to end (own "
              f"time): [{lo:.3f}, {hi:.3f}] -> {verdict(lo, hi, goal)}; direct cost: [{dlo:+.2f}, {dhi:+.2f}] % "
              f"-> {verdict(1 + dlo / 100, 1 + dhi / 100, goal)}")


def verdict(lo: float, hi: float, goal: float) -> str:
    return "met" if hi <= goal else "not met" if lo > goal else "not settled by this run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=64, help="later-epoch steps per variant per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round x 16 steps")
    parser.add_argument("--variants", help="comma-separated keys to run (default: every installed one): "
                        + ", ".join(v.key for v in VARIANTS))
    parser.add_argument("--no-pin", action="store_true", help="leave threads and the daemon on any CPU")
    parser.add_argument("--default-malloc", action="store_true", help="glibc's own mmap and trim thresholds "
                        "in the workers (more noise: see FIXED_MALLOC)")
    args = parser.parse_args()
    steps, rounds = (16, 1) if args.quick else (args.steps, args.rounds)
    wanted = set(args.variants.split(",")) if args.variants else {v.key for v in VARIANTS}
    unknown = wanted - {v.key for v in VARIANTS}
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}")
    worker_environment(args.default_malloc)  # before the fork server imports torch
    # torch._dynamo is what the first optimizer imports (1.5 s): imported once, in the server.
    FORKSERVER.set_forkserver_preload(["torch", "torch._dynamo", "weightslab_shim"])
    variants = [v for v in VARIANTS if missing(v) is None and v.key in wanted]
    print_table(measure(variants, steps, rounds, not args.no_pin), steps, rounds)


if __name__ == "__main__":
    main()
