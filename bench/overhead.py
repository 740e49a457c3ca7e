"""Training overhead: a small CNN on CPU, bare vs the shim (with and without a daemon) vs other loggers.

Two baselines, in the same run: `bare` is a plain torch DataLoader loop (what a user switches from),
and `bare + shim sampler` is the same loop over the shim's own loader (ids and the deny-aware sampler)
with nothing observed, so the shim against it is the cost of observation alone.

Every variant runs the same model, data and seeds in a fresh process per round (one shim session
per process, forked from a server that has imported torch once); the variants are interleaved over
rounds in a shuffled order, so drift of the machine hits them all alike. A round's figure is its
median step time after the first epoch; a ratio is the median over rounds of (variant / baseline in
the same round).

    .venv/bin/python bench/overhead.py [--steps N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
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

    def step(self) -> None:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each timed step, outside the timing."""

    def report(self) -> dict[str, Any]:
        """Called after timing; also closes what the variant opened."""
        return {}


def worker(key: str, steps: int, scratch: Path) -> dict[str, Any]:
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
    criterion = nn.CrossEntropyLoss(reduction="none")
    loop: Loop
    if key in ("shim", "shim-alone"):
        loop = ShimLoop(key == "shim", dataset, model, optimizer, criterion)
    elif key == "bare-sampler":
        loop = SamplerLoop(dataset, model, optimizer, criterion)
    elif key == "weightslab":
        loop = WatchedLoop(importlib.import_module("weightslab"), dataset, model, optimizer, criterion)
    else:
        loop = PlainLoop(key, dataset, model, optimizer, criterion, scratch)
    daemon = daemon_cpu(scratch) if key == "shim" else None
    first_epoch = [timed(loop.step) for _ in range(EPOCH)]
    daemon_mid = daemon_cpu(scratch) if daemon is not None else None
    times: list[int] = []
    for _ in range(steps):
        times.append(timed(loop.step))
        loop.after_step()
    result = {"median_us": statistics.median(times) / 1000, "first_epoch_us": statistics.median(first_epoch) / 1000,
              **loop.report()}  # the shim's report flushes: the daemon has what it was sent
    if daemon is not None and daemon_mid is not None:
        end = daemon_cpu(scratch)
        result["daemon_first_ms"] = (daemon_mid - daemon) * 1000 / EPOCH
        result["daemon_later_ms"] = (end - daemon_mid) * 1000 / steps if end is not None else float("nan")
    return result


def daemon_cpu(scratch: Path) -> float | None:
    """CPU seconds the benchmark's daemon has used so far, all its threads (/proc/<pid>/stat)."""
    try:
        pid = json.loads((Path(os.environ["WEIGHTSLAB_RUNTIME_DIR"]) / "daemon.json").read_text())["pid"]
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, KeyError, ValueError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def timed(step: Callable[[], None]) -> int:
    t0 = time.perf_counter_ns()
    step()
    return time.perf_counter_ns() - t0


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
    def __init__(self, expect_daemon: bool, *args: Any) -> None:
        import weightslab_shim

        super().__init__(weightslab_shim, *args)
        self.session = weightslab_shim.session()
        self.attached_steps = 0
        if expect_daemon:
            self.wait_attached()

    def _attached(self) -> bool:
        channel = self.session.channel
        return channel is not None and channel.attached.is_set()

    def wait_attached(self) -> None:
        """Attach before the first step, so the first epoch is the one that sends the previews."""
        self.session.start()
        deadline = time.monotonic() + ATTACH_TIMEOUT
        while not self._attached() and time.monotonic() < deadline:
            time.sleep(0.01)

    def after_step(self) -> None:
        self.attached_steps += self._attached()

    def report(self) -> dict[str, Any]:
        self.session.flush()
        result = {"dropped": self.session.dropped,
                  "attached_steps": self.attached_steps}
        self.wl.close()
        return result


# -- the parent: interleave the workers, print the table -------------------------------------------------


@dataclass
class Rows:
    """Per variant, per round: the round's median step times (µs) and what the worker reported."""

    steady: dict[str, dict[int, float]] = field(default_factory=dict)
    first_epoch: dict[str, dict[int, float]] = field(default_factory=dict)
    extras: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    leftover_rings: list[str] = field(default_factory=list)


def run_worker(v: Variant, steps: int, runtime: Path, scratch: Path) -> dict[str, Any]:
    """One variant, one round, in a fresh process forked from a server that has torch imported."""
    env = {"WEIGHTSLAB_RUNTIME_DIR": str(runtime), "WEIGHTSLAB_RUN_NAME": f"bench-{v.key}",
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(scratch)}
    receive, send = FORKSERVER.Pipe(duplex=False)
    proc = FORKSERVER.Process(target=worker_main, args=(v.key, steps, scratch, env, send))
    proc.start()
    send.close()
    ok: bool = False
    result: Any = "no result"
    try:
        if receive.poll(WORKER_TIMEOUT):
            ok, result = receive.recv()
        else:
            result = f"no result within {WORKER_TIMEOUT:.0f} s"
    except EOFError:
        pass  # it died before sending: the exit code and its log say why
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if not ok:
        raise RuntimeError(f"failed ({result}, exit code {proc.exitcode}, log {scratch / 'worker.log'})")
    return dict(result)


def worker_main(key: str, steps: int, scratch: Path, env: dict[str, str], send: Connection) -> None:
    log = os.open(scratch / "worker.log", os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(log, 1)  # the shim's and W&B's own lines stay out of the table
    os.dup2(log, 2)
    os.environ.update(env, TMPDIR=str(scratch))  # read by the shim's session and W&B, created here
    tempfile.tempdir = str(scratch)  # W&B's temp dirs go with the scratch dir (the fork inherits /tmp)
    try:
        send.send((True, worker(key, steps, scratch)))
    except Exception as exc:
        send.send((False, f"{type(exc).__name__}: {exc}"))


def measure(variants: list[Variant], steps: int, rounds: int) -> Rows:
    rows = Rows()
    with scratch_dir("wl-bench-overhead-") as root:
        runtime, alone = root / "rt", root / "no-daemon-rt"  # no daemon ever runs in `alone`
        with running_daemon(root, runtime):
            interleave(rows, variants, steps, rounds, root, runtime, alone)
        rows.leftover_rings = [name for rt in (runtime, alone) for name in list_rings(ring_prefix(rt))]
        for name in rows.leftover_rings:
            unlink(name)
    return rows


def interleave(rows: Rows, variants: list[Variant], steps: int, rounds: int, root: Path, runtime: Path,
               alone: Path) -> None:
    for r in range(rounds):
        order = list(variants)
        random.Random(r).shuffle(order)  # no variant always runs right after the same neighbour
        for v in order:
            if v.key in rows.failed:
                continue
            scratch = root / f"{v.key}-{r}"
            scratch.mkdir()
            try:
                res = run_worker(v, steps, alone if v.key == "shim-alone" else runtime, scratch)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                rows.failed[v.key] = str(exc)
                continue
            rows.steady.setdefault(v.key, {})[r] = float(res.pop("median_us"))
            rows.first_epoch.setdefault(v.key, {})[r] = float(res.pop("first_epoch_us"))
            rows.extras.setdefault(v.key, []).append(res)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr)


def ratios(meds: dict[int, float], bare: dict[int, float]) -> list[float]:
    """variant / bare, round by round."""
    return [meds[r] / bare[r] for r in meds if r in bare]


def print_table(rows: Rows, steps: int, rounds: int) -> None:
    import torch

    print(f"\nTraining overhead: 2-conv CNN (8, 16 channels), CPU, torch {torch.__version__}, 1 thread, "
          f"batch {BATCH}, {SAMPLES} samples 3x32x32, {CLASSES} classes; {rounds} rounds x ({EPOCH} first-epoch "
          f"+ {steps} timed) steps per variant, each in its own process; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    head = (f"{'variant':<19} {'µs/step':>8} {'vs bare':>7} {'(range)':>11} {'vs loader':>9} {'+µs/step':>8} "
            f"{'epoch 1':>7} {'dropped':>7}  logs per step")
    print(head)
    print("-" * len(head))
    bare, bare_first = rows.steady.get("bare", {}), rows.first_epoch.get("bare", {})
    loader = rows.steady.get("bare-sampler", {})
    for v in VARIANTS:
        why = missing(v) or rows.failed.get(v.key)
        meds = rows.steady.get(v.key)
        if why or not meds:
            print(f"{v.label:<19} {why or 'no result'}")
            continue
        steady, first = ratios(meds, bare), ratios(rows.first_epoch[v.key], bare_first)
        vs_loader = ratios(meds, loader)
        added = [meds[r] - bare[r] for r in meds if r in bare]
        extras = rows.extras[v.key]
        dropped = str(sum(e["dropped"] for e in extras)) if "dropped" in extras[0] else ""
        note = v.logs
        if v.key == "shim":
            attached = sum(e["attached_steps"] for e in extras) / (steps * len(extras))
            note += f" (attached for {attached:.0%} of timed steps)"
        print(f"{v.label:<19} {statistics.median(meds.values()):>8.0f} {statistics.median(steady):>7.3f} "
              f"{min(steady):>5.2f}-{max(steady):<5.2f} "
              f"{(statistics.median(vs_loader) if vs_loader else float('nan')):>9.3f} "
              f"{statistics.median(added):>+8.0f} {statistics.median(first):>7.3f} {dropped:>7}  {note}")
    print("(µs/step: median over rounds of each round's median after the first epoch; vs bare and +µs/step: "
          "median of the per-round ratio and difference to the DataLoader loop; vs loader: the same ratio to "
          "the bare loop over the shim's own loader, i.e. the cost of observation alone; epoch 1: the ratio to "
          "bare over the first epoch, when the attached shim also sends each sample's input once as a preview)")
    shim_against(rows)
    print(f"shared-memory rings left in /dev/shm after the runs: {len(rows.leftover_rings)}")


def shim_against(rows: Rows) -> None:
    """The attached shim against each baseline, first epoch (previews sent) and later epochs apart."""
    if "shim" not in rows.steady:
        return
    print("\nshim + daemon against each baseline (median of per-round ratios):")
    print(f"  {'baseline':<34} {'first epoch':>11} {'later epochs':>12}")
    for key, label in (("bare", "bare DataLoader loop"), ("bare-sampler", "bare loop over the shim's loader"),
                       ("shim-alone", "the shim detached (no daemon)")):
        if key not in rows.steady:
            continue
        first = ratios(rows.first_epoch["shim"], rows.first_epoch[key])
        later = ratios(rows.steady["shim"], rows.steady[key])
        print(f"  {label:<34} {statistics.median(first):>11.3f} {statistics.median(later):>12.3f}")
    extras = [e for e in rows.extras.get("shim", []) if "daemon_first_ms" in e]
    if extras:
        first_ms = statistics.median(e["daemon_first_ms"] for e in extras)
        later_ms = statistics.median(e["daemon_later_ms"] for e in extras)
        print(f"  {'daemon CPU per step (ms, all threads)':<34} {first_ms:>11.2f} {later_ms:>12.2f}"
              f"   ({BATCH} previews a step in the first epoch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=64, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round x 16 steps")
    args = parser.parse_args()
    steps, rounds = (16, 1) if args.quick else (args.steps, args.rounds)
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # before the fork server imports torch
    # torch._dynamo is what the first optimizer imports (1.5 s): imported once, in the server.
    FORKSERVER.set_forkserver_preload(["torch", "torch._dynamo", "weightslab_shim"])
    variants = [v for v in VARIANTS if missing(v) is None]
    print_table(measure(variants, steps, rounds), steps, rounds)


if __name__ == "__main__":
    main()
