"""The built-in gRPC-Web endpoint, with real parts: a daemon process, raw HTTP/1.1 from http.client and
sockets, a trainer for live status. Frames are built and read here by hand, as a browser would."""

from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from weightslabd.api.grpcweb import MAX_CONNECTIONS
from weightslabd.config import load_settings
from weightslabd.proto import experiment_service_pb2 as pb

from .harness import Daemon, Trainer, history, run_folder, wait_for

TEXT = "application/grpc-web-text"
BINARY = "application/grpc-web+proto"
EMPTY_FRAME = b"\x00\x00\x00\x00\x00"
SPLITS = "/ExperimentService/GetDataSplits"
STATUS = "/ExperimentService/StreamStatus"


# --- a gRPC-Web client by hand --------------------------------------------------------------------


def b64_pieces(text: bytes) -> bytes:
    """Base64 that may be several padded pieces back to back (a response is encoded chunk by chunk)."""
    return b"".join(base64.b64decode(p) for p in re.findall(rb"[^=]+=*", text.replace(b"\r\n", b"")) if p)


def frames(body: bytes, text: bool) -> tuple[list[bytes], dict[str, str]]:
    """Data messages and the trailer fields of a complete response body."""
    raw = b64_pieces(body) if text else body
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    while raw:
        assert len(raw) >= 5, raw
        flag, length = raw[0], int.from_bytes(raw[1:5], "big")
        payload, raw = raw[5:5 + length], raw[5 + length:]
        assert len(payload) == length
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            assert flag == 0
            messages.append(payload)
    return messages, trailers


def body_of(message: bytes, text: bool) -> bytes:
    framed = b"\x00" + len(message).to_bytes(4, "big") + message
    return base64.b64encode(framed) if text else framed


class Reply:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = {k.lower(): v for k, v in response.getheaders()}
        self.body = response.read()
        self.messages, self.trailers = frames(self.body, self.headers.get("content-type", "").startswith(TEXT))

    @property
    def grpc_status(self) -> int:
        return int(self.trailers["grpc-status"])


def post(port: int, path: str, message: bytes = b"", *, text: bool = True, headers: dict[str, str] | None = None,
         body: bytes | None = None, conn: http.client.HTTPConnection | None = None) -> Reply:
    connection = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = {"content-type": TEXT if text else BINARY, "x-grpc-web": "1", **(headers or {})}
    connection.request("POST", path, body=body_of(message, text) if body is None else body, headers=sent)
    reply = Reply(connection.getresponse())
    if conn is None:
        connection.close()
    return reply


def web_port(daemon: Daemon) -> int:
    state = daemon.wait_ready()
    return int(state["grpc_web_port"])


def open_stream(port: int, text: bool, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", STATUS, body=body_of(b"", text),
                 headers={"content-type": TEXT if text else BINARY, **(headers or {})})
    return conn.getresponse()


def read_statuses(response: http.client.HTTPResponse, text: bool, count: int) -> tuple[list[Any], bytes]:
    """Reads the open stream chunk by chunk until `count` whole messages arrived; also the bytes read."""
    received = b""
    while True:
        received += response.read1(65536)
        usable = received[: len(received) // 4 * 4] if text else received
        raw = b64_pieces(usable) if text else usable
        messages = []
        while len(raw) >= 5 and len(raw) >= 5 + int.from_bytes(raw[1:5], "big"):
            length = int.from_bytes(raw[1:5], "big")
            assert raw[0] == 0, "a trailer before the messages asked for"
            messages.append(pb.TrainingStatusEx.FromString(raw[5:5 + length]))
            raw = raw[5 + length:]
        if len(messages) >= count:
            return messages, received


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def web_env(env: dict[str, str]) -> dict[str, str]:
    env["WEIGHTSLAB_GRPC_WEB_PORT"] = "0"
    return env


@pytest.fixture
def web(web_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    daemon = Daemon(web_env, tmp_path / "daemon.log").start()
    try:
        yield daemon, web_port(daemon)
    finally:
        daemon.stop()


@pytest.fixture
def trainer(web: tuple[Daemon, int], web_env: dict[str, str], tmp_path: Path) -> Iterator[Trainer]:
    running = Trainer(web_env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    try:
        stub = web[0].stub()
        wait_for(lambda: len(history(stub)) > 2, 10, "the first steps")
        yield running
    finally:
        running.kill()


# --- tests ----------------------------------------------------------------------------------------


def test_unary_call_in_text_and_binary_on_one_keep_alive_connection(web: tuple[Daemon, int], web_env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    _, port = web
    Trainer(web_env, tmp_path, "--steps", "5").wait()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for text in (True, False):
        reply = post(port, SPLITS, text=text, conn=conn)
        assert reply.status == 200 and reply.headers["content-type"] == (TEXT if text else BINARY)
        assert reply.grpc_status == 0 and "grpc-status" not in reply.headers  # in the trailer frame only
        (message,) = reply.messages
        splits = pb.DataSplitsResponse.FromString(message)
        assert splits.success and list(splits.split_names) == ["train"]
    # A text body may be padded base64 pieces back to back; a body may come in chunks.
    pieces = base64.b64encode(EMPTY_FRAME[:1]) + base64.b64encode(EMPTY_FRAME[1:])
    assert b"=" in pieces[:-2]
    assert post(port, SPLITS, body=pieces, conn=conn).grpc_status == 0
    conn.putrequest("POST", SPLITS)
    for key, value in (("content-type", BINARY), ("transfer-encoding", "chunked")):
        conn.putheader(key, value)
    conn.endheaders(b"2\r\n\x00\x00\r\n3\r\n\x00\x00\x00\r\n0\r\n\r\n")
    chunked = Reply(conn.getresponse())
    assert chunked.grpc_status == 0 and list(pb.DataSplitsResponse.FromString(chunked.messages[0]).split_names) == [
        "train"]
    conn.close()


@pytest.mark.parametrize("text", [True, False], ids=["text", "binary"])
def test_stream_status_streams_and_a_closed_connection_cancels_the_call(web: tuple[Daemon, int], trainer: Trainer,
                                                                         tmp_path: Path, text: bool) -> None:
    _, port = web
    response = open_stream(port, text)
    assert response.status == 200 and response.getheader("transfer-encoding") == "chunked"
    statuses, _ = read_statuses(response, text, 3)
    assert all(s.experiment_name == "trainer" for s in statuses)
    ages = [s.model_age for s in statuses]
    assert ages == sorted(ages) and ages[-1] > ages[0]
    response.close()  # the browser goes away: the forwarded call must end with it
    audit = run_folder(tmp_path) / "audit.jsonl"

    def stream_ended() -> bool:
        lines = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        # The browser's address, as the bridge forwards it, not the bridge's unix socket.
        return any(line["action"] == STATUS and line["peer"] == "ipv4:127.0.0.1" for line in lines)

    wait_for(stream_ended, 5, "the forwarded StreamStatus to end")
    assert trainer.proc.poll() is None  # it ended because the browser left, not because the run did


def test_sigterm_ends_an_open_browser_stream_with_a_trailer(web: tuple[Daemon, int], trainer: Trainer) -> None:
    daemon, port = web
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert post(port, SPLITS, conn=idle).grpc_status == 0  # then left open, idle: it must not hold the exit up
    response = open_stream(port, text=True)
    _, received = read_statuses(response, True, 1)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=5) == 0  # the idle connection held nothing up: no drain grace spent
    messages, trailers = frames(received + response.read(), text=True)  # the stream ran to its end
    assert len(messages) >= 1 and trailers["grpc-status"] == "0"


def test_preflight_and_origins(web: tuple[Daemon, int]) -> None:
    _, port = web
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    asked = "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,x-api-key,x-grpc-auth-token,x-client-id"
    for origin in ("http://localhost:5173", "http://127.0.0.1:5173", "http://localhost:3000", "http://[::1]:8081"):
        conn.request("OPTIONS", SPLITS, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": asked})
        response = conn.getresponse()
        response.read()
        assert response.status == 204, origin
        assert response.getheader("access-control-allow-origin") == origin
        assert "POST" in response.getheader("access-control-allow-methods", "")
        allowed = {h.strip() for h in response.getheader("access-control-allow-headers", "").split(",")}
        assert set(asked.split(",")) <= allowed
        exposed = {h.strip() for h in response.getheader("access-control-expose-headers", "").split(",")}
        assert {"grpc-status", "grpc-message"} <= exposed
    conn.request("OPTIONS", SPLITS, headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"})
    refused = conn.getresponse()
    refused.read()
    assert refused.status == 403 and refused.getheader("access-control-allow-origin") is None
    # The actual request carries the CORS headers for an allowed origin, and is refused for another.
    ok = post(port, SPLITS, headers={"Origin": "http://localhost:5173"})
    assert ok.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "grpc-status" in ok.headers["access-control-expose-headers"]
    other = post(port, SPLITS, headers={"Origin": "http://evil.example:5173"})
    assert other.status == 403 and other.grpc_status == 7 and "access-control-allow-origin" not in other.headers
    assert "WEIGHTSLAB_GRPC_WEB_ALLOWED_ORIGINS" in other.headers["grpc-message"]


def test_allowed_origins_setting_replaces_the_default(web_env: dict[str, str], tmp_path: Path) -> None:
    web_env["WEIGHTSLAB_GRPC_WEB_ALLOWED_ORIGINS"] = "https://studio.example.com, http://lab.internal:*"
    daemon = Daemon(web_env, tmp_path / "daemon.log").start()
    try:
        port = web_port(daemon)
        for origin, allowed in (("https://studio.example.com", True), ("http://lab.internal:9000", True),
                                ("http://studio.example.com", False), ("http://localhost:5173", False)):
            reply = post(port, SPLITS, headers={"Origin": origin})
            assert (reply.status, reply.headers.get("access-control-allow-origin")) == (
                (200, origin) if allowed else (403, None)), origin
    finally:
        daemon.stop()


def test_errors_keep_their_grpc_codes(web: tuple[Daemon, int]) -> None:
    _, port = web
    for text in (True, False):
        unknown = post(port, "/ExperimentService/NoSuchMethod", text=text)
        assert unknown.status == 200 and unknown.grpc_status == 12 and unknown.headers["grpc-status"] == "12"
        assert unknown.messages == []
    malformed_proto = post(port, SPLITS, b"\xff\xff\xff")  # a frame whose message is no protobuf: the servicer
    assert malformed_proto.grpc_status == 3 and "malformed" in malformed_proto.trailers["grpc-message"]
    cases = [
        (b"AAAA$$$$", "not base64"),
        (base64.b64encode(b"\x00\x00\x00\x00\x09abc"), "announces 9 bytes but only 3 follow"),
        (base64.b64encode(b"\x00\x00"), "holds no gRPC-Web frame"),
        (base64.b64encode(EMPTY_FRAME * 2), "more than one frame"),
    ]
    for body, words in cases:
        reply = post(port, SPLITS, body=body)
        assert reply.grpc_status == 3 and reply.headers["grpc-status"] == "3", body
        assert words in reply.headers["grpc-message"], reply.headers["grpc-message"]
    assert post(port, SPLITS, headers={"grpc-timeout": "soon"}).grpc_status == 3
    no_run = post(port, STATUS, headers={"grpc-timeout": "300m"})  # no run yet: no status until the deadline
    assert no_run.grpc_status == 4 and no_run.messages == []
    wrong_type = post(port, SPLITS, headers={"content-type": "application/json"})
    assert wrong_type.status == 415 and wrong_type.grpc_status == 3
    not_a_method = post(port, "/index.html")
    assert not_a_method.status == 404 and not_a_method.grpc_status == 12
    health = post(port, "/grpc.health.v1.Health/Check")
    assert health.grpc_status == 0 and health.messages == [b"\x08\x01"]  # SERVING


def test_client_id_and_browser_identity_are_forwarded(web: tuple[Daemon, int], web_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    _, port = web
    Trainer(web_env, tmp_path, "--steps", "20").wait()
    request = pb.GetLatestLoggerDataRequest(request_full_history=False, metric_names=["loss"]).SerializeToString()

    def points(**headers: str) -> int:
        reply = post(port, "/ExperimentService/GetLatestLoggerData", request, headers=headers)
        assert reply.grpc_status == 0
        return len(pb.GetLatestLoggerDataResponse.FromString(reply.messages[0]).points)

    # Incremental reads keep one cursor per reader: the daemon tells readers apart by what is forwarded.
    assert points(**{"x-client-id": "tab-1"}) == 20
    assert points(**{"x-client-id": "tab-1"}) == 0
    assert points(**{"x-client-id": "tab-2"}) == 20
    assert points(**{"user-agent": "Firefox/1"}) == 20  # x-forwarded-for plus the user agent
    assert points(**{"user-agent": "Chromium/1"}) == 20
    assert points(**{"user-agent": "Firefox/1"}) == 0


def test_tokens_are_forwarded_and_checked(web_env: dict[str, str], tmp_path: Path) -> None:
    web_env["GRPC_AUTH_TOKEN"] = "s3cret-token"
    daemon = Daemon(web_env, tmp_path / "daemon.log").start()
    try:
        port = web_port(daemon)
        missing = post(port, SPLITS)
        assert missing.grpc_status == 16 and missing.headers["grpc-status"] == "16"
        assert post(port, SPLITS, headers={"authorization": "Bearer wrong"}).grpc_status == 16
        for header in ({"authorization": "Bearer s3cret-token"}, {"x-api-key": "s3cret-token"},
                       {"x-grpc-auth-token": "s3cret-token"}):
            reply = post(port, SPLITS, headers=header)
            assert reply.grpc_status == 0 and len(reply.messages) == 1, header
        assert post(port, "/grpc.health.v1.Health/Check").grpc_status == 0  # health stays open
    finally:
        daemon.stop()


def test_a_body_over_the_message_limit_is_refused_413(web_env: dict[str, str], tmp_path: Path) -> None:
    web_env["GRPC_MAX_MESSAGE_BYTES"] = "1024"
    daemon = Daemon(web_env, tmp_path / "daemon.log").start()
    try:
        port = web_port(daemon)
        for text in (True, False):
            reply = post(port, SPLITS, b"\x00" * 4096, text=text)
            assert reply.status == 413 and reply.grpc_status == 8 and "GRPC_MAX_MESSAGE_BYTES" in reply.headers[
                "grpc-message"]
            announced = post(port, SPLITS, text=text, body=body_of(b"", text=False)[:1] + (10**6).to_bytes(4, "big"))
            assert announced.grpc_status == (3 if text else 8)  # text: not base64; binary: announced too large
        unknown_field = b"\x0a\x62" + b"x" * 98  # field 1, 98 bytes: unknown to Empty, so ignored
        assert post(port, SPLITS, unknown_field).grpc_status == 0  # under the limit: served
    finally:
        daemon.stop()


def test_connections_are_capped(web: tuple[Daemon, int]) -> None:
    _, port = web
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        answer = extra.recv(4096).decode()  # sent once the accept loop reaches it, after all those above
        assert answer.startswith("HTTP/1.1 503") and "grpc-status: 8" in answer
        extra.close()
    finally:
        for sock in held:
            sock.close()

    def served() -> bool:
        try:
            return post(port, SPLITS).status == 200
        except (OSError, http.client.HTTPException):
            return False  # refused while the slots were still taken

    wait_for(served, 5, "a slot to be free again")


def test_off_loopback_without_tokens_is_refused_at_start(web_env: dict[str, str], tmp_path: Path) -> None:
    web_env["WEIGHTSLAB_GRPC_WEB_HOST"] = "0.0.0.0"
    refused = subprocess.run([sys.executable, "-m", "weightslabd"], env=web_env, capture_output=True, text=True,
                             timeout=20)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "WEIGHTSLAB_GRPC_WEB_HOST=0.0.0.0" in refused.stderr and "GRPC_AUTH_TOKEN" in refused.stderr
    web_env["GRPC_AUTH_TOKEN"] = "s3cret-token"  # with a token it may bind there
    daemon = Daemon(web_env, tmp_path / "daemon.log").start()
    try:
        port = web_port(daemon)
        assert post(port, SPLITS, headers={"x-api-key": "s3cret-token"}).grpc_status == 0
    finally:
        daemon.stop()


def test_port_in_use_is_one_line_naming_the_setting_and_minus_one_turns_it_off(web_env: dict[str, str],
                                                                               tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        web_env["WEIGHTSLAB_GRPC_WEB_PORT"] = str(busy.getsockname()[1])
        failed = subprocess.run([sys.executable, "-m", "weightslabd"], env=web_env, capture_output=True, text=True,
                                timeout=20)
    assert failed.returncode == 2 and failed.stderr.strip().count("\n") == 0, failed.stderr
    assert "WEIGHTSLAB_GRPC_WEB_HOST:WEIGHTSLAB_GRPC_WEB_PORT=127.0.0.1:" in failed.stderr
    assert "cannot listen" in failed.stderr
    runtime_dir = Path(web_env["WEIGHTSLAB_RUNTIME_DIR"])
    assert not (runtime_dir / "daemon.json").exists() and not (runtime_dir / "grpc-web.sock").exists()
    web_env["WEIGHTSLAB_GRPC_WEB_PORT"] = "-1"
    daemon = Daemon(web_env, tmp_path / "daemon.log").start()
    try:
        assert daemon.wait_ready()["grpc_web_port"] is None
        assert not (runtime_dir / "grpc-web.sock").exists()
    finally:
        daemon.stop()


def test_the_bridge_survives_a_grpc_server_restart(web_env: dict[str, str]) -> None:
    # In process, to call the watchdog's restart directly instead of provoking a stuck RPC.
    from weightslabd.daemon import Daemon as Weightslabd

    daemon = Weightslabd(load_settings(None, web_env))
    daemon.boot()
    try:
        assert daemon.web is not None
        port = daemon.web.port
        assert post(port, SPLITS).grpc_status == 0
        ended: list[Reply] = []
        # A stream open across the restart (no run: no messages) ends with a status, not a cut connection.
        streaming = threading.Thread(target=lambda: ended.append(post(port, STATUS)))
        streaming.start()
        wait_for(lambda: daemon.calls.stuck(float("inf"), 0), 5, "the stream to be in flight")
        daemon.restart_grpc()
        streaming.join(10)
        assert ended and ended[0].status == 200 and ended[0].grpc_status in (1, 14)  # CANCELLED or UNAVAILABLE
        assert (Path(web_env["WEIGHTSLAB_RUNTIME_DIR"]) / "grpc-web.sock").exists()
        assert post(port, SPLITS).grpc_status == 0  # at once: no reconnect backoff to wait out
    finally:
        daemon.shutdown()
