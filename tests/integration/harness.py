"""Real processes for integration tests: a weightslabd daemon and trainer scripts, each in its own
process with a private runtime directory, talked to over real sockets and shared memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
from ports import free_port
from waiting import wait_for

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.store.framedlog import read_frames

HERE = Path(__file__).resolve().parent
TRAINER = HERE / "trainer.py"


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEIGHTSLAB_", "WL_", "GRPC_"))}
    env.update(
        WEIGHTSLAB_RUNTIME_DIR=str(tmp / "rt"), WEIGHTSLAB_ROOT_LOG_DIR=str(tmp / "logs"),
        GRPC_TLS_ENABLED="0", GRPC_BACKEND_HOST="127.0.0.1", GRPC_BACKEND_PORT=str(free_port()),
        WEIGHTSLAB_GRPC_WEB_PORT="0",
        PYTHONUNBUFFERED="1",
    )
    return env


class Daemon:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.runtime_dir = Path(env["WEIGHTSLAB_RUNTIME_DIR"])

    def start(self, *args: str, wait: bool = True) -> Daemon:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([sys.executable, "-m", "weightslabd", *args], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"weightslabd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                state = json.loads((self.runtime_dir / "daemon.json").read_text())
            except (FileNotFoundError, ValueError):
                return None
            return state if state.get("pid") == self.proc.pid else None

        return dict(wait_for(ready, timeout, "weightslabd to become ready"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.env['GRPC_BACKEND_PORT']}"

    def stub(self) -> Any:
        return pb_grpc.ExperimentServiceStub(grpc.insecure_channel(self.address))

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Trainer:
    """tests/integration/trainer.py in a subprocess; its status JSON is written at exit."""

    def __init__(self, env: dict[str, str], tmp: Path, *args: str, name: str = "trainer",
                 script: Path = TRAINER) -> None:
        self.status_path = tmp / f"{name}-status.json"
        self.stderr_path = tmp / f"{name}.stderr"
        self.stdout_path = tmp / f"{name}.stdout"
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(script), "--status", str(self.status_path), *args],
                                         env=env, stdout=out, stderr=err)

    def wait(self, timeout: float = 30) -> dict[str, Any]:
        rc = self.proc.wait(timeout=timeout)
        assert rc == 0, f"trainer exited with {rc}:\n{self.stderr()}"
        return dict(json.loads(self.status_path.read_text()))

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_folder(tmp: Path) -> Path:
    folders = [p for p in (tmp / "logs").iterdir() if (p / "manifest.json").exists()]
    assert len(folders) == 1, folders
    return folders[0]


def journal(tmp: Path) -> list[dict[str, Any]]:
    """The run's edits journal, entry by entry."""
    return [json.loads(frame) for _, frame in read_frames(run_folder(tmp) / "edits.journal")]


def manifest(tmp: Path) -> dict[str, Any]:
    return dict(json.loads((run_folder(tmp) / "manifest.json").read_text()))


def history(stub: Any, max_points: int = 0, **kw: Any) -> list[Any]:
    reply = stub.GetLatestLoggerData(pb.GetLatestLoggerDataRequest(request_full_history=True, max_points=max_points,
                                                                   **kw), timeout=5)
    return list(reply.points)


def set_hparams(stub: Any, **values: Any) -> Any:
    cmd = pb.TrainerCommand(hyper_parameter_change=pb.HyperParameterCommand(
        hyper_parameters=pb.HyperParameters(**values)))
    return stub.ExperimentCommand(cmd, timeout=10)


def hparams(stub: Any) -> dict[str, Any]:
    reply = stub.ExperimentCommand(pb.TrainerCommand(get_hyper_parameters=True), timeout=5)
    return {d.name: (d.string_value if d.type in ("text", "bool") else d.numerical_value)
            for d in reply.hyper_parameters_descs}


def shm_segments(env: dict[str, str]) -> list[str]:
    from weightslab_shim.runtime import ring_prefix

    prefix = ring_prefix(Path(env["WEIGHTSLAB_RUNTIME_DIR"]))
    return [p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(prefix)]
