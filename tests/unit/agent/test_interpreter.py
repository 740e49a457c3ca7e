"""The built-in interpreter: the common requests become the same typed plans a model answers, deterministically;
anything else is None (the chat then points at the agent set-up)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightslabd.agent import plan
from weightslabd.agent.interpreter import interpret
from weightslabd.agent.schema import Column, TableSchema

NAMES = ["sample_id", "origin", "label", "prediction", "encounters", "last_step", "deny_listed", "tags", "loss",
         "my loss", "train-loss-CE"]
SCHEMA = TableSchema(300, {"train": 256, "eval": 44}, [Column(n, "number", 0.0, 5.0) for n in NAMES], {"cats": 3})


@pytest.mark.parametrize(("request_text", "expected"), [
    ("reset", {"action": "reset"}),
    ("Clear filters.", {"action": "reset"}),
    ("sort by loss descending", {"action": "filter", "query": "sortby loss desc", "limit": None}),
    ("Sort by loss", {"action": "filter", "query": "sortby loss asc"}),
    ("sort by my loss desc", {"action": "filter", "query": "sortby `my loss` desc"}),
    ("order by label then loss descending", {"action": "filter", "query": "sortby label asc, loss desc"}),
    ("the 50 highest-loss samples", {"action": "filter", "query": "sortby loss desc", "limit": 50}),
    ("show me the 10 lowest loss samples", {"action": "filter", "query": "sortby loss asc", "limit": 10}),
    ("top 20 by train-loss-CE", {"action": "filter", "query": "sortby train-loss-CE desc", "limit": 20}),
    ("discard samples with loss above 3", {"action": "discard", "query": "loss > 3", "limit": None}),
    ("please remove samples where loss is greater than 2.5", {"action": "discard", "query": "loss > 2.5"}),
    ("restore samples with loss below 0.5", {"action": "restore", "query": "loss < 0.5"}),
    ("discard the 10 highest-loss samples", {"action": "discard", "query": "sortby loss desc", "limit": 10}),
    ("tag label 3 as cats", {"action": "tag", "query": "label == 3", "tag": "cats"}),
    ("Tag label 3 as Big Cats", {"action": "tag", "query": "label == 3", "tag": "Big Cats"}),  # as typed
    ("how many are tagged CATS", {"action": "analysis", "query": "has_tag 'cats'"}),  # the tag in use
    ("tag samples with loss above 4 as 'hard ones'", {"action": "tag", "query": "loss > 4", "tag": "hard ones"}),
    ("remove tag cats from label 3", {"action": "untag", "query": "label == 3", "tag": "cats"}),
    ("how many samples are discarded", {"action": "analysis", "stat": "count", "query": "deny_listed == 1"}),
    ("How many samples are there?", {"action": "analysis", "stat": "count", "query": ""}),
    ("how many samples per split", {"action": "analysis", "stat": "count", "group_by": "split"}),
    ("how many are tagged cats", {"action": "analysis", "stat": "count", "query": "has_tag 'cats'"}),
    ("mean loss per label", {"action": "analysis", "stat": "mean", "column": "loss", "group_by": "label"}),
    ("median of loss", {"action": "analysis", "stat": "quantiles", "column": "loss", "quantiles": (0.5,)}),
    ("show only eval", {"action": "filter", "query": "origin == 'eval'"}),
    ("only the train split", {"action": "filter", "query": "origin == 'train'"}),
    ("show samples with loss > 2 and label == 1", {"action": "filter", "query": "loss > 2 and label == 1"}),
    ("show only test", {"action": "decline"}),
    ("pause training", {"action": "pause"}),
    ("resume", {"action": "resume"}),
    ("set the learning rate to 0.001", {"action": "set_hyperparameter", "name": "learning_rate", "value": 0.001}),
])
def test_common_requests_become_plans(request_text: str, expected: dict[str, object]) -> None:
    got = interpret(request_text, SCHEMA)
    assert got is not None, request_text
    for key, value in expected.items():
        assert getattr(got, key) == value, (request_text, got)
    assert interpret(request_text, SCHEMA) == got  # deterministic
    assert plan.from_data(got.model_dump()) == got  # the model's path accepts the same plan


@pytest.mark.parametrize("request_text", [
    "write me a poem about gradients", "show me the worst samples", "delete everything", "drop table samples",
    "import os; os.system('ls')", "sort by nonexistent column", "", "tag as cats",
])
def test_anything_else_is_not_understood(request_text: str) -> None:
    assert interpret(request_text, SCHEMA) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.lists(st.sampled_from(
    ["show", "only", "discard", "tag", "as", "loss", "above", "3", "the", "50", "highest-loss", "samples", "sort",
     "by", "how", "many", "eval", "label", "reset", "with", "'", "`", "(", "desc", "mean", "per", "split"]),
    max_size=10).map(" ".join))
def test_never_raises_and_always_answers_a_valid_plan_or_none(text: str) -> None:
    got = interpret(text, SCHEMA)
    assert got is None or plan.from_data(got.model_dump()) == got
