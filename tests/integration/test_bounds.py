"""Every input is bounded (issue 8): refused with one line naming the bound, and nothing changes.

A real daemon (with its CLI line server on its own loopback port) and a real trainer, over loopback
gRPC. The bounds themselves are in docs/data-plane.md and docs/query.md."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.store.framedlog import read_frames

from .harness import Daemon, Trainer, base_env, free_port, run_folder, wait_for
from .test_cli_server import line_session

pytestmark = pytest.mark.timeout(120)
ME = (("x-client-id", "bounds-test"),)


class Live:
    """The module's daemon, its run (one split `train` of 256 samples) and a gRPC stub."""

    def __init__(self, tmp: Path, daemon: Daemon, cli_port: int) -> None:
        self.tmp, self.daemon, self.cli_port = tmp, daemon, cli_port
        self.channel = grpc.insecure_channel(daemon.address)
        self.stub = pb_grpc.ExperimentServiceStub(self.channel)

    def journal(self) -> list[dict[str, Any]]:
        return [json.loads(frame) for _, frame in read_frames(run_folder(self.tmp) / "edits.journal")]

    def tags(self) -> list[str]:
        return list(self.query("").unique_tags)

    def query(self, text: str, accumulate: bool = False) -> Any:
        return self.stub.ApplyDataQuery(pb.DataQueryRequest(query=text, accumulate=accumulate), metadata=ME,
                                        timeout=30)

    def edit_tags(self, text: str, ids: list[int], kind: int = pb.EDIT_ACCUMULATE) -> Any:
        return self.stub.EditDataSample(pb.DataEditsRequest(stat_name="tags", string_value=text, type=kind,
                                                            samples_ids=ids), timeout=60)

    def sample_tags(self, sample_id: int) -> str:
        self.query("reset")
        page = self.stub.GetDataSamples(pb.DataSamplesRequest(start_index=sample_id, records_cnt=1,
                                                              stats_to_retrieve=["tags"]), metadata=ME, timeout=10)
        return str(page.data_records[0].data_stats[0].value_string)

    def cli(self, *lines: str) -> list[dict[str, Any]]:
        """The lines on one connection to the CLI line server: every line gets its reply."""
        return line_session(self.cli_port, *lines)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("bounds")
    env = base_env(tmp)
    cli_port = free_port()
    env.update(CLI_HOST="127.0.0.1", CLI_PORT=str(cli_port))
    daemon = Daemon(env, tmp / "daemon.log").start()
    try:
        Trainer(env, tmp, "--steps", "3").wait()
        live = Live(tmp, daemon, cli_port)
        wait_for(lambda: live.query("").number_of_all_samples == 256, 10, "the run's split")
        yield live
        live.channel.close()
    finally:
        daemon.stop()


def said(reply: dict[str, Any]) -> str:
    """A CLI reply's text: `error` when the line was refused before reaching the run, else `message`."""
    return str(reply.get("error") or reply.get("message") or "")


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and len(message) < 500


# -- queries -----------------------------------------------------------------------------------------


def test_accumulated_queries_stop_at_the_query_size_bound_and_keep_the_view(live: Live) -> None:
    assert live.query("reset").success
    term = "origin != '" + "x" * 980 + "{}'"  # ~1,000 characters each, every one a real filter
    last = None
    for i in range(30):
        reply = live.query(term.format(i), accumulate=True)
        if not reply.success:
            break
        last = reply
    assert last is not None and not reply.success, "the accumulated view never hit the bound"
    assert "10,000" in reply.message and "accumulate" in reply.message and one_line(reply.message)
    assert reply.number_of_all_samples == last.number_of_all_samples == 256  # the view stayed
    assert live.query("origin != 'nope'").success  # a fresh (non-accumulated) query still works


# -- tags ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "says"), [
    ("x" * 1_000_000, "characters"),
    ("a" * 65, "at most 64"),
    ("two\nlines", "newlines"),
    ("nul\x00byte", "control characters"),
    ("bell\x07", "control characters"),
])
def test_a_bad_tag_is_refused_with_one_line_and_changes_nothing(live: Live, text: str, says: str) -> None:
    before_tags, before_journal = live.tags(), len(live.journal())
    reply = live.edit_tags(text, [1, 2])
    assert not reply.success and says in reply.message and one_line(reply.message), reply.message
    assert live.tags() == before_tags and len(live.journal()) == before_journal


def test_a_tag_from_the_cli_is_split_on_the_separator_as_from_the_studio(live: Live) -> None:
    (reply,) = live.cli("tag train 'semi;colon' 5")
    assert reply["ok"], reply
    assert live.sample_tags(5) == "colon;semi"  # two tags, never one that holds the separator
    (long,) = live.cli(f"tag train {'y' * 65} 5")
    assert not long["ok"] and "at most 64" in said(long)
    live.cli("untag train 'semi;colon' 5")


def test_distinct_tags_per_run_are_capped_and_removing_frees_room(live: Live) -> None:
    live.edit_tags("", list(range(256)), pb.EDIT_OVERRIDE)  # start from no tags
    assert live.tags() == []
    journal = len(live.journal())
    flood = live.edit_tags(";".join(f"t{i}" for i in range(3000)), [1])  # the reported 17 KB request
    assert not flood.success and "at most 16,640" in flood.message and one_line(flood.message), flood.message
    reply = live.edit_tags(";".join(f"t{i}" for i in range(1000)), [1])
    assert not reply.success and "at most 256" in reply.message and one_line(reply.message), reply.message
    assert live.tags() == [] and len(live.journal()) == journal
    assert live.edit_tags(";".join(f"t{i}" for i in range(256)), [1]).success
    assert len(live.tags()) == 256
    refused = live.edit_tags("one-more", [2])
    assert not refused.success and "at most 256" in refused.message
    assert live.edit_tags("t7", [2]).success  # a tag in use is no new tag
    (cli,) = live.cli("tag train another 3")
    assert not cli["ok"] and "at most 256" in said(cli)
    assert live.edit_tags("t0", [1], pb.EDIT_REMOVE).success  # nobody carries t0 any more: room for one
    assert live.edit_tags("one-more", [2]).success
    assert len(live.tags()) == 256 and "t0" not in live.tags()
    live.edit_tags("", list(range(256)), pb.EDIT_OVERRIDE)


# -- sample ids ----------------------------------------------------------------------------------------


def test_millions_of_ids_are_refused_and_duplicates_are_dropped_before_any_work(live: Live) -> None:
    journal = len(live.journal())
    flood = live.stub.EditDataSample(pb.DataEditsRequest(stat_name="deny_listed", bool_value=True,
                                                         samples_ids=[7] * 5_000_000), timeout=60)
    assert not flood.success and "1,000,000" in flood.message and one_line(flood.message), flood.message
    assert len(live.journal()) == journal and live.query("").number_of_discarded_samples == 0

    reply = live.edit_tags("dup", [9] * 100_000 + [8, 9, 8])
    assert reply.success, reply.message
    entry = live.journal()[-1]
    assert entry["kind"] == "tags" and entry["ids"] == [8, 9]
    live.edit_tags("dup", [8, 9], pb.EDIT_REMOVE)


@pytest.mark.parametrize("ids", [[-1], [256], [3, 99_999_999]])
def test_ids_outside_the_split_are_refused_by_every_edit_path(live: Live, ids: list[int]) -> None:
    journal = len(live.journal())
    edit = live.stub.EditDataSample(pb.DataEditsRequest(stat_name="deny_listed", bool_value=True, samples_ids=ids),
                                    timeout=10)
    command = live.stub.ExperimentCommand(pb.TrainerCommand(deny_samples_operation=pb.DenySamplesOperation(
        sample_ids=ids, accumulate=True)), timeout=10)
    (cli,) = live.cli("discard train " + " ".join(map(str, ids)))
    for ok, message in ((edit.success, edit.message), (command.success, command.message),
                        (cli["ok"], said(cli))):
        assert not ok and "outside split 'train'" in message and one_line(message), message
    assert len(live.journal()) == journal and live.query("").number_of_discarded_samples == 0


# -- the CLI takes the gRPC path -------------------------------------------------------------------


def test_cli_hyperparameters_are_typed_and_checked_like_the_studios(live: Live) -> None:
    journal = len(live.journal())
    replies = live.cli("hp set learning_rate=abc", "hp set batch_size=0.5", "hp set learning_rate=-1",
                       "hp set no_such_knob=3", "hp set batch_size=99999999999", "status")
    *refused, status = replies
    for reply in refused:
        error = said(reply)
        assert reply["ok"] is False and one_line(error), reply
    assert "learning_rate" in refused[0]["error"] and "abc" in refused[0]["error"]
    assert "batch_size" in refused[1]["error"] and "batch_size" in refused[4]["error"]
    assert "learning_rate must be a finite number >= 0" in refused[2]["message"]  # the gRPC path's own check
    assert "no_such_knob" in refused[3]["error"]
    assert status["ok"] and status["splits"] == {"train": 256}  # the connection carried on
    assert len(live.journal()) == journal
    (good,) = live.cli("hp set learning_rate=0.5")
    assert good["ok"], good
    assert live.journal()[-1]["values"] == {"learning_rate": 0.5}

    def audited() -> bool:
        path = run_folder(live.tmp) / "audit.jsonl"
        return path.exists() and "learning_rate=abc" in path.read_text()

    wait_for(audited, 10, "the refused CLI line in the audit log")


# -- start-up: typos and modes ------------------------------------------------------------------------


def test_serve_warns_on_stderr_about_a_mistyped_variable_naming_the_closest(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env_file = tmp_path / "site.env"
    env_file.write_text("GRPC_AUTH_TOKNE=s3cret-value\nWL_MAX_PREVIEW_CACHE_SIZE=10\n")
    err_path = tmp_path / "stderr"
    daemon = Daemon(env, tmp_path / "daemon.log")
    with open(tmp_path / "daemon.log", "wb") as out, open(err_path, "wb") as err:
        daemon.proc = subprocess.Popen([sys.executable, "-m", "weightslabd", "--env", str(env_file)], env=env,
                                       stdout=out, stderr=err)
    try:
        daemon.wait_ready()
    finally:
        daemon.stop()
    lines = [line for line in err_path.read_text().splitlines() if "GRPC_AUTH_TOKNE" in line]
    assert len(lines) == 1, err_path.read_text()
    assert "did you mean GRPC_AUTH_TOKEN?" in lines[0] and "site.env" in lines[0]
    assert "s3cret-value" not in err_path.read_text() + daemon.log()


def test_logs_and_runs_are_private_folders_0700_files_0600(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    root = tmp_path / "shared" / "logs"  # neither exists yet: the daemon makes both
    env.update(WEIGHTSLAB_ROOT_LOG_DIR=str(root), WEIGHTSLAB_LOG_TO_FILE="1")
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        Trainer(env, tmp_path, "--steps", "3").wait()
        assert daemon.stub().ApplyDataQuery(pb.DataQueryRequest(query=""), timeout=10).number_of_all_samples == 256
    finally:
        daemon.stop()
    (run,) = [p for p in root.iterdir() if p.is_dir()]

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(tmp_path / "shared") == 0o700 and mode(root) == 0o700 and mode(run) == 0o700
    assert mode(root / "weightslabd.log") == 0o600
    for name in ("manifest.json", "edits.journal", "signals.log"):
        assert mode(run / name) == 0o600, name
