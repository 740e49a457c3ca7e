"""Runs a typed plan: the one executor for the model's plans and the built-in interpreter's.

Views change through the grid's own query path; edits go through the servicer's deny/tag/
hyperparameter paths, journaled and sent exactly as a click in the Studio is. The run lock is taken
only for each step's own work, never while a model is asked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from weightslabd.agent import analysis, plan
from weightslabd.api import grid
from weightslabd.api.query import QueryError, View, parse
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store.run import Run

INTEGER_HYPERPARAMETERS = frozenset(plan.HYPERPARAMETERS) - {"learning_rate"}
PAST = {"tag": "tagged", "untag": "untagged", "discard": "discarded", "restore": "restored"}


class Editor(Protocol):
    """The servicer's edit paths (api/servicer.py): the same for a click, a CLI line and a plan."""

    def deny(self, run: Run, split: str, ids: Sequence[int], deny: bool, *, accumulate: bool = True) -> Any: ...

    def edit_tags(self, run: Run, split: str, ids: Sequence[int], tags: Sequence[str], mode: str) -> Any: ...

    def set_hparams(self, run: Run, values: dict[str, Any]) -> Any: ...


def execute(step: Any, run: Run, client: grid.ClientView, editor: Editor, lock_timeout: float, by: str) -> Any:
    """A DataQueryResponse saying what happened; `by` names who planned it (the model, the interpreter)."""
    if isinstance(step, plan.ResetPlan):
        return _said(grid.apply_text(run, client, "reset", False, lock_timeout), by)
    if isinstance(step, plan.FilterPlan):
        return _said(grid.apply_text(run, client, step.query, False, lock_timeout, step.limit), by)
    if isinstance(step, plan.EditPlan):
        return _edit(step, run, client, editor, lock_timeout, by)
    if isinstance(step, plan.TrainingPlan):
        reply = editor.set_hparams(run, {"is_training": step.action == "resume"})
        done = "resumed" if step.action == "resume" else "paused"
        return _reply(run, client, lock_timeout, reply.success, f"{done} the training: {reply.message}"
                      if reply.success else f"the training was not {done}: {reply.message}", by)
    if isinstance(step, plan.HyperparameterPlan):
        value: float | int = step.value
        if step.name in INTEGER_HYPERPARAMETERS:
            if value != int(value):
                return _reply(run, client, lock_timeout, False, f"{step.name} takes a whole number, not {value:g}", by)
            value = int(value)
        reply = editor.set_hparams(run, {step.name: value})
        text = f"set {step.name} to {value:g}: {reply.message}" if reply.success else \
            f"{step.name} not changed: {reply.message}"
        return _reply(run, client, lock_timeout, reply.success, text, by)
    if isinstance(step, plan.AnalysisPlan):
        try:
            with run.holding(lock_timeout):
                result = analysis.compute(step, run.samples.frame(), run.samples.unique_tags())
        except QueryError as exc:
            return _reply(run, client, lock_timeout, False, f"analysis not computed: {exc}", by)
        response = grid.counted(run, client, lock_timeout, success=True, message=result,
                                intent=pb.INTENT_ANALYSIS)
        response.analysis_result = f"{result}\n({by})"
        return _said(response, by)
    note = step.note or "the request is not something the agent may do"
    return _reply(run, client, lock_timeout, False, f"declined: {note}", by)


def _edit(step: plan.EditPlan, run: Run, client: grid.ClientView, editor: Editor, lock_timeout: float,
          by: str) -> Any:
    tags = [step.tag.strip()] if step.action in ("tag", "untag") else []
    if step.action in ("tag", "untag"):
        try:
            if not tags[0]:
                raise ValueError("no tag named")
            grid.check_tag(tags[0])
        except ValueError as exc:
            return _reply(run, client, lock_timeout, False, f"nothing {PAST[step.action]}: {exc}", by)
    try:
        groups, shown = _selection(step, run, client, lock_timeout)
    except QueryError as exc:
        return _reply(run, client, lock_timeout, False, f"nothing {PAST[step.action]}: {exc}", by)
    total = sum(len(ids) for ids in groups.values())
    if not total:
        return _reply(run, client, lock_timeout, True, f"no sample matches {shown}: nothing {PAST[step.action]}", by)
    notes = []
    for split, ids in groups.items():
        if step.action in ("discard", "restore"):
            reply = editor.deny(run, split, ids, step.action == "discard")
        else:
            reply = editor.edit_tags(run, split, ids, tags, "add" if step.action == "tag" else "remove")
        if not reply.success:
            return _reply(run, client, lock_timeout, False, f"{PAST[step.action]} none in {split}: {reply.message}",
                          by)
        notes.append(reply.message)
    what = f" as {tags[0]!r}" if step.action == "tag" else f" from {tags[0]!r}" if tags else ""
    return _reply(run, client, lock_timeout, True,
                  f"{PAST[step.action]} {total} samples{what} ({shown}); {notes[-1]}", by)


def _selection(step: plan.EditPlan, run: Run, client: grid.ClientView,
               lock_timeout: float) -> tuple[dict[str, list[int]], str]:
    """{split: sorted ids} the plan selects, and how to say it."""
    with run.holding(lock_timeout):
        frame = run.samples.frame()
        if step.query.strip():
            query = parse(step.query)
            rows = View(query.where, query.order).rows(frame)[:step.limit]
            shown = query.where and str(query.where) or "all samples"
            if step.limit:
                shown = f"the first {step.limit} by {', '.join(str(k) for k in query.order) or 'row order'}" + (
                    f" where {query.where}" if query.where is not None else "")
        else:
            rows = grid.current_rows(run, client, frame)[:step.limit]
            shown = "the samples shown"
        which, ids = frame.locate(np.asarray(rows, dtype=np.int64))
        groups: dict[str, list[int]] = {}
        for index, table in enumerate(frame.tables):
            picked = np.sort(ids[which == index])
            if picked.size:
                groups[table.name] = [int(i) for i in picked.tolist()]
    return groups, shown


def _reply(run: Run, client: grid.ClientView, lock_timeout: float, success: bool, message: str, by: str) -> Any:
    return _said(grid.counted(run, client, lock_timeout, success=success, message=message), by)


def _said(response: Any, by: str) -> Any:
    response.message = f"{response.message} ({by})"
    return response
