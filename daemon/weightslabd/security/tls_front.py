"""The TLS front's engine: the daemon terminates TLS itself, in front of its gRPC server, so that every
handshake, the refused ones included, is ours to audit (grpc's C core refuses them silently, before any
call exists).

    client ──TCP+TLS──▶ TlsFront (asyncio, own thread) ──unix──▶ <runtime>/grpc-tls.sock ──▶ grpc.Server

One event loop thread serves every connection: the handshake (Python's ssl, the files tls.py checked), then
bytes pumped both ways without parsing HTTP/2. A refused handshake is handed to `on_refused` (the audit
log). Each upstream connection comes from a unix socket bound to a path of its own (`<runtime>/peers/<n>`),
so grpc's `context.peer()` names it; the registry learns that name with the TCP peer and the verified
client certificate before the connection is made, and forgets it when the connection closes.

The daemon runs this engine in a process of its own (front_process.py), away from its GIL; tests and
benchmarks also run it in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import resource
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import structlog

from weightslabd.security.peers import Peer, PeerTable, grpc_address

log = structlog.get_logger("weightslabd.security.tls")

SOCKET_NAME = "grpc-tls.sock"
PEERS_DIR = "peers"
HANDSHAKE_SECONDS = 10.0  # a client that has not finished its handshake by then is dropped (and audited)
UPSTREAM_SECONDS = 5.0  # how long a new connection waits for the gRPC server (a watchdog restart takes ~2 s)
CLOSE_SECONDS = 10.0  # a closing side that cannot flush (its reader stopped) is cut after this
SHUTDOWN_SECONDS = 5.0  # the TLS close_notify exchange
MAX_CONNECTIONS = 4096  # each holds 3 descriptors (TCP, both ends of the unix hop)
BUFFER_HIGH = 1024 * 1024  # per direction: past this in the writer's buffer, the other side stops reading
LISTEN_BACKLOG = 1024
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last one a NUL
_FD_LOW = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL",
                      "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "UNEXPECTED_RECORD",
                      "LENGTH_MISMATCH", "BAD_PACKET_LENGTH", "RECORD_LENGTH_MISMATCH"})

RefusalHook = Callable[[str, str], None]  # (peer, reason), called on the front's thread; must not block


class FrontError(Exception):
    """The front cannot listen; `str()` is one line (the daemon raises it as a BindError)."""


class Registry(Protocol):
    """Where the front names its upstream connections: `register` returns once the name is known to the
    gRPC server's side, so no call on that connection is ever seen unnamed."""

    async def register(self, key: str, peer: Peer) -> None: ...

    def unregister(self, key: str) -> None: ...


class LocalRegistry:
    """The engine and the gRPC server in one process: the table itself."""

    def __init__(self, table: PeerTable) -> None:
        self.table = table

    async def register(self, key: str, peer: Peer) -> None:
        self.table.add(key, peer)

    def unregister(self, key: str) -> None:
        self.table.remove(key)


def check_runtime_dir(runtime_dir: Path) -> Path:
    """The peers/ folder, created empty and private (names left by a killed daemon go); FrontError if the
    runtime dir is too long for its unix socket names or the folder cannot be made."""
    peers_dir = runtime_dir / PEERS_DIR
    longest = peers_dir / _base36(36**7)
    if len(str(longest).encode()) > UNIX_PATH_MAX:
        raise FrontError(f"WEIGHTSLAB_RUNTIME_DIR={runtime_dir}: too long for the TLS front's unix socket "
                         f"names ({longest}, at most {UNIX_PATH_MAX} bytes); use a shorter runtime dir")
    try:
        empty_peers_dir(peers_dir)
    except OSError as exc:
        raise FrontError(f"WEIGHTSLAB_RUNTIME_DIR={runtime_dir}: cannot create {peers_dir} "
                         f"({exc.strerror or exc})") from None
    return peers_dir


def empty_peers_dir(peers_dir: Path) -> None:
    peers_dir.mkdir(mode=0o700, exist_ok=True)
    for leftover in peers_dir.iterdir():
        with contextlib.suppress(OSError):
            leftover.unlink()


def bind_listeners(host: str, port: int, setting: str) -> tuple[list[socket.socket], list[str]]:
    """Listening sockets on every address `host` resolves to, one port for all (0: a free one), and the
    addresses that could not be bound; FrontError, one line naming `setting`, if none could."""
    host = host.strip("[]")
    where = f"{setting}=[{host}]:{port}" if ":" in host else f"{setting}={host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise FrontError(f"{where}: cannot listen ({exc.strerror})") from None
    addresses: list[tuple[int, tuple[Any, ...]]] = []
    for info in infos:
        if info[0] in (socket.AF_INET, socket.AF_INET6) and all(
                (info[0], info[4][0]) != (f, a[0]) for f, a in addresses):
            addresses.append((int(info[0]), tuple(info[4])))
    dual = {f for f, _ in addresses} >= {socket.AF_INET, socket.AF_INET6}
    listeners: list[socket.socket] = []
    errors: list[str] = []
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # dual-stack when "::" is the only address, as grpc listens
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if dual else 0)
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            errors.append(f"{sockaddr[0]}: {exc.strerror or exc}")
            continue
        port = sock.getsockname()[1]
        listeners.append(sock)
    if not listeners:
        raise FrontError(f"{where}: cannot listen ({'; '.join(errors) or 'no address'})")
    return listeners, errors


def handshake_reason(exc: BaseException, timeout: float) -> str:
    """Why a handshake failed, in one line that names the problem and reveals no secret."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc.reason or 'unknown'}"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "connection closed during the handshake"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no client certificate"
        words = reason.lower().replace("_", " ") or " ".join(str(exc).split())[:200]
        if reason in _NOT_TLS:
            return f"not a TLS client hello ({words})"
        if reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION"):
            return f"TLS version not accepted, 1.2 or later required ({words})"
        if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_")):  # e.g. the client distrusts our certificate
            return f"the client ended the handshake with an alert ({words})"
        if reason == "UNEXPECTED_EOF_WHILE_READING":
            return "connection closed during the handshake"
        return words
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"handshake not finished within {timeout:g} s"
    if isinstance(exc, ConnectionError | EOFError):
        return "connection closed during the handshake"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def common_name(peercert: dict[str, Any] | None) -> str:
    """The subject CN of a verified certificate as ssl reports it (`getpeercert()`), "" when none."""
    names = [value for rdn in (peercert or {}).get("subject", ()) for key, value in rdn if key == "commonName"]
    return ",".join(names)


def raise_open_files_limit() -> int:
    """Hundreds of connections need more descriptors than a default soft limit of 1024: take the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
    return soft


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


class _Pipe:
    """One client connection: the TLS side (down), the unix side (up), and what is needed to tidy up."""

    def __init__(self, front: TlsFront, peer: str) -> None:
        self.front = front
        self.peer = peer
        self.down: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.down_open = True  # until the TLS transport is lost
        self.up_open = True  # until the unix transport is lost (or never made)
        self.connecting = True  # handshake and upstream connect under way: _serve decides what happens next
        self.key: str | None = None  # the PeerTable key: "unix:<bound path>"
        self.path: str | None = None
        self.cutoffs: list[asyncio.TimerHandle] = []
        self.task: asyncio.Task[None] | None = None  # held here: the loop keeps only a weak reference
        self.finished = False

    # Each direction stops reading while the other side's write buffer is above BUFFER_HIGH.

    def down_data(self, data: bytes) -> None:
        if self.up is not None and not self.up.is_closing():  # closing: the other side is gone, so is the data
            self.up.write(data)

    def up_data(self, data: bytes) -> None:
        if self.down is not None and not self.down.is_closing():
            self.down.write(data)

    def down_eof(self) -> None:
        # TLS cannot stay half-open (asyncio closes the TLS side after EOF): tell grpc no more is coming.
        if self.up is not None and not self.up.is_closing() and self.up.can_write_eof():
            self.up.write_eof()

    def up_eof(self) -> None:
        self.close_side(self.down)

    def down_lost(self) -> None:
        self.down_open = False
        self.close_side(self.up)
        self.maybe_done()

    def up_lost(self) -> None:
        self.up_open = False
        self.close_side(self.down)
        self.maybe_done()

    def close_side(self, transport: asyncio.Transport | None) -> None:
        """Flushes what is buffered, then closes; a reader that never drains it is cut after CLOSE_SECONDS."""
        if transport is None or transport.is_closing():
            return
        transport.close()
        self.cutoffs.append(self.front.loop.call_later(CLOSE_SECONDS, transport.abort))

    def abort(self) -> None:
        for transport in (self.down, self.up):
            if transport is not None:
                transport.abort()

    def maybe_done(self) -> None:
        if self.finished or self.connecting or self.down_open or (self.up_open and self.up is not None):
            return
        self.finished = True
        for cutoff in self.cutoffs:
            cutoff.cancel()
        self.front.forget(self)


class _Down(asyncio.Protocol):
    """The client's side, on the TLS transport."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.pipe.down = transport
        transport.pause_reading()  # until the gRPC server is connected: nothing may be read and lost
        transport.set_write_buffer_limits(high=BUFFER_HIGH)

    def data_received(self, data: bytes) -> None:
        self.pipe.down_data(data)

    def eof_received(self) -> bool | None:
        self.pipe.down_eof()
        return None

    def pause_writing(self) -> None:
        if self.pipe.up is not None and not self.pipe.up.is_closing():
            self.pipe.up.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe.up is not None and not self.pipe.up.is_closing():
            self.pipe.up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.down_lost()


class _Up(asyncio.Protocol):
    """The gRPC server's side, on the unix transport."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.pipe.up = transport
        transport.set_write_buffer_limits(high=BUFFER_HIGH)

    def data_received(self, data: bytes) -> None:
        self.pipe.up_data(data)

    def eof_received(self) -> bool | None:
        self.pipe.up_eof()
        return None

    def pause_writing(self) -> None:
        if self.pipe.down is not None and not self.pipe.down.is_closing():
            self.pipe.down.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe.down is not None and not self.pipe.down.is_closing():
            self.pipe.down.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.up_lost()


class TlsFront:
    """Listens on the gRPC TCP address with TLS and relays each verified connection to `upstream`."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, upstream: Path, runtime_dir: Path,
                 peers: PeerTable | Registry, on_refused: RefusalHook, *, handshake_timeout: float = HANDSHAKE_SECONDS,
                 max_connections: int = MAX_CONNECTIONS, setting: str = "GRPC_BACKEND_HOST:GRPC_BACKEND_PORT") -> None:
        self.host = host.strip("[]")
        self.wanted_port = port
        self.context = context
        self.upstream = str(upstream)
        self.runtime_dir = runtime_dir
        self.peers_dir = runtime_dir / PEERS_DIR
        self.registry: Registry = LocalRegistry(peers) if isinstance(peers, PeerTable) else peers
        self.on_refused = on_refused
        self.log: Any = log  # the child process sends its lines to the daemon instead
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.setting = setting
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._pipes: set[_Pipe] = set()
        self._names = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="tls-front", daemon=True)
        self._changed = threading.Condition()  # notified when a connection ends (tests and close() wait on it)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def open_connections(self) -> int:
        return len(self._pipes)

    def flow(self) -> list[dict[str, int | bool]]:
        """Per connection: bytes each side holds unwritten, whether each side is read, whether the TCP side
        sends small writes at once (TCP_NODELAY): for tests and debugging."""
        def side(t: asyncio.Transport | None) -> tuple[int, bool]:
            if t is None or t.is_closing():
                return 0, False
            return t.get_write_buffer_size(), t.is_reading()

        async def sample() -> list[dict[str, int | bool]]:
            out: list[dict[str, int | bool]] = []
            for pipe in self._pipes:
                (down_buffered, down_reading), (up_buffered, up_reading) = side(pipe.down), side(pipe.up)
                sock = pipe.down.get_extra_info("socket") if pipe.down is not None else None
                nodelay = sock is not None and bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                out.append({"down_buffered": down_buffered, "down_reading": down_reading,
                            "up_buffered": up_buffered, "up_reading": up_reading, "nodelay": nodelay})
            return out
        return list(self._call(sample()))

    # -- lifecycle (called from the daemon's threads) ----------------------------------------------

    def bind(self) -> int:
        """Binds every address the host resolves to (one port for all, port 0 = a free one); FrontError if none."""
        check_runtime_dir(self.runtime_dir)
        listeners, errors = bind_listeners(self.host, self.wanted_port, self.setting)
        if errors:  # as grpc does: serve on the addresses that could be bound, say which could not
            self.log.warning("gRPC TLS front: some addresses not bound", bound=len(listeners), errors=errors)
        return self.adopt(listeners)

    def adopt(self, listeners: list[socket.socket]) -> int:
        """Serves on sockets bound elsewhere (the daemon binds, its front process serves)."""
        for sock in listeners:
            sock.setblocking(False)
        self._listeners = list(listeners)
        self.port = int(listeners[0].getsockname()[1])
        return self.port

    def start(self) -> None:
        raise_open_files_limit()
        self._thread.start()
        self._call(self._start_accepting())

    def stop_accepting(self, timeout: float = 2.0) -> None:
        """New connections are refused from now on; open ones carry on (the gRPC server drains them)."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._stop_accepting(), timeout)
        for sock in self._listeners:  # already closed on the loop, unless it never ran
            sock.close()
        self._listeners.clear()

    def close(self, timeout: float = 2.0) -> None:
        """Ends every connection (flushed where possible within `timeout`), stops the thread, tidies peers/."""
        self.stop_accepting()
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._close_all(timeout), timeout + 1)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout + 1)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()
        with contextlib.suppress(OSError):
            empty_peers_dir(self.peers_dir)

    def wait_idle(self, timeout: float) -> bool:
        """True once no connection is open (for tests and shutdown)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pipes, timeout)

    def _call(self, coro: Any, timeout: float = 5.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(self._loop_error)
        self.loop.run_forever()
        with contextlib.suppress(Exception):  # tasks left at stop: cancel them quietly
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.log.error("gRPC TLS front: unexpected error", message=str(context.get("message", ""))[:200],
                  error=" ".join(f"{type(exc).__name__}: {exc}".split())[:300] if exc is not None else "")

    # -- the event loop's side ---------------------------------------------------------------------

    async def _start_accepting(self) -> None:
        self._accepting = [self.loop.create_task(self._accept(sock)) for sock in self._listeners]

    async def _stop_accepting(self) -> None:
        for task in self._accepting:
            task.cancel()
        # The cancelled accepts unregister their sockets first: a socket closed while registered could have
        # its descriptor number reused by a new connection, and then be unregistered in its place.
        await asyncio.gather(*self._accepting, return_exceptions=True)
        self._accepting = []
        for sock in self._listeners:
            sock.close()

    async def _close_all(self, timeout: float) -> None:
        for pipe in list(self._pipes):
            pipe.close_side(pipe.down)
            pipe.close_side(pipe.up)
        deadline = self.loop.time() + timeout
        while self._pipes and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for pipe in list(self._pipes):
            pipe.abort()
        for _ in range(3):  # connection_lost reaches our protocols a few loop turns after abort()
            await asyncio.sleep(0)

    async def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, addr = await self.loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _FD_LOW:  # out of descriptors: let connections end before accepting more
                    self.log.error("gRPC TLS front: cannot accept", error=exc.strerror or str(exc))
                    await asyncio.sleep(0.1)
                continue
            peer = grpc_address(str(addr[0]), int(addr[1]))
            # asyncio sets no TCP_NODELAY on a socket made with proto 0: Nagle would hold small frames ~40 ms.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if len(self._pipes) >= self.max_connections:
                sock.close()
                self._refuse(peer, f"too many connections ({self.max_connections} open)")
                continue
            pipe = _Pipe(self, peer)
            self._pipes.add(pipe)
            pipe.task = self.loop.create_task(self._serve(pipe, sock))

    def _refuse(self, peer: str, reason: str) -> None:
        try:
            self.on_refused(peer, reason)  # the owner logs and audits it
        except Exception as exc:  # noqa: BLE001 - the audit must not break the front
            self.log.error("refused handshake not audited", peer=peer, error=f"{type(exc).__name__}: {exc}"[:200])

    async def _serve(self, pipe: _Pipe, sock: socket.socket) -> None:
        extra: dict[str, Any] = {"ssl_shutdown_timeout": SHUTDOWN_SECONDS} if sys.version_info >= (3, 11) else {}
        try:
            # wait_for gives a timeout of our own; asyncio's (longer) one only backs it up.
            transport, _ = await asyncio.wait_for(self.loop.connect_accepted_socket(
                lambda: _Down(pipe), sock, ssl=self.context, ssl_handshake_timeout=self.handshake_timeout + 5,
                **extra), self.handshake_timeout)
        except (OSError, EOFError, asyncio.TimeoutError) as exc:
            sock.close()
            self._refuse(pipe.peer, handshake_reason(exc, self.handshake_timeout))
            pipe.connecting = pipe.down_open = pipe.up_open = False
            pipe.maybe_done()
            return
        peercert = transport.get_extra_info("peercert")
        connected = await self._connect_upstream(pipe, Peer(pipe.peer, common_name(peercert), time.time()))
        pipe.connecting = False
        if not connected:
            pipe.up_open = False
            pipe.close_side(pipe.down)
        elif not pipe.down_open:  # the client left while the server was being reached
            pipe.close_side(pipe.up)
        elif pipe.down is not None and not pipe.down.is_closing():
            pipe.down.resume_reading()
        pipe.maybe_done()

    async def _connect_upstream(self, pipe: _Pipe, peer: Peer) -> bool:
        """A unix connection to the gRPC server from a path of the connection's own, entered in the table
        before connecting, so grpc never sees it unnamed; retried while the server restarts."""
        deadline = self.loop.time() + UPSTREAM_SECONDS
        delay = 0.02
        path = str(self.peers_dir / _base36(next(self._names)))
        pipe.path, pipe.key = path, f"unix:{path}"
        while pipe.down_open:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                sock.bind(path)
                await self.registry.register(pipe.key, peer)
                await self.loop.sock_connect(sock, self.upstream)
                await self.loop.create_unix_connection(lambda: _Up(pipe), sock=sock)
                return True
            except OSError as exc:
                sock.close()
                if self.loop.time() + delay > deadline:
                    self.log.error("gRPC TLS front: the gRPC server cannot be reached", peer=peer.address,
                              socket=self.upstream, error=exc.strerror or str(exc))
                    return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        return False

    def forget(self, pipe: _Pipe) -> None:
        """The connection is over on both sides: its name leaves the table and the file system."""
        if pipe.key is not None:
            self.registry.unregister(pipe.key)
        if pipe.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(pipe.path)
        with self._changed:
            self._pipes.discard(pipe)
            self._changed.notify_all()
