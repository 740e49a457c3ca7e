"""Evaluation passes, asked for and watched: one pass at a time per run, a timeout the daemon enforces
even when the trainer is stuck inside a batch, and a pass whose trainer dies marked as an error.

Threads: gRPC and CLI threads call trigger / cancel / status; the control thread only hands heartbeat
reports over (`_heard`, no lock, no I/O); one `evaluation` thread merges them, writes the record and
watches deadlines and trainers.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import structlog

from weightslab_shim import wire
from weightslabd.evaluation import passes
from weightslabd.ipc.control import Attachment, ControlServer, pid_alive
from weightslabd.store.run import Run
from weightslabd.store.runs import RunRegistry

log = structlog.get_logger("weightslabd.evaluation")
TICK = 0.1  # while a pass is watched
IDLE_TICK = 1.0  # otherwise: a heartbeat's news or a new pass wakes it at once
APPLY_WAIT = 2.0  # how long a request waits for the trainer's ack before replying


@dataclass(frozen=True)
class TimeoutPolicy:
    """WEIGHTSLAB_EVAL_TIMEOUT_*: timeout = fixed_seconds if > 0, else
    max(min_seconds, avg_batch_seconds x batches x multiplier)."""

    multiplier: float = 1.3
    min_seconds: float = 5.0
    fixed_seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings: Any) -> TimeoutPolicy:
        return cls(float(settings.weightslab_eval_timeout_multiplier),
                   float(settings.weightslab_eval_timeout_min_seconds),
                   float(settings.weightslab_eval_timeout_seconds))


class Reply(NamedTuple):
    ok: bool
    message: str


class Evaluations:
    def __init__(self, registry: RunRegistry, control: ControlServer, policy: TimeoutPolicy | None = None,
                 stopping: threading.Event | None = None) -> None:
        self.registry = registry
        self.control = control
        self.policy = policy or TimeoutPolicy()
        self._stopping = stopping or threading.Event()
        self._lock = threading.Lock()  # trigger and cancel decide one at a time
        self._news: dict[tuple[str, int], tuple[Run, Any]] = {}
        self._seen: dict[tuple[str, int], Any] = {}  # (run, pid) -> the last report handed over
        self._policy_sent: set[tuple[str, int]] = set()
        self._watched: dict[str, Run] = {}
        self._wake = threading.Event()
        control.heartbeat_hooks.append(self._heard)
        self._thread = threading.Thread(target=self._loop, name="evaluation", daemon=True)
        self._thread.start()

    # -- requests ------------------------------------------------------------------------------------

    def trigger(self, run: Run, split: str, tags: list[str], use_full_set: bool) -> Reply:
        if split not in run.samples.splits:
            return Reply(False, f"no split {split!r}; this run has {', '.join(run.samples.splits) or 'none yet'}; "
                                "nothing was requested")
        args: dict[str, Any] = {"split": split, "tags": tags, "use_full_set": use_full_set,
                                "policy": asdict(self.policy)}
        if tags:
            with run.lock:
                table = run.samples.splits[split]
                mask = np.zeros(table.size, dtype=bool)
                for tag in tags:
                    mask |= table.tag_masks.get(tag, np.zeros(table.size, dtype=bool))
            if not mask.any():
                return Reply(False, f"no sample of split {split!r} carries any of the tags {tags}; nothing was "
                                    "requested")
            args["mask"] = wire.pack_mask(mask)
        att = self._attachment(run)
        if att is None:
            return Reply(False, "no trainer is attached: a pass runs in the trainer; nothing was requested")
        book = passes.of(run)
        with self._lock:  # the run lock (send_command) is never taken under the book's
            with book.lock:
                busy = book.active()
                if busy is not None:
                    return Reply(False, f"evaluation {busy['id']} of split {busy['split']!r} is {busy['state']}: one "
                                        "pass at a time; cancel it or wait for it (nothing was requested)")
                entry = {"id": uuid.uuid4().hex[:8], "state": "requested", "split": split, "tags": tags,
                         "use_full_set": use_full_set, "periodic": False, "step": run.step, "current": 0, "total": 0,
                         "message": "requested", "error": "", "requested_at": time.time(), "pid": att.pid}
                book.add(entry)
            args["id"] = entry["id"]
            pending = self.control.send_command(run, "evaluate", args)
        self._watch(run)
        if pending is None:
            with book.lock:
                book.finish(entry, "error", error="the trainer detached before the request reached it")
            return Reply(False, "the trainer detached before the request reached it; nothing was done")
        if not pending.done.wait(APPLY_WAIT) or pending.ack is None:
            return Reply(True, f"evaluation {entry['id']} of split {split!r} requested: it runs at the trainer's next "
                               "step boundary")
        ack = pending.ack
        if not ack.get("ok"):
            with book.lock:
                if entry["state"] == "requested":
                    book.finish(entry, "error", error=str(ack.get("message", "")))
            return Reply(False, f"the trainer refused the evaluation: {ack.get('message', '')}")
        return Reply(True, f"evaluation {entry['id']} of split {split!r} requested: {ack.get('total')} batches, "
                           f"at step {ack.get('step')}")

    def cancel(self, run: Run, reason: str) -> Reply:
        book = passes.of(run)
        with self._lock:
            with book.lock:
                entry = book.active()
                if entry is None:
                    return Reply(False, "no evaluation pass is requested or running; nothing to cancel")
                book.finish(entry, "cancelled", message=f"cancelled: {reason or 'by request'}")
            self.control.send_command(run, "cancel_eval", {"id": entry["id"], "reason": reason})
        return Reply(True, f"evaluation {entry['id']} cancelled: the trainer stops before its next batch")

    def status(self, run: Run | None) -> dict[str, Any]:
        if run is None:
            return {"status": "idle", "message": "no training run has attached to weightslabd yet"}
        book = passes.of(run)
        with book.lock:
            entry = book.latest()
            if entry is None:
                return {"status": "idle", "message": "no evaluation has run"}
            if entry.get("state") in passes.ACTIVE and run.run_id not in self._watched:
                self._watch(run)  # e.g. read back after a restart: its trainer may be gone
            return {"status": str(entry.get("state")), "current": int(entry.get("current") or 0),
                    "total": int(entry.get("total") or 0), "message": str(entry.get("message") or ""),
                    "error": str(entry.get("error") or ""), "split_name": str(entry.get("split") or ""),
                    "id": str(entry["id"]), "step": int(entry.get("step") or 0),
                    "partial": bool(entry.get("partial"))}

    def from_config(self, run: Run, text: str) -> Reply:
        """ExperimentCommand's `evaluation_config`: a JSON object naming a split (trigger) or `cancel`."""
        import json

        try:
            config = json.loads(text)
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
            if config.get("cancel"):
                return self.cancel(run, str(config.get("reason") or "evaluation_config cancel"))
            split = config.get("split_name", config.get("split"))
            tags = config.get("tags") or []
            if not isinstance(split, str) or not split:
                raise ValueError("it names no split (\"split_name\")")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ValueError("\"tags\" is not a list of strings")
            return self.trigger(run, split, tags, bool(config.get("use_full_set", False)))
        except ValueError as exc:
            return Reply(False, f"evaluation_config refused: {exc}; expected {{\"split_name\": \"eval\", "
                                "\"tags\": [...], \"use_full_set\": false}} or {\"cancel\": true}")

    # -- the evaluation thread ------------------------------------------------------------------------

    def _heard(self, att: Attachment, msg: wire.Message) -> None:
        """Control thread: hand over what is new, nothing else."""
        key = (att.run.run_id, att.pid)
        report = msg.get("eval")
        if key in self._policy_sent and self._seen.get(key) == report:
            return
        self._seen[key] = report
        self._news[key] = (att.run, report)
        self._wake.set()

    def _loop(self) -> None:
        recovered = False
        while not self._stopping.is_set():
            self._wake.wait(TICK if self._watched or not recovered else IDLE_TICK)  # news and _watch wake it
            self._wake.clear()
            try:
                if not recovered:
                    recovered = self._recover()
                self._tick()
            except Exception as exc:  # noqa: BLE001 - keep watching
                log.error("evaluation watch failed", error=f"{type(exc).__name__}: {exc}")

    def _recover(self) -> bool:
        """After a restart: a pass the record says was active is watched again."""
        run = self.registry.current()
        if run is not None and passes.of(run).active() is not None:
            self._watch(run)
        return True

    def _tick(self) -> None:
        while self._news:
            key, (run, report) = self._news.popitem()
            if key not in self._policy_sent:
                self._policy_sent.add(key)  # for the passes the trainer starts itself (periodic)
                self.control.send_command(run, "eval_policy", asdict(self.policy))
            if isinstance(report, dict):
                self._merge(run, report)
        for run_id, run in list(self._watched.items()):
            keep, timed_out = self._check(run)
            if timed_out:
                self.control.send_command(run, "cancel_eval", {"id": timed_out, "timed_out": True})
            if not keep:
                self._watched.pop(run_id, None)

    def _merge(self, run: Run, report: dict[str, Any]) -> None:
        book = passes.of(run)
        att = self._attachment(run)
        with book.lock:
            for item in [*report.get("recent", []), report.get("pass")]:
                if isinstance(item, dict) and item.get("id"):
                    book.merge(item, att.pid if att is not None else 0)
            if book.active() is not None:
                self._watched[run.run_id] = run

    def _check(self, run: Run) -> tuple[bool, str]:
        """One watched run: (still worth watching, the id of a pass to stop because it timed out)."""
        book = passes.of(run)
        with book.lock:
            entry = book.active()
            if entry is None:
                return False, ""
            deadline = entry.get("deadline")
            if entry["state"] == "running" and deadline is not None and time.time() > float(deadline):
                done = int(entry.get("current") or 0)
                book.finish(entry, "timed out", partial=True, message=(
                    f"no end of the pass by its deadline ({entry.get('timeout_s')} s + {passes.GRACE} s): the trainer "
                    f"may be stuck inside a batch; {done} of {entry.get('total')} batches done, their values kept"))
                return False, str(entry["id"])
            pid = int(entry.get("pid") or 0)
            status = run.manifest.get("status") if self._attachment(run) is None else "attached"
            # its own trainer gone: also when another (a resumed one) has attached to the run since
            if status in ("crashed", "ended") or (pid and not pid_alive(pid)):
                what = "ended" if status == "ended" else "died"
                book.finish(entry, "error", partial=int(entry.get("current") or 0) > 0,
                            error=f"the trainer {what} during the pass", message=f"the trainer {what} after "
                            f"{entry.get('current') or 0} of {entry.get('total') or 0} batches")
                return False, ""
            return True, ""  # running, or detached but alive: a restarted daemon waits for its hello

    def _watch(self, run: Run) -> None:
        self._watched[run.run_id] = run
        self._wake.set()

    def _attachment(self, run: Run) -> Attachment | None:
        return next((a for a in list(self.control.attachments.values()) if a.run is run), None)
