"""Evaluation passes, run by the trainer at a step boundary (docs/evaluation-and-checkpoints.md).

The daemon asks (command `evaluate`); the training thread runs the pass at its next step boundary, or at
once while paused, outside the session's lock, so the control thread keeps heartbeating and a cancel
(applied on the control thread) reaches the pass between two batches. The training step does not advance
during a pass. Progress rides on the heartbeats (`eval`); per-sample values go out as one EVAL record at
the model age (more than one for a pass too large for a ring record). In a torchrun job every rank evaluates
its shard of the split, and the ranks agree before each batch whether to go on (distributed.py).

Periodic passes: every positive multiple of the hyperparameter `eval_full_to_train_steps_ratio` (N) of
the step count, each split whose loader is not a training loader is evaluated in registration order.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import wire
from .data import _Indexed, _stack
from .distributed import StepSync, eval_shard
from .records import SEP
from .ring import RecordType

if TYPE_CHECKING:
    from .session import Session

NEVER = 1 << 62
PERIODIC_KEY = "eval_full_to_train_steps_ratio"
RECENT = 8  # finished passes repeated in every heartbeat, so a daemon that missed one still learns of it
RECORD_SHARE = 4  # a pass sends its record early once its values fill 1/4 of the largest ring record
ACTIVE = ("requested", "running")
GO, CANCELLED, TIMED_OUT, FAILED = range(4)  # before each batch; in a job, the ranks' highest wins
STOPS = {"cancelled": CANCELLED, "timed out": TIMED_OUT}
STATES = {CANCELLED: "cancelled", TIMED_OUT: "timed out", FAILED: "error"}


@dataclass
class Request:
    id: str
    split: str
    ids: np.ndarray | None = None  # only these samples (the daemon resolved tags to ids); None: the whole split
    use_full_set: bool = False
    tags: list[str] = field(default_factory=list)
    periodic: bool = False


@dataclass
class Policy:
    """The daemon's timeout settings (WEIGHTSLAB_EVAL_TIMEOUT_*), sent with each request and on attach."""

    multiplier: float = 1.3
    min_seconds: float = 5.0
    fixed_seconds: float = 0.0

    def timeout(self, avg_batch_seconds: float, batches: int) -> float:
        if self.fixed_seconds > 0:
            return self.fixed_seconds
        return max(self.min_seconds, avg_batch_seconds * batches * self.multiplier)


class Evaluator:
    def __init__(self, session: Session) -> None:
        self.s = session
        self.function: Any = None  # a script's own per-batch evaluation, `fn(batch)` (watch_or_edit flag)
        self.policy = Policy()
        self.report: dict[str, Any] | None = None  # what heartbeats carry; replaced whole, never mutated
        self._pass: dict[str, Any] | None = None
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._queued: Request | None = None
        self._running: str | None = None
        # pass id -> "cancelled" / "timed out": written by the control thread, read between batches
        self._cancelled: dict[str, str] = {}
        self._every = 0
        self._next_periodic = NEVER
        # avg_batch_seconds: wall time per training step since the last pass (or the first step boundary),
        # time spent paused left out
        self._mark: tuple[float, int, float] | None = None
        self.avg_batch_seconds = 0.0

    # -- the session's hooks ------------------------------------------------------------------------

    def started(self) -> None:
        self._mark = (time.monotonic(), self.s.step, self.s.paused_seconds)

    def hparams_changed(self) -> None:
        """Arm (or disarm) periodic passes from the hyperparameter; cheap, called only on changes."""
        try:
            every = int(self.s.hparams.get(PERIODIC_KEY) or 0)
        except (TypeError, ValueError):
            every = 0
        if every == self._every:
            return
        self._every = max(0, every)
        self._next_periodic = (self.s.step // self._every + 1) * self._every if self._every else NEVER
        self._wake()

    def _wake(self) -> None:
        self.s.wake_at = 0 if self._queued is not None else self._next_periodic

    def request(self, args: dict[str, Any]) -> dict[str, Any]:
        """Command `evaluate` (training thread, at a boundary): queue a pass; it runs before the next step."""
        busy = self._queued.id if self._queued is not None else self._running
        if busy is not None:
            raise RuntimeError(f"evaluation pass {busy} is not finished: one pass at a time")
        split = str(args["split"])
        loader = self.s.loaders.get(split)
        if loader is None:
            raise KeyError(f"no loader named {split!r} (registered: {', '.join(self.s.loaders) or 'none'})")
        self.set_policy(args.get("policy") or {})
        ids = None
        if "mask" in args:
            ids = np.flatnonzero(wire.unpack_mask(str(args["mask"]), loader.sampler.size))
        elif "ids" in args:
            ids = np.asarray(args["ids"], dtype=np.int64)
        req = Request(str(args.get("id") or uuid.uuid4().hex[:8]), split, ids, bool(args.get("use_full_set")),
                      [str(t) for t in args.get("tags") or []])
        total = self._batch_count(loader, req)
        self._queued = req
        self._publish(self._entry(req, "requested", total=total))
        self._wake()
        return {"queued": req.id, "total": total}

    def set_policy(self, values: dict[str, Any]) -> dict[str, Any]:
        for key in ("multiplier", "min_seconds", "fixed_seconds"):
            if key in values:
                setattr(self.policy, key, float(values[key]))
        return {"policy": vars(self.policy)}

    def cancel(self, msg: wire.Message) -> None:
        """Command `cancel_eval`, on the control thread: the pass stops before its next batch."""
        args = dict(msg.get("args") or {})
        target = str(args.get("id") or self._running or (self._queued.id if self._queued else ""))
        self._cancelled[target] = "timed out" if args.get("timed_out") else "cancelled"
        if self.s.channel is not None:
            self.s.channel.send({"type": wire.ACK, "cmd_id": str(msg.get("cmd_id")), "ok": True,
                                 "step": self.s.step, "cancelling": target})

    def at_boundary(self) -> None:
        """Run what is due (training thread, session lock released): a requested pass, the periodic ones."""
        s = self.s
        due: list[Request] = []
        if self._queued is not None:
            due.append(self._queued)
            self._queued = None
        if s.step >= self._next_periodic:
            self._next_periodic = (s.step // self._every + 1) * self._every if self._every else NEVER
            due += [Request(uuid.uuid4().hex[:8], name, periodic=True)
                    for name, loader in s.loaders.items() if not loader.is_training]
        self._wake()
        for req in due:
            try:
                self._run(req)
            except Exception as exc:  # noqa: BLE001 - a bug of ours ends the pass, never the training
                self._running = None
                self._finish(self._entry(req, "error", error=f"{type(exc).__name__}: {exc}"[:500]))

    # -- the pass ----------------------------------------------------------------------------------------

    def _order(self, loader: Any, req: Request) -> np.ndarray:
        size = loader.sampler.size
        ids = np.arange(size) if req.ids is None else np.unique(req.ids[(req.ids >= 0) & (req.ids < size)])
        if not req.use_full_set:
            ids = ids[~loader.sampler.denied[ids]]
        return ids.astype(np.int64)

    def _batch_count(self, loader: Any, req: Request) -> int:
        return len(self._batches(loader, req))

    def _job(self) -> StepSync | None:
        """The job's ranks, when they meet (distributed.py): each evaluates its shard, batch by batch."""
        sync = self.s.sync
        return sync if sync is not None and sync.up else None

    def _batches(self, loader: Any, req: Request) -> list[np.ndarray]:
        order, size, job = self._order(loader, req), max(1, int(loader.batch_size)), self._job()
        if job is not None:
            return eval_shard(order, size, job.rank, job.world_size)
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _run(self, req: Request) -> None:
        s = self.s
        loader = s.loaders.get(req.split)
        now = time.monotonic()
        self._measure(now)
        job = self._job()
        if loader is None or (req.id in self._cancelled and job is None):  # in a job, the ranks agree below
            state = "error" if loader is None else self._cancelled.pop(req.id)
            self._finish(self._entry(req, state, error="" if loader else f"no loader named {req.split!r}"))
            return
        batches = self._batches(loader, req)
        timeout = self.policy.timeout(self.avg_batch_seconds, len(batches))
        deadline = now + timeout
        entry = self._entry(req, "running", total=len(batches), timeout_s=round(timeout, 3))
        self._running = req.id
        self._publish(entry)
        models = list(s.models)
        modes = [getattr(m, "training", None) for m in models]
        split_before, fields_before, s._fields = s.current_split, s._fields, []
        torch = sys.modules.get("torch")  # only when the script uses torch: never imported here otherwise
        state, error, done = "done", "", 0
        try:
            for model in models:
                if hasattr(model, "eval"):
                    model.eval()
            with torch.no_grad() if torch is not None else nullcontext():
                for at in range(len(batches) + 1):  # one more meeting after the last batch, for its errors
                    code = self._stop(req, done, deadline, error, last=at == len(batches))
                    if job is not None:
                        code = job.agree(code)
                    if code != GO:
                        state = STATES[code]
                        error = error or ("another rank's evaluation failed" if code == FAILED else "")
                        break
                    if at == len(batches):
                        break
                    try:
                        s.current_split = req.split
                        self._evaluate(loader, batches[at])
                    except Exception as exc:  # noqa: BLE001 - the user's model or loss failed: the pass ends
                        error = f"{type(exc).__name__}: {exc}"[:500]
                        continue  # the next meeting stops this rank and, in a job, the others
                    done += 1
                    self._publish(dict(entry, current=done))
                    if self._record_full():
                        self._send(req)
        except Exception as exc:  # noqa: BLE001 - the user's model or loss failed: the pass ends, training goes on
            state, error = "error", f"{type(exc).__name__}: {exc}"[:500]
        finally:
            for model, mode in zip(models, modes, strict=True):
                if mode is not None and hasattr(model, "train"):
                    model.train(mode)
            s.current_split = split_before
            self._send(req)
            s._fields = fields_before
            self._running = None
            self._cancelled.pop(req.id, None)
            self._mark = (time.monotonic(), s.step, s.paused_seconds)
        message = f"{done} of {len(batches)} batches"
        if state != "done" and done < len(batches):
            message += f" ({state}; the values of the {done} batches done are kept, labelled partial)"
        self._finish(dict(entry, state=state, current=done, error=error, message=message,
                          partial=state != "done" and done < len(batches)))

    def _stop(self, req: Request, done: int, deadline: float, error: str, *, last: bool) -> int:
        """This rank's word before a batch (after the last, only an error counts). In a job only rank 0
        takes cancels and times the pass: the daemon talks to rank 0."""
        if error:
            return FAILED
        job = self._job()
        if last or (job is not None and job.rank != 0):
            return GO
        stop = self._cancelled.pop(req.id, None)
        if stop is None and done and time.monotonic() > deadline:
            stop = "timed out"
        return GO if stop is None else STOPS[stop]

    def _evaluate(self, loader: Any, ids: np.ndarray) -> None:
        s = self.s
        indexed = _Indexed(loader.dataset)
        items = [indexed[int(i)] for i in ids]
        torch_loader = getattr(loader, "_loader", None)
        batch = torch_loader.collate_fn(items) if torch_loader is not None else _stack(items)
        inputs, batch_ids, targets = batch[0], batch[1], batch[2]
        s.note_inputs(loader.split, batch_ids, inputs, targets, loader.path_of)
        if self.function is not None:
            self.function(batch)
            return
        if len(s.models) != 1:
            raise RuntimeError(f"the default pass needs exactly one registered model, not {len(s.models)}: "
                               "register an evaluation function (watch_or_edit(fn, flag='evaluation'))")
        outputs = s.models[0](inputs)
        preds = _predictions(outputs)
        for signal in s.signal_functions:
            signal(outputs, targets, batch_ids=batch_ids, preds=preds)

    def _record_full(self) -> bool:
        ring = self.s.ring
        return ring is not None and sum(v.nbytes() for _, v in self.s._fields) > ring.max_record // RECORD_SHARE

    def _send(self, req: Request) -> None:
        """The pass's values so far, as an EVAL record at the model age; scalars get the split in their name."""
        s = self.s
        fields, s._fields = s._fields, []
        fields = [(_split_scalar(name, req.split), value) for name, value in fields]
        previews = s.previews.take()
        if s.publisher is None:
            return
        if fields:
            s.publisher.submit(RecordType.EVAL, s.step, fields)
        if previews is not None:
            s.publisher.submit(RecordType.PREVIEW, s.step, previews)

    def _measure(self, now: float) -> None:
        if self._mark is None:
            return
        since, step, paused = self._mark
        steps = self.s.step - step
        if steps > 0:
            self.avg_batch_seconds = max(0.0, now - since - (self.s.paused_seconds - paused)) / steps

    # -- what heartbeats carry ---------------------------------------------------------------------

    def _entry(self, req: Request, state: str, **extra: Any) -> dict[str, Any]:
        entry = {"id": req.id, "state": state, "split": req.split, "tags": req.tags, "use_full_set": req.use_full_set,
                 "periodic": req.periodic, "step": self.s.step, "current": 0, "total": 0,
                 "avg_batch_seconds": round(self.avg_batch_seconds, 6), "message": "", "error": ""}
        entry.update(extra)
        return entry

    def _publish(self, entry: dict[str, Any]) -> None:
        self._pass = entry
        self.report = {"pass": entry, "recent": list(self._recent)}

    def _finish(self, entry: dict[str, Any]) -> None:
        self._recent.append(entry)
        self._publish(entry)


def _split_scalar(name: str, split: str) -> str:
    parts = name.split(SEP)
    if parts[0] == "scalar" and len(parts) == 3:
        return SEP.join((parts[0], f"{parts[1]}/{split}", parts[2]))
    return name


def _predictions(outputs: Any) -> Any:
    """Class predictions of classifier outputs (2-D, several columns): argmax; else none."""
    shape = getattr(outputs, "shape", None)
    if shape is not None and len(shape) == 2 and shape[1] > 1 and hasattr(outputs, "argmax"):
        return outputs.argmax(1)
    return None


def cancel_message(msg: wire.Message) -> bool:
    return msg.get("type") == wire.COMMAND and msg.get("op") == "cancel_eval"

