"""The compose set-up as written: the image's uid makes the certificates in its own volume, then serves
TLS with them. No Docker engine runs here, so the container's steps run as that uid with setpriv."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.security.tls import generate_certs

from .harness import Daemon, base_env

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
pytestmark = pytest.mark.usefixtures("root_only")  # setpriv to the image's uid: tests/conftest.py


def image_uid() -> int:
    match = re.search(r"useradd .*--uid (\d+)", (DEPLOY / "Dockerfile").read_text())
    assert match, "the Dockerfile creates its user with a fixed uid"
    return int(match[1])


def as_uid(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def image_env(home: Path, bin_dir: Path) -> dict[str, str]:
    """The image's view: `weightslabd` on PATH, run by a Python that uid 10001 may execute. This machine's
    own interpreter can sit in root's private home (pyenv), so the system one of the same minor version
    runs the same installed packages."""
    system = Path("/usr/bin/python3")
    probe = subprocess.run([str(system), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                           text=True, timeout=30) if system.exists() else None
    python = str(system) if probe and probe.stdout.strip() == str(sys.version_info[:2]) else sys.executable
    for name, command in (("python", python), ("weightslabd", f"{python} -m weightslabd")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    path = [*site.getsitepackages(), str(ROOT / "daemon"), str(ROOT / "client_shim")]
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home),
            "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def top() -> Iterator[Path]:
    """A folder every uid can enter, for what the container's uid owns (pytest's own tmp is root's)."""
    folder = Path(tempfile.mkdtemp(prefix="wl-image-"))
    os.chmod(folder, 0o711)
    (folder / "bin").mkdir(mode=0o755)
    yield folder
    shutil.rmtree(folder)


def owned_by(path: Path, uid: int) -> Path:
    path.mkdir(mode=0o700)
    os.chown(path, uid, uid)
    return path


def certs_command(volume: Path) -> list[str]:
    service: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["certs"]
    assert service["entrypoint"] == ["/bin/sh", "-c"] and service["volumes"] == ["certs:/certs"]
    return ["/bin/sh", "-c", service["command"][0].replace("/certs", str(volume))]


class ImageDaemon(Daemon):
    """weightslabd as the image runs it: its entrypoint, as its uid."""

    def __init__(self, env: dict[str, str], log_path: Path, uid: int) -> None:
        super().__init__(env, log_path)
        self.uid = uid

    def start(self, *args: str, wait: bool = True) -> ImageDaemon:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*as_uid(self.uid), "/bin/sh", "-c", 'exec weightslabd "$@"', "sh", *args],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self


@pytest.mark.timeout(90)
def test_the_image_user_makes_its_certificates_and_serves_tls_with_them(top: Path, tmp_path: Path) -> None:
    uid = image_uid()
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    assert compose["trainer"]["user"] == f"{uid}:{uid}"  # rings and the runtime dir are the daemon's uid's
    assert "chown weightslab:weightslab /run/weightslabd /data /certs" in (DEPLOY / "Dockerfile").read_text()
    volume = owned_by(top / "certs", uid)  # Docker fills a new named volume from the image's /certs
    home = owned_by(top / "home", uid)
    env = image_env(home, top / "bin")
    made = subprocess.run([*as_uid(uid), *certs_command(volume)], env=env, capture_output=True, text=True,
                          timeout=30)
    assert made.returncode == 0, made.stderr
    key = volume / "backend-server.key"
    assert key.stat().st_uid == uid and key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    again = subprocess.run([*as_uid(uid), *certs_command(volume)], env=env, capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 0, again.stderr  # `up` a second time keeps the pairs
    assert key.read_bytes() == before

    daemon_env = {**env, **base_env(home), "PATH": env["PATH"], "HOME": str(home)}
    del daemon_env["GRPC_TLS_ENABLED"]  # the image's default: TLS with client certificates
    daemon_env.update(GRPC_TLS_CERT_DIR=str(volume), GRPC_BACKEND_HOST="0.0.0.0")
    daemon = ImageDaemon(daemon_env, tmp_path / "daemon.log", uid).start()
    try:
        client = grpc.ssl_channel_credentials((volume / "ca.crt").read_bytes(), (volume / "client.key").read_bytes(),
                                              (volume / "client.crt").read_bytes())
        with grpc.secure_channel(f"localhost:{daemon_env['GRPC_BACKEND_PORT']}", client) as channel:
            reply = pb_grpc.ExperimentServiceStub(channel).GetDataSplits(pb.Empty(), timeout=10)
        assert list(reply.split_names) == []
    finally:
        daemon.stop()


def test_keys_written_by_the_host_user_are_why_the_volume_makes_its_own(top: Path) -> None:
    host = top / "host-certs"
    generate_certs(host)  # what `weightslabd certs` on the host writes: keys 0600, owned by the host user
    os.chmod(host, 0o755)
    env = image_env(owned_by(top / "home", image_uid()), top / "bin")
    env.update(GRPC_TLS_CERT_DIR=str(host))
    probe = ("from weightslabd.config import load_settings; from weightslabd.security.tls import "
             "server_ssl_context, settings_tls; server_ssl_context(settings_tls(load_settings(None)))")
    result = subprocess.run([*as_uid(image_uid()), "/bin/sh", "-c", f"exec python -c '{probe}'"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "backend-server.key: not readable (permission denied)" in result.stderr, result.stderr
