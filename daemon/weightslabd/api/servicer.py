"""ExperimentService: what Weights Studio calls (see STUDIO-WIRE.md). RPCs not built yet answer
UNIMPLEMENTED through the generated base class."""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import structlog
from google.protobuf.descriptor import FieldDescriptor

from weightslab_shim import wire
from weightslabd.agent.service import DataQueryAgent
from weightslabd.api import grid, histogram, plots, runs_rpc
from weightslabd.evaluation.coordinator import Evaluations, TimeoutPolicy
from weightslabd.ipc.control import ControlServer
from weightslabd.ops.watchdog import WatchdogInterrupt, touch
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.store.run import Run, StateBusy
from weightslabd.store.runs import RunRegistry

APPLY_WAIT = 2.0  # how long a hyperparameter edit waits for the trainer's ack before replying
FETCH_WAIT = 2.0  # how long a read waits for the trainer's hyperparameters when they are not synced
CURSOR_IDLE = 600.0
# HyperParameters field -> the trainer's hyperparameter key
HP_FIELDS = {
    "experiment_name": "experiment_name", "training_steps_to_do": "training_steps_to_do",
    "learning_rate": "learning_rate", "batch_size": "batch_size",
    "full_eval_frequency": "eval_full_to_train_steps_ratio",  # docs/evaluation-and-checkpoints.md
    "checkpont_frequency": "checkpoint_frequency", "is_training": "is_training", "nb_steps": "nb_steps",
    "auditor_mode": "auditor_mode", "train_batch_size": "train_batch_size", "val_batch_size": "val_batch_size",
    "test_batch_size": "test_batch_size", "evaluation_mode": "evaluation_mode",
    "evaluation_config": "evaluation_config",
}
TOTAL_STEP_KEYS = ("total_training_steps", "training_steps_to_do", "training_left", "nb_steps")
NO_RUN = "no training run has attached to weightslabd yet"
TAG_MODES = {pb.EDIT_OVERRIDE: "override", pb.EDIT_ACCUMULATE: "add", pb.EDIT_REMOVE: "remove"}
T = TypeVar("T")
# Test-only: with this set to 1 (only tests/integration/test_watchdog_e2e.py sets it), GetDataSplits blocks
# until its call ends, so the watchdog meets a really stuck handler. Read once, at start; other values: off.
TEST_STUCK_ENV = "WEIGHTSLABD_TEST_STUCK_GETDATASPLITS"



class ReaderCursors:
    """Per-client positions for incremental plot reads, so two browsers never take each other's points."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursors: OrderedDict[str, tuple[float, dict[tuple[str, str], int]]] = OrderedDict()

    def get(self, client: str) -> dict[tuple[str, str], int]:
        now = time.monotonic()
        with self._lock:
            entry = self._cursors.pop(client, None)
            cursor = entry[1] if entry else {}
            self._cursors[client] = (now, cursor)
            while self._cursors:
                oldest, (seen, _) = next(iter(self._cursors.items()))
                if now - seen < CURSOR_IDLE:
                    break
                del self._cursors[oldest]
            return cursor


def client_key(context: grpc.ServicerContext) -> str:
    """Who is reading: an explicit x-client-id, else the browser behind a proxy, else the connection."""
    meta = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    if meta.get("x-client-id"):
        return f"id:{meta['x-client-id']}"
    forwarded = meta.get("x-forwarded-for") or meta.get("x-envoy-external-address")
    if forwarded:
        return f"fwd:{forwarded}|{meta.get('user-agent', '')}"
    return f"peer:{context.peer()}"


class ExperimentServicer(pb_grpc.ExperimentServiceServicer):
    def __init__(self, registry: RunRegistry, control: ControlServer, lock_timeout: float = 60.0,
                 agent: DataQueryAgent | None = None, eval_policy: TimeoutPolicy | None = None) -> None:
        self.lock_timeout = lock_timeout  # GRPC_WATCHDOG_STUCK_SECONDS: past it, RESOURCE_EXHAUSTED
        self.agent = agent or DataQueryAgent()  # none configured: the built-in interpreter answers
        self.registry = registry
        self.control = control
        self.cursors = ReaderCursors()
        self.views = grid.GridViews()
        self.runs_api = runs_rpc.RunsApi(registry, control)
        self.stopping = threading.Event()
        self.evaluations = Evaluations(registry, control, eval_policy, self.stopping)  # evaluation/coordinator.py
        self._stuck_for_tests = os.environ.get(TEST_STUCK_ENV) == "1"
        if self._stuck_for_tests:
            structlog.get_logger("weightslabd.api").warning("test-only hook on: GetDataSplits blocks",
                                                            env=TEST_STUCK_ENV)

    def current_folder(self) -> Path | None:
        """Where the current experiment's files go (its audit log among them)."""
        run = self.registry.current()
        return run.folder if run is not None else None

    # -- training control --------------------------------------------------------------------

    def ExperimentCommand(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._busy_guard(context, lambda: self._command(request))

    def _holding(self, run: Run) -> AbstractContextManager[None]:
        return run.holding(self.lock_timeout)

    def _command(self, request: Any) -> Any:
        run = self.registry.current()
        if run is None:
            return pb.CommandResponse(success=False, message="no training run has attached to weightslabd yet")
        if run.manifest.get("home"):  # this node forwards the job's records (nodes/): its home takes edits
            return pb.CommandResponse(success=False, message=f"this run's home is the weightslabd at "
                                                             f"{run.manifest['home']}: send edits there")
        if request.HasField("hyper_parameter_change"):
            hp = request.hyper_parameter_change.hyper_parameters
            if hp.HasField("evaluation_config") or hp.HasField("evaluation_mode"):
                return self._evaluation_hparams(run, hp)
            return self.change_hparams(run, hp)
        for field, split_pick, deny in (("deny_samples_operation", "train", True),
                                        ("remove_from_denylist_operation", "train", False),
                                        ("deny_eval_samples_operation", "eval", True),
                                        ("remove_eval_from_denylist_operation", "eval", False)):
            if request.HasField(field):
                op = getattr(request, field)
                return self.deny(run, self._split_for(run, split_pick), op.sample_ids, deny,
                                  accumulate=op.accumulate)
        done = runs_rpc.command(self.runs_api, run, request)  # checkpoints, plot notes
        if done is not None:
            return done
        refused = runs_rpc.refusals(request)
        if refused:  # say so rather than answer success for what nothing did
            return pb.CommandResponse(success=False, message="; ".join(refused))
        response = pb.CommandResponse(success=True, message="")
        if request.get_hyper_parameters:
            if not self.control.hp_sync:
                self._fetch_hparams(run)
            with self._holding(run):
                response.hyper_parameters_descs.extend(hparam_descs(run))
        return response

    def _fetch_hparams(self, run: Run) -> None:
        """Without per-step sync (WL_ENABLE_HP_SYNC=0), ask the trainer when the UI asks."""
        pending = self.control.send_command(run, "get_hparams", {})
        if pending is not None and pending.done.wait(FETCH_WAIT) and pending.ack and pending.ack.get("ok"):
            with self._holding(run):
                run.hparams.update(pending.ack.get("hparams") or {})

    def change_hparams(self, run: Run, hp: Any) -> Any:
        """A `HyperParameters` message: the fields it sets, validated, journaled and sent."""
        values: dict[str, Any] = {}
        for field, key in HP_FIELDS.items():
            if hp.HasField(field):
                value = getattr(hp, field)
                if hp.DESCRIPTOR.fields_by_name[field].type == FieldDescriptor.TYPE_FLOAT:
                    value = typed_decimal(value)
                values[key] = value
        if not values:
            return pb.CommandResponse(success=False, message="hyper_parameter_change sets no field")
        return self.set_hparams(run, values)

    def set_hparams(self, run: Run, values: dict[str, Any]) -> Any:
        """Validate, journal and send a hyperparameter edit (the Studio's and the CLI's one path)."""
        problem = validate_hparams(values)
        if problem:
            return pb.CommandResponse(success=False, message=problem)
        return self._edit(run, {"kind": "hparams", "values": values}, "set_hparams", values)

    def edit_tags(self, run: Run, split: str, ids: Sequence[int], tags: Sequence[str], mode: str) -> Any:
        """Tags live in the daemon only: journaled (fsync) and applied, nothing for the trainer.

        Every bound is checked first (grid.check_ids, grid.check_tag, grid.check_tag_room): a refused
        edit changes nothing."""
        try:
            ids = grid.check_ids(run, split, ids)
            for tag in tags:
                grid.check_tag(tag)
        except ValueError as exc:
            return pb.CommandResponse(success=False, message=f"edit refused, nothing changed: {exc}")
        with self._holding(run):
            try:
                grid.check_tag_room(run, tags, mode)
            except ValueError as exc:
                return pb.CommandResponse(success=False, message=f"edit refused, nothing changed: {exc}")
            try:
                run.journal_edit({"kind": "tags", "split": split, "ids": ids, "tags": tags, "mode": mode})
            except OSError as exc:
                return pb.CommandResponse(success=False,
                                          message=f"edit not saved, nothing changed: {exc.strerror or exc}")
        return pb.CommandResponse(success=True, message=f"{mode} {tags} on {len(ids)} samples")

    def _split_for(self, run: Run, which: str) -> str:
        names = list(run.samples.splits)
        if which == "train":
            return names[0] if names else "train"
        return next((n for n in names if n != (names[0] if names else None)), "eval")

    def deny(self, run: Run, split: str, ids: Sequence[int], deny: bool, *, accumulate: bool = True) -> Any:
        """Discard (or restore) samples; the ids are checked (grid.check_ids) before anything changes."""
        table = run.samples.get(split)
        try:
            ids = grid.check_ids(run, split, ids)
        except ValueError as exc:
            return pb.CommandResponse(success=False, message=f"edit refused, nothing changed: {exc}")
        assert table is not None  # check_ids refuses an unknown split
        if deny and not accumulate:
            restore = [int(i) for i in np.setdiff1d(np.flatnonzero(table.denied), ids).tolist()]
            if restore:
                reply = self._edit(run, {"kind": "deny", "split": split, "ids": restore, "deny": False},
                                   "deny", {"split": split, "ids": restore, "deny": False})
                if not reply.success:
                    return reply
        args = {"split": split, "ids": ids, "deny": deny}
        return self._edit(run, dict(args, kind="deny"), "deny", args)

    def _edit(self, run: Run, edit: dict[str, Any], op: str, args: dict[str, Any]) -> Any:
        """Journal (fsync) first, then tell the trainer; reply with what is known after a bounded wait.

        Journal and queue under the run lock, so edits reach the trainer in journal order."""
        with self._holding(run):
            try:
                seq = run.journal_edit(edit)
            except OSError as exc:
                return pb.CommandResponse(success=False,
                                          message=f"edit not saved, nothing changed: {exc.strerror or exc}")
            pending = self.control.send_command(run, op, _compact(args, run), edit_seq=seq)
        if pending is None:
            return pb.CommandResponse(success=True, message="saved; no trainer is attached, it applies when the "
                                                            "trainer reattaches")
        if not pending.done.wait(APPLY_WAIT) or pending.ack is None:
            return pb.CommandResponse(success=True, message="saved; the trainer applies it at its next step boundary")
        ack = pending.ack
        if not ack.get("ok"):
            return pb.CommandResponse(success=False, message=f"the trainer refused it: {ack.get('message', '')}")
        return pb.CommandResponse(success=True, message=f"applied at step {ack.get('step')}")

    # -- evaluation (evaluation/coordinator.py) -------------------------------------------------

    def TriggerEvaluation(self, request: Any, context: grpc.ServicerContext) -> Any:
        run = self.registry.current()
        if run is None:
            return pb.TriggerEvaluationResponse(success=False, message=NO_RUN)
        ok, message = self.evaluations.trigger(run, request.split_name, [t for t in request.tags if t],
                                               request.use_full_set)
        return pb.TriggerEvaluationResponse(success=ok, message=message)

    def GetEvaluationStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        status = self.evaluations.status(self.registry.current())
        return pb.GetEvaluationStatusResponse(**{k: v for k, v in status.items() if k in (
            "status", "current", "total", "message", "error", "split_name")})

    def CancelEvaluation(self, request: Any, context: grpc.ServicerContext) -> Any:
        run = self.registry.current()
        if run is None:
            return pb.CancelEvaluationResponse(success=False, message=NO_RUN)
        ok, message = self.evaluations.cancel(run, request.reason)
        return pb.CancelEvaluationResponse(success=ok, message=message)

    def _evaluation_hparams(self, run: Run, hp: Any) -> Any:
        """`evaluation_config` (JSON: a split to evaluate, or a cancel) and `evaluation_mode` (false: cancel);
        any other field of the same message is applied as usual."""
        if hp.HasField("evaluation_config"):
            ok, message = self.evaluations.from_config(run, hp.evaluation_config)
        elif not hp.evaluation_mode:
            ok, message = self.evaluations.cancel(run, "evaluation_mode off")
        else:
            ok, message = False, "evaluation_mode on needs evaluation_config naming the split to evaluate"
        rest = pb.HyperParameters()
        rest.CopyFrom(hp)
        rest.ClearField("evaluation_config")
        rest.ClearField("evaluation_mode")
        if ok and rest.ListFields():
            other = self.change_hparams(run, rest)
            ok, message = other.success, f"{message}; {other.message}"
        return pb.CommandResponse(success=ok, message=message)

    # -- checkpoints and runs (api/runs_rpc.py) ------------------------------------------------

    def RestoreCheckpoint(self, request: Any, context: grpc.ServicerContext) -> Any:
        ok, message = self.runs_api.restore(request.experiment_hash)
        return pb.RestoreCheckpointResponse(success=ok, message=message)

    def ListExperimentRuns(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.runs_api.list_runs()

    def RenameExperimentRun(self, request: Any, context: grpc.ServicerContext) -> Any:
        ok, message = self.runs_api.set_text(request.experiment_hash, "run_name", request.new_name)
        return pb.RenameExperimentRunResponse(success=ok, message=message)

    def SetExperimentRunNotes(self, request: Any, context: grpc.ServicerContext) -> Any:
        ok, message = self.runs_api.set_text(request.experiment_hash, "run_notes", request.notes)
        return pb.SetExperimentRunNotesResponse(success=ok, message=message)

    # -- plots ---------------------------------------------------------------------------------

    def GetLatestLoggerData(self, request: Any, context: grpc.ServicerContext) -> Any:
        runs = self._runs(list(request.experiment_hashes))
        if request.break_by_slices:
            return self._busy_guard(context, lambda: plots.slice_curves(runs, request, self.lock_timeout))
        return plots.curves(runs, request, self.cursors.get(client_key(context)))

    def GetSignalTrajectory(self, request: Any, context: grpc.ServicerContext) -> Any:
        run = self.registry.current()
        if run is None:
            return pb.GetSignalTrajectoryResponse(success=False, message=NO_RUN)
        return plots.trajectories(run, request)

    def GetStepSamples(self, request: Any, context: grpc.ServicerContext) -> Any:
        run = self.registry.get(request.experiment_hash) if request.experiment_hash else self.registry.current()
        if run is None:
            return pb.StepSamplesResponse(success=False, message=f"no run {request.experiment_hash!r}"
                                          if request.experiment_hash else NO_RUN)
        return plots.step_samples(run, request)

    def _runs(self, hashes: list[str]) -> list[Run]:
        if hashes:
            return [r for r in (self.registry.get(h) for h in hashes) if r is not None]
        run = self.registry.current()
        return [run] if run else []

    def StreamStatus(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        seen: tuple[str | None, int] = (None, -1)
        while context.is_active() and not self.stopping.is_set():
            run = self.registry.current()
            if run is None:
                self.stopping.wait(0.5)
                continue
            touch()  # waiting for news is not being stuck
            with run.changed:
                if (run.run_id, run.history.version) == seen:
                    run.changed.wait(0.5)
                version = run.history.version
            if (run.run_id, version) == seen:
                continue
            seen = (run.run_id, version)
            yield status_message(run)

    # -- data -------------------------------------------------------------------------------------

    def GetDataSplits(self, request: Any, context: grpc.ServicerContext) -> Any:
        if self._stuck_for_tests:  # test-only, see TEST_STUCK_ENV: no progress until the call ends
            while context.is_active() and not self.stopping.wait(0.05):
                pass
        run = self.registry.current()
        return pb.DataSplitsResponse(success=run is not None, split_names=list(run.samples.splits) if run else [])

    def ApplyDataQuery(self, request: Any, context: grpc.ServicerContext) -> Any:
        run = self.registry.current()
        if run is None:
            return pb.DataQueryResponse(success=False, message=NO_RUN)
        if request.is_natural_language and request.query.strip():  # the chat box: the agent (agent/service.py)
            return self._busy_guard(context, lambda: self.agent.answer(
                request.query, run, self._view(run, context), self, self.lock_timeout, context.is_active))
        return self._busy_guard(context, lambda: grid.apply_query(
            run, self._view(run, context), request, self.lock_timeout))

    def GetDataSamples(self, request: Any, context: grpc.ServicerContext) -> Any:
        run = self.registry.current()
        if run is None:
            return pb.DataSamplesResponse(success=False, message=NO_RUN)
        try:
            rows, note = self._busy_guard(context, lambda: grid.page(
                run, self._view(run, context), request, self.lock_timeout))
        except ValueError as exc:
            return pb.DataSamplesResponse(success=False, message=str(exc))
        response = pb.DataSamplesResponse(success=True, message=note)
        images: list[bytes | None] = [None] * len(rows)
        if request.include_raw_data and rows:
            images = run.thumbnails([(r.split, r.sample_id) for r in rows], int(request.resize_width),
                                    int(request.resize_height))
        for row, image in zip(rows, images, strict=True):
            record = response.data_records.add(sample_id=row.sample_id)
            if image is not None:
                record.data_stats.append(grid.image_stat(image, row.task_type))
            record.data_stats.extend(row.stats)
        return response

    def EditDataSample(self, request: Any, context: grpc.ServicerContext) -> Any:
        run = self.registry.current()
        if run is None:
            return pb.DataEditsResponse(success=False, message=NO_RUN)
        try:
            groups = grid.parse_edit_targets(run, request.samples_ids, request.sample_origins)
            tags = grid.split_tags(request.string_value) if request.stat_name == "tags" else []
        except ValueError as exc:
            return pb.DataEditsResponse(success=False, message=f"edit refused, nothing changed: {exc}")
        return self._busy_guard(context, lambda: self._edit_samples(run, request, groups, tags))

    def _edit_samples(self, run: Run, request: Any, groups: dict[str, list[int]], tags: list[str]) -> Any:
        if request.stat_name not in ("deny_listed", "tags"):
            return pb.DataEditsResponse(success=False, message=f"stat {grid.short_repr(request.stat_name)} cannot be "
                                                               "edited: edit 'deny_listed' or 'tags'")
        mode = TAG_MODES.get(request.type)
        if request.stat_name == "tags" and mode is None:
            return pb.DataEditsResponse(success=False, message=f"unknown edit type {request.type}")
        if request.stat_name == "tags" and mode != "override" and not tags:
            return pb.DataEditsResponse(success=False, message="string_value names no tag")
        if request.stat_name == "tags" and len(groups) > 1:
            try:  # before the first split: a refusal at the second must not leave the first edited
                with self._holding(run):
                    grid.check_tag_room(run, tags, str(mode))
            except ValueError as exc:
                return pb.DataEditsResponse(success=False, message=f"edit refused, nothing changed: {exc}")
        messages = []
        for split, ids in groups.items():
            if request.stat_name == "deny_listed":
                reply = self.deny(run, split, ids, bool(request.bool_value))
            else:
                reply = self.edit_tags(run, split, ids, tags, str(mode))
            if not reply.success:
                return pb.DataEditsResponse(success=False, message=reply.message)
            messages.append(f"{split}: {reply.message}")
        return pb.DataEditsResponse(success=True, message="; ".join(messages))

    # -- the data-query agent (agent/service.py) ----------------------------------------------------

    def CheckAgentHealth(self, request: Any, context: grpc.ServicerContext) -> Any:
        available, message = self.agent.health(context.time_remaining())
        return pb.AgentHealthResponse(available=available, message=message)

    def InitializeAgent(self, request: Any, context: grpc.ServicerContext) -> Any:
        ok, message = self.agent.initialize(request.provider, request.api_key, request.model,
                                            context.time_remaining())
        return pb.InitializeAgentResponse(success=ok, message=message)

    def ChangeAgentModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        ok, message = self.agent.change_model(request.model, context.time_remaining())
        return pb.ChangeAgentModelResponse(success=ok, message=message)

    def GetAgentModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        ok, models, message = self.agent.models(context.time_remaining())
        return pb.GetAgentModelsResponse(success=ok, models=models, message=message)

    def ResetAgent(self, request: Any, context: grpc.ServicerContext) -> Any:
        ok, message = self.agent.reset()
        return pb.ResetAgentResponse(success=ok, message=message)

    def GetHistogram(self, request: Any, context: grpc.ServicerContext) -> Any:
        run = self.registry.current()
        if run is None:
            return pb.HistogramResponse(success=False, message=NO_RUN)
        return self._busy_guard(context, lambda: histogram.of_view(
            run, self._view(run, context), request, self.lock_timeout))

    def _view(self, run: Run, context: grpc.ServicerContext) -> grid.ClientView:
        return self.views.get(client_key(context), run.run_id)

    def _busy_guard(self, context: grpc.ServicerContext, work: Callable[[], T]) -> T:
        """Run work that takes the run lock; a lock that stays busy is RESOURCE_EXHAUSTED, never a hang."""
        try:
            return work()
        except WatchdogInterrupt:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the daemon's state stayed busy; try again")
            raise
        except StateBusy as busy:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(busy))
            raise


MASK_ABOVE = 10_000  # id lists longer than this travel as a packed mask


def _compact(args: dict[str, Any], run: Run) -> dict[str, Any]:
    ids = args.get("ids")
    table = run.samples.get(str(args.get("split")))
    if ids is None or table is None or len(ids) <= MASK_ABOVE:
        return args
    mask = np.zeros(table.size, dtype=bool)
    arr = np.asarray(ids, dtype=np.int64)
    mask[arr[(arr >= 0) & (arr < table.size)]] = True
    return {k: v for k, v in args.items() if k != "ids"} | {"mask": wire.pack_mask(mask)}


def status_message(run: Run) -> Any:
    msg = pb.TrainingStatusEx(timestamp=datetime.now(timezone.utc).isoformat(),
                              experiment_name=str(run.manifest.get("run_name", run.run_id)), model_age=run.step)
    latest = run.history.latest()
    if latest is not None:
        msg.metrics_status.name, msg.metrics_status.value = latest[0], latest[2]
    return msg


def typed_decimal(value: float) -> float:
    """A proto `float` (32-bit) as the shortest decimal that is that float32: the Studio's 0.01 arrives as
    0.009999999776482582, and the trainer is given 0.01, what the user typed (any decimal of up to 7
    significant digits comes back exactly)."""
    return float(str(np.float32(value)))


def validate_hparams(values: dict[str, Any]) -> str | None:
    lr = values.get("learning_rate")
    if lr is not None and (not math.isfinite(lr) or lr < 0):
        return f"learning_rate must be a finite number >= 0, got {lr}"
    for key in ("batch_size", "train_batch_size", "val_batch_size", "test_batch_size"):
        if key in values and values[key] < 1:
            return f"{key} must be at least 1, got {values[key]}"
    if values.get("training_steps_to_do", 0) < 0:
        return f"training_steps_to_do must be >= 0, got {values['training_steps_to_do']}"
    if values.get("eval_full_to_train_steps_ratio", 0) < 0:  # the Studio's full_eval_frequency
        return (f"full_eval_frequency must be >= 0 (0: no periodic evaluation), got "
                f"{values['eval_full_to_train_steps_ratio']}")
    return None


def hparam_descs(run: Run) -> list[Any]:
    hp = _flatten(run.effective_hparams())
    descs = []
    for key, value in hp.items():
        descs.append(_desc(key, value))
    if "total_training_steps" not in hp:
        total = next((hp[k] for k in TOTAL_STEP_KEYS if isinstance(hp.get(k), (int, float))), None)
        if total is not None:
            descs.append(_desc("total_training_steps", total))
    descs.append(_desc("model_age", run.step))
    return descs


def _desc(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return pb.HyperParameterDesc(label=key, name=key, type="bool", numerical_value=float(value),
                                     string_value="true" if value else "false")
    if isinstance(value, (int, float)):
        return pb.HyperParameterDesc(label=key, name=key, type="number", numerical_value=float(value))
    return pb.HyperParameterDesc(label=key, name=key, type="text", string_value=str(value))


def _flatten(hp: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in hp.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
