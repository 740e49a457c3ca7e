"""The TLS front in a process of its own: the daemon binds the port and keeps the peer table; a child
process, `python -m weightslabd.security.front_process <runtime dir>`, serves the connections with tls_front's engine.

Why a process: the engine is Python, and inside the daemon it waited for the GIL whenever gRPC handlers or
the ingest thread ran Python. Under a Studio-like load with a trainer attached that doubled the p99 of unary
calls; in a process of its own it matches grpc's own TLS (bench/README.md).

The daemon and the child talk over a socketpair, one JSON object a line:

    daemon -> child   config (first), ack {id}, stop_accepting, close {timeout}
    child -> daemon   ready, add {id, key, peer, cn, since}, remove {key}, refused {peer, reason},
                      log {level, event, fields}, stopped, fatal {error}

`add` is answered by `ack` before the child connects to the gRPC server, so grpc never sees a connection the
table cannot name. The child ignores SIGINT/SIGTERM/SIGHUP (the daemon decides when it stops, after draining)
and exits when the channel closes, so it never outlives the daemon. If it dies, the daemon starts another on
the same listening sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from weightslabd.security.peers import Peer, PeerTable
from weightslabd.security.refusals import RefusalAggregator
from weightslabd.security.tls import TlsConfig, TlsError, TlsFile, server_ssl_context
from weightslabd.security.tls_front import (
    HANDSHAKE_SECONDS,
    MAX_CONNECTIONS,
    UPSTREAM_SECONDS,
    FrontError,
    TlsFront,
    bind_listeners,
    check_runtime_dir,
    empty_peers_dir,
    raise_open_files_limit,
)

log = structlog.get_logger("weightslabd.security.tls")

SETTING = "GRPC_BACKEND_HOST:GRPC_BACKEND_PORT"
START_SECONDS = 15.0  # for the child to import, read the certificates and say ready
RESPAWN_SECONDS = (0.5, 30.0)  # first and longest wait before starting a new child after one died
LINE_LIMIT = 64 * 1024
# (peer, reason, count): a refused handshake (count 1), or a summary of `count` more from that peer and reason
# (refusals.py folds a loop of bad handshakes into one line per peer, reason and interval).
AggregatedRefusalHook = Callable[[str, str, int], None]


class Channel:
    """JSON lines over a stream socket; `send` from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._send_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> bool:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        with self._send_lock:
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                return False  # the other end is gone: its reader sees the end too

    def receive(self) -> dict[str, Any] | None:
        """The next message; None at the end of the channel (or a broken one)."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                try:
                    message = json.loads(line)
                except ValueError:
                    return None
                return message if isinstance(message, dict) else None
            if len(self._buffer) > LINE_LIMIT:
                return None
            try:
                chunk = self.sock.recv(65536)
            except (OSError, ValueError):  # ValueError: closed meanwhile by close()
                return None
            if not chunk:
                return None
            self._buffer += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


# --- the daemon's side ------------------------------------------------------------------------------


class FrontProcess:
    """Binds the gRPC TCP address, runs the front's child process on it, and keeps the table it reports to."""

    def __init__(self, host: str, port: int, tls: TlsConfig, upstream: Path, runtime_dir: Path, peers: PeerTable,
                 on_refused: AggregatedRefusalHook, *, handshake_timeout: float = HANDSHAKE_SECONDS) -> None:
        self.host = host.strip("[]")
        self.wanted_port = port
        self.tls = tls
        self.upstream = upstream
        self.runtime_dir = runtime_dir
        self.peers = peers
        self.on_refused = on_refused
        self.refusals = RefusalAggregator(self._report_refusal)
        self.handshake_timeout = handshake_timeout
        self.port = 0
        self.restarts = 0
        self._listeners: list[socket.socket] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None
        self._closing = threading.Event()
        self._stopped = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def open_connections(self) -> int:
        return len(self.peers)

    def bind(self) -> int:
        check_runtime_dir(self.runtime_dir)
        self._listeners, errors = bind_listeners(self.host, self.wanted_port, SETTING)
        if errors:  # as grpc does: serve on the addresses that could be bound, say which could not
            log.warning("gRPC TLS front: some addresses not bound", bound=len(self._listeners), errors=errors)
        self.port = int(self._listeners[0].getsockname()[1])
        return self.port

    def start(self) -> None:
        """Starts the child and waits until it serves; FrontError (one line) if it cannot."""
        raise_open_files_limit()  # the gRPC server's end of every relayed connection is a descriptor here
        self._spawn()
        self._supervisor = threading.Thread(target=self._supervise, name="tls-front-supervisor", daemon=True)
        self._supervisor.start()

    def stop_accepting(self, timeout: float = 2.0) -> None:
        """New connections are refused from now on (the child stops accepting, the daemon's copies of the
        listening sockets close); open ones carry on while the gRPC server drains them."""
        self._closing.set()
        if self._channel is not None and self._alive() and self._channel.send({"t": "stop_accepting"}):
            self._stopped.wait(timeout)
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()

    def _report_refusal(self, peer: str, reason: str, count: int, seconds: float) -> None:
        if count == 1:
            log.warning("TLS handshake refused", peer=peer, reason=reason)
        else:
            log.warning("TLS handshakes refused", peer=peer, reason=reason, count=count, seconds=round(seconds, 1))
        try:
            self.on_refused(peer, reason, count)
        except Exception as exc:  # noqa: BLE001 - the audit must not stop the front's reports
            log.error("refused handshake not audited", peer=peer, error=f"{type(exc).__name__}: {exc}"[:200])

    def close(self, timeout: float = 2.0) -> None:
        """Ends the child (its connections flushed within `timeout`, then cut) and forgets every peer."""
        self.stop_accepting()
        proc, channel = self._proc, self._channel
        if proc is not None and channel is not None:
            channel.send({"t": "close", "timeout": timeout})
            try:
                proc.wait(timeout + 3)
            except subprocess.TimeoutExpired:
                log.error("TLS front process did not stop; killed", pid=proc.pid)
                proc.kill()
                proc.wait()
        if channel is not None:
            channel.close()  # ends the supervisor's read
        if self._supervisor is not None:
            self._supervisor.join(5)
        self.peers.clear()
        with contextlib.suppress(OSError):
            empty_peers_dir(self.runtime_dir / "peers")
        self.refusals.close()  # the summaries still pending, before the audit log closes

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [theirs.fileno(), *(sock.fileno() for sock in self._listeners)]
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "weightslabd.security.front_process", str(self.runtime_dir),
                 "--channel-fd", str(fds[0])],
                pass_fds=fds, stdin=subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            theirs.close()
            raise FrontError(f"the TLS front process cannot start ({exc.strerror or exc})") from None
        theirs.close()
        channel = Channel(ours)
        channel.send({"t": "config", "listeners": fds[1:], "upstream": str(self.upstream),
                      "handshake_timeout": self.handshake_timeout, "max_connections": MAX_CONNECTIONS,
                      "cert_file": [self.tls.cert_file.setting, str(self.tls.cert_file.path)],
                      "key_file": [self.tls.key_file.setting, str(self.tls.key_file.path)],
                      "ca_file": [self.tls.ca_file.setting, str(self.tls.ca_file.path)],
                      "require_client_auth": self.tls.require_client_auth})
        ours.settimeout(START_SECONDS)
        first = channel.receive()
        ours.settimeout(None)
        if first is None or first.get("t") != "ready":
            problem = str(first.get("error", "")) if first is not None else ""
            channel.close()
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            raise FrontError(f"the TLS front process did not start ({problem or f'exit {proc.returncode}'})")
        self._proc, self._channel = proc, channel
        log.info("TLS front process serving", pid=proc.pid, address=self.address)

    def _supervise(self) -> None:
        """Handles the child's messages; when it dies unasked, starts another on the same sockets."""
        wait = RESPAWN_SECONDS[0]
        while True:
            channel = self._channel
            assert channel is not None
            while (message := channel.receive()) is not None:
                try:
                    self._handle(channel, message)
                except (KeyError, TypeError, ValueError) as exc:  # a malformed report: skipped, said once
                    log.error("TLS front process: report not understood", kind=str(message.get("t"))[:20],
                              error=f"{type(exc).__name__}: {exc}"[:200])
            if self._closing.is_set():
                return
            code = self._proc.wait() if self._proc is not None else None
            self.peers.clear()  # its connections died with it
            with contextlib.suppress(OSError):
                empty_peers_dir(self.runtime_dir / "peers")
            log.error("TLS front process ended; starting another", exit=code, wait_s=wait)
            if self._closing.wait(wait):
                return
            try:
                self._spawn()
                self.restarts += 1
                wait = RESPAWN_SECONDS[0]
            except FrontError as exc:
                log.error("TLS front process not restarted", error=str(exc))
                wait = min(wait * 2, RESPAWN_SECONDS[1])

    def _handle(self, channel: Channel, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "add":
            self.peers.add(str(message["key"]), Peer(str(message["peer"]), str(message.get("cn", "")),
                                                     float(message.get("since", 0.0))))
            channel.send({"t": "ack", "id": message["id"]})
        elif kind == "remove":
            self.peers.remove(str(message["key"]))
        elif kind == "refused":
            self.refusals.refused(str(message.get("peer", "")), str(message.get("reason", "")))
        elif kind == "log":
            level = str(message.get("level", "info"))
            raw = message.get("fields")
            fields: dict[str, Any] = raw if isinstance(raw, dict) else {}
            getattr(log, level if level in ("info", "warning", "error") else "info")(
                str(message.get("event", "")), **fields)
        elif kind == "stopped":
            self._stopped.set()


# --- the child's side -------------------------------------------------------------------------------


class _ChannelRegistry:
    """Names connections in the daemon's table: `register` returns once the daemon acknowledged."""

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.loop = loop
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[None]] = {}

    async def register(self, key: str, peer: Peer) -> None:
        ident = next(self._ids)
        future: asyncio.Future[None] = self.loop.create_future()
        self._pending[ident] = future
        try:
            sent = self.channel.send({"t": "add", "id": ident, "key": key, "peer": peer.address,
                                      "cn": peer.client_cert, "since": peer.since})
            if not sent:
                raise ConnectionError("the daemon is gone")
            await asyncio.wait_for(future, UPSTREAM_SECONDS)
        finally:
            self._pending.pop(ident, None)

    def unregister(self, key: str) -> None:
        self.channel.send({"t": "remove", "key": key})

    def acknowledged(self, ident: int) -> None:
        """From the channel's reading thread."""
        def resolve() -> None:
            future = self._pending.get(ident)
            if future is not None and not future.done():
                future.set_result(None)
        self.loop.call_soon_threadsafe(resolve)


class _ChannelLog:
    """The engine's log lines go to the daemon, which logs them with its own settings and redaction."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def _send(self, level: str, event: str, fields: dict[str, Any]) -> None:
        plain = {key: value if isinstance(value, int | float | bool) else str(value) for key, value in fields.items()}
        self.channel.send({"t": "log", "level": level, "event": event, "fields": plain})

    def info(self, event: str, **fields: Any) -> None:
        self._send("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._send("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._send("error", event, fields)


def _tls_config(config: dict[str, Any]) -> TlsConfig:
    def file(key: str) -> TlsFile:
        setting, path = config[key]
        return TlsFile(str(setting), Path(path))
    return TlsConfig(enabled=True, require_client_auth=bool(config["require_client_auth"]),
                     key_file=file("key_file"), cert_file=file("cert_file"), ca_file=file("ca_file"))


def child_main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the daemon stops us, after its gRPC server has drained
    p = argparse.ArgumentParser(prog="weightslabd.security.front_process",
                                description="weightslabd's TLS front process")
    p.add_argument("runtime_dir", type=Path)
    p.add_argument("--channel-fd", type=int, required=True)
    args = p.parse_args(argv)
    channel = Channel(socket.socket(fileno=args.channel_fd))
    config = channel.receive()
    if config is None or config.get("t") != "config":
        return 2
    listeners = [socket.socket(fileno=int(fd)) for fd in config["listeners"]]
    try:
        context = server_ssl_context(_tls_config(config))
    except (TlsError, KeyError, ValueError) as exc:
        channel.send({"t": "fatal", "error": str(exc)})
        return 2
    def refused(peer: str, reason: str) -> None:
        channel.send({"t": "refused", "peer": peer, "reason": reason})

    front = TlsFront("", 0, context, Path(config["upstream"]), args.runtime_dir, PeerTable(), refused,
                     handshake_timeout=float(config["handshake_timeout"]),
                     max_connections=int(config["max_connections"]))
    registry = _ChannelRegistry(channel, front.loop)
    front.registry = registry
    front.log = _ChannelLog(channel)
    front.adopt(listeners)
    front.start()
    channel.send({"t": "ready"})
    close_timeout = 1.0  # the daemon went away without a word: end quickly
    while (message := channel.receive()) is not None:
        kind = message.get("t")
        if kind == "ack":
            registry.acknowledged(int(message["id"]))
        elif kind == "stop_accepting":
            front.stop_accepting()
            channel.send({"t": "stopped"})
        elif kind == "close":
            close_timeout = float(message.get("timeout", 1.0))
            break
    front.close(close_timeout)
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
