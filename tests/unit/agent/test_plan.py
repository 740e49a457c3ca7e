"""The plan schema: what a model's reply must be before anything runs. Code, SQL and shell never pass."""

from __future__ import annotations

import pytest

from weightslabd.agent.plan import AnalysisPlan, EditPlan, FilterPlan, PlanError, from_reply


def test_good_replies_become_typed_plans() -> None:
    assert from_reply('{"action": "filter", "query": "loss > 3 sortby loss desc", "limit": 5}') == FilterPlan(
        action="filter", query="loss > 3 sortby loss desc", limit=5)
    fenced = 'Here is the plan:\n```json\n{"action": "discard", "query": "loss > 3", "note": "outliers"}\n```'
    assert from_reply(fenced) == EditPlan(action="discard", query="loss > 3", note="outliers")
    assert from_reply('{"action": "analysis", "stat": "max", "column": "loss", "group_by": "tag"}') == AnalysisPlan(
        action="analysis", stat="max", column="loss", group_by="tag")


@pytest.mark.parametrize(("reply", "why"), [
    ('{"action": "eval", "code": "__import__(\'os\').system(\'id\')"}', "action 'eval', which is not one of"),
    ('{"action": "filter", "query": "SELECT * FROM samples WHERE loss > 3"}', "not a query of the project's language"),
    ('{"action": "filter", "query": "df[df[\'loss\'] > 3]"}', "not a query of the project's language"),
    ('{"action": "discard", "query": "loss > 3; rm -rf /"}', "not a query of the project's language"),
    ('{"action": "filter", "query": "loss > 3", "python": "print(1)"}', "Extra inputs are not permitted"),
    ('{"action": "set_hyperparameter", "name": "os.system", "value": 1}', "name"),
    ('{"action": "set_hyperparameter", "name": "learning_rate", "value": "1e-3; import os"}', "value"),
    ('{"action": "filter", "query": "loss > 0", "limit": -4}', "limit"),
    ('{"action": "analysis", "stat": "exec", "column": "loss"}', "stat"),
    ('{"action": "analysis", "stat": "quantiles", "column": "loss", "quantiles": [2]}', "quantiles"),
    ('[{"action": "reset"}]', "not a JSON object"),
    ("df = df[df.loss > 3]", "no JSON plan"),
    ("{not json}", "not valid JSON"),
    ('{"action": "tag", "query": "label == 3", "tag": "' + "x" * 100 + '"}', "tag"),
    ('{"action": "decline", "note": "' + "y" * 1000 + '"}', "note"),
])
def test_bad_replies_are_refused_in_one_line(reply: str, why: str) -> None:
    with pytest.raises(PlanError) as caught:
        from_reply(reply)
    assert why in str(caught.value) and "\n" not in str(caught.value) and len(str(caught.value)) <= 300
