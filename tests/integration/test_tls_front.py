"""The daemon's own TLS front (tls_front.py): handshakes it refuses are audited, verified connections are
relayed byte for byte to the gRPC server over a unix socket from a path of their own, and everything about a
connection goes away with it.

Most tests run the front's engine (tls_front.py) in process, before a small gRPC server (or a raw unix
server, to see the bytes), so they can use a short handshake timeout and look at its table; the last ones
go through a real daemon, where the engine runs in a child process (front_process.py)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.security import tls_front
from weightslabd.security.peers import PeerTable, identify
from weightslabd.security.tls import TlsEnv, channel_credentials, generate_certs, resolve_tls, server_ssl_context
from weightslabd.security.tls_front import TlsFront

from .harness import Daemon, Trainer, base_env, free_port, run_folder, wait_for

MIB = 1024 * 1024
LIMIT = 16 * MIB
PEER = re.compile(r"ipv4:127\.0\.0\.1:(\d+)")
CLIENT_CN = "weightslabd client"
HANDSHAKE_S = 1.0


@dataclass
class Front:
    front: TlsFront
    peers: PeerTable
    certs: Path
    runtime: Path
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.front.port}"

    def channel(self) -> grpc.Channel:
        # A connection of its own per channel, as each client has.
        return grpc.secure_channel(self.target, channel_credentials(self.certs), options=[
            ("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", LIMIT),
            ("grpc.max_receive_message_length", LIMIT)])

    def refusal(self, port: int) -> str | None:
        return next((reason for peer, reason in list(self.refused) if peer == f"ipv4:127.0.0.1:{port}"), None)

    def names_left(self) -> list[str]:
        return os.listdir(self.runtime / tls_front.PEERS_DIR)

    def idle(self) -> bool:
        return self.front.open_connections() == 0 and len(self.peers) == 0 and not self.names_left()


@dataclass
class Calls:
    """What the in-process gRPC server's handlers saw."""

    ended: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)


def start_front(tmp_path: Path, upstream: Path) -> Front:
    certs = tmp_path / "certs"
    if not certs.exists():
        generate_certs(certs)
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700, exist_ok=True)
    peers = PeerTable()
    bundle = Front(None, peers, certs, runtime)  # type: ignore[arg-type]
    context = server_ssl_context(resolve_tls(TlsEnv(cert_dir=str(certs))))
    bundle.front = TlsFront("127.0.0.1", 0, context, upstream, runtime, peers,
                            lambda peer, reason: bundle.refused.append((peer, reason)), handshake_timeout=HANDSHAKE_S)
    bundle.front.bind()
    bundle.front.start()
    return bundle


def echo_server(socket_path: Path, peers: Callable[[], PeerTable], calls: Calls) -> grpc.Server:
    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen = identify(context, peers())
        return json.dumps({"peer": seen.address, "cert": seen.client_cert, "raw": context.peer()}).encode()

    def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()

    def hold(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        context.add_callback(calls.ended.set)  # runs when the call ends, here: when its connection goes
        yield b"first"
        calls.holding.set()
        while context.is_active():
            calls.ended.wait(1.0)

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
        "Who": grpc.unary_unary_rpc_method_handler(who),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Hold": grpc.unary_stream_rpc_method_handler(hold),
    }
    server = grpc.server(ThreadPoolExecutor(max_workers=32), options=[
        ("grpc.max_send_message_length", LIMIT), ("grpc.max_receive_message_length", LIMIT)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    return server


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def front(tmp_path: Path, calls: Calls) -> Iterator[Front]:
    upstream = tmp_path / "grpc.sock"
    holder: list[Front] = []
    server = echo_server(upstream, lambda: holder[0].peers, calls)
    holder.append(start_front(tmp_path, upstream))
    yield holder[0]
    holder[0].front.close()
    server.stop(None)


def tls_client(certs: Path, port: int) -> ssl.SSLSocket:
    """A raw TLS client with the client certificate: to see the bytes the front relays."""
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.load_cert_chain(certs / "client.crt", certs / "client.key")
    context.set_alpn_protocols(["h2"])
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20), server_hostname="localhost")


def hung_up(sock: socket.socket) -> bool:
    """Waits for the other end to close: an EOF, or a reset when it closed with our bytes unread."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


# --- in process: the front before a gRPC server ---------------------------------------------------------


def test_many_concurrent_connections_each_named_by_its_tcp_peer_and_certificate(front: Front) -> None:
    channels = [front.channel() for _ in range(200)]
    try:
        futures = [channel.unary_unary("/t.T/Who").future(b"", timeout=30) for channel in channels]
        seen = [json.loads(f.result()) for f in futures]
        assert all(PEER.fullmatch(s["peer"]) and s["cert"] == CLIENT_CN for s in seen), seen[:3]
        assert len({s["peer"] for s in seen}) == 200  # one connection each, told apart
        # grpc sees each connection from the path the front bound it to, and the table names it.
        assert all(s["raw"].startswith(f"unix:{front.runtime / 'peers'}/") for s in seen)
        assert front.front.open_connections() == 200 and len(front.peers) == 200 and len(front.names_left()) == 200
        # Small frames leave at once: without TCP_NODELAY, Nagle held some replies ~40 ms (a p99 of 45 ms).
        assert all(f["nodelay"] for f in front.front.flow())
    finally:
        for channel in channels:
            channel.close()
    wait_for(front.idle, 10, "every connection, table entry and name to be gone")
    assert front.refused == []


def test_a_large_message_both_ways_arrives_intact(front: Front) -> None:
    payload = os.urandom(8 * MIB)
    with front.channel() as channel:
        t0 = time.perf_counter()
        echoed = channel.unary_unary("/t.T/Echo")(payload, timeout=30)
        elapsed = time.perf_counter() - t0
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    print(f"8 MiB each way through the front in {elapsed * 1000:.0f} ms")


def test_a_server_stream_arrives_whole_and_in_order(front: Front) -> None:
    with front.channel() as channel:
        got = [int(m) for m in channel.unary_stream("/t.T/Count")(b"5000", timeout=30)]
    assert got == list(range(5000))


def test_garbage_instead_of_a_handshake_is_refused_and_audited(front: Front) -> None:
    for data, reason in ((b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a TLS client hello (http request)"),
                         (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(64), "not a TLS client hello")):
        with socket.create_connection(("127.0.0.1", front.front.port), timeout=10) as sock:
            sock.sendall(data)
            assert hung_up(sock)  # nothing reached the gRPC server
            port = sock.getsockname()[1]
        assert str(wait_for(functools.partial(front.refusal, port), 5, "the audited refusal")).startswith(reason)
    wait_for(front.idle, 5, "nothing left of the refused connections")


def test_a_handshake_never_finished_is_cut_at_the_timeout_and_audited(front: Front) -> None:
    with socket.create_connection(("127.0.0.1", front.front.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        t0 = time.monotonic()
        assert hung_up(sock)  # blocks until the front gives up
        waited = time.monotonic() - t0
        port = sock.getsockname()[1]
    assert waited >= HANDSHAKE_S * 0.9  # not cut before its time; the socket's own timeout bounds the wait
    assert wait_for(lambda: front.refusal(port), 5, "the audited timeout") == "handshake not finished within 1 s"
    wait_for(front.idle, 5, "nothing left of the connection")


def test_client_killed_mid_stream_closes_the_upstream_and_forgets_the_peer(front: Front, calls: Calls,
                                                                           tmp_path: Path) -> None:
    # A client process that dies with a stream open: no goodbye of any kind, only the kernel closing its socket.
    script = (
        "import sys, grpc\n"
        "from weightslabd.security.tls import channel_credentials\n"
        f"ch = grpc.secure_channel({front.target!r}, channel_credentials({str(front.certs)!r}))\n"
        "stream = ch.unary_stream('/t.T/Hold')(b'', timeout=60)\n"
        "print(next(stream).decode(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    client = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "first"
        assert calls.holding.wait(10)
        assert len(front.peers) == 1 and front.front.open_connections() == 1
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        assert calls.ended.wait(10), "the gRPC server saw its call end when the client's connection went"
        wait_for(front.idle, 10, "the upstream closed and the table entry and name removed")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def test_no_grpc_server_behind_it_the_client_sees_unavailable_and_nothing_is_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls_front, "UPSTREAM_SECONDS", 0.3)
    bundle = start_front(tmp_path, tmp_path / "nobody.sock")
    try:
        with bundle.channel() as channel, pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary("/t.T/Echo")(b"x", timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        wait_for(bundle.idle, 10, "the connection closed and forgotten")
        assert bundle.refused == []  # the handshake succeeded: this is not a refusal
    finally:
        bundle.front.close()


# --- in process: the front before a raw unix server, to watch the bytes ----------------------------------


class RawUpstream:
    """Accepts one connection: sends `send` bytes (blocking while nobody reads), then maybe its EOF, and
    records what arrives."""

    def __init__(self, path: Path, send: bytes, *, end_after_sending: bool) -> None:
        self.end_after_sending = end_after_sending
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.send = send
        self.sent = 0
        self.received = bytearray()
        self.eof = threading.Event()
        self.done_sending = threading.Event()
        self.peer = ""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, addr = self.listener.accept()
        self.peer = str(addr)
        reader = threading.Thread(target=self._read, args=(conn,), daemon=True)
        reader.start()
        view = memoryview(self.send)
        while self.sent < len(self.send):
            self.sent += conn.send(view[self.sent:self.sent + 65536])
        self.done_sending.set()
        if self.end_after_sending:
            conn.shutdown(socket.SHUT_WR)
        reader.join()
        conn.close()

    def _read(self, conn: socket.socket) -> None:
        while chunk := conn.recv(1 << 20):
            self.received += chunk
        self.eof.set()


def test_backpressure_bounds_what_the_front_holds_and_every_byte_arrives(tmp_path: Path) -> None:
    payload = os.urandom(48 * MIB)
    upstream = RawUpstream(tmp_path / "raw.sock", payload, end_after_sending=True)
    bundle = start_front(tmp_path, tmp_path / "raw.sock")
    try:
        client = tls_client(bundle.certs, bundle.front.port)
        # The client reads nothing: the front's buffer towards it fills, and it stops reading the server.
        wait_for(lambda: any(not f["up_reading"] for f in bundle.front.flow()), 20,
                 "the front to stop reading the server while its client does not read")
        assert not upstream.done_sending.is_set()
        held = max(f["down_buffered"] for f in bundle.front.flow())
        assert held <= tls_front.BUFFER_HIGH + 2 * MIB, held  # bounded: the high mark plus one read's worth
        # Now the client reads: everything arrives, in order, and the server's close reaches it as an EOF.
        got = bytearray()
        while chunk := client.recv(1 << 20):
            got += chunk
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert upstream.peer.startswith(str(bundle.runtime / "peers"))  # bound to a name of its own
        client.close()
        wait_for(bundle.idle, 10, "the connection forgotten")
    finally:
        bundle.front.close()


def test_client_eof_reaches_the_server_after_all_its_bytes(tmp_path: Path) -> None:
    upstream = RawUpstream(tmp_path / "raw.sock", b"", end_after_sending=False)
    bundle = start_front(tmp_path, tmp_path / "raw.sock")
    try:
        client = tls_client(bundle.certs, bundle.front.port)
        payload = os.urandom(5 * MIB)
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)  # a FIN (a close could be a reset, unread session tickets pending)
        assert upstream.eof.wait(10), "the server saw the client's end"
        assert bytes(upstream.received) == payload
        client.close()
        wait_for(bundle.idle, 10, "the connection forgotten")
    finally:
        bundle.front.close()


# --- through a real daemon ------------------------------------------------------------------------------


@pytest.fixture
def tls_env(tmp_path: Path) -> dict[str, str]:
    env = base_env(tmp_path)
    generate_certs(tmp_path / "certs")
    del env["GRPC_TLS_ENABLED"]  # the default: TLS with client certificates
    env.update(GRPC_TLS_CERT_DIR=str(tmp_path / "certs"), GRPC_AUTH_TOKEN="the-token", GRPC_BACKEND_PORT="0")
    return env


TOKEN = (("authorization", "Bearer the-token"),)


def test_daemon_serves_through_the_front(tls_env: dict[str, str], tmp_path: Path) -> None:
    daemon = Daemon(tls_env, tmp_path / "daemon.log").start()
    runtime = Path(tls_env["WEIGHTSLAB_RUNTIME_DIR"])
    try:
        port = int(daemon.wait_ready()["grpc_port"])
        assert port != 0  # port 0: the front picked a free one and daemon.json says which
        Trainer(tls_env, tmp_path, "--steps", "3").wait()
        credentials = channel_credentials(tmp_path / "certs")
        channels = [grpc.secure_channel(f"localhost:{port}", credentials, options=[
            ("grpc.use_local_subchannel_pool", 1)]) for _ in range(100)]
        try:
            lying = (*TOKEN, ("x-forwarded-for", "203.0.113.9"))  # believed only from the gRPC-Web bridge
            futures = [pb_grpc.ExperimentServiceStub(c).GetDataSplits.future(pb.Empty(), timeout=30, metadata=lying)
                       for c in channels]
            assert all(list(f.result().split_names) == ["train"] for f in futures)
            stream = pb_grpc.ExperimentServiceStub(channels[0]).StreamStatus(pb.Empty(), timeout=60, metadata=TOKEN)
            assert next(stream).experiment_name == "trainer"
            assert len(os.listdir(runtime / "peers")) == 100
        finally:
            for channel in channels:
                channel.close()
        wait_for(lambda: not os.listdir(runtime / "peers"), 10, "every peer name removed")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert hung_up(sock)
            garbage_port = sock.getsockname()[1]
        audit = run_folder(tmp_path) / "audit.jsonl"

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []

        refused = wait_for(lambda: [e for e in lines() if e["action"] == "tls_handshake"], 5, "the refusal audited")
        assert refused == [{**refused[0], "peer": f"ipv4:127.0.0.1:{garbage_port}", "outcome": "REFUSED",
                            "detail": "not a TLS client hello (http request)"}]
        stream_line = wait_for(lambda: [e for e in lines() if e["action"] == "/ExperimentService/StreamStatus"], 5,
                               "the stream's audit line")[0]
        assert PEER.fullmatch(stream_line["peer"]) and stream_line["client_cert"] == CLIENT_CN
        splits = [e for e in lines() if e["action"] == "/ExperimentService/GetDataSplits"]
        assert len(splits) == 100 and len({e["peer"] for e in splits}) == 100
        assert all(PEER.fullmatch(e["peer"]) and e["client_cert"] == CLIENT_CN for e in splits)
        # SIGTERM with a stream open through the front: it ends cleanly, and the daemon exits 0 within 10 s.
        last = grpc.secure_channel(f"localhost:{port}", credentials)
        stream = pb_grpc.ExperimentServiceStub(last).StreamStatus(pb.Empty(), timeout=60, metadata=TOKEN)
        assert next(stream).experiment_name == "trainer"
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        assert sum(1 for _ in stream) >= 0
        assert daemon.proc.wait(10) == 0
        last.close()
        assert not os.listdir(runtime / "peers")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        daemon.stop()


def test_tls_port_taken_is_one_line_and_exit_2(tls_env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        tls_env["GRPC_BACKEND_PORT"] = str(busy.getsockname()[1])
        failed = subprocess.run([sys.executable, "-m", "weightslabd"], env=tls_env, capture_output=True, text=True,
                                timeout=30)
    assert failed.returncode == 2 and failed.stderr.strip().count("\n") == 0, failed.stderr
    assert f"GRPC_BACKEND_HOST:GRPC_BACKEND_PORT=127.0.0.1:{tls_env['GRPC_BACKEND_PORT']}: cannot listen" \
        in failed.stderr
    assert not (Path(tls_env["WEIGHTSLAB_RUNTIME_DIR"]) / "daemon.json").exists()


def test_the_front_outlives_a_grpc_server_restart(tls_env: dict[str, str], tmp_path: Path) -> None:
    # In process, to call the watchdog's restart directly instead of provoking a stuck RPC.
    from weightslabd.config import load_settings
    from weightslabd.daemon import Daemon as Weightslabd

    daemon = Weightslabd(load_settings(None, tls_env))
    daemon.boot()
    try:
        assert daemon.front is not None
        port = daemon.grpc_port
        channel = grpc.secure_channel(f"localhost:{port}", channel_credentials(tmp_path / "certs"))
        stub = pb_grpc.ExperimentServiceStub(channel)
        no_run = pb.DataSplitsResponse(success=False)  # served by the daemon's servicer: no run has attached
        assert stub.GetDataSplits(pb.Empty(), timeout=10, metadata=TOKEN) == no_run
        stream = stub.StreamStatus(pb.Empty(), timeout=60, metadata=TOKEN)  # no run: it waits for news
        wait_for(lambda: daemon.calls.stuck(float("inf"), 0), 5, "the stream to be in flight")
        daemon.restart_grpc()
        with pytest.raises(grpc.RpcError) as cut:
            next(stream)
        assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert daemon.grpc_port == port and daemon.front.port == port  # the front kept listening
        # The same channel reconnects, through the same front, to the new server.
        assert stub.GetDataSplits(pb.Empty(), timeout=10, metadata=TOKEN, wait_for_ready=True) == no_run
        channel.close()
        wait_for(lambda: len(daemon.peers) == 0, 10, "the connection forgotten")
    finally:
        daemon.shutdown()
    assert not os.listdir(Path(tls_env["WEIGHTSLAB_RUNTIME_DIR"]) / "peers")


def front_processes(runtime: Path) -> list[int]:
    """Pids of the TLS front processes serving `runtime` (their command line names it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"weightslabd.security.front_process" in argv and str(runtime).encode() in argv:
            found.append(int(proc.name))
    return found


def test_a_front_process_that_dies_is_replaced_on_the_same_port(tls_env: dict[str, str], tmp_path: Path) -> None:
    from weightslabd.config import load_settings
    from weightslabd.daemon import Daemon as Weightslabd

    daemon = Weightslabd(load_settings(None, tls_env))
    daemon.boot()
    try:
        assert daemon.front is not None and daemon.front.pid is not None
        port, first = daemon.grpc_port, daemon.front.pid
        credentials = channel_credentials(tmp_path / "certs")

        def splits() -> Any:
            with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
                return pb_grpc.ExperimentServiceStub(channel).GetDataSplits(pb.Empty(), timeout=10, metadata=TOKEN,
                                                                            wait_for_ready=True)

        no_run = pb.DataSplitsResponse(success=False)  # served by the daemon's servicer: no run has attached
        assert splits() == no_run
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: daemon.front is not None and daemon.front.restarts == 1, 20, "a new front process")
        assert daemon.front.pid != first and daemon.grpc_port == port
        assert splits() == no_run  # the listening socket never closed: the same port, at once
        wait_for(lambda: len(daemon.peers) == 0, 10, "the connection forgotten")
    finally:
        daemon.shutdown()
    assert front_processes(Path(tls_env["WEIGHTSLAB_RUNTIME_DIR"])) == []


def test_the_front_process_ends_with_a_killed_daemon(tls_env: dict[str, str], tmp_path: Path) -> None:
    daemon = Daemon(tls_env, tmp_path / "daemon.log").start()
    runtime = Path(tls_env["WEIGHTSLAB_RUNTIME_DIR"])
    port = int(daemon.wait_ready()["grpc_port"])
    assert len(front_processes(runtime)) == 1
    daemon.kill(signal.SIGKILL)
    wait_for(lambda: not front_processes(runtime), 10, "the front process to end with its daemon")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # A new daemon starts on the same runtime dir and port, names left behind removed.
    tls_env["GRPC_BACKEND_PORT"] = str(port)
    daemon = Daemon(tls_env, tmp_path / "daemon2.log").start()
    try:
        assert int(daemon.wait_ready()["grpc_port"]) == port and not os.listdir(runtime / "peers")
    finally:
        daemon.stop()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_an_idle_stream_through_the_front_outlives_client_keepalive_pings(tls_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    # As test_lifecycle's keepalive test, over TLS: pings and their answers cross the front like any bytes.
    tls_env["GRPC_BACKEND_PORT"] = str(free_port())
    daemon = Daemon(tls_env, tmp_path / "daemon.log").start()
    try:
        Trainer(tls_env, tmp_path, "--steps", "5").wait(60)
        channel = grpc.secure_channel(f"localhost:{tls_env['GRPC_BACKEND_PORT']}",
                                      channel_credentials(tmp_path / "certs"), options=[
            ("grpc.keepalive_time_ms", 6_000), ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)])
        stream = pb_grpc.ExperimentServiceStub(channel).StreamStatus(pb.Empty(), timeout=80, metadata=TOKEN)
        first = next(stream)
        quiet_until = time.monotonic() + 20  # three client pings, each answered, with no data between
        got: list[Any] = []
        reader = threading.Thread(target=lambda: got.extend([next(stream)]), daemon=True)
        reader.start()
        reader.join(max(0.0, quiet_until - time.monotonic()))
        assert reader.is_alive() and not got, "the stream stayed open and quiet"
        Trainer(tls_env, tmp_path, "--steps", "5", name="second").wait(60)
        reader.join(20)
        assert got and got[0].timestamp > first.timestamp
        stream.cancel()
        channel.close()
    finally:
        daemon.stop()
