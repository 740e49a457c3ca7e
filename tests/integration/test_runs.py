"""Runs and their checkpoints: listed, renamed and annotated (journaled, so a restart keeps them), pruned to
the last K, hashed by hyperparameters + model + data, and continued by a restarted script (resume)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store.framedlog import read_frames

from .harness import Daemon, Trainer, history, run_folder, set_hparams, wait_for
from .test_cli_server import grpc_cli
from .test_edits import deny


def runs(stub: Any) -> list[Any]:
    return list(stub.ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5).runs)


def book(tmp: Path) -> list[dict[str, Any]]:
    kinds = ("checkpoint", "checkpoint_removed", "restored", "run_name", "run_notes", "plot_note")
    return [e for e in (json.loads(f) for _, f in read_frames(run_folder(tmp) / "edits.journal")) if e["kind"] in kinds]


@pytest.mark.timeout(90)
def test_runs_are_listed_renamed_annotated_pruned_and_kept_across_a_restart(daemon: Daemon, env: dict[str, str],
                                                                            tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002",
                      "--hp", "checkpoint_frequency=20", "--hp", "checkpoint_keep_last=2")
    try:
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 5, 10, "the first steps")
        folder = run_folder(tmp_path)
        wait_for(lambda: len(grpc_cli(daemon, "checkpoint list")["checkpoints"]) == 2
                 and any(e["kind"] == "checkpoint_removed" for e in book(tmp_path)), 20, "3 checkpoints, 1 pruned")
        files = sorted((folder / "checkpoints").iterdir())
        assert len(files) in (2, 3)  # the third may be on its way
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
        run_id = folder.name
        before = next(r for r in runs(stub) if len(r.experiment_hash) == 24)
        assert deny(stub, [5, 6]).success  # the data part of the hash changes; the others do not
        saved = grpc_cli(daemon, "checkpoint save")
        assert saved["ok"], saved
        after = saved["message"].split()[1].split("@")[0]
        assert after[:16] == before.experiment_hash[:16] and after[16:] != before.experiment_hash[16:]
        assert set_hparams(stub, learning_rate=0.3).success
        hp_changed = grpc_cli(daemon, "checkpoint save")["message"].split()[1].split("@")[0]
        assert hp_changed[:8] != after[:8] and hp_changed[8:] == after[8:]

        assert stub.RenameExperimentRun(pb.RenameExperimentRunRequest(experiment_hash=run_id, new_name="baseline"),
                                        timeout=5).success
        assert stub.SetExperimentRunNotes(pb.SetExperimentRunNotesRequest(experiment_hash=after, notes="no 5, 6"),
                                          timeout=5).success
        for bad in (pb.RenameExperimentRunRequest(experiment_hash="f" * 24, new_name="x"),
                    pb.RenameExperimentRunRequest(experiment_hash=run_id, new_name="a\x00b"),
                    pb.RenameExperimentRunRequest(experiment_hash=run_id, new_name=" ")):
            reply = stub.RenameExperimentRun(bad, timeout=5)
            assert not reply.success and reply.message, bad
        assert set_hparams(stub, checkpont_frequency=7).success  # the Studio's field (sic) edits the schedule
        wait_for(lambda: any(e["kind"] == "checkpoint" and e["reason"] == "auto" and e["step"] % 20
                             for e in book(tmp_path)), 10, "an auto-checkpoint at a multiple of 7")
        gone = stub.RestoreCheckpoint(pb.RestoreCheckpointRequest(experiment_hash=f"{before.experiment_hash}@1"),
                                      timeout=5)
        assert not gone.success and "no checkpoint" in gone.message
    finally:
        trainer.kill()
    daemon.stop()
    daemon.start()
    listed = {r.experiment_hash: r for r in runs(daemon.stub())}
    assert listed[run_id].experiment_name == "baseline" and listed[run_id].is_current
    assert listed[after].notes == "no 5, 6" and listed[after].experiment_name == "baseline"
    assert listed[hp_changed].is_current and not listed[after].is_current
    assert listed[run_id].created and listed[run_id].last_used and listed[run_id].latest_weight_step > 0


@pytest.mark.timeout(90)
def test_a_restarted_script_resumes_its_run_with_the_edits_made_while_it_was_down(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    env = dict(env, WEIGHTSLAB_RUN_NAME="resumable")
    first = Trainer(env, tmp_path, "--steps", "40", "--hp", "checkpoint_frequency=10", name="first").wait()
    assert first["steps"] == 40
    stub = daemon.stub()
    wait_for(lambda: any(r.latest_weight_step == 40 for r in runs(stub)), 10, "the checkpoint of step 40")
    assert deny(stub, [3, 4]).success  # while no trainer runs: journaled, applied when it comes back
    assert set_hparams(stub, learning_rate=0.25).success
    second = Trainer(dict(env, WEIGHTSLAB_RESUME="1"), tmp_path, "--steps", "10", name="second").wait()
    assert second["step_of"] == list(range(40, 50))
    assert second["lr"] == 0.25 and second["hparams"]["learning_rate"] == 0.25
    assert not {3, 4} & {i for ids in second["seen"] for i in ids}
    folder = run_folder(tmp_path)  # one run folder: the same run went on (checked before "other" runs)
    steps = sorted({p.model_age for p in history(stub) if p.metric_name == "loss"})
    assert steps == list(range(50))
    assert json.loads((folder / "manifest.json").read_text())["status"] == "ended"
    assert [r.experiment_hash for r in runs(stub)].count(folder.name) == 1
    assert os.stat(folder / "checkpoints").st_mode & 0o077 == 0
    wait_for(lambda: any(e["kind"] == "restored" and e["step"] == 40 for e in book(tmp_path)), 10,
             "the resume's load journaled")
    alone = stub.RestoreCheckpoint(pb.RestoreCheckpointRequest(experiment_hash=folder.name), timeout=5)
    assert not alone.success and "WEIGHTSLAB_RESUME=1" in alone.message  # nobody to load it: said, not faked
    ehash = next(r.experiment_hash for r in runs(stub) if len(r.experiment_hash) == 24)
    Trainer(dict(env, WEIGHTSLAB_RUN_NAME="other"), tmp_path, "--steps", "3", name="other").wait()
    wait_for(lambda: next(r for r in runs(stub) if r.is_current).experiment_hash != folder.name, 10, "a new run")
    elsewhere = stub.RestoreCheckpoint(pb.RestoreCheckpointRequest(experiment_hash=f"{ehash}@40"), timeout=5)
    assert not elsewhere.success and f"belongs to run {folder.name}" in elsewhere.message, elsewhere.message
