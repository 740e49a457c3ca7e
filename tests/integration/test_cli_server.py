"""The CLI inspection server: on the gRPC port by default, or its own line port; `weightslabd cli`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from .harness import Daemon, Trainer, free_port, history, run_folder, wait_for


def grpc_cli(daemon: Daemon, line: str, metadata: tuple = ()) -> dict:  # type: ignore[type-arg]
    call = grpc.insecure_channel(daemon.address).unary_unary(
        "/weightslabd.Cli/Execute", request_serializer=str.encode, response_deserializer=bytes.decode)
    return dict(json.loads(call(line, metadata=metadata, timeout=10)))


def weightslabd_cli(env: dict[str, str], *commands: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    args = [a for c in commands for a in ("-c", c)]
    return subprocess.run([sys.executable, "-m", "weightslabd", "cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_cli_on_the_grpc_port_drives_the_run(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.003")
    try:
        wait_for(lambda: len(history(daemon.stub())) > 5, 10, "the first steps")
        status = grpc_cli(daemon, "status")
        assert status["ok"] and status["splits"] == {"train": 256} and "loss" in status["curves"]
        assert grpc_cli(daemon, "pause")["message"].startswith("applied at step")
        wait_for(lambda: grpc_cli(daemon, "status")["paused"], 5, "the pause")
        assert grpc_cli(daemon, "hp set learning_rate=0.25")["ok"]
        assert grpc_cli(daemon, "hp")["hyperparameters"]["learning_rate"] == pytest.approx(0.25)
        assert grpc_cli(daemon, "resume")["ok"]
        assert grpc_cli(daemon, "discard train 1 2 3")["ok"]
        assert grpc_cli(daemon, "tag train suspicious 7 8")["ok"]
        top = grpc_cli(daemon, "samples train loss 256")
        by_id = {s["id"]: s for s in top["samples"]}
        assert by_id[1]["discarded"] and by_id[7]["tags"] == ["suspicious"]
        values = [s["loss"] for s in top["samples"] if s["loss"] is not None]
        assert values == sorted(values, reverse=True)
        bad = grpc_cli(daemon, "fly away")
        assert not bad["ok"] and "unknown command 'fly'" in bad["error"]
        assert "samples SPLIT [SIGNAL] [N]" in grpc_cli(daemon, "help")["commands"]
    finally:
        trainer.kill()
    daemon.stop()
    audit = [json.loads(line) for line in (run_folder(tmp_path) / "audit.jsonl").read_text().splitlines()]
    cli_lines = [e["request"] for e in audit if e["action"] == "/weightslabd.Cli/Execute"]
    assert "hp set learning_rate=0.25" in cli_lines and "discard train 1 2 3" in cli_lines


def test_weightslabd_cli_command_reads_lines_and_prints_json(daemon: Daemon, env: dict[str, str],
                                                             tmp_path: Path) -> None:
    Trainer(env, tmp_path, "--steps", "20").wait()
    result = weightslabd_cli(env, stdin="status\nhp\n")
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert replies[0]["step"] == 20 and "learning_rate" in replies[1]["hyperparameters"]
    one = weightslabd_cli(env, "discard nosuchsplit 1")
    assert one.returncode == 1 and "no split named 'nosuchsplit'" in one.stdout


def line_session(port: int, *lines: str) -> list[dict]:  # type: ignore[type-arg]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rw", encoding="utf-8", newline="\n")
        out = []
        for line in lines:
            stream.write(line + "\n")
            stream.flush()
            out.append(json.loads(stream.readline()))
        return out


def test_own_cli_port_on_loopback_needs_no_token(env: dict[str, str], tmp_path: Path) -> None:
    env.update(CLI_HOST="127.0.0.1", CLI_PORT=str(free_port()))
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        Trainer(env, tmp_path, "--steps", "10").wait()
        assert daemon.wait_ready()["cli_port"] == int(env["CLI_PORT"])
        status, = line_session(int(env["CLI_PORT"]), "status")
        assert status["ok"] and status["step"] == 10
        result = weightslabd_cli(env, "status")
        assert result.returncode == 0 and json.loads(result.stdout)["step"] == 10
    finally:
        daemon.stop()


def test_own_cli_port_off_loopback_is_refused_and_tokens_stay_secret(env: dict[str, str], tmp_path: Path) -> None:
    env.update(CLI_HOST="0.0.0.0", CLI_PORT=str(free_port()), GRPC_AUTH_TOKENS="cli-secret-1,cli-secret-2")
    refused = subprocess.run([sys.executable, "-m", "weightslabd"], env=env, capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode == 2 and "set CLI_HOST=127.0.0.1" in refused.stderr  # plain text: loopback only
    env["CLI_HOST"] = "127.0.0.1"
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        Trainer(env, tmp_path, "--steps", "10").wait()
        port = int(env["CLI_PORT"])
        first, second = line_session(port, "auth wrong", "auth cli-secret-2")
        assert not first["ok"] and first["error"] == "invalid token" and second["ok"]
        result = weightslabd_cli(env, "status")
        assert result.returncode == 0 and json.loads(result.stdout)["step"] == 10
    finally:
        daemon.stop()
    text = (run_folder(tmp_path) / "audit.jsonl").read_text()
    assert "cli-secret" not in text and '"credential":"token#2"' in text
