"""agent_config.yaml: the documented lookup order, every key, one line per problem, keys masked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from weightslabd.agent import config
from weightslabd.agent.config import AgentConfigError, load


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent_config.yaml"
    path.write_text(text)
    return path


def test_every_documented_key_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "cfg", "agent:\n  provider: openrouter\n  ollama_model: llama3.2:3b\n"
                 "  ollama_host: 10.0.0.2\n  ollama_port: 11500\n  openrouter_model: openai/gpt-4o-mini\n"
                 "  openrouter_base_url: http://127.0.0.1:9/v1/\n  openrouter_request_timeout: 2.5\n"
                 "  openrouter_api_key: sk-from-file\n  fallback_to_local: true\n")
    got = load(tmp_path / "cfg", cwd=tmp_path)
    assert (got.provider, got.ollama_model, got.ollama_url, got.openrouter_model) == (
        "openrouter", "llama3.2:3b", "http://10.0.0.2:11500", "openai/gpt-4o-mini")
    assert (got.openrouter_base_url, got.openrouter_request_timeout, got.fallback_to_local) == (
        "http://127.0.0.1:9/v1", 2.5, True)
    assert got.openrouter_api_key == "sk-from-file" and got.source == str(path) and got.key_source == str(path)
    assert "sk-from-file" not in repr(got)
    from_env = load(tmp_path / "cfg", "sk-from-env", cwd=tmp_path)  # the environment wins over the file
    assert from_env.openrouter_api_key == "sk-from-env" and from_env.key_source.startswith("environment")


def test_defaults_without_a_file(tmp_path: Path) -> None:
    got = load(None, cwd=tmp_path)
    assert got.provider is None and got.source == "default"
    assert got.openrouter_model == "meta-llama/llama-3.3-70b-instruct"
    assert got.openrouter_base_url == "https://openrouter.ai/api/v1" and got.openrouter_request_timeout == 15.0


def test_lookup_order_config_path_first_then_the_working_directory(tmp_path: Path) -> None:
    first = write(tmp_path / "override", "agent:\n  provider: ollama\n  ollama_model: a\n")
    cwd = write(tmp_path / "cwd", "agent:\n  provider: ollama\n  ollama_model: b\n")
    assert load(tmp_path / "override", cwd=tmp_path / "cwd").source == str(first)
    assert load(tmp_path / "nowhere", cwd=tmp_path / "cwd").source == str(cwd)
    places = config.candidates(tmp_path / "override", tmp_path / "cwd")
    assert places == [first, config.REPOSITORY_DIR / "agent_config.yaml", config.PACKAGE_DIR / "agent_config.yaml",
                      cwd]


@pytest.mark.parametrize(("text", "line"), [
    ("agent:\n  provider: olama\n", "agent.provider = 'olama': expected 'ollama' or 'openrouter'"),
    ("agent:\n  ollama_prot: 1\n", "unknown key 'agent.ollama_prot'; did you mean 'agent.ollama_port'?"),
    ("agent:\n  ollama_port: 70000\n", "agent.ollama_port = 70000: expected a port 1..65535"),
    ("agent:\n  openrouter_request_timeout: 0\n", "agent.openrouter_request_timeout = 0: expected seconds"),
    ("agent:\n  openrouter_base_url: ftp://x\n", "expected an http:// or https:// URL"),
    ("agent:\n  fallback_to_local: maybe\n", "agent.fallback_to_local = 'maybe': expected true or false"),
    ("agent:\n  provider: ollama\n", "agent.provider is ollama but agent.ollama_model is not set"),
    ("agent: [1, 2]\n", "'agent' must be a mapping"),
    ("provider: ollama\n", "expected one top-level key 'agent'"),
    ("agent:\n  provider: [\n", "not valid YAML at line"),
])
def test_each_problem_is_one_line(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(AgentConfigError) as caught:
        load(tmp_path, cwd=tmp_path)
    assert caught.value.problems and all("\n" not in p and p.startswith(str(path)) for p in caught.value.problems)
    assert line in str(caught.value)


def test_every_problem_is_reported_at_once_and_a_key_is_never_shown(tmp_path: Path) -> None:
    write(tmp_path, "agent:\n  provider: x\n  ollama_port: -1\n  openrouter_api_key: [sk-secret]\n")
    with pytest.raises(AgentConfigError) as caught:
        load(tmp_path, cwd=tmp_path)
    assert len(caught.value.problems) == 3 and "sk-secret" not in str(caught.value)


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WEIGHTSLAB_", "WL_", "GRPC_", "AGENT_",
                                                                          "OPENROUTER_"))}
    return subprocess.run([sys.executable, "-m", "weightslabd", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_weightslabd_config_shows_the_agent_and_its_file_with_the_key_masked(tmp_path: Path) -> None:
    path = write(tmp_path, "agent:\n  provider: openrouter\n  openrouter_request_timeout: 3\n")
    shown = run_cli("config", AGENT_CONFIG_PATH=str(tmp_path), OPENROUTER_API_KEY="sk-or-abcdef-123")
    assert shown.returncode == 0, shown.stderr
    assert f"agent configuration (from {path}" in shown.stdout
    rows = {line.split()[0]: line for line in shown.stdout.splitlines() if line.startswith("agent.")}
    assert rows["agent.provider"].split()[1:] == ["openrouter", str(path)]
    assert rows["agent.openrouter_request_timeout"].split()[1:] == ["3.0", str(path)]
    assert rows["agent.ollama_port"].split()[1:] == ["11435", "default"]
    assert "**** (16 chars)" in rows["agent.openrouter_api_key"] and "sk-or-abcdef" not in shown.stdout
    write(tmp_path, "agent:\n  provider: cloud\n")
    bad = run_cli("config", AGENT_CONFIG_PATH=str(tmp_path))
    assert bad.returncode == 2 and "agent.provider = 'cloud': expected 'ollama' or 'openrouter'" in bad.stdout
    refused = run_cli("serve", AGENT_CONFIG_PATH=str(tmp_path), WEIGHTSLAB_RUNTIME_DIR=str(tmp_path / "rt"),
                      WEIGHTSLAB_ROOT_LOG_DIR=str(tmp_path / "logs"), GRPC_TLS_ENABLED="0",
                      GRPC_BACKEND_HOST="127.0.0.1", GRPC_BACKEND_PORT="0", WEIGHTSLAB_GRPC_WEB_PORT="-1")
    assert refused.returncode == 2
    assert f"weightslabd: {path}: agent.provider = 'cloud': expected 'ollama' or 'openrouter'" in refused.stderr
