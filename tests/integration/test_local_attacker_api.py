"""Safe on a shared machine (issue 8): another local user (uid nobody) can neither steer nor read a run
through the daemon's loopback ports, tokens never reach the audit log, insecure binds stop the boot, a
loop of refused handshakes writes a bounded number of lines, and an acknowledged edit is always audited.

Real parts: a daemon process, real sockets, the attacker a real process under uid 65534 (setpriv)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.security.tls import generate_certs

from .harness import Daemon, Trainer, free_port, run_folder, wait_for

NOBODY = 65534
TOKEN = "s3cret-token-for-issue-8"
needs_root = pytest.mark.usefixtures("root_only")  # tests/conftest.py: fails, or skips on purpose

# The attacker's side, stdlib only, run as uid nobody: one gRPC-Web call, or lines on the CLI port.
WEB_CALL = r"""
import http.client, json, sys
port, token = int(sys.argv[1]), sys.argv[2]
headers = {"content-type": "application/grpc-web+proto"}
if token:
    headers["authorization"] = "Bearer " + token
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
conn.request("POST", "/ExperimentService/GetDataSplits", body=b"\x00\x00\x00\x00\x00", headers=headers)
r = conn.getresponse()
body = r.read()
print(json.dumps({"http": r.status, "grpc_status": r.getheader("grpc-status"),
                  "grpc_message": r.getheader("grpc-message"), "body": len(body)}))
"""
LINES = r"""
import json, socket, sys
port = int(sys.argv[1])
with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
    stream = sock.makefile("rw", encoding="utf-8", newline="\n")
    for line in sys.argv[2:]:
        stream.write(line + "\n"); stream.flush()
        reply = stream.readline()
        print(reply.strip() if reply else json.dumps({"closed": True}))
"""


def as_nobody(code: str, *args: str) -> list[dict[str, Any]]:
    result = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                             sys.executable, "-I", "-c", code, *args], capture_output=True, text=True, timeout=30,
                            cwd="/")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def as_root(code: str, *args: str) -> list[dict[str, Any]]:
    result = subprocess.run([sys.executable, "-I", "-c", code, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def audit_lines(tmp: Path) -> list[dict[str, Any]]:
    """Every audit line: the run folders' and the daemon's own (calls made while no run exists)."""
    files = sorted((tmp / "logs").glob("audit.jsonl")) + sorted((tmp / "logs").glob("*/audit.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def refused_at_boot(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, "-m", "weightslabd"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:  # it started: the bind was not refused
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# --- 1. no token in the audit log, the log or a reply -------------------------------------------------


def test_the_token_never_reaches_the_audit_log_the_log_or_a_reply(env: dict[str, str], tmp_path: Path) -> None:
    env.update(GRPC_AUTH_TOKEN=TOKEN, CLI_HOST="127.0.0.1", CLI_PORT=str(free_port()), WEIGHTSLAB_LOG_TO_FILE="1")
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        Trainer(env, tmp_path, "--steps", "10").wait()
        port = int(env["CLI_PORT"])
        cli = subprocess.run([sys.executable, "-m", "weightslabd", "cli", "-c", "status"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and json.loads(cli.stdout)["step"] == 10, cli.stderr
        assert not any(e["request"].startswith("auth") for e in audit_lines(tmp_path))  # the daemon's user: no auth
        replies = as_root(LINES, str(port), "status", f"auth {TOKEN}", "auth wrong-guess", f"AUTH  {TOKEN}",
                          f"tag train {TOKEN} 1")
        assert replies[0]["ok"] and replies[1]["ok"] and not replies[2]["ok"] and replies[3]["ok"]
    finally:
        daemon.stop()
    audit = (run_folder(tmp_path) / "audit.jsonl").read_text()
    logged = "".join(p.read_text() for p in (tmp_path / "logs").glob("weightslabd.log*")) + daemon.log()
    everything = audit + logged + json.dumps(replies) + cli.stdout + cli.stderr
    assert TOKEN not in everything
    requests = [e["request"] for e in map(json.loads, audit.splitlines())]
    assert requests.count("auth ****") == 2 and "tag train **** 1" in requests  # the failed one: a refusal line


# --- 2. loopback peers: the daemon's own user, or a token -----------------------------------------------


@needs_root
def test_another_local_user_is_refused_on_the_grpc_web_port(env: dict[str, str], tmp_path: Path) -> None:
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        port = str(daemon.wait_ready()["grpc_web_port"])
        ours, = as_root(WEB_CALL, port, "")
        assert ours["http"] == 200 and ours["grpc_status"] is None or ours["grpc_status"] == "0", ours
        theirs, = as_nobody(WEB_CALL, port, "")
        assert theirs["http"] == 403 and theirs["grpc_status"] == str(grpc.StatusCode.PERMISSION_DENIED.value[0])
        assert f"uid {NOBODY}" in theirs["grpc_message"] and "GRPC_AUTH_TOKEN" in theirs["grpc_message"]
        wait_for(lambda: any(e["action"] == "grpc_web_peer" for e in audit_lines(tmp_path)), 10, "the refusal audited")
    finally:
        daemon.stop()
    refused = [e for e in audit_lines(tmp_path) if e["action"] == "grpc_web_peer"]
    assert len(refused) == 1 and refused[0]["outcome"] == "REFUSED" and "uid 65534" in refused[0]["detail"]
    assert refused[0]["peer"].startswith("ipv4:127.0.0.1:")

    env["GRPC_AUTH_TOKEN"] = TOKEN  # with a token: another user who holds it is served, one without is not
    daemon = Daemon(env, tmp_path / "daemon2.log").start()
    try:
        port = str(daemon.wait_ready()["grpc_web_port"])
        with_token, = as_nobody(WEB_CALL, port, TOKEN)
        assert with_token["http"] == 200 and with_token["grpc_status"] in (None, "0"), with_token
        without, = as_nobody(WEB_CALL, port, "")
        assert without["http"] == 403 and without["grpc_status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])
        assert f"uid {NOBODY}" in without["grpc_message"]
        ours, = as_root(WEB_CALL, port, TOKEN)
        assert ours["http"] == 200 and ours["grpc_status"] in (None, "0"), ours
    finally:
        daemon.stop()


GRPC_CALL = r"""
import json, sys
import grpc
from weightslabd.proto import experiment_service_pb2 as pb, experiment_service_pb2_grpc as pb_grpc
port, token = sys.argv[1], sys.argv[2]
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    stub = pb_grpc.ExperimentServiceStub(channel)
    metadata = (("authorization", "Bearer " + token),) if token else ()
    pause = pb.TrainerCommand(hyper_parameter_change=pb.HyperParameterCommand(
        hyper_parameters=pb.HyperParameters(is_training=False)))
    for name, call in (("splits", lambda: stub.GetDataSplits(pb.Empty(), timeout=10, metadata=metadata)),
                       ("pause", lambda: stub.ExperimentCommand(pause, timeout=10, metadata=metadata))):
        try:
            reply = call()
            print(json.dumps({"call": name, "code": "OK", "success": reply.success}))
        except grpc.RpcError as exc:
            print(json.dumps({"call": name, "code": exc.code().name, "details": exc.details()}))
"""


@needs_root
def test_another_local_user_is_refused_on_the_plain_grpc_port(env: dict[str, str], tmp_path: Path) -> None:
    """TLS off and no token (the tests' own set-up): loopback serves the daemon's uid alone."""
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    try:
        port = env["GRPC_BACKEND_PORT"]
        wait_for(lambda: daemon.stub().GetDataSplits(pb.Empty(), timeout=5).success, 10, "the trainer to attach")
        theirs = as_nobody(GRPC_CALL, port, "")
        assert [r["code"] for r in theirs] == ["PERMISSION_DENIED", "PERMISSION_DENIED"], theirs
        assert f"uid {NOBODY} called" in theirs[0]["details"] and "GRPC_AUTH_TOKEN" in theirs[0]["details"]
        assert daemon.stub().GetDataSplits(pb.Empty(), timeout=5).split_names == ["train"]  # ours: served
        hp = daemon.stub().ExperimentCommand(pb.TrainerCommand(get_hyper_parameters=True), timeout=5)
        assert {d.name: d.string_value for d in hp.hyper_parameters_descs}.get("is_training") != "false"
    finally:
        trainer.kill()
        daemon.stop()
    refused = [e for e in audit_lines(tmp_path) if e["outcome"] == "PERMISSION_DENIED"]
    assert {e["action"] for e in refused} == {"/ExperimentService/GetDataSplits",
                                              "/ExperimentService/ExperimentCommand"}


@needs_root
def test_another_local_user_needs_the_token_on_the_cli_line_server(env: dict[str, str], tmp_path: Path) -> None:
    env.update(GRPC_AUTH_TOKEN=TOKEN, CLI_HOST="127.0.0.1", CLI_PORT=str(free_port()))
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        Trainer(env, tmp_path, "--steps", "10").wait()
        port = str(env["CLI_PORT"])
        refused = as_nobody(LINES, port, "pause", "discard train 1 2 3")
        assert all(not r["ok"] and r["auth_required"] and f"uid {NOBODY}" in r["error"] for r in refused), refused
        assert as_root(LINES, port, "status")[0]["step"] == 10  # the daemon's own user: no token
        auth, status = as_nobody(LINES, port, f"auth {TOKEN}", "status")
        assert auth["ok"] and status["ok"] and status["step"] == 10
    finally:
        daemon.stop()
    lines = [e for e in audit_lines(tmp_path) if e["action"] == "cli"]
    assert not any(e["request"] in ("pause", "discard train 1 2 3") for e in lines)  # never executed
    assert any(e["outcome"] == "REFUSED" and "another local user" in e["detail"] for e in lines)
    assert [e["credential"] for e in lines if e["request"] == "status"] == ["same-user", "token#1"]


# --- 3. the CLI line server: loopback only, failed `auth` throttled --------------------------------------


def test_the_cli_line_server_is_refused_off_loopback(env: dict[str, str]) -> None:
    env.update(CLI_HOST="0.0.0.0", CLI_PORT=str(free_port()), GRPC_AUTH_TOKEN=TOKEN)
    result = refused_at_boot(env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CLI_HOST=0.0.0.0" in lines[0] and "CLI_HOST=127.0.0.1" in lines[0], result.stderr


@pytest.mark.timeout(60)
def test_failed_auth_is_throttled_per_peer_and_per_connection(env: dict[str, str], tmp_path: Path) -> None:
    env.update(GRPC_AUTH_TOKEN=TOKEN, CLI_HOST="127.0.0.1", CLI_PORT=str(free_port()))
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    checked = locked = connections = 0
    try:
        port = int(env["CLI_PORT"])
        deadline = time.monotonic() + 3.0
        guess = 0
        while time.monotonic() < deadline:  # the attack: guesses as fast as the daemon answers
            connections += 1
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                stream = sock.makefile("rw", encoding="utf-8", newline="\n")
                for _ in range(20):
                    guess += 1
                    stream.write(f"auth guess-{guess}\n")
                    stream.flush()
                    reply = stream.readline()
                    if not reply:
                        break
                    error = json.loads(reply)["error"]
                    locked += "try again in" in error
                    checked += error.startswith("invalid token")
                    if "closing after 5 failed attempts" in error:
                        assert not stream.readline()  # and the daemon hangs up
                        break
        assert 3 <= checked <= 6, (checked, locked)  # 3 free, then locked out 1 s, 2 s: not 27,000
        assert locked > 0 and guess <= 5 * connections
    finally:
        daemon.stop()
    refusals = [e for e in audit_lines(tmp_path) if e["action"] == "cli" and e["outcome"] == "REFUSED"]
    assert len(refusals) <= 6 and sum(int(e.get("count", 1)) for e in refusals) == guess


# --- 4. insecure binds stop the boot -----------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "extra"), [("GRPC_TLS_ENABLED", {}),
                                                ("GRPC_TLS_REQUIRE_CLIENT_AUTH", {"GRPC_TLS_ENABLED": "1"})])
def test_an_unauthenticated_bind_off_loopback_is_refused(env: dict[str, str], tmp_path: Path, setting: str,
                                                         extra: dict[str, str]) -> None:
    generate_certs(tmp_path / "certs")  # valid TLS files: only the bind itself is wrong
    env.update(GRPC_BACKEND_HOST="0.0.0.0", GRPC_TLS_CERT_DIR=str(tmp_path / "certs"), **extra)
    env[setting] = "0"
    result = refused_at_boot(env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{setting}=0" in lines[0] and "GRPC_AUTH_TOKEN" in lines[0], result.stderr


# --- 5. a loop of bad handshakes: bounded lines, with a count ---------------------------------------------


@pytest.mark.timeout(90)
def test_a_handshake_flood_writes_a_bounded_number_of_lines(env: dict[str, str], tmp_path: Path) -> None:
    generate_certs(tmp_path / "certs")
    del env["GRPC_TLS_ENABLED"]  # the default: TLS with client certificates
    env.update(GRPC_TLS_CERT_DIR=str(tmp_path / "certs"), WEIGHTSLAB_GRPC_WEB_PORT="-1")
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    attempts = 0
    try:
        Trainer(env, tmp_path, "--steps", "3").wait()
        port = int(daemon.wait_ready()["grpc_port"])
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not a TLS client hello
                try:
                    while sock.recv(100):
                        pass
                except ConnectionResetError:
                    pass
            attempts += 1
    finally:
        daemon.stop()
    assert attempts > 100
    refused = [e for e in audit_lines(tmp_path) if e["action"] == "tls_handshake"]
    assert 2 <= len(refused) <= 3, refused  # the first at once, a summary per 10 s, the rest at stop
    assert refused[0]["detail"] == "not a TLS client hello (http request)" and "count" not in refused[0]
    assert sum(int(e.get("count", 1)) for e in refused) == attempts
    assert all(e["detail"].startswith("not a TLS client hello") for e in refused)
    logged = [e for e in daemon.log_events() if str(e.get("event", "")).startswith("TLS handshake")]
    assert 2 <= len(logged) <= 3 and sum(int(e.get("count", 1)) for e in logged) == attempts


# --- 6. a full disk: an acknowledged edit is audited, or it is refused ----------------------------------------


def fill(disk: Path) -> None:
    """Fills the file system to its last byte."""
    with open(disk / "filler", "wb", buffering=0) as out:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError:
                pass


def tag(stub: Any, sample: int) -> Any:
    request = pb.DataEditsRequest(stat_name="tags", string_value="seen", type=pb.EDIT_ACCUMULATE,
                                  samples_ids=[sample], sample_origins=["train"])
    return stub.EditDataSample(request, timeout=10)


@needs_root
@pytest.mark.timeout(120)
def test_on_a_full_disk_an_acknowledged_edit_is_always_audited(env: dict[str, str], tmp_path: Path,
                                                               tmpfs: Callable[[str], Path]) -> None:
    disk = tmpfs("2m")
    env["WEIGHTSLAB_ROOT_LOG_DIR"] = str(disk)
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        Trainer(env, tmp_path, "--steps", "5").wait()
        stub = daemon.stub()
        folder = next(p for p in disk.iterdir() if (p / "manifest.json").exists())
        assert tag(stub, 0).success
        journal = folder / "edits.journal"
        before = 1
        while journal.stat().st_size % 4096 > 512:  # the journal's last page nearly empty: room for ~25 edits
            assert tag(stub, before).success
            before += 1
        fill(disk)  # the attacker's move: the disk is full, to its last byte
        replies = [tag(stub, i % 256) for i in range(60)]
    finally:
        daemon.stop()
    acknowledged = sum(r.success for r in replies)
    assert acknowledged > 0  # the journal's page still had room: these edits were applied and acknowledged
    audited = []
    for line in (folder / "audit.jsonl").read_text().splitlines():
        with contextlib.suppress(ValueError):  # a torn line is no audit of anything
            audited.append(json.loads(line))
    ok_lines = [e for e in audited if e["action"] == "/ExperimentService/EditDataSample" and e["outcome"] == "OK"]
    assert len(ok_lines) == before + acknowledged, (len(ok_lines), before, acknowledged)
    refused = [r.message for r in replies if not r.success]
    assert all(m == "edit not saved, nothing changed: No space left on device" for m in refused), refused
