"""The audit log records every gRPC interaction — who, what, the outcome — one file per experiment,
in the format AUDIT_LOG_FORMAT names, and never a secret."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import grpc
import pytest

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc

from .harness import Daemon, Trainer, run_folder, set_hparams, wait_for

TOKENS = "first-secret-token,second-secret-token"


def interact(daemon: Daemon) -> None:
    stub = daemon.stub()
    good = (("authorization", "Bearer second-secret-token"),)
    # A TCP client's x-forwarded-for is not believed (only the gRPC-Web bridge's is): the peer stays its own.
    stub.GetDataSplits(pb.Empty(), metadata=(*good, ("x-forwarded-for", "203.0.113.9")), timeout=5)
    cmd = pb.TrainerCommand(hyper_parameter_change=pb.HyperParameterCommand(
        hyper_parameters=pb.HyperParameters(learning_rate=float("nan"))))
    assert not stub.ExperimentCommand(cmd, metadata=good, timeout=5).success  # refused: invalid value
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetDataSplits(pb.Empty(), metadata=(("x-api-key", "not-a-token"),), timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    agent = pb_grpc.ExperimentServiceStub(grpc.insecure_channel(daemon.address))
    refused = agent.InitializeAgent(pb.InitializeAgentRequest(api_key="sk-very-secret", model="m",
                                                              provider=pb.PROVIDER_OPENCODE), metadata=good, timeout=5)
    assert not refused.success and "sk-very-secret" not in refused.message  # an unsupported provider: no network


@pytest.mark.parametrize("fmt", ["json", "csv", "none"])
def test_audit_log_records_each_interaction_in_the_chosen_format(env: dict[str, str], tmp_path: Path,
                                                                 fmt: str) -> None:
    env.update(AUDIT_LOG_FORMAT=fmt, GRPC_AUTH_TOKENS=TOKENS)
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        Trainer(env, tmp_path, "--steps", "5").wait()
        interact(daemon)
    finally:
        daemon.stop()  # flushes the audit writer
    folder = run_folder(tmp_path)
    files = sorted(p.name for p in folder.iterdir() if p.name.startswith("audit"))
    if fmt == "none":
        assert files == []
        return
    assert files == [f"audit.{'jsonl' if fmt == 'json' else 'csv'}"]
    text = (folder / files[0]).read_text()
    if fmt == "json":
        lines = [json.loads(line) for line in text.splitlines()]
    else:
        lines = list(csv.DictReader(text.splitlines()))
    by_action = [(e["action"].rsplit("/", 1)[1], e["credential"], e["outcome"]) for e in lines]
    assert by_action == [("GetDataSplits", "token#2", "OK"), ("ExperimentCommand", "token#2", "REFUSED"),
                         ("GetDataSplits", "invalid", "UNAUTHENTICATED"),
                         ("InitializeAgent", "token#2", "REFUSED")]
    assert all(e["peer"].startswith("ipv4:127.0.0.1:") and e["time"].endswith("+00:00") for e in lines)
    assert "learning_rate: nan" in lines[1]["request"] and "learning_rate" in lines[1]["detail"]
    assert 'api_key: "****"' in lines[3]["request"]
    for secret in ("first-secret-token", "second-secret-token", "not-a-token", "sk-very-secret"):
        assert secret not in text


def test_audit_line_survives_a_daemon_crash_and_edits_are_recorded(env: dict[str, str], tmp_path: Path) -> None:
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    trainer = Trainer(env, tmp_path, "--steps", "200", "--step-sleep", "0.003")
    try:
        stub = daemon.stub()
        wait_for(lambda: stub.GetDataSplits(pb.Empty(), timeout=5).success, 10, "the run")
        assert set_hparams(stub, learning_rate=0.02).success
        audit = run_folder(tmp_path) / "audit.jsonl"
        wait_for(lambda: audit.exists() and "ExperimentCommand" in audit.read_text(), 5, "the audit line")
        daemon.kill()  # SIGKILL: every complete line is already in the file
        lines = [json.loads(line) for line in audit.read_text().splitlines()]
        edit = next(e for e in lines if e["action"].endswith("ExperimentCommand"))
        assert edit["outcome"] == "OK" and "learning_rate: 0.02" in edit["request"]
        assert edit["detail"].startswith("applied at step")
    finally:
        trainer.kill()
