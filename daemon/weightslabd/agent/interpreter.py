"""The built-in interpreter: the common chat requests, understood without any model, deterministically.

It turns a request into the same typed plan a model would answer (plan.py), so one executor runs
both. What it does not understand it says so, and points at the agent set-up (docs/agent.md).
"""

from __future__ import annotations

import re
from typing import Any

from weightslabd.agent import plan
from weightslabd.agent.schema import TableSchema
from weightslabd.api.query import QueryError, parse

NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
_ABOVE = r"(?:above|over|greater than|more than|higher than|larger than|bigger than|exceeding|>)"
_BELOW = r"(?:below|under|less than|lower than|smaller than|<)"
_AT_LEAST = r"(?:at least|>=|no less than)"
_AT_MOST = r"(?:at most|<=|no more than)"
_EQUAL = r"(?:equal to|equals|==|=|is|of)"
_COMPARISONS = ((_AT_LEAST, ">="), (_AT_MOST, "<="), (_ABOVE, ">"), (_BELOW, "<"), (_EQUAL, "=="))
_DESC = ("desc", "descending", "decreasing", "down", "highest first", "largest first", "biggest first", "worst first")
_HIGH = ("highest", "largest", "biggest", "top", "worst", "most")
_LOW = ("lowest", "smallest", "least", "best", "bottom")
_FILLER = re.compile(r"^(?:please\s+|can you\s+|could you\s+|now\s+|just\s+)+|[.!?]+$", re.IGNORECASE)


def interpret(text: str, schema: TableSchema) -> Any | None:
    """The plan for a request the interpreter knows, else None."""
    original = _FILLER.sub("", " ".join(text.split())).strip()
    request = original.lower()  # matched in lower case; a new tag keeps the case it was typed in
    for rule in _RULES:
        found = rule(request, schema)
        if isinstance(found, plan.EditPlan) and found.tag:
            typed = re.search(re.escape(found.tag), original, re.IGNORECASE)
            return found.model_copy(update={"tag": typed.group() if typed else found.tag})
        if found is not None:
            return found
    return None


# --- conditions: "loss above 3", "label 3", "tagged cats", "eval", "discarded" -> a query --------------


def column_of(words: str, schema: TableSchema) -> str | None:
    """The schema's column that `words` names ("loss", "my loss", "train-loss"), case-insensitively."""
    wanted = words.strip().strip("'\"`").lower()
    names = {n.lower(): n for n in schema.names()}
    for candidate in (wanted, wanted.replace(" ", "_"), wanted.replace(" ", "-"), wanted.replace("-", " "),
                      wanted.replace("class", "label")):
        if candidate in names:
            return names[candidate]
    if wanted in ("index", "natural order", "order", "original order", "sample order"):
        return "index"
    return None


def quoted(name: str) -> str:
    """A column for the query text: plain when the parser reads it so, else backquoted."""
    try:
        query = parse(f"sortby {name}")
        if query.order and query.order[0].column == name and " " not in name:
            return name
    except QueryError:
        pass
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _text_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_LEAD = re.compile(r"^(?:samples?|ones|images?|rows?|all|the|those|that|which|with|where|whose|having|have|has|are"
                   r"|is|from|in)\s+")


def condition(words: str, schema: TableSchema) -> str | None:
    """A query for a condition in words, or None."""
    words = words.strip()
    while _LEAD.match(words):
        words = _LEAD.sub("", words, count=1)
    if words in ("discarded", "denied", "deny listed", "deny-listed", "excluded"):
        return "deny_listed == 1"
    if words in ("not discarded", "kept", "active", "in the loop"):
        return "deny_listed == 0"
    split = next((s for s in schema.splits if s.lower() == words), None)
    if split is not None:
        return f"origin == {_text_value(split)}"
    tagged = re.fullmatch(r"(?:tagged(?: as| with)?|with tag|has tag|having tag)\s+['\"]?([^'\"]+?)['\"]?", words)
    if tagged:
        tag = next((t for t in schema.tags if t.lower() == tagged.group(1)), tagged.group(1))
        return f"has_tag {_text_value(tag)}"
    labelled = re.fullmatch(rf"(?:label|class|labelled|labeled)\s*(?:==|=|is|of)?\s*({NUMBER})", words)
    if labelled:
        return f"label == {labelled.group(1)}"
    for phrase, op in _COMPARISONS:
        match = re.fullmatch(rf"(.+?)\s*(?:is\s+|are\s+)?{phrase}\s*({NUMBER})", words)
        column = column_of(match.group(1), schema) if match else None
        if match and column is not None:
            return f"{quoted(column)} {op} {match.group(2)}"
    match = re.fullmatch(rf"(.+?)\s+between\s+({NUMBER})\s+and\s+({NUMBER})", words)
    column = column_of(match.group(1), schema) if match else None
    if match and column is not None:
        return f"{quoted(column)} between {match.group(2)} and {match.group(3)}"
    try:  # the request may already be a structured query ("loss > 3"); the executor checks its columns
        query = parse(words)
    except QueryError:
        return None
    return str(query) if query.where is not None else None


# --- the rules, in order -----------------------------------------------------------------------------


def _reset(request: str, schema: TableSchema) -> Any | None:
    if re.fullmatch(r"(?:reset|clear|clear (?:the )?(?:filters?|sort|view|all|everything|query)|show (?:me )?"
                    r"(?:all|everything|all (?:the )?samples|the full table)|start over|unfilter|no filter)",
                    request):
        return plan.ResetPlan(action="reset", note="back to the full table")
    return None


def _direction(words: str) -> tuple[str, bool]:
    for word in sorted(_DESC + ("asc", "ascending", "increasing", "up", "lowest first", "smallest first"),
                       key=len, reverse=True):
        if words.endswith(" " + word) or words == word:
            return words[: -len(word)].strip(), word in _DESC
    return words, False


def _sort(request: str, schema: TableSchema) -> Any | None:
    match = re.fullmatch(r"(?:sort|order|rank)(?: the samples| samples| them| the grid)? by (.+)", request)
    if not match:
        return None
    keys = []
    for part in re.split(r",\s*|\s+then(?: by)?\s+|\s+and(?: then)?(?: by)?\s+", match.group(1)):
        words, descending = _direction(part.strip())
        column = column_of(words, schema)
        if column is None:
            return None
        keys.append(f"{quoted(column)} {'desc' if descending else 'asc'}")
    return plan.FilterPlan(action="filter", query="sortby " + ", ".join(keys), note="sorted")


_TOP = re.compile(rf"(?:show(?: me)?\s+|list\s+|give me\s+|find\s+)?(?:the\s+)?(?:top\s+)?(\d+)\s+"
                  rf"({'|'.join(_HIGH + _LOW)})(?:[- ]+)(.+?)(?:\s+samples?|\s+ones|\s+images?)?")


def _top(request: str, schema: TableSchema) -> tuple[str, int] | None:
    """("sortby loss desc", 50) for "the 50 highest-loss samples" (also "top 50 by loss")."""
    match = _TOP.fullmatch(request)
    if match:
        count, extreme, words = int(match.group(1)), match.group(2), match.group(3)
    else:
        match = re.fullmatch(r"(?:show(?: me)?\s+)?(?:the\s+)?top\s+(\d+)(?:\s+samples?)?\s+by\s+(.+)", request)
        if not match:
            return None
        count, extreme, words = int(match.group(1)), "highest", match.group(2)
    column = column_of(_direction(words)[0], schema)
    if column is None or not 1 <= count <= plan.MAX_LIMIT:
        return None
    return f"sortby {quoted(column)} {'desc' if extreme in _HIGH else 'asc'}", count


def _top_rule(request: str, schema: TableSchema) -> Any | None:
    found = _top(request, schema)
    if found is None:
        return None
    return plan.FilterPlan(action="filter", query=found[0], limit=found[1], note=f"the first {found[1]}")


def _show(request: str, schema: TableSchema) -> Any | None:
    match = re.fullmatch(r"(?:show|display|filter|keep|select|find|give me|list)(?: me)?(?: only)?(?: the)?\s+(.+?)"
                         r"(?:\s+only)?(?:\s+samples?)?(?:\s+split)?", request) or \
        re.fullmatch(r"only(?: the)?\s+(.+?)(?:\s+samples?)?(?:\s+split)?", request)
    if not match:
        return None
    query = condition(match.group(1), schema)
    if query is None and " only" in f" {request}" and re.fullmatch(r"[\w.-]+", match.group(1)):  # no such split
        splits = ", ".join(schema.splits) or "none"
        tags = ", ".join(list(schema.tags)[:10]) or "none"
        return plan.DeclinePlan(action="decline", note=f"no split or tag named {match.group(1)!r} "
                                                       f"(splits: {splits}; tags: {tags})")
    if query is None:
        return None
    return plan.FilterPlan(action="filter", query=query, note="filtered")


_EDIT_WORDS = {"discard": "discard", "remove": "discard", "drop": "discard", "exclude": "discard",
               "deny": "discard", "denylist": "discard", "restore": "restore", "undiscard": "restore",
               "include": "restore", "bring back": "restore", "reinclude": "restore"}


def _edit(request: str, schema: TableSchema) -> Any | None:
    verbs = "|".join(sorted(_EDIT_WORDS, key=len, reverse=True))
    match = re.fullmatch(rf"({verbs})\s+(.+)", request)
    if not match:
        return None
    action, rest = _EDIT_WORDS[match.group(1)], match.group(2)
    return _selection_plan(action, rest, schema, "")


def _selection_plan(action: str, rest: str, schema: TableSchema, tag: str) -> Any | None:
    if rest in ("them", "these", "these samples", "those", "the shown samples", "what is shown", "all shown",
                "the current view", "this view"):
        return plan.EditPlan(action=action, query="", tag=tag)  # type: ignore[arg-type]
    top = _top(re.sub(r"^(?:the\s+)", "", rest), schema)
    if top is not None:
        return plan.EditPlan(action=action, query=top[0], limit=top[1], tag=tag)  # type: ignore[arg-type]
    query = condition(rest, schema)
    if query is None:
        return None
    return plan.EditPlan(action=action, query=query, tag=tag)  # type: ignore[arg-type]


def _tag(request: str, schema: TableSchema) -> Any | None:
    match = re.fullmatch(r"(tag|label|mark|untag)\s+(.+?)\s+(?:as|with)\s+['\"]?([^'\";]+?)['\"]?", request) or \
        re.fullmatch(r"(remove) (?:the )?tag\s+['\"]?([^'\";]+?)['\"]? from\s+(.+)", request)
    if not match:
        return None
    if match.group(1) == "remove":
        action, tag, rest = "untag", match.group(2), match.group(3)
    else:
        action, rest, tag = ("untag" if match.group(1) == "untag" else "tag"), match.group(2), match.group(3)
    return _selection_plan(action, rest.strip(), schema, tag.strip())


def _count(request: str, schema: TableSchema) -> Any | None:
    match = re.fullmatch(r"how many(?: samples| images| rows)?(?: are| is| have| has| with| were)?(?: there)?"
                         r"(?: in total| in all)?\s*(.*?)(?:\s+are there)?", request)
    if not match:
        match = re.fullmatch(r"(?:count|number of)(?: the)?(?: samples| images)?\s*(.*)", request)
        if not match:
            return None
    rest = match.group(1).strip()
    group = "none"
    by = re.fullmatch(r"(.*?)\s*(?:per|by|for each|in each)\s+(split|tag|label|class)", rest)
    if by:
        rest, group = by.group(1).strip(), {"class": "label"}.get(by.group(2), by.group(2))
    query = "" if rest in ("", "samples", "in total", "are there", "there are", "all") else condition(rest, schema)
    if query is None:
        return None
    return plan.AnalysisPlan(action="analysis", stat="count", query=query, group_by=group)  # type: ignore[arg-type]


def _aggregate(request: str, schema: TableSchema) -> Any | None:
    match = re.fullmatch(r"(?:what is |what's |show |give me )?(?:the )?(mean|average|avg|min|minimum|max|maximum|"
                         r"sum|total|median|quantiles|percentiles|distribution)(?: of| for)?\s+(.+?)"
                         r"(?:\s+(?:per|by|for each|in each)\s+(split|tag|label|class))?", request)
    if not match:
        return None
    stat = {"average": "mean", "avg": "mean", "minimum": "min", "maximum": "max", "total": "sum",
            "median": "quantiles", "percentiles": "quantiles", "distribution": "quantiles"}.get(match.group(1),
                                                                                                  match.group(1))
    column = column_of(match.group(2), schema)
    if column is None:
        return None
    group = {"class": "label"}.get(match.group(3) or "none", match.group(3) or "none")
    quantiles = (0.5,) if match.group(1) == "median" else (0.05, 0.25, 0.5, 0.75, 0.95)
    return plan.AnalysisPlan(action="analysis", stat=stat, column=column, group_by=group,  # type: ignore[arg-type]
                             quantiles=quantiles)


def _training(request: str, schema: TableSchema) -> Any | None:
    if re.fullmatch(r"(?:pause|stop|halt)(?: the)?(?: training| run)?", request):
        return plan.TrainingPlan(action="pause")
    if re.fullmatch(r"(?:resume|continue|start|restart|unpause)(?: the)?(?: training| run)?", request):
        return plan.TrainingPlan(action="resume")
    return None


def _hyperparameter(request: str, schema: TableSchema) -> Any | None:
    match = re.fullmatch(rf"(?:set|change|make)(?: the)? (.+?) (?:to|=)\s*({NUMBER})", request)
    if not match:
        return None
    name = match.group(1).strip().replace(" ", "_").replace("lr", "learning_rate")
    if name == "learning_rate_rate":
        name = "learning_rate"
    if name not in plan.HYPERPARAMETERS:
        return None
    return plan.HyperparameterPlan(action="set_hyperparameter", name=name, value=float(match.group(2)))


_RULES = (_reset, _training, _hyperparameter, _count, _aggregate, _sort, _top_rule, _tag, _edit, _show)
