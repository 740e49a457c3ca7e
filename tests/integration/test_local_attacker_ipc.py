"""Another user on the same machine: a squatted runtime directory, shared-memory segments planted
under our prefix, and hellos naming things outside the log root or /dev/shm. The attacker really
runs as a second uid (setpriv), against a real daemon and real trainers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from weightslab_shim import wire
from weightslab_shim.ring import RingWriter, shm_path, unlink
from weightslab_shim.runtime import control_endpoint, ring_prefix

from .harness import Daemon, Trainer, history, manifest, shm_segments, wait_for

pytestmark = pytest.mark.usefixtures("root_only")  # tests/conftest.py: fails, or skips on purpose

NOBODY = 65534  # the attacker, against a daemon of ours (root)
OTHER = 65533  # the attacker, against a daemon running as NOBODY
DEAD_PID = 99_999_999  # above any pid_max: never a live process

LISTENER = r"""
import json, os, sys, time
import zmq
from weightslab_shim import wire
rt, out = sys.argv[1], sys.argv[2]
os.makedirs(rt, exist_ok=True)
os.chmod(rt, 0o777)
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind(f"ipc://{rt}/control.sock")
got = []
open(out + ".ready", "w").close()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if not sock.poll(50):
        continue
    ident, frame = sock.recv_multipart()
    msg = wire.decode(frame)
    got.append(msg)
    if msg["type"] == "hello":
        sock.send_multipart([ident, wire.encode({"type": "welcome", "run_id": msg["run_id"], "hp_sync": True})])
        sock.send_multipart([ident, wire.encode({"type": "command", "cmd_id": "x1", "op": "set_hparams",
                                                 "args": {"learning_rate": 1000.0}})])
    with open(out + ".tmp", "w") as f:
        json.dump(got, f)
    os.replace(out + ".tmp", out)
"""

PLANT = r"""
import os, sys
import numpy as np
from weightslab_shim import records
from weightslab_shim.ring import RecordType, RingWriter, shm_path
prefix, run_id, junk_name = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(shm_path(junk_name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
os.write(fd, b"x" * 100)
os.fchmod(fd, 0o666)
os.close(fd)
if run_id:
    ring = RingWriter(prefix, 1 << 16, run_id)
    for step in range(3):
        ring.write(RecordType.STEP, step, records.encode([("scalar\x1fforged\x1f0", np.asarray(1000.0))]))
    os.chmod(shm_path(ring.name), 0o666)
    ring.close(unlink_segment=False)
    print(ring.name)
"""


def as_user(uid: int, *cmd: str) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]


def run_as(uid: int, code: str, *args: str) -> str:
    done = subprocess.run(as_user(uid, sys.executable, "-c", code, *args), capture_output=True, text=True,
                          timeout=20, env={"PATH": os.environ.get("PATH", ""), "HOME": "/"}, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """Like /tmp: a directory every user can create in (sticky). Removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="wl-attack-", dir="/tmp"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def planted() -> Iterator[list[str]]:
    """Names of segments the attacker made, removed at the end whatever the daemon did."""
    names: list[str] = []
    yield names
    for name in names:
        unlink(name)


class DaemonAs(Daemon):
    """weightslabd run as another uid."""

    def __init__(self, uid: int, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.uid = uid

    def start(self, *args: str, wait: bool = True) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(as_user(self.uid, sys.executable, "-m", "weightslabd", *args), env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, cwd="/")
        if wait:
            self.wait_ready()
        return self


def weightslab_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("weightslab")]


# -- 1. a squatted runtime directory ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_squatted_runtime_dir_never_hears_the_trainer(env: dict[str, str], tmp_path: Path,
                                                         shared_tmp: Path) -> None:
    runtime = shared_tmp / "weightslabd-0"  # as /tmp/weightslabd-<uid> with no runtime dir set
    heard = shared_tmp / "heard.json"
    listener = subprocess.Popen(as_user(NOBODY, sys.executable, "-c", LISTENER, str(runtime), str(heard)),
                                env={"PATH": os.environ.get("PATH", ""), "HOME": "/"}, cwd="/")
    try:
        wait_for(lambda: Path(f"{heard}.ready").exists() or listener.poll() is not None, 20, "the listener")
        assert listener.poll() is None
        env = {**env, "WEIGHTSLAB_RUNTIME_DIR": str(runtime)}
        stop = tmp_path / "stop"
        trainer = Trainer(env, tmp_path, "--steps", "1000000", "--until", str(stop))

        def outcome() -> bool:
            return heard.exists() or "runtime directory" in trainer.stderr() or trainer.proc.poll() is not None

        wait_for(outcome, 20, "the trainer to refuse the runtime directory (or the listener to hear it)")
        stop.touch()
        status = trainer.wait(30)
    finally:
        listener.kill()
        listener.wait()
    said = json.loads(heard.read_text()) if heard.exists() else []
    assert not said, f"the other user heard the trainer: {said}"
    assert status["lr"] == 0.1 and status["steps"] >= 50
    lines = weightslab_lines(trainer.stderr())
    assert len(lines) == 1, lines
    assert f"owned by uid {NOBODY}" in lines[0] and "WEIGHTSLAB_RUNTIME_DIR" in lines[0]


@pytest.mark.parametrize("who", ["another user", "open to others"])
def test_the_daemon_refuses_a_runtime_dir_not_private_to_it(env: dict[str, str], tmp_path: Path, shared_tmp: Path,
                                                             who: str) -> None:
    runtime = shared_tmp / "weightslabd-0"
    if who == "another user":
        run_as(NOBODY, "import os, sys; os.mkdir(sys.argv[1], 0o700)", str(runtime))
        says = f"owned by uid {NOBODY}"
    else:
        runtime.mkdir()
        runtime.chmod(0o755)
        says = "mode 0755"
    daemon = Daemon({**env, "WEIGHTSLAB_RUNTIME_DIR": str(runtime)}, tmp_path / "daemon.log").start(wait=False)
    try:
        assert daemon.proc is not None
        wait_for(lambda: daemon.proc is not None and daemon.proc.poll() is not None, 15,
                 "weightslabd to refuse the runtime directory")
        assert daemon.proc.returncode == 2, daemon.log()
    finally:
        daemon.stop()
    lines = [line for line in daemon.log().splitlines() if not line.startswith("{")]  # not the structured log
    assert len(lines) == 1 and says in lines[0] and str(runtime) in lines[0], lines
    assert stat.S_IMODE(runtime.stat().st_mode) == (0o700 if who == "another user" else 0o755)  # left as found
    assert not (runtime / "control.sock").exists()


# -- 2. planted shared-memory segments ----------------------------------------------------------------


@pytest.mark.timeout(90)
def test_planted_segments_are_neither_read_nor_removed_at_boot(env: dict[str, str], tmp_path: Path,
                                                                planted: list[str]) -> None:
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        Trainer(env, tmp_path, "--steps", "20").wait()
        run_id = json.loads((Path(env["WEIGHTSLAB_RUNTIME_DIR"]) / "runs.json").read_text()).popitem()[0]
        before = len(history(daemon.stub()))
    finally:
        daemon.stop()
    prefix = ring_prefix(Path(env["WEIGHTSLAB_RUNTIME_DIR"]))
    junk = f"{prefix}{DEAD_PID}.0badf00d"
    planted.append(junk)
    forged = run_as(NOBODY, PLANT, prefix, run_id, junk)  # a well-formed ring of that run, writer gone
    planted.append(forged)

    daemon = Daemon(env, tmp_path / "daemon2.log").start()
    try:
        points = history(daemon.stub())
        assert len(points) == before and not [p for p in points if p.metric_name == "forged"]
        skipped = [e for e in daemon.log_events() if e.get("event") == "shared-memory segment skipped"]
        assert sorted(e["ring"] for e in skipped) == sorted([junk, forged]), skipped
        assert f"owned by uid {NOBODY}" in str(skipped[0]["error"])
        assert shm_path(junk).exists() and shm_path(forged).exists()  # another user's files: left alone
    finally:
        daemon.stop()


@pytest.mark.timeout(60)
def test_a_junk_segment_of_another_user_does_not_stop_a_daemon_that_cannot_remove_it(
        tmp_path: Path, shared_tmp: Path, planted: list[str]) -> None:
    from .harness import base_env

    env = base_env(shared_tmp)
    env.update(HOME=str(shared_tmp), XDG_STATE_HOME=str(shared_tmp / "state"))
    runtime = Path(env["WEIGHTSLAB_RUNTIME_DIR"])
    junk = f"{ring_prefix(runtime, uid=NOBODY)}{DEAD_PID}.0badf00d"
    planted.append(junk)
    run_as(OTHER, PLANT, "", "", junk)  # 100 bytes, world-writable; only its owner may unlink it
    for restart in range(2):  # restart: always must not make a crash loop of it
        daemon = DaemonAs(NOBODY, env, tmp_path / f"daemon{restart}.log").start()
        try:
            events = daemon.log_events()
            assert [e["ring"] for e in events if e.get("event") == "shared-memory segment skipped"] == [junk]
            assert shm_path(junk).exists()
        finally:
            daemon.stop()
        assert daemon.proc is not None and daemon.proc.returncode == 0, daemon.log()


def test_a_hello_naming_another_users_segment_is_refused(daemon: Daemon, env: dict[str, str],
                                                         planted: list[str]) -> None:
    prefix = ring_prefix(Path(env["WEIGHTSLAB_RUNTIME_DIR"]))
    junk = f"{prefix}{DEAD_PID}.0badf00d"
    planted.append(junk)
    forged = run_as(NOBODY, PLANT, prefix, "forged-20240101-000000-abcdef", junk)
    planted.append(forged)
    pid = int(forged[len(prefix):].split(".")[0])
    reply = say_hello(env, "forged-20240101-000000-abcdef", forged, pid)
    assert reply["type"] == wire.REJECT and f"owned by uid {NOBODY}" in str(reply["reason"]), reply
    assert shm_path(forged).exists()
    assert not (Path(env["WEIGHTSLAB_ROOT_LOG_DIR"]) / "forged-20240101-000000-abcdef").exists()


@pytest.mark.timeout(60)
def test_a_ring_its_hello_announced_is_still_recovered_after_both_died(env: dict[str, str], tmp_path: Path) -> None:
    runtime = Path(env["WEIGHTSLAB_RUNTIME_DIR"])
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    try:
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 5, 10, "the first steps")
        daemon.kill(signal.SIGKILL)
    finally:
        trainer.kill()
    rings = shm_segments(env)
    assert len(rings) == 1 and list(json.loads((runtime / "rings.json").read_text())) == rings
    assert stat.S_IMODE((runtime / "rings.json").stat().st_mode) == 0o600
    daemon = Daemon(env, tmp_path / "daemon2.log").start()
    try:
        assert shm_segments(env) == [] and not (runtime / "rings.json").exists()
        assert manifest(tmp_path)["status"] == "crashed"
        assert [e for e in daemon.log_events() if e.get("event") == "ring of a dead trainer recovered and removed"]
    finally:
        daemon.stop()


# -- 3. what a hello names -------------------------------------------------------------------------


def say_hello(env: dict[str, str], run_id: str, ring_name: str, pid: int) -> wire.Message:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    try:
        sock.connect(control_endpoint(Path(env["WEIGHTSLAB_RUNTIME_DIR"])))
        sock.send(wire.encode({"type": wire.HELLO, "protocol": wire.PROTOCOL_VERSION, "pid": pid, "run_id": run_id,
                               "run_name": "x", "script_dir": env["WEIGHTSLAB_ROOT_LOG_DIR"], "splits": {},
                               "hparams": {}, "ring": {"name": ring_name, "capacity": 1 << 16}}))
        return wire.decode(sock.recv())
    finally:
        sock.close(0)
        ctx.term()


def test_a_run_id_that_is_a_path_is_refused_and_leaves_nothing(daemon: Daemon, env: dict[str, str],
                                                               tmp_path: Path) -> None:
    run_id = f"../outside-{uuid.uuid4().hex[:6]}"
    ring = RingWriter(ring_prefix(Path(env["WEIGHTSLAB_RUNTIME_DIR"])), 1 << 16, run_id)
    try:
        reply = say_hello(env, run_id, ring.name, os.getpid())
    finally:
        ring.close(unlink_segment=True)
    assert reply["type"] == wire.REJECT and f"run id {run_id!r}" in str(reply["reason"]), reply
    logs = Path(env["WEIGHTSLAB_ROOT_LOG_DIR"])
    assert not (logs / run_id).exists()
    assert not logs.exists() or not any(logs.iterdir())
    event = wait_for(lambda: [e for e in daemon.log_events() if e.get("event") == "control message rejected"], 5,
                     "the refusal to be logged")[0]
    assert run_id in str(event["error"])


def test_a_ring_name_outside_dev_shm_is_refused_and_left_alone(daemon: Daemon, env: dict[str, str],
                                                               tmp_path: Path) -> None:
    run_id = "escape-20240101-000000-abcdef"
    ring = RingWriter(ring_prefix(Path(env["WEIGHTSLAB_RUNTIME_DIR"])), 1 << 16, run_id)
    outside = tmp_path / "not-shared-memory"
    try:
        shutil.copyfile(shm_path(ring.name), outside)  # a valid ring of ours, but not in /dev/shm
    finally:
        ring.close(unlink_segment=True)
    outside.chmod(0o600)
    reply = say_hello(env, run_id, f"../..{outside}", os.getpid())
    assert reply["type"] == wire.REJECT and "is not a ring name of this runtime directory" in str(reply["reason"])
    assert outside.exists()
    assert not (Path(env["WEIGHTSLAB_ROOT_LOG_DIR"]) / run_id).exists()
