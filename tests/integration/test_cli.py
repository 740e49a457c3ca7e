"""`weightslabd` as a command: --env files, `config`, `certs`, and exit status 2 on bad settings."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from .harness import Daemon, base_env


def weightslabd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weightslabd", *args], env=env, capture_output=True, text=True,
                          timeout=30)


def test_invalid_setting_exits_2_with_one_line_naming_it(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env_file = tmp_path / "bad.env"
    env_file.write_text("AUDIT_LOG_FORMAT=xml\n")
    result = weightslabd("--env", str(env_file), env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "AUDIT_LOG_FORMAT='xml' is invalid" in result.stderr and "json" in result.stderr


def test_environment_overrides_the_env_file_and_config_shows_sources(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env_file = tmp_path / "site.env"
    env_file.write_text("WL_MAX_PREVIEW_CACHE_SIZE=17\nGRPC_BACKEND_PORT=6000\nGRPC_AUTH_TOKEN=s3cret-value\n")
    result = weightslabd("--env", str(env_file), "config", env=env)
    assert result.returncode == 0, result.stderr
    after = weightslabd("config", "--env", str(env_file), env=env)  # the order docs/configuration.md shows
    assert after.returncode == 0, after.stderr
    assert after.stdout == result.stdout
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "17" in rows["WL_MAX_PREVIEW_CACHE_SIZE"] and "site.env" in rows["WL_MAX_PREVIEW_CACHE_SIZE"]
    assert env["GRPC_BACKEND_PORT"] in rows["GRPC_BACKEND_PORT"] and "environment" in rows["GRPC_BACKEND_PORT"]
    assert "default" in rows["WL_DEFAULT_THUMBNAIL_SIZE"]
    assert "s3cret-value" not in result.stdout


def test_env_file_settings_reach_the_daemon(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    port = env.pop("GRPC_BACKEND_PORT")
    env_file = tmp_path / "site.env"
    env_file.write_text(f"GRPC_BACKEND_PORT={port}\n")
    daemon = Daemon(env, tmp_path / "daemon.log").start("--env", str(env_file))
    try:
        assert daemon.wait_ready()["grpc_port"] == int(port)
    finally:
        daemon.stop()


def test_certs_command_creates_a_private_ca_server_and_client_pair(tmp_path: Path) -> None:
    result = weightslabd("certs", "--dir", str(tmp_path / "c"), env=base_env(tmp_path))
    assert result.returncode == 0, result.stderr
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert {"ca.crt", "backend-server.key", "backend-server.crt", "client.key", "client.crt"} <= names
    for key in (tmp_path / "c").glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = weightslabd("certs", "--dir", str(tmp_path / "c"), env=base_env(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr and again.stderr.count("\n") == 1
