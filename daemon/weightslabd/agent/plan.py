"""The typed plan: the only thing a model (or the built-in interpreter) may hand the daemon.

A plan is JSON validated against these classes before anything runs; its queries are the
project's own query language, checked by its parser. Nothing in a plan is ever evaluated as
Python, SQL or shell: every field is data the executor reads.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from weightslabd.api.query import MAX_QUERY_CHARS, QueryError, parse

MAX_LIMIT = 1_000_000
MAX_TEXT = 300  # the model's own words that reach the chat
MAX_GROUPS = 50  # groups an analysis reports (labels, tags)
HYPERPARAMETERS = ("learning_rate", "batch_size", "training_steps_to_do", "train_batch_size", "val_batch_size",
                   "test_batch_size", "full_eval_frequency", "checkpoint_frequency")


class PlanError(ValueError):
    """A reply that is not a valid plan; str() is one line for the chat."""


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    note: str = Field(default="", max_length=MAX_TEXT, description="one short sentence for the user")


def _checked_query(text: str) -> str:
    try:
        parse(text)
    except QueryError as exc:
        raise ValueError(f"not a query of the project's language: {exc}") from None
    return text


class FilterPlan(_Step):
    """Show the samples a query selects, in its order; `limit` keeps only the first rows."""

    action: Literal["filter"]
    query: str = Field(max_length=MAX_QUERY_CHARS)
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)

    @field_validator("query")
    @classmethod
    def _query(cls, text: str) -> str:
        return _checked_query(text)


class ResetPlan(_Step):
    """Back to the full table, in natural order."""

    action: Literal["reset"]


class EditPlan(_Step):
    """Tag, untag, discard or restore the samples `query` selects (its sort and `limit` pick the first
    ones); an empty query means the samples the grid shows now."""

    action: Literal["tag", "untag", "discard", "restore"]
    query: str = Field(default="", max_length=MAX_QUERY_CHARS)
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tag: str = Field(default="", max_length=64)

    @field_validator("query")
    @classmethod
    def _query(cls, text: str) -> str:
        return _checked_query(text) if text.strip() else text


class TrainingPlan(_Step):
    """Pause or resume the training."""

    action: Literal["pause", "resume"]


class HyperparameterPlan(_Step):
    """Set one hyperparameter."""

    action: Literal["set_hyperparameter"]
    name: Literal[HYPERPARAMETERS]  # type: ignore[valid-type]
    value: float = Field(allow_inf_nan=False)


class AnalysisPlan(_Step):
    """A read-only aggregate the daemon computes: over the samples `query` selects (all when empty)."""

    action: Literal["analysis"]
    stat: Literal["count", "mean", "min", "max", "sum", "quantiles"]
    column: str = Field(default="", max_length=200)
    query: str = Field(default="", max_length=MAX_QUERY_CHARS)
    group_by: Literal["none", "split", "tag", "label"] = "none"
    quantiles: tuple[float, ...] = Field(default=(0.05, 0.25, 0.5, 0.75, 0.95), min_length=1, max_length=9)

    @field_validator("query")
    @classmethod
    def _query(cls, text: str) -> str:
        return _checked_query(text) if text.strip() else text

    @field_validator("quantiles")
    @classmethod
    def _in_unit(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= q <= 1.0 for q in values):
            raise ValueError("quantiles lie in [0, 1]")
        return values


class DeclinePlan(_Step):
    """The request is not something the agent may do; `note` says why."""

    action: Literal["decline"]


Plan = Annotated[FilterPlan | ResetPlan | EditPlan | TrainingPlan | HyperparameterPlan | AnalysisPlan | DeclinePlan,
                 Field(discriminator="action")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Plan)
ACTIONS = ("filter", "reset", "tag", "untag", "discard", "restore", "pause", "resume", "set_hyperparameter",
           "analysis", "decline")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def json_schema() -> dict[str, Any]:
    return _ADAPTER.json_schema()


def from_reply(text: str) -> Any:
    """The plan in a model's reply (a JSON object, optionally in a ``` fence); PlanError otherwise."""
    body = _FENCE.sub("", text.strip())
    try:
        return from_data(json.loads(body))  # the whole reply is JSON: it must be the plan itself
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, PlanError):
            raise
    start, end = body.find("{"), body.rfind("}")  # else one object amid the model's prose
    if start < 0 or end < start:
        raise PlanError("the model's reply holds no JSON plan")
    try:
        data = json.loads(body[start:end + 1])
    except (ValueError, RecursionError):
        raise PlanError("the model's reply is not valid JSON") from None
    return from_data(data)


def from_data(data: Any) -> Any:
    if not isinstance(data, dict):
        raise PlanError("the model's plan is not a JSON object")
    if data.get("action") not in ACTIONS:
        shown = repr(data.get("action"))[:40]
        raise PlanError(f"the model asked for action {shown}, which is not one of: {', '.join(ACTIONS)}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "plan"  # loc[0]: the action
        raise PlanError(f"the model's plan does not fit the schema ({where}: {first.get('msg', 'invalid')})"[:300]) \
            from None
