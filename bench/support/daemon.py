"""A private weightslabd for a benchmark: its own runtime dir, log dir and gRPC port, no TLS."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DAEMON = Path(sys.executable).with_name("weightslabd")
# Where the package is importable but not installed (a checkout carried to a GPU machine): run the module.
COMMAND = [str(DAEMON)] if DAEMON.exists() else [sys.executable, "-m", "weightslabd"]
READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def daemon_env(root: Path, runtime: Path | None = None) -> dict[str, str]:
    """The environment of a private daemon under `root` (and of the trainers that attach to it)."""
    return dict(os.environ, WEIGHTSLAB_RUNTIME_DIR=str(runtime or root / "rt"), GRPC_TLS_ENABLED="0",
                GRPC_BACKEND_HOST="127.0.0.1", GRPC_BACKEND_PORT=str(free_port()),
                WEIGHTSLAB_GRPC_WEB_PORT="0",  # any free port: a daemon already on 8080 does not stop a benchmark
                WEIGHTSLAB_ROOT_LOG_DIR=str(root / "logs"), PYTHONUNBUFFERED="1")


@contextmanager
def running_daemon(root: Path, runtime: Path | None = None) -> Iterator[Path]:
    """Start weightslabd under `root`, wait for its daemon.json, yield its runtime dir, then SIGTERM it."""
    runtime = runtime or root / "rt"
    env = daemon_env(root, runtime)
    log_path = root / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(COMMAND, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not (runtime / "daemon.json").exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"weightslabd did not become ready (exit {proc.returncode}):\n{tail}")
                time.sleep(0.05)
            yield runtime
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stop_trainer_then_daemon(trainer: subprocess.Popen[Any], daemon: subprocess.Popen[Any], runtime: Path) -> None:
    """Kill the trainer, let the daemon drain and unlink its ring (no leftovers), then stop the daemon."""
    trainer.kill()
    trainer.wait()
    wait_rings_gone(runtime)
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(15)


def wait_rings_gone(runtime: Path, timeout: float = 5.0) -> bool:
    """After killing a trainer: the daemon notices (pid gone), drains and unlinks its ring."""
    from weightslab_shim.ring import list_rings
    from weightslab_shim.runtime import ring_prefix

    deadline = time.monotonic() + timeout
    while list_rings(ring_prefix(runtime)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
