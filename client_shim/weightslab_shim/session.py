"""The trainer's side of one run: step boundaries, commands, and what each step publishes.

Everything here runs on the training thread except `_on_message`, which the control thread calls.
The hot path (`end_step`) is a bounded copy into the ring and never waits for the daemon.
"""

from __future__ import annotations

import atexit
import functools
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from . import records, wire
from .channel import ControlChannel
from .checkpoints import Checkpointer
from .distributed import StepSync, job_of, node_rank_of, restart_of
from .evaluation import Evaluator, cancel_message
from .preview_offers import PREVIEW_BYTES_SHARE, Fields, PreviewOffers
from .publisher import Content, Publisher
from .records import SEP
from .ring import RecordType, RingWriter
from .runtime import CONTROL_SOCKET, control_endpoint, new_run_id, private_dir_problem, resolve_runtime_dir, ring_prefix
from .tensors import F32, F64, I64, Staged, hold

RING_MB_DEFAULT = 32
END_TIMEOUT = 3.0

CLOSE_FLUSH_SECONDS = 2.0

F = TypeVar("F", bound=Callable[..., Any])


def never_raises(method: F) -> F:
    """The training loop must not fail because of us: report the first error of each kind, go on."""

    @functools.wraps(method)
    def guarded(self: Session, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - invariant 1: nothing of ours raises into user code
            self.errors += 1
            key = f"{method.__name__}: {type(exc).__name__}: {exc}"[:300]
            if key not in self._reported:
                self._reported.add(key)
                sys.stderr.write(f"weightslab: {key} (ignored; training continues)\n")
            return None

    return cast(F, guarded)


class Session:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.runtime_dir = resolve_runtime_dir(env)
        script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("run")
        self.script_dir = str(script.resolve().parent)
        self._script_dir_id = _file_id(self.script_dir)  # lets the daemon tell whether it sees our files
        self.run_name = env.get("WEIGHTSLAB_RUN_NAME") or script.stem or "run"
        self.run_id = new_run_id(self.run_name)
        self.ring_bytes = int(_positive(env, "WEIGHTSLAB_RING_MB", RING_MB_DEFAULT) * 1024 * 1024)
        self.rank, self.world_size = _distributed(env)
        self.job = job_of(env)  # a torchrun job: every rank attaches to one run (distributed.py)
        self.restart = restart_of(env) if self.job else 0  # torchrun's elastic restarts so far
        self.node_rank = node_rank_of(env) if self.job else 0  # > 0: the job's home is another node's daemon
        self.sync = StepSync(self.rank, self.world_size) if self.job and self.world_size > 1 else None
        self.step = 0
        self.hparams: dict[str, Any] = {}
        self.splits: dict[str, int] = {}
        self.loaders: dict[str, Any] = {}
        self.optimizers: list[Any] = []
        self.models: list[Any] = []
        self.paused = False
        self.hp_sync = False  # the daemon says in its welcome; hello carries them until then
        self.current_split = "train"
        self.inbox: deque[wire.Message] = deque()
        self._cond = threading.Condition()
        self._fields: Fields = []
        self.previews = PreviewOffers()  # the batches offered for previews, and which samples the daemon has
        self._hp_dirty = True
        self._hp_sent: dict[str, Any] = {}
        self._pid = os.getpid()
        self._closed = False
        self.ring: RingWriter | None = None
        self.publisher: Publisher | None = None
        self.channel: ControlChannel | None = None
        self.started = False
        self.errors = 0
        self._reported: set[str] = set()
        self._applied_edits: dict[str, int] = {}  # edit cmd_id -> step applied: a re-send is acked, not redone
        self.checkpoints = Checkpointer(self, self._notify, resume=env.get("WEIGHTSLAB_RESUME", "").strip() == "1")
        self.signal_functions: list[Any] = []  # loss / metric wrappers, which an evaluation pass calls
        self.paused_seconds = 0.0  # time spent waiting while paused (evaluation's avg_batch_seconds leaves it out)
        self.wake_at = 1 << 62  # a step boundary at which this step count is reached runs evaluation.at_boundary
        self.evaluation = Evaluator(self)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.evaluation.started()
        problem = private_dir_problem(self.runtime_dir)
        if problem:  # someone else's (or an open) directory: whoever listens there must not hear us
            sys.stderr.write(f"weightslab: {problem}; training continues without weightslabd\n")
            return
        try:
            self.ring = RingWriter(ring_prefix(self.runtime_dir), self.ring_bytes, self.run_id)
        except OSError as exc:
            sys.stderr.write(f"weightslab: no shared-memory ring ({exc}); training continues unobserved\n")
            return
        self.previews.budget = self.ring.max_record // PREVIEW_BYTES_SHARE
        self.publisher = Publisher(self.ring, self._dropped)
        self.publisher.start()
        self.channel = ControlChannel(control_endpoint(self.runtime_dir), self._hello, self._heartbeat,
                                      self._on_message, runtime_dir=self.runtime_dir)
        self.channel.start()
        atexit.register(self.close)

    def close(self) -> None:
        """Flush what is pending, hand the ring over to the daemon, and stop (bounded wait)."""
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        with self._cond:
            self._cond.notify_all()
        if self.ring is None or self.channel is None or self.publisher is None:
            return
        self.checkpoints.close(CLOSE_FLUSH_SECONDS * 5)  # a checkpoint being written is finished and reported
        self.publisher.close(CLOSE_FLUSH_SECONDS)
        self.ring.mark_closed()
        if (not self.channel.attached.is_set() and self.channel.refused is None
                and (self.runtime_dir / CONTROL_SOCKET).exists()):
            self.channel.attached.wait(END_TIMEOUT)  # a daemon is there: let a short run reach it
        ever_attached = self.channel.attached.is_set() or self.channel.ended.is_set()
        if self.evaluation.report is not None and self.channel.attached.is_set():
            self.channel.send(self._heartbeat())  # the last pass's end, before the daemon hears of ours
        drained = self.channel.end_of_stream(
            {"type": wire.END, "run_id": self.run_id, "step": self.step}, END_TIMEOUT)
        self.channel.stop()
        # Unattached all along: nobody will read the ring. Attached but the daemon is gone now: a
        # restarted daemon drains it (both-dead recovery), so the records are not lost.
        self.ring.close(unlink_segment=drained or not ever_attached)

    # -- messages (control thread) -------------------------------------------------------------

    def _hello(self) -> wire.Message:
        ring = self.ring
        return {
            "type": wire.HELLO, "protocol": wire.PROTOCOL_VERSION, "pid": self._pid,
            "host": socket.gethostname(), "rank": self.rank, "world_size": self.world_size, "job": self.job,
            "restart": self.restart, "node_rank": self.node_rank,
            "run_name": self.run_name, "run_id": self.run_id, "script_dir": self.script_dir,
            "script_dir_id": self._script_dir_id,
            "splits": dict(self.splits), "hparams": _jsonable(self.hparams), "step": self.step,
            "paused": self.paused,
            "ring": {"name": ring.name, "capacity": ring.capacity} if ring else None,
            **self.checkpoints.hello_fields(),
        }

    @property
    def dropped(self) -> int:
        """Records lost so far: the ring was full, or the publisher thread was behind."""
        return (self.ring.dropped if self.ring else 0) + (self.publisher.dropped if self.publisher else 0)

    def _notify(self, msg: wire.Message) -> None:
        if self.channel is not None:
            self.channel.send(msg)

    def _heartbeat(self) -> wire.Message:
        beat = {"type": wire.HEARTBEAT, "step": self.step, "paused": self.paused, "dropped": self.dropped}
        if self.evaluation.report is not None:
            beat["eval"] = self.evaluation.report
        return beat

    def _on_message(self, msg: wire.Message) -> None:
        kind = msg["type"]
        if kind == wire.WELCOME:
            self.hp_sync = bool(msg.get("hp_sync", True))
            self._hp_dirty = True
            self.previews.welcome(msg.get("previews") or {}, self.splits, msg.get("reads_files") is True)
            with self._cond:  # a resume's load goes first, before the edits the daemon re-sends after this
                self.checkpoints.on_welcome(msg, self.inbox)
        elif cancel_message(msg):  # here, not at a boundary: a pass holds the training thread
            self.evaluation.cancel(msg)
        elif kind == wire.COMMAND and self.sync is not None and self.rank != 0:
            pass  # a job's commands reach its ranks through rank 0, at the same step (distributed.py)
        elif kind == wire.COMMAND:
            with self._cond:
                self.inbox.append(msg)
                self._cond.notify_all()
            self.checkpoints.on_command()

    def register_split(self, name: str, size: int) -> None:
        self.splits[name] = size
        self.previews.register(name, size)
        self._announce()

    def register_hparams(self, hp: dict[str, Any]) -> None:
        self.hparams = hp
        self._hp_dirty = True
        self.checkpoints.reschedule()
        self.evaluation.hparams_changed()
        self._announce()

    def _announce(self) -> None:
        if self.channel is not None:
            self.channel.send({"type": wire.REGISTER, "splits": dict(self.splits),
                               "hparams": _jsonable(self.hparams)})

    # -- step boundary ---------------------------------------------------------------------------

    @never_raises
    def begin_step(self, *, training: bool = True) -> None:
        if self._closed:
            return
        if not self.started:
            self.start()
        if self.checkpoints.resume_waiting:
            self.checkpoints.await_resume()
        if self.sync is not None and self.sync.ready():  # a job: every rank applies rank 0's commands now
            if training:  # only at training steps, which every rank runs (rank 0 may evaluate alone)
                self.sync.boundary(self)
        elif self.inbox or self.paused or self.step >= self.wake_at:
            self._apply_commands()

    @never_raises
    def end_step(self, *, training: bool) -> None:
        step = self.step
        if training:
            self.step += 1
        if os.getpid() != self._pid or self._closed:
            self._fields.clear()
            self.previews.take()
            return
        if self.hp_sync and self.hparams and (self._hp_dirty or _differs(self.hparams, self._hp_sent)):
            self._hp_sent = dict(self.hparams)  # user code may change the dict too: compare each step
            self.evaluation.hparams_changed()
            self._fields.append(("hp", Staged(records.json_field(_jsonable(self.hparams)))))
            self._hp_dirty = False
        publisher = self.publisher
        if self._fields:
            fields, self._fields = self._fields, []
            if publisher is not None:
                publisher.submit(RecordType.STEP if training else RecordType.EVAL, step, fields)
        previews = self.previews.take()
        if previews is not None and publisher is not None:
            publisher.submit(RecordType.PREVIEW, step, previews)
        if self.step >= self.checkpoints.auto_at and training:
            self.checkpoints.auto()

    def flush(self, timeout: float = CLOSE_FLUSH_SECONDS) -> bool:
        """Wait (bounded) until every step so far is in the ring."""
        return self.publisher.flush(timeout) if self.publisher is not None else True

    def _apply_commands(self) -> None:
        with self._cond:
            while True:
                while self.inbox:
                    self._apply(self.inbox.popleft())
                if self.step >= self.wake_at and not self._closed:  # an evaluation pass: run without the lock
                    self._cond.release()
                    try:
                        self.evaluation.at_boundary()
                    finally:
                        self._cond.acquire()
                    continue
                if not self.paused or self._closed:
                    return
                if self.publisher is not None:
                    self.publisher.wake()  # paused: what the last steps published goes out now
                waited = time.monotonic()
                self._cond.wait(0.5)  # the control thread keeps heartbeating meanwhile
                self.paused_seconds += time.monotonic() - waited

    def _apply(self, cmd: wire.Message) -> None:
        op = cmd.get("op")
        handler: Callable[[dict[str, Any]], dict[str, Any]] | None = {
            "set_hparams": self._set_hparams,
            "deny": self._deny,
            "set_denied": self._set_denied,
            "get_hparams": lambda args: {"hparams": _jsonable(self.hparams)},
            "save_checkpoint": lambda args: self.checkpoints.save(str(args.get("reason") or "command")),
            "load_checkpoint": lambda args: self.checkpoints.restore(str(args["path"])),
            "continue_at": self.checkpoints.continue_at,  # a restarted job's group without a checkpoint
            "evaluate": self.evaluation.request,
            "eval_policy": self.evaluation.set_policy,
        }.get(str(op))
        cmd_id = str(cmd.get("cmd_id"))
        ack: wire.Message = {"type": wire.ACK, "cmd_id": cmd_id, "step": self.step}
        if cmd_id in self._applied_edits:  # re-sent after a daemon restart: report, do not redo
            ack.update(ok=True, step=self._applied_edits[cmd_id], message="already applied")
        elif handler is None:
            ack.update(ok=False, message=f"unknown command {op!r}")
        else:
            try:
                ack.update(ok=True, **handler(dict(cmd.get("args") or {})))
            except Exception as exc:  # an edit that cannot apply is reported, never raised into the loop
                ack.update(ok=False, message=f"{type(exc).__name__}: {exc}")
            if ack["ok"] and cmd_id.startswith("e"):
                self._applied_edits[cmd_id] = self.step
        if self.channel is not None:
            self.channel.send(ack)

    def _set_hparams(self, values: dict[str, Any]) -> dict[str, Any]:
        applied: dict[str, Any] = {}
        for key, value in values.items():
            if key == "is_training":
                self.paused = not bool(value)
            elif key == "learning_rate":
                for opt in self.optimizers:
                    for group in opt.param_groups:
                        group["lr"] = float(value)
            elif key in ("batch_size", "train_batch_size", "val_batch_size", "test_batch_size"):
                for loader in self.loaders.values():
                    if (key in ("batch_size", "train_batch_size")) == loader.is_training or (
                            key == "val_batch_size" and "val" in loader.split) or (
                            key == "test_batch_size" and "test" in loader.split):
                        loader.batch_size = int(value)
            self.hparams[key] = value
            applied[key] = value
        self._hp_dirty = True
        self.checkpoints.reschedule()
        self.evaluation.hparams_changed()
        return {"applied": _jsonable(applied)}

    def _loader(self, split: str) -> Any:
        loader = self.loaders.get(split)
        if loader is None:
            raise KeyError(f"no loader named {split!r}")
        return loader

    def _deny(self, args: dict[str, Any]) -> dict[str, Any]:
        loader = self._loader(str(args["split"]))
        changed = loader.set_denied(_ids_arg(args, loader.sampler.size), bool(args.get("deny", True)))
        return {"changed": changed, "in_loop": loader.active_count()}

    def _set_denied(self, args: dict[str, Any]) -> dict[str, Any]:
        """The daemon's whole deny list for a split, sent when the trainer (re)attaches."""
        loader = self._loader(str(args["split"]))
        ids = _ids_arg(args, loader.sampler.size)
        loader.sampler.denied[:] = False
        loader.set_denied(ids, True)
        return {"in_loop": loader.active_count()}

    # -- what a step publishes ---------------------------------------------------------------------

    # Field names are kind, split, name and a serial, so one record can hold many batches (a test loop).

    @never_raises
    def add_signal(self, name: str, split: str, ids: Any, values: Any, targets: Any = None, preds: Any = None,
                   preds_raw: Any = None) -> None:
        """Per-sample values of one signal; targets and predictions of the same batch share its ids."""
        n = len(self._fields)
        self._fields.append((f"ids{SEP}{split}{SEP}{name}{SEP}{n}", hold(ids, I64)))
        self._fields.append((f"sig{SEP}{split}{SEP}{name}{SEP}{n}", hold(values, F32)))
        self._add_batch_values(split, n, targets, preds, preds_raw)
        if self.publisher is not None:
            self.publisher.nudge()  # a loss, before its backward: a publisher woken now takes no GIL from us

    @never_raises
    def add_scalar(self, name: str, value: Any) -> None:
        self._fields.append((f"scalar{SEP}{name}{SEP}{len(self._fields)}", hold(value, F64)))
        if self.publisher is not None:
            self.publisher.nudge()

    @never_raises
    def add_batch(self, split: str, ids: Any, targets: Any = None, preds: Any = None, preds_raw: Any = None) -> None:
        n = len(self._fields)
        self._fields.append((f"bids{SEP}{split}{SEP}{n}", hold(ids, I64)))
        self._add_batch_values(split, n, targets, preds, preds_raw)

    def _add_batch_values(self, split: str, serial: int, targets: Any, preds: Any, preds_raw: Any) -> None:
        for kind, values in (("tgt", targets), ("pred", preds), ("praw", preds_raw)):
            if values is not None:
                self._fields.append((f"{kind}{SEP}{split}{SEP}{serial}", hold(values)))

    @never_raises
    def note_inputs(self, split: str, ids: Any, inputs: Any, targets: Any = None,
                    path_of: Callable[[int], str | None] | None = None) -> None:
        """Offer a batch's inputs for previews: those of samples the daemon has none of are sent (bounded per
        step; picked off the training thread, see preview_offers.py)."""
        if self.channel is not None and self.channel.attached.is_set():
            self.previews.offer(split, ids, inputs, targets, path_of)

    def _dropped(self, rtype: int, fields: Content) -> None:
        """The publisher could not write a record: previews in it are offered again later."""
        if rtype == RecordType.PREVIEW:
            self.previews.unmark(fields)


def _ids_arg(args: Mapping[str, Any], size: int) -> np.ndarray:
    """Sample ids of a command: a list, or a packed mask for large sets."""
    if "mask" in args:
        return np.flatnonzero(wire.unpack_mask(str(args["mask"]), size))
    return np.asarray(args.get("ids", []), dtype=np.int64)


def _differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    try:
        return bool(a != b)
    except (ValueError, RuntimeError):  # values without a plain truth value (arrays): assume changed
        return True


def _distributed(env: Mapping[str, str]) -> tuple[int, int]:
    """(rank, world size) from torch's RANK and WORLD_SIZE; a bad value is warned about once and the
    process treated as rank 0 of 1 (not distributed)."""
    raw_rank, raw_world = env.get("RANK", "").strip(), env.get("WORLD_SIZE", "").strip()
    try:
        rank, world = int(raw_rank or 0), int(raw_world or 1)
        if rank >= 0 and world >= 1:
            return rank, world
    except ValueError:
        pass
    sys.stderr.write(f"weightslab: RANK={raw_rank!r} WORLD_SIZE={raw_world!r} are not a rank >= 0 and a size >= 1 "
                     "(as torch.distributed sets them); treating this process as rank 0 of 1\n")
    return 0, 1


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    """A trainer is never stopped by a bad setting: warn and use the default."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
        if value > 0:
            return value
    except ValueError:
        pass
    sys.stderr.write(f"weightslab: {name}={raw!r} is invalid (expected a number > 0); using {default}\n")
    return default


def _file_id(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    return str(value)
