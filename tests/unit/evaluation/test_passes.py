"""The record of evaluation passes: merge rules and what a restart reads back."""

from __future__ import annotations

from pathlib import Path

from weightslabd.evaluation.passes import GRACE, Passes


def test_the_trainers_end_wins_and_a_late_progress_report_undoes_no_end(tmp_path: Path) -> None:
    book = Passes(tmp_path)
    book.add({"id": "a", "state": "requested", "split": "eval"})
    book.merge({"id": "a", "state": "running", "current": 1, "total": 4, "timeout_s": 2.0})
    entry = book.find("a")
    assert entry is not None and entry["state"] == "running" and entry["deadline"] >= entry["started_at"] + 2 + GRACE
    book.finish(entry, "cancelled", message="cancelled: enough")
    book.merge({"id": "a", "state": "running", "current": 2, "message": ""})  # sent before the cancel arrived
    assert (entry["state"], entry["current"], entry["message"]) == ("cancelled", 2, "cancelled: enough")
    book.merge({"id": "a", "state": "done", "current": 4, "message": "4 of 4 batches"})  # it finished first
    assert entry["state"] == "done" and book.active() is None


def test_a_restart_reads_the_passes_back_and_a_damaged_file_starts_empty(tmp_path: Path) -> None:
    book = Passes(tmp_path)
    book.merge({"id": "p", "state": "done", "split": "eval", "step": 30, "current": 5, "periodic": True}, pid=7)
    book.add({"id": "q", "state": "running", "split": "val"})
    again = Passes(tmp_path)
    assert [(p["id"], p["state"]) for p in again.passes] == [("p", "done"), ("q", "running")]
    assert again.find("p")["pid"] == 7  # type: ignore[index]
    assert again.active() is not None and set(again.marks()) == {("eval", 30)}
    assert [f.name for f in tmp_path.iterdir()] == ["evaluation.json"]  # replaced, no temporary left
    (tmp_path / "evaluation.json").write_text("{not json")
    assert Passes(tmp_path).passes == []
