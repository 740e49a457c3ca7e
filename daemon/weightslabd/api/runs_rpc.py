"""Checkpoints and runs for the Studio and the CLI: save, restore, list, rename, notes, plot notes.

The trainer writes and loads checkpoint files at a step boundary (weightslab_shim.checkpoints); the
daemon asks, waits a bounded time, and journals what happened (store/checkpoints.py). Also the truthful
refusals of the ExperimentCommand fields weightslabd does not serve.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from weightslabd.ipc.control import ControlServer
from weightslabd.ops.watchdog import touch
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store import checkpoints
from weightslabd.store.checkpoints import RunBook
from weightslabd.store.experiment_hash import is_hash
from weightslabd.store.run import Run
from weightslabd.store.runs import RunRegistry

ACK_WAIT = 10.0  # the trainer's answer comes at its next step boundary
WRITE_WAIT = 30.0  # then the background write of a save, and its journal entry
NOT_SERVED = {
    "restart_operation": "weightslabd is a sidecar: it does not own the training process and cannot restart "
                         "it; stop and start the script (WEIGHTSLAB_RESUME=1 continues the run from its latest "
                         "checkpoint)",
    "get_interactive_layers": "weightslabd never holds the model: the layer and neuron views (weights, "
                              "activations) are not served",
    "get_single_layer_info_id": "weightslabd never holds the model: the layer and neuron views (weights, "
                                "activations) are not served",
    "get_data_records": "sample records are served by GetDataSamples (the grid), not by ExperimentCommand",
}


# The TrainerCommand fields the servicer acts on; any other field set is refused (a field added to the
# message later included), so no request is answered success for what nothing did.
SERVED = frozenset({"get_hyper_parameters", "hyper_parameter_change", "deny_samples_operation",
                    "deny_eval_samples_operation", "remove_from_denylist_operation",
                    "remove_eval_from_denylist_operation", "save_checkpoint_operation", "load_checkpoint_operation",
                    "plot_note_operation"})


def refusals(request: Any) -> list[str]:
    """'<field>: <why>' for each field set in the request that weightslabd does not serve."""
    out = []
    for field, _ in request.ListFields():
        if field.name in SERVED:
            continue
        why = NOT_SERVED.get(field.name, "weightslabd does not know this operation")
        out.append(f"{field.name}: not supported: {why}; nothing was done")
    return out


def _wait(done: Callable[[], bool], seconds: float, wait: Callable[[float], Any]) -> bool:
    """Until done() (checked each time wait() returns) or `seconds` pass; the watchdog is told each
    second that this call is waiting for the trainer, not stuck."""
    deadline = time.monotonic() + seconds
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        touch()
        wait(min(1.0, left))
    return True


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts else ""


class RunsApi:
    def __init__(self, registry: RunRegistry, control: ControlServer) -> None:
        self.registry = registry
        self.control = control

    # -- save and restore --------------------------------------------------------------------------------

    def save(self, run: Run, reason: str = "command") -> tuple[bool, str]:
        pending = self.control.send_command(run, "save_checkpoint", {"reason": reason})
        if pending is None:
            return False, f"no trainer is attached to run {run.run_id}: checkpoints are written by the trainer"
        if not _wait(pending.done.is_set, ACK_WAIT, pending.done.wait) or pending.ack is None:
            return True, "asked; the trainer writes it at its next step boundary"
        ack = pending.ack
        if not ack.get("ok"):
            return False, f"the trainer could not save a checkpoint: {ack.get('message', '')}"
        path = str(ack.get("path"))
        with run.changed:  # notified when the checkpoint is journaled (store/checkpoints.journal)
            _wait(lambda: any(c.path == path for c in run.book.checkpoints), WRITE_WAIT, run.changed.wait)
            ckpt = next((c for c in run.book.checkpoints if c.path == path), None)
        if ckpt is None:
            return True, (f"captured at step {ack.get('step')} ({ack.get('pause_ms')} ms); the trainer is still "
                          f"writing {path}")
        return True, (f"checkpoint {ckpt.hash}@{ckpt.step} written: {ckpt.path} ({ckpt.bytes} bytes; training "
                      f"paused {ack.get('pause_ms')} ms)")

    def restore(self, text: str) -> tuple[bool, str]:
        try:
            run, ckpt = checkpoints.find(self.registry, text)
        except ValueError as exc:
            return False, str(exc)
        pending = self.control.send_command(run, "load_checkpoint", {"path": ckpt.path})
        if pending is None:
            return False, (f"no trainer is attached to run {run.run_id}: start its script with WEIGHTSLAB_RESUME=1 "
                           "to continue from its latest checkpoint")
        if not _wait(pending.done.is_set, ACK_WAIT, pending.done.wait) or pending.ack is None:
            return True, f"asked; the trainer loads {ckpt.hash}@{ckpt.step} at its next step boundary"
        ack = pending.ack
        if not ack.get("ok"):
            return False, f"the trainer could not load {ckpt.path}: {ack.get('message', '')}"
        try:
            checkpoints.record_loaded(run, ckpt.path)
        except OSError as exc:
            return True, f"restored step {ckpt.step} (not journaled: {exc.strerror or exc})"
        return True, f"restored {ckpt.hash}@{ckpt.step}: training continues from step {ack.get('step')}"

    def load_step(self, step: int) -> tuple[bool, str]:
        """LoadCheckpointOperation: its checkpoint_id is the step of one of the current run's checkpoints."""
        return self.restore(f"@{step}")

    # -- notes ---------------------------------------------------------------------------------------------

    def plot_note(self, op: Any) -> tuple[bool, str]:
        run = self.registry.get(op.experiment_hash) if op.experiment_hash else self.registry.current()
        if run is None:
            return False, f"no run {op.experiment_hash!r} (a plot point's experiment_hash is its run id)"
        if not op.metric_name:
            return False, "plot_note_operation names no metric_name"
        try:
            note = checkpoints.check_text(op.note, "the note", checkpoints.NOTES_MAX)
            checkpoints.journal(run, {"kind": "plot_note", "metric": op.metric_name, "age": int(op.model_age),
                                      "note": note})
        except ValueError as exc:
            return False, f"note refused, nothing changed: {exc}"
        except OSError as exc:
            return False, f"note not saved, nothing changed: {exc.strerror or exc}"
        return True, ("note removed" if not note else "note saved") + f" on {op.metric_name} at step {op.model_age}"

    def _holder(self, key: str) -> Run | None:
        if not (is_hash(key) or key in self.registry.known):
            return None
        if key in self.registry.known:
            return self.registry.get(key)
        holders = checkpoints.holders(self.registry, key)
        return self.registry.get(holders[0]) if holders else None

    def set_text(self, key: str, kind: str, value: str) -> tuple[bool, str]:
        """A run's (or an experiment hash's) name or notes, journaled in the run that holds it."""
        run = self._holder(key)
        if run is None:
            return False, f"no run or experiment hash {key!r} is known"
        field = "name" if kind == "run_name" else "notes"
        try:
            text = checkpoints.check_text(value, f"the {field}", checkpoints.NAME_MAX if field == "name"
                                          else checkpoints.NOTES_MAX)
            if field == "name" and not text.strip():
                raise ValueError("the new name is empty")
            checkpoints.journal(run, {"kind": kind, "key": key, field: text})
        except ValueError as exc:
            return False, f"refused, nothing changed: {exc}"
        except OSError as exc:
            return False, f"not saved, nothing changed: {exc.strerror or exc}"
        return True, f"{field} of {key} saved"

    # -- listing -------------------------------------------------------------------------------------------

    def list_runs(self) -> Any:
        """One entry per run (its id as experiment_hash), then one per experiment hash of its checkpoints."""
        reply = pb.ListExperimentRunsResponse()
        current = self.registry.current_id
        for run_id, (manifest, mtime) in sorted(checkpoints.listing(self.registry).items(),
                                                key=lambda kv: float(kv[1][0].get("created") or 0)):
            book = RunBook.from_summary(manifest.get("book") or {})
            name = book.names.get(run_id) or str(manifest.get("run_name") or run_id)
            latest = book.latest()
            reply.runs.add(experiment_hash=run_id, experiment_name=name, notes=book.notes.get(run_id, ""),
                           created=_iso(float(manifest.get("created") or 0)),
                           last_used=_iso(max(mtime, book.last_used)),
                           latest_weight_step=latest.step if latest else 0, is_current=run_id == current)
            for ehash in sorted(book.used, key=lambda h: book.first.get(h, 0.0)):
                steps = [c.step for c in book.checkpoints if c.hash == ehash]
                reply.runs.add(experiment_hash=ehash, experiment_name=book.names.get(ehash, name),
                               notes=book.notes.get(ehash, ""), created=_iso(book.first.get(ehash, 0.0)),
                               last_used=_iso(book.used[ehash]), latest_weight_step=max(steps, default=0),
                               is_current=run_id == current and ehash == book.current_hash)
        return reply

    def checkpoint_list(self, run: Run) -> list[dict[str, Any]]:
        with run.lock:
            return [{"id": f"{c.hash}@{c.step}", "step": c.step, "path": c.path, "bytes": c.bytes,
                     "created": _iso(c.created), "reason": c.reason} for c in run.book.checkpoints]


def command(api: RunsApi, run: Run, request: Any) -> Any | None:
    """The checkpoint and plot-note operations of an ExperimentCommand (None: the request has none)."""
    if request.HasField("save_checkpoint_operation"):
        ok, message = api.save(run)
    elif request.HasField("load_checkpoint_operation"):
        ok, message = api.load_step(int(request.load_checkpoint_operation.checkpoint_id))
    elif request.HasField("plot_note_operation"):
        ok, message = api.plot_note(request.plot_note_operation)
    else:
        return None
    return pb.CommandResponse(success=ok, message=message)


def cli(api: RunsApi, run: Run, args: list[str]) -> dict[str, Any]:
    """`checkpoint save`, `checkpoint list`, `checkpoint restore HASH[@STEP]` (or RUN_ID[@STEP], or @STEP)."""
    what = args[0].lower() if args else ""
    if what == "save" and len(args) == 1:
        ok, message = api.save(run)
    elif what == "restore" and len(args) == 2:
        ok, message = api.restore(args[1])
    elif what == "list" and len(args) == 1:
        return {"ok": True, "run": run.run_id, "checkpoints": api.checkpoint_list(run)}
    else:
        raise ValueError("usage: checkpoint save | checkpoint list | checkpoint restore HASH[@STEP]")
    return {"ok": ok, "message": message}
