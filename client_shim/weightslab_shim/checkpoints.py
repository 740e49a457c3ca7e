"""Checkpoints, written by the trainer: the whole training state at a step boundary.

A checkpoint holds the models, the optimizers, every loader's sampler (epoch order, position, deny
mask, batch size, its random generator; a job's sharded sampler its epoch count), the hyperparameters,
the random states (Python, numpy, torch, CUDA) and the step. On the training thread only the copy to
host memory happens (tensors cloned to the CPU); a background thread writes it (temporary file, fsync,
rename, mode 0600) and then tells the daemon, which journals it. torch is imported only when the training already did.

Auto-checkpoints: hyperparameter `checkpoint_frequency` (N > 0: every N training steps; the Studio's
`checkpont_frequency` field edits it), keeping the newest `checkpoint_keep_last` files (default 5).

In a torchrun job every rank saves at the same step (commands reach all ranks at the same boundary, and
the auto schedule is the same everywhere). Rank 0 writes the checkpoint and reports it; rank r writes
only what is its own (random states and loaders) to `<checkpoint>.rank<r>.wlckpt` beside it, under a
name every rank derives alike. A restore reads both on every rank, the ranks agree (one all-reduce)
that all could, and only then does any rank load.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import queue
import random
import re
import secrets
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .runtime import CONTROL_SOCKET

FORMAT = 1
FREQUENCY_KEY = "checkpoint_frequency"
KEEP_KEY = "checkpoint_keep_last"
KEEP_DEFAULT = 5
SUFFIX = ".wlckpt"
NAME = re.compile(r"step-(\d{8,})-[0-9a-f]{6}\.wlckpt")
RANK_NAME = re.compile(r"step-(\d{8,})-[0-9a-f]{6}\.rank(\d+)\.wlckpt")  # a job's rank r > 0: its own part
NEVER = 1 << 62  # the next auto-checkpoint step when they are off: the per-step check stays one compare
UNRESTORED_HP = ("is_training",)  # a restore never pauses or resumes training
WELCOME_WAIT = 10.0
RESTART_WAIT = 30.0  # a restarted job's rank 0 waits longer: the daemon is there, and a wrong start costs more


def model_hash(models: list[Any]) -> str:
    """8 hex: the architecture, not the weights: each model's class and its state's names, shapes and
    dtypes, in order. Training leaves it alone; a layer added or resized changes it."""
    h = hashlib.sha256()
    for model in models:
        h.update(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
        state = model.state_dict() if hasattr(model, "state_dict") else {}
        for name, value in state.items():
            shape = tuple(getattr(value, "shape", ()))
            h.update(f"{name}:{shape}:{getattr(value, 'dtype', type(value).__name__)}\n".encode())
    return h.hexdigest()[:8]


class HostCopy:
    """Deep copies with every tensor copied to CPU memory: the only work the training thread waits for.

    The tensors of the last written checkpoint are kept and copied into again (same shape and dtype),
    so a checkpoint costs a memory copy, not fresh pages (first-touch faults cost more than the copy).
    A CUDA tensor goes to pinned memory without blocking, then one synchronize. Memory held between
    checkpoints: one copy of the state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spare: dict[tuple[Any, ...], list[Any]] = {}
        self._cuda = False

    def copy(self, value: Any) -> Any:
        with self._lock:
            spare, self._spare = self._spare, {}
        self._cuda = False
        out = self._copy(value, spare)
        if self._cuda:
            torch = _torch()
            if torch is not None:
                torch.cuda.synchronize()
        return out

    def give_back(self, value: Any) -> None:
        """After a write: the tensors of `value` serve the next copy (replacing any kept before)."""
        spare: dict[tuple[Any, ...], list[Any]] = {}
        _collect(value, spare)
        with self._lock:
            self._spare = spare

    def _copy(self, value: Any, spare: dict[tuple[Any, ...], list[Any]]) -> Any:
        if hasattr(value, "detach") and hasattr(value, "copy_"):
            t = value.detach()
            kept = spare.get(_key(t))
            if kept:
                out = kept.pop()
            else:
                torch = _torch()
                assert torch is not None  # a tensor in hand
                out = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            if t.is_cuda:
                self._cuda = True
                return out.copy_(t, non_blocking=True)
            return out.copy_(t)
        if isinstance(value, np.ndarray):
            return value.copy()
        if isinstance(value, dict):
            return {k: self._copy(v, spare) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._copy(v, spare) for v in value)
        return copy.deepcopy(value)


def _key(t: Any) -> tuple[Any, ...]:
    return tuple(t.shape), t.dtype


def _collect(value: Any, into: dict[tuple[Any, ...], list[Any]]) -> None:
    if hasattr(value, "detach") and hasattr(value, "copy_"):
        if value.device.type == "cpu":
            into.setdefault(_key(value), []).append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _collect(v, into)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect(v, into)


def _torch() -> Any:
    return sys.modules.get("torch")


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state()}
    torch = _torch()
    if torch is not None:
        states["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch = _torch()
    if torch is not None and "torch" in states:
        torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def loader_state(loader: Any) -> dict[str, Any]:
    sampler = loader.sampler
    epoch = None
    if loader._iter is not None and sampler.order is not None:
        cursor = sampler.marks[loader.taken - 1] if 0 < loader.taken <= len(sampler.marks) else 0
        epoch = {"order": sampler.order.copy(), "cursor": int(cursor)}
    state = {"denied": sampler.denied.copy(), "batch_size": sampler.batch_size,
             "rng": copy.deepcopy(sampler._rng.bit_generator.state), "epoch": epoch}
    if hasattr(sampler, "epoch"):  # a job's sharded sampler: the epoch that seeds the next order
        state["sampler_epoch"] = int(sampler.epoch)
    generator = getattr(loader._loader, "generator", None) if loader._loader is not None else None
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_loader_state(loader: Any, state: dict[str, Any]) -> None:
    sampler = loader.sampler
    denied = np.asarray(state["denied"], dtype=bool)
    if denied.shape != sampler.denied.shape:
        raise ValueError(f"loader {loader.split!r} has {sampler.size} samples, the checkpoint {denied.size}")
    sampler.denied[:] = denied
    sampler.batch_size = int(state["batch_size"])
    sampler._rng.bit_generator.state = state["rng"]
    generator = getattr(loader._loader, "generator", None) if loader._loader is not None else None
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    epoch = state.get("epoch")
    if "sampler_epoch" in state and hasattr(sampler, "epoch"):  # an epoch in progress counts itself again
        sampler.epoch = int(state["sampler_epoch"]) - (epoch is not None)
    if epoch is None:
        loader._iter = None
    else:  # made now: a DataLoader draws its seed here, and the random states are set after this
        sampler.resume_at = (np.asarray(epoch["order"]), int(epoch["cursor"]))
        loader._iter = loader._epoch()


@dataclass
class Written:
    path: Path
    step: int
    nbytes: int
    capture_s: float
    write_s: float


class Checkpointer:
    """One per session. `auto_at` is the next step an auto-checkpoint is due at (NEVER when off)."""

    def __init__(self, session: Any, notify: Callable[[dict[str, Any]], None], *, resume: bool = False) -> None:
        self.session = session
        self.notify = notify  # sends a message to the daemon (from the writer thread)
        self.auto_at = NEVER
        # WEIGHTSLAB_RESUME=1: continue the newest run of this name, from its latest checkpoint
        self.resume = resume
        self.resume_waiting = resume  # the first step waits (bounded) for the daemon's answer
        self.resume_run: str | None = None  # the run the daemon continues for us
        self._welcomed = threading.Event()
        self._follows = 0  # commands the daemon re-sends after a resume's welcome, not yet received
        self._resent = threading.Event()
        self.folder: Path | None = None  # the run folder the daemon's welcome names, when writable
        self.dirs: set[Path] = set()  # every checkpoint folder this process wrote to: restores come from these
        self.loaded: list[str] = []
        self._queue: queue.Queue[tuple[dict[str, Any], str, dict[str, Any]] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.written: list[Written] = []
        self.host = HostCopy()
        self.saves = 0  # in a job, part of each file's name: every rank counts the same saves
        # A worker group torchrun restarted: its first step continues the run (its newest checkpoint, else
        # the step the run reached), once rank 0 heard the daemon; rank 0 brings it to the others.
        self.restarted = bool(getattr(session, "job", None)) and int(getattr(session, "restart", 0)) > 0
        if self.restarted and int(getattr(session, "rank", 0)) == 0:
            self.resume_waiting = True
        self._first_welcome = True

    # -- where -------------------------------------------------------------------------------------

    def directory(self) -> Path:
        """<run folder>/checkpoints: the folder the daemon's welcome named if this process can write there,
        else $WEIGHTSLAB_ROOT_LOG_DIR/<run id>, else <script dir>/root_log_dir/<run id> (the daemon's
        default run folder). A write waits (bounded) for the welcome, so that it goes where the daemon is."""
        s = self.session
        if self.folder is not None:
            return self.folder / "checkpoints"
        root = os.environ.get("WEIGHTSLAB_ROOT_LOG_DIR", "").strip()
        base = Path(root).expanduser() if root else Path(s.script_dir) / "root_log_dir"
        return Path(base, str(s.run_id), "checkpoints")

    def set_folder(self, folder: str | None) -> None:
        if folder and os.path.isabs(folder) and os.access(folder, os.W_OK):
            self.folder = Path(folder)

    # -- resume -------------------------------------------------------------------------------------------

    def hello_fields(self) -> dict[str, Any]:
        if not self.resume:
            return {}
        return {"resume": self.resume_run or True}

    def on_welcome(self, msg: dict[str, Any], inbox: Any) -> None:
        """Control thread, under the session's command lock: the run folder, and a resume's checkpoint,
        queued before anything the daemon sends after its welcome (the edits made while we were away)."""
        self.set_folder(msg.get("folder"))
        first, self._first_welcome = self._first_welcome, False
        s = self.session
        takes = getattr(s, "sync", None) is None or s.rank == 0  # a job's other ranks get it from rank 0
        if first and self.restarted and not self.resume:
            self._follows = _int(msg.get("follows"))
            if self._follows <= 0:
                self._resent.set()
            found = msg.get("restart_from")
            ckpt = found.get("checkpoint") if isinstance(found, dict) else None
            if takes and isinstance(ckpt, dict) and ckpt.get("path"):
                inbox.appendleft({"type": "command", "cmd_id": "resume", "op": "load_checkpoint",
                                  "args": {"path": str(ckpt["path"])}})
            elif takes and isinstance(found, dict) and _int(found.get("step")) > 0:
                inbox.appendleft({"type": "command", "cmd_id": "restart", "op": "continue_at",
                                  "args": {"step": _int(found.get("step"))}})
                sys.stderr.write(f"weightslab: restarted workers; run {msg.get('run_id')} has no checkpoint: the "
                                 f"training starts afresh, its steps counted on from {found.get('step')}\n")
        elif self.resume and self.resume_run is None:
            self.resume_run = str(msg.get("run_id"))
            self._follows = _int(msg.get("follows"))
            if self._follows <= 0:
                self._resent.set()
            found = msg.get("resume_from")
            if isinstance(found, dict) and found.get("path"):
                if takes:
                    inbox.appendleft({"type": "command", "cmd_id": "resume", "op": "load_checkpoint",
                                      "args": {"path": str(found["path"])}})
            elif "resume_from" in msg:
                sys.stderr.write(f"weightslab: resuming run {self.resume_run}: it has no checkpoint; the "
                                 "training starts from its own initial state\n")
            else:
                sys.stderr.write(f"weightslab: no earlier run named {self.session.run_name!r} to resume; this "
                                 "is a new run\n")
        self._welcomed.set()

    def on_command(self) -> None:
        """Control thread: one more command arrived (a resume waits for those its welcome announced)."""
        if self._follows > 0:
            self._follows -= 1
            if self._follows == 0:
                self._resent.set()

    def await_resume(self, timeout: float = 10.0) -> None:
        """First step of a resumed run: wait for the daemon's welcome and the edits it re-sends (bounded),
        so the checkpoint loads, and the edits made while the script was down apply, before any step."""
        self.resume_waiting = False
        channel = self.session.channel
        if channel is None or not (self.session.runtime_dir / CONTROL_SOCKET).exists():
            why = "WEIGHTSLAB_RESUME=1" if self.resume else "restarted workers"
            sys.stderr.write(f"weightslab: {why} but no weightslabd runs here; training starts fresh\n")
            return
        timeout = RESTART_WAIT if self.restarted and not self.resume else timeout
        deadline = time.monotonic() + timeout
        if not self._welcomed.wait(timeout) or not self._resent.wait(max(0.0, deadline - time.monotonic())):
            sys.stderr.write("weightslab: no full answer from weightslabd to resume from; training goes on\n")

    # -- the schedule ----------------------------------------------------------------------------------

    def reschedule(self) -> None:
        every = _int(self.session.hparams.get(FREQUENCY_KEY))
        step = int(self.session.step)
        self.auto_at = (step // every + 1) * every if every > 0 else NEVER

    def auto(self) -> None:
        self.reschedule()
        self.save("auto")

    # -- save --------------------------------------------------------------------------------------------

    def save(self, reason: str) -> dict[str, Any]:
        """Capture now (training thread), write in the background. The reply names the file to come."""
        began = time.perf_counter()
        s = self.session
        step, rank = int(s.step), self._job_rank()
        name = f"step-{step:08d}-{self._token(step)}{SUFFIX}"
        own = {"format": FORMAT, "step": step, "rank": rank, "world_size": int(getattr(s, "world_size", 1)),
               "loaders": {split: loader_state(loader) for split, loader in s.loaders.items()}, "rng": rng_states()}
        state = own if rank > 0 else dict(
            own, run_id=self.resume_run or s.run_id, model_hash=model_hash(s.models),
            models=[m.state_dict() for m in s.models if hasattr(m, "state_dict")],
            optimizers=[o.state_dict() if hasattr(o, "state_dict") else getattr(o, "param_groups", None)
                        for o in s.optimizers],
            hparams=dict(s.hparams))
        state = self.host.copy(state)
        capture_s = time.perf_counter() - began
        path = self.directory() / name if self.folder is not None else None
        mhash = model_hash(s.models) if rank > 0 else state["model_hash"]
        info = {"step": step, "name": rank_file_name(name, rank) if rank > 0 else name, "reason": reason,
                "model_hash": mhash, "hparams": _jsonable(dict(s.hparams)), "capture_s": capture_s,
                "keep": _int(s.hparams.get(KEEP_KEY), KEEP_DEFAULT)}
        self._start()
        self._queue.put((state, info["name"], info))  # waits only while the previous write still runs
        return {"path": str(path) if path else "", "step": step, "model_hash": mhash,
                "pause_ms": round((time.perf_counter() - began) * 1000, 3)}

    def _job_rank(self) -> int:
        """This process's rank in a job of several ranks (0 otherwise): rank > 0 writes only its own part."""
        s = self.session
        return int(s.rank) if getattr(s, "sync", None) is not None else 0

    def _token(self, step: int) -> str:
        """6 hex of the file name: random, or in a job of several ranks the same on every rank (the job,
        its restart, the step and the count of saves, which every rank shares)."""
        self.saves += 1
        s = self.session
        if getattr(s, "sync", None) is None:
            return secrets.token_hex(3)
        return hashlib.sha256(f"{s.job}|{s.restart}|{step}|{self.saves}".encode()).hexdigest()[:6]

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._writer, name="weightslab-checkpoints", daemon=True)
            self._thread.start()

    def _writer(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                state, name, info = item
                keep = info.pop("keep", KEEP_DEFAULT)
                if self.folder is None and self.session.channel is not None:
                    self._welcomed.wait(WELCOME_WAIT)  # an early checkpoint: learn the run folder first
                path = self.directory() / name
                info["path"] = str(path)
                try:
                    began = time.perf_counter()
                    self.dirs.add(path.parent)
                    nbytes = write_file(path, state)
                    removed = self._prune(path.parent, keep)
                    write_s = time.perf_counter() - began
                    self.host.give_back(state)
                    self.written.append(Written(path, state["step"], nbytes, info["capture_s"], write_s))
                    if NAME.fullmatch(name):  # a rank's own part is not a checkpoint of its own: not reported
                        self.notify(dict(info, type="checkpoint", bytes=nbytes, write_s=write_s, removed=removed))
                except Exception as exc:  # noqa: BLE001 - a full disk costs this checkpoint, not the training
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    sys.stderr.write(f"weightslab: checkpoint {path.name} not written: {self.last_error}\n")
                    if NAME.fullmatch(name):
                        self.notify(dict(info, type="checkpoint", error=self.last_error))
            finally:
                self._queue.task_done()

    def wait(self, timeout: float = 30.0) -> bool:
        """Until every queued checkpoint is written (bounded)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _prune(self, folder: Path, keep: int) -> list[str]:
        """All but the `keep` newest of this rank's files (rank 0: the checkpoints, and the ranks' parts of
        those it removes; rank r: its own parts). The checkpoints removed."""
        if keep <= 0:
            return []
        rank = self._job_rank()
        ours = [p for p in folder.iterdir() if (rank_of_file(p.name) == rank if rank else NAME.fullmatch(p.name))]
        # newest written last (not highest step: after a restore to an earlier step, new files have lower steps)
        mine = sorted(ours, key=lambda p: (p.stat().st_mtime_ns, _step_of(p)))
        removed = []
        for old in mine[:-keep]:
            parts = [p for p in folder.glob(old.name[:-len(SUFFIX)] + ".rank*" + SUFFIX)] if rank == 0 else []
            for each in (old, *parts):
                try:
                    each.unlink()
                except OSError:
                    continue
                if each is old and rank == 0:
                    removed.append(str(old))
        return removed

    # -- restore -----------------------------------------------------------------------------------------

    def restore(self, path_text: str) -> dict[str, Any]:
        """Roll the training back to a checkpoint file of this run (training thread, step boundary). In a
        job every rank reads the checkpoint and its own part first; they agree that all could, then load."""
        s = self.session
        problem: Exception | None = None
        try:
            path, state, own = self._read(path_text)
        except Exception as exc:  # noqa: BLE001 - told to the other ranks before it is raised
            problem = exc
        sync = getattr(s, "sync", None)
        if sync is not None and sync.up and sync.agree(1 if problem else 0) and problem is None:
            raise ValueError("another rank of the job could not read this checkpoint; no rank loaded it")
        if problem is not None:
            raise problem
        models = [m for m in s.models if hasattr(m, "state_dict")]
        for model, saved in zip(models, state["models"], strict=True):
            model.load_state_dict(saved)
        for opt, saved in zip(s.optimizers, state["optimizers"], strict=True):
            if hasattr(opt, "load_state_dict"):
                opt.load_state_dict(saved)
            elif saved is not None:
                opt.param_groups[:] = copy.deepcopy(saved)
        mine = own if own is not None else state  # a rank's own loaders and random states, if it has them
        for name, saved in mine["loaders"].items():
            set_loader_state(s.loaders[name], saved)
        kept = {k: s.hparams[k] for k in UNRESTORED_HP if k in s.hparams}
        s.hparams.clear()
        s.hparams.update(state["hparams"])
        s.hparams.update(kept)
        s.step = int(state["step"])
        s._hp_dirty = True  # the daemon hears the restored hyperparameters with the next step
        if own is not None or self._job_rank() == 0:
            set_rng_states(mine["rng"])  # last: making a loader's epoch above may have drawn from them
        self.reschedule()
        self.loaded.append(str(path))
        if self._job_rank() > 0:  # rank 0's ack names the file (the daemon journals a resume's load once)
            return {"step": s.step, "own_part": own is not None}
        return {"restored": str(path), "step": s.step}

    def continue_at(self, args: dict[str, Any]) -> dict[str, Any]:
        """A restarted worker group with no checkpoint to load: its steps go on from the run's (training
        starts afresh, but the run's history never goes back)."""
        s = self.session
        step = _int(args.get("step"))
        if step > s.step:
            s.step = step
            s._hp_dirty = True
            self.reschedule()
        return {"step": s.step}

    def _read(self, path_text: str) -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
        """The checkpoint, checked against this trainer, and in a job rank r's own part of it (None when
        the checkpoint has none for this rank: it was written by fewer ranks, or the part was lost)."""
        # rank r > 0 takes the folder rank 0 checked: the load reached it over the job's own process group,
        # maybe before its own welcome named the run folder
        path = self._checked(path_text, any_folder=self._job_rank() > 0)
        state = read_file(path)
        s = self.session
        if state.get("format") != FORMAT:
            raise ValueError(f"{path.name} is checkpoint format {state.get('format')}, this shim reads {FORMAT}")
        models = [m for m in s.models if hasattr(m, "state_dict")]
        if len(models) != len(state["models"]) or len(s.optimizers) != len(state["optimizers"]):
            raise ValueError(f"{path.name} holds {len(state['models'])} models and {len(state['optimizers'])} "
                             f"optimizers; this trainer has {len(models)} and {len(s.optimizers)}")
        missing = sorted(set(state["loaders"]) - set(s.loaders))
        if missing:
            raise ValueError(f"{path.name} names loaders this trainer lacks: {missing}")
        if state["model_hash"] != model_hash(s.models):
            raise ValueError(f"{path.name} is of another architecture (model hash {state['model_hash']}, this "
                             f"model {model_hash(s.models)})")
        rank = self._job_rank()
        if rank == 0:
            return path, state, None
        self.wait()  # this rank's part of a checkpoint just taken may still be being written
        part = path.with_name(rank_file_name(path.name, rank))
        if not os.path.lexists(part):
            sys.stderr.write(f"weightslab: {path.name} has no part of rank {rank}: this rank loads rank 0's "
                             "loaders and keeps its own random states\n")
            return path, state, None
        self._private(part)
        own = read_file(part)
        if own.get("step") != state["step"] or sorted(own.get("loaders", ())) != sorted(state["loaders"]):
            raise ValueError(f"{part.name} does not match {path.name}")
        return path, state, own

    def _checked(self, text: str, any_folder: bool = False) -> Path:
        """Only a checkpoint file of ours: named as we name them, in this run's checkpoint folder (or the
        folder a resume names), a plain file of this user that no one else may write."""
        path = Path(text)
        if not NAME.fullmatch(path.name) or not path.is_absolute() or ".." in path.parts:
            raise ValueError(f"{text!r} is not a checkpoint file name this shim writes")
        if not any_folder and path.parent.resolve() not in {d.resolve() for d in (*self.dirs, self.directory())}:
            raise ValueError(f"{path.name} is not in a checkpoint folder of this run ({self.directory()})")
        return self._private(path)

    @staticmethod
    def _private(path: Path) -> Path:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise ValueError(f"{path} is not a private file of this user; not loaded")
        return path

    def close(self, timeout: float) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.wait(timeout)


def write_file(path: Path, state: dict[str, Any]) -> int:
    """Temporary file (0600), fsync, rename, fsync of the folder: a crash leaves the old set or the new."""
    _private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            torch = _torch()
            if torch is not None:
                torch.save(state, f)
            else:
                pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
            nbytes = f.tell()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return nbytes


def _private_dirs(folder: Path) -> None:
    """Create `folder` and the folders above it that are missing, each 0700 (not the umask's mode)."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        try:
            each.mkdir(mode=0o700)
            os.chmod(each, 0o700)
        except FileExistsError:
            pass


def read_file(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head[:2] == b"PK":  # torch's zip format
            torch = _torch()
            if torch is None:
                import torch  # noqa: F811 - a torch checkpoint needs it
            return dict(torch.load(f, map_location="cpu", weights_only=False))
        return dict(pickle.load(f))  # noqa: S301 - our own private file, checked by Checkpointer._checked


def rank_file_name(name: str, rank: int) -> str:
    """The name of rank `rank`'s own part of checkpoint `name`."""
    return f"{name[:-len(SUFFIX)]}.rank{rank}{SUFFIX}"


def rank_of_file(name: str) -> int | None:
    m = RANK_NAME.fullmatch(name)
    return int(m.group(2)) if m else None


def _step_of(path: Path) -> int:
    m = NAME.fullmatch(path.name) or RANK_NAME.fullmatch(path.name)
    return int(m.group(1)) if m else -1


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else default
    except (TypeError, ValueError):
        return default


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    except (TypeError, ValueError):
        return {}
