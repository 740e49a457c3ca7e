"""gRPC-Web built into the daemon, so that a browser needs no Envoy.

An HTTP/1.1 server (a thread per connection, capped) turns each browser request into a call on the
daemon's own gRPC server through a unix socket in the private runtime dir, as raw bytes: strict
decoding, audit, tokens, the watchdog and the concurrency limit all apply unchanged, to any method path.

Wire format: the request body is one gRPC-Web frame (a flag byte, a 4-byte big-endian length, the
message); the response is one data frame per reply message, then a trailer frame (flag 0x80) holding
`grpc-status` and `grpc-message`. The text format (`application/grpc-web-text`) is the same bytes in
base64. A call that fails before its first message also carries the status as HTTP headers.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import re
import select
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import structlog

from weightslabd.api.cors import ALLOW_METHODS, OriginPolicy
from weightslabd.api.server import BindError, host_port
from weightslabd.config import GRPC_WEB_OFF, ConfigError, Settings
from weightslabd.security.auth import CREDENTIAL_HEADERS, credential_label
from weightslabd.security.loopback_uid import is_loopback_address, same_user
from weightslabd.security.peers import grpc_address
from weightslabd.security.refusals import RefusalAggregator

log = structlog.get_logger("weightslabd.api.grpcweb")

SOCKET_NAME = "grpc-web.sock"
MAX_CONNECTIONS = 64  # a thread each; a browser opens at most 6 per host, so this is many tabs
IDLE_SECONDS = 60.0  # an idle keep-alive connection, or a browser that stopped reading, is closed after this
WATCH_SECONDS = 0.1  # how often a running call looks whether its browser went away
MAX_USER_AGENTS = 16  # one channel per browser user agent, then one shared channel (see _channel)

DATA, TRAILER, COMPRESSED = 0x00, 0x80, 0x01
TEXT_TYPES = frozenset({"application/grpc-web-text", "application/grpc-web-text+proto"})
BINARY_TYPES = frozenset({"application/grpc-web", "application/grpc-web+proto"})
DEFAULT_TYPE = "application/grpc-web+proto"
FORWARDED_HEADERS = (*CREDENTIAL_HEADERS, "x-client-id")
_PATH = re.compile(r"/[A-Za-z0-9_.]+/[A-Za-z0-9_]+")
_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_BASE64_PIECE = re.compile(rb"[^=]*=*")
_NOT_FORWARDED = ("content-type", "user-agent", "te", "content-length")
# (peer, reason, count): a call refused because its loopback peer is another local user (count 1), or a
# summary of `count` such refusals from that address (refusals.py); the daemon audits it.
PeerRefusalHook = Callable[[str, str, int], None]


class WebError(Exception):
    """A request refused before it reaches the gRPC server: its gRPC status, message and HTTP status."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.http_status = code, message, http_status


# --- settings -------------------------------------------------------------------------------------


def enabled(settings: Settings) -> bool:
    return settings.weightslab_grpc_web_port != GRPC_WEB_OFF


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # any other name may resolve anywhere


def check_exposure(settings: Settings) -> None:
    """Plain HTTP off loopback would hand the daemon to the network: only with tokens configured."""
    host = settings.weightslab_grpc_web_host
    if enabled(settings) and not is_loopback(host) and not settings.auth_tokens():
        raise ConfigError(f"WEIGHTSLAB_GRPC_WEB_HOST={host} is not a loopback address and gRPC-Web is plain HTTP: "
                          "set GRPC_AUTH_TOKEN (or GRPC_AUTH_TOKENS), bind it to 127.0.0.1, or turn it off with "
                          "WEIGHTSLAB_GRPC_WEB_PORT=-1", "WEIGHTSLAB_GRPC_WEB_HOST")


# --- the wire format ------------------------------------------------------------------------------


def frame(flag: int, payload: bytes) -> bytes:
    return bytes([flag]) + len(payload).to_bytes(4, "big") + payload


def decode_text(body: bytes) -> bytes:
    """Base64, possibly several padded pieces back to back (clients may encode chunk by chunk)."""
    out = bytearray()
    try:
        for piece in _BASE64_PIECE.findall(body.translate(None, b" \t\r\n")):
            if piece:
                out += base64.b64decode(piece + b"=" * (-len(piece) % 4), validate=True)
    except ValueError:
        raise WebError(grpc.StatusCode.INVALID_ARGUMENT,
                       "request body is not base64, as application/grpc-web-text requires") from None
    return bytes(out)


def parse_request(body: bytes, limit: int) -> bytes:
    """The one message of a unary or server-streaming request."""
    if len(body) < 5:
        raise WebError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"request body of {len(body)} bytes holds no gRPC-Web frame (5-byte header, then the message)")
    flag, length = body[0], int.from_bytes(body[1:5], "big")
    if flag & COMPRESSED:
        raise WebError(grpc.StatusCode.UNIMPLEMENTED, "compressed request messages are not supported")
    if flag != DATA:
        raise WebError(grpc.StatusCode.INVALID_ARGUMENT, f"request frame flag {flag:#04x} is not a data frame")
    if length > limit:
        raise WebError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"request message of {length} bytes exceeds GRPC_MAX_MESSAGE_BYTES={limit}", 413)
    if len(body) - 5 < length:
        raise WebError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"request frame announces {length} bytes but only {len(body) - 5} follow")
    if len(body) - 5 > length:
        raise WebError(grpc.StatusCode.INVALID_ARGUMENT,
                       "request body holds more than one frame: only unary and server-streaming calls are served")
    return body[5:]


def percent_encode(message: str) -> str:
    """grpc-message encoding: printable ASCII except '%' as is, every other byte as %XX."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode())


def http_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[tuple[str, str]]:
    """gRPC metadata as HTTP headers (binary values in base64, as gRPC-Web expects); reserved keys dropped."""
    out = []
    for key, value in metadata or ():
        if key.startswith(("grpc-", ":")) or key in _NOT_FORWARDED:
            continue
        if isinstance(value, bytes):
            out.append((key, base64.b64encode(value).decode()))
        elif _printable(value):
            out.append((key, value))
    return out


def trailer_block(code: grpc.StatusCode, message: str, metadata: list[tuple[str, str]]) -> bytes:
    lines = [f"grpc-status: {code.value[0]}", f"grpc-message: {percent_encode(message)}"]
    lines += [f"{key}: {value}" for key, value in metadata]
    return ("\r\n".join(lines) + "\r\n").encode()


def parse_timeout(value: str | None) -> float | None:
    if value is None:
        return None
    match = _TIMEOUT.fullmatch(value.strip())
    if match is None:
        raise WebError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"grpc-timeout {value[:40]!r} is invalid: expected 1 to 8 digits and a unit H, M, S, m, u or n")
    return int(match[1]) * _TIMEOUT_UNITS[match[2]]


def _printable(value: str) -> bool:
    return value.isascii() and value.isprintable()


# --- the bridge -----------------------------------------------------------------------------------


class GrpcWebBridge:
    """The HTTP listener, and the channels to the daemon's own gRPC server behind it."""

    def __init__(self, settings: Settings, socket_path: Path, on_refused: PeerRefusalHook | None = None) -> None:
        self.host = settings.weightslab_grpc_web_host
        self.tokens = settings.auth_tokens()
        self.on_refused = on_refused
        self.refusals = RefusalAggregator(self._report_refusal)
        self.wanted_port = settings.weightslab_grpc_web_port
        self.target = f"unix:{socket_path}"
        self.policy = OriginPolicy(settings.weightslab_grpc_web_allowed_origins)
        self.limit = settings.grpc_max_message_bytes
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._channels: dict[str, grpc.Channel] = {}
        self._calls: set[Any] = set()
        self._server: _HttpServer | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)

    def start(self) -> int:
        try:
            self._server = _HttpServer(self.host, self.wanted_port, self)
        except OSError as exc:
            where = host_port(self.host, self.wanted_port)
            raise BindError(f"WEIGHTSLAB_GRPC_WEB_HOST:WEIGHTSLAB_GRPC_WEB_PORT={where}: cannot listen "
                            f"({exc.strerror or exc})") from None
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, args=(0.2,), name="grpc-web", daemon=True).start()
        if not is_loopback(self.host):
            log.warning("gRPC-Web is served off loopback over plain HTTP: tokens cross the network in clear; "
                        "put a TLS proxy in front", address=self.address)
        return self.port

    def admit(self, peer: tuple[str, int], ours: tuple[str, int], headers: Any, known: bool | None) -> bool:
        """Whether a call may go on: any peer off loopback (tokens guard those), the daemon's own user on
        loopback, or another local user with a valid token. `known` is this connection's earlier answer.
        Raises WebError (PERMISSION_DENIED, audited) for another local user without a valid token."""
        if not is_loopback_address(peer[0]):
            return True
        same, uid = (True, None) if known else same_user(peer, ours)
        if same:
            return True
        metadata = [(name, value) for name in CREDENTIAL_HEADERS for value in headers.get_all(name) or ()]
        credential = credential_label(metadata, self.tokens)
        if credential.startswith("token#"):
            return False  # let through on its token, which the gRPC server checks again
        who = f"uid {uid}" if uid is not None else "an unknown user"
        reason = (f"gRPC-Web on loopback serves only weightslabd's own user (uid {os.geteuid()}); this connection "
                  f"is from {who}: " + ("send a valid token (authorization: Bearer <GRPC_AUTH_TOKEN>)" if self.tokens
                                        else "set GRPC_AUTH_TOKEN in the daemon and send it, or run as its user"))
        self.refusals.refused(grpc_address(peer[0], peer[1]), reason)
        code = grpc.StatusCode.UNAUTHENTICATED if credential == "none" and self.tokens else \
            grpc.StatusCode.PERMISSION_DENIED
        raise WebError(code, reason, 403)

    def _report_refusal(self, peer: str, reason: str, count: int, seconds: float) -> None:
        log.warning("gRPC-Web call refused: another local user", peer=peer, reason=reason, count=count)
        if self.on_refused is not None:
            self.on_refused(peer, reason, count)

    def reconnect(self) -> None:
        """Fresh channels, after the gRPC server behind the socket was rebuilt (a watchdog restart)."""
        with self._lock:
            old, self._channels = self._channels, {}
        for channel in old.values():
            channel.close()

    def stop(self, grace: float) -> None:
        """No new calls; calls in flight get `grace` seconds to end (streams end once the servicer stops),
        then are cancelled, so each browser gets a trailer instead of a cut connection."""
        self.closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._idle:
            self._idle.wait_for(lambda: not self._calls, timeout=grace)
            left = list(self._calls)
        for call in left:
            call.cancel()
        if self._server is not None:
            self._server.close_connections(wait=1.0)
        self.reconnect()
        self.refusals.close()

    def _channel(self, user_agent: str) -> grpc.Channel:
        # grpc replaces a `user-agent` metadata entry with its own, but puts a channel's primary user agent
        # first in it: a channel per browser user agent lets the servicer tell browsers apart, as behind Envoy.
        with self._lock:
            key = user_agent if user_agent in self._channels or len(self._channels) < MAX_USER_AGENTS else ""
            channel = self._channels.get(key)
            if channel is None:
                options: list[tuple[str, Any]] = [
                    ("grpc.max_send_message_length", self.limit), ("grpc.max_receive_message_length", self.limit),
                    ("grpc.enable_http_proxy", 0),
                    # The server behind the socket comes back within a second after a watchdog restart.
                    ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ]
                if key:
                    options.append(("grpc.primary_user_agent", key))
                channel = self._channels[key] = grpc.insecure_channel(self.target, options=options)
            return channel

    @contextlib.contextmanager
    def call(self, path: str, message: bytes, metadata: list[tuple[str, str]], timeout: float | None,
             user_agent: str) -> Iterator[Any]:
        """The forwarded call, as a response iterator that is also a grpc.Call; cancelled on exit."""
        if self.closing.is_set():
            raise WebError(grpc.StatusCode.UNAVAILABLE, "weightslabd is stopping", 503)
        # Every method is called as unary-stream: a unary one answers with one message, the same on the wire.
        method = self._channel(user_agent).unary_stream(path, request_serializer=None, response_deserializer=None)
        call = method(message, timeout=timeout, metadata=metadata)
        with self._lock:
            self._calls.add(call)
        try:
            yield call
        finally:
            call.cancel()  # no-op once finished; ends it when the browser left or a write failed
            with self._idle:
                self._calls.discard(call)
                self._idle.notify_all()


# --- HTTP -----------------------------------------------------------------------------------------


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: above the connection cap, so refusals are answered

    def __init__(self, host: str, port: int, bridge: GrpcWebBridge) -> None:
        self.bridge = bridge
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: set[socket.socket] = set()
        self._open_changed = threading.Condition()
        super().__init__((host.strip("[]"), port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would ask DNS for the host's full name (getfqdn); nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        with self._open_changed:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: socket.socket) -> None:
        with self._open_changed:
            self._open.discard(request)
            self._open_changed.notify_all()
        self._slots.release()

    def close_connections(self, wait: float) -> None:
        """Ends idle keep-alive connections (their threads wait for a next request) and waits for them."""
        with self._open_changed:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._open_changed:
            self._open_changed.wait_for(lambda: not self._open, timeout=wait)


def _refuse_busy(sock: socket.socket) -> None:
    """Over the connection cap: a short answer sent from the accept loop, which must never block."""
    status = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    reply = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {DEFAULT_TYPE}\r\ngrpc-status: {status}\r\n"
             f"grpc-message: too many gRPC-Web connections (at most {MAX_CONNECTIONS})\r\n"
             "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(reply)
    log.warning("gRPC-Web connection refused: too many open", limit=MAX_CONNECTIONS)


def _watch_peer(sock: socket.socket, cancel: Callable[[], Any], done: threading.Event) -> None:
    """Cancels the forwarded call when the browser closes its connection: HTTP/1.1 gives no other sign."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    while not done.is_set():
        for _fd, mask in poller.poll(WATCH_SECONDS * 1000):
            if mask & (select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                cancel()
                return
            try:
                peeked = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                cancel()
                return
            if not peeked:
                cancel()
            return  # with data, the browser is still there (it sent its next request early)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked responses for streams
    server_version = "weightslabd-grpc-web"
    sys_version = ""  # no Python version in the Server header
    timeout = IDLE_SECONDS
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:  # http.server would write to stderr
        log.debug("gRPC-Web request", client=self.client_address[0], line=format % args)

    def do_GET(self) -> None:
        self._plain(405, "weightslabd gRPC-Web endpoint: POST /<Service>/<Method>\n", [("Allow", ALLOW_METHODS)])

    def do_OPTIONS(self) -> None:
        origin = self.headers.get("Origin")
        self._skip_body()
        if origin is None:
            self._plain(204, "", [("Allow", ALLOW_METHODS)])
        elif not self.server.bridge.policy.allows(origin):
            log.warning("gRPC-Web preflight from an origin not allowed", origin=origin[:200],
                        setting="WEIGHTSLAB_GRPC_WEB_ALLOWED_ORIGINS")
            self._plain(403, f"origin {origin[:200]} is not in WEIGHTSLAB_GRPC_WEB_ALLOWED_ORIGINS\n")
        else:
            private = self.headers.get("Access-Control-Request-Private-Network", "").lower() == "true"
            self._plain(204, "", self.server.bridge.policy.preflight_headers(origin, private))

    def do_POST(self) -> None:
        bridge = self.server.bridge
        origin = self.headers.get("Origin")
        allowed = origin if origin is not None and bridge.policy.allows(origin) else None
        media = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        text = media in TEXT_TYPES
        reply_type = media if text or media in BINARY_TYPES else DEFAULT_TYPE
        self._body_read = False
        try:
            if origin is not None and allowed is None:
                raise WebError(grpc.StatusCode.PERMISSION_DENIED,
                               f"origin {origin[:200]} is not in WEIGHTSLAB_GRPC_WEB_ALLOWED_ORIGINS", 403)
            if bridge.closing.is_set():
                raise WebError(grpc.StatusCode.UNAVAILABLE, "weightslabd is stopping", 503)
            same = bridge.admit(self.client_address[:2], self.connection.getsockname()[:2], self.headers,
                                getattr(self, "_same_user", None))
            self._same_user = same or None  # the peer's uid is looked up once per connection
            if reply_type != media:
                raise WebError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"content-type {media or '(none)'} is not gRPC-Web: send application/grpc-web-text "
                               "or application/grpc-web+proto", 415)
            if not _PATH.fullmatch(self.path):
                raise WebError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{self.path[:100]!r} is not a method path /<Service>/<Method>", 404)
            body = self._read_body(text)
            message = parse_request(decode_text(body) if text else body, bridge.limit)
            timeout = parse_timeout(self.headers.get("grpc-timeout"))
        except WebError as err:
            log.info("gRPC-Web request refused", path=self.path[:100], client=self.client_address[0],
                     status=err.code.name, error=err.message)
            self._trailers_only(reply_type, err.code, err.message, allowed, http_status=err.http_status,
                                close=not self._body_read)
            return
        user_agent = self.headers.get("User-Agent", "").strip()[:256]
        self._relay(reply_type, self.path, message, timeout, user_agent if _printable(user_agent) else "", allowed)
        if bridge.closing.is_set():
            self.close_connection = True

    # -- the call ---------------------------------------------------------------------------------

    def _metadata(self) -> list[tuple[str, str]]:
        metadata = [(name, value.strip()) for name in FORWARDED_HEADERS for value in self.headers.get_all(name) or ()
                    if _printable(value.strip()) and value.strip()]
        return [*metadata, ("x-forwarded-for", self.client_address[0])]

    def _relay(self, media: str, path: str, message: bytes, timeout: float | None, user_agent: str,
               origin: str | None) -> None:
        text = media in TEXT_TYPES
        started = False
        try:
            with self.server.bridge.call(path, message, self._metadata(), timeout, user_agent) as call:
                done = threading.Event()
                threading.Thread(target=_watch_peer, args=(self.connection, call.cancel, done), daemon=True,
                                 name="grpc-web-watch").start()
                try:
                    for reply in call:
                        if not started:
                            self._start_stream(media, origin, http_metadata(call.initial_metadata()))
                            started = True
                        self._chunk(frame(DATA, reply), text)
                    code, details, trailing = call.code(), call.details() or "", call.trailing_metadata()
                except grpc.RpcError as err:
                    code, details, trailing = err.code(), err.details() or "", err.trailing_metadata()
                finally:
                    done.set()
            if started:
                self._chunk(frame(TRAILER, trailer_block(code, details, http_metadata(trailing))), text)
                self.wfile.write(b"0\r\n\r\n")
            else:
                self._trailers_only(media, code, details, origin, http_metadata(trailing))
        except WebError as err:
            self._trailers_only(media, err.code, err.message, origin, http_status=err.http_status)
        except OSError:  # the browser went away, or stopped reading for IDLE_SECONDS
            self.close_connection = True

    # -- writing ----------------------------------------------------------------------------------

    def _start_stream(self, media: str, origin: str | None, metadata: list[tuple[str, str]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", media)
        self.send_header("Transfer-Encoding", "chunked")
        self._send_headers(metadata, origin)
        self.end_headers()

    def _chunk(self, data: bytes, text: bool) -> None:
        if text:
            data = base64.b64encode(data)  # each chunk padded on its own: clients decode piece by piece
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")

    def _trailers_only(self, media: str, code: grpc.StatusCode, message: str, origin: str | None,
                       metadata: list[tuple[str, str]] | None = None, *, http_status: int = 200,
                       close: bool = False) -> None:
        metadata = metadata or []
        body = frame(TRAILER, trailer_block(code, message, metadata))
        if media in TEXT_TYPES:
            body = base64.b64encode(body)
        self.send_response(http_status)
        self.send_header("Content-Type", media)
        self.send_header("grpc-status", str(code.value[0]))
        self.send_header("grpc-message", percent_encode(message))
        self._send_headers(metadata, origin)
        self.send_header("Content-Length", str(len(body)))
        if close:  # the body was not read, so the connection cannot carry another request
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_headers(self, metadata: list[tuple[str, str]], origin: str | None) -> None:
        for key, value in metadata:
            self.send_header(key, value)
        if origin is not None:
            for key, value in OriginPolicy.response_headers(origin, tuple(key for key, _ in metadata)):
                self.send_header(key, value)

    def _plain(self, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        for key, value in headers or []:
            self.send_header(key, value)
        if body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # -- reading ----------------------------------------------------------------------------------

    def _body_limit(self, text: bool) -> int:
        frame_limit = self.server.bridge.limit + 5
        return 4 * (frame_limit // 3 + 1) + 4096 if text else frame_limit  # base64 with padded pieces, breaks

    def _read_body(self, text: bool) -> bytes:
        limit = self._body_limit(text)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked(limit)
        else:
            length_text = self.headers.get("Content-Length", "0").strip()
            if not length_text.isdigit():
                raise WebError(grpc.StatusCode.INVALID_ARGUMENT, "Content-Length is not a number", 400)
            length = int(length_text)
            if length > limit:
                raise WebError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body of {length} bytes exceeds "
                               f"GRPC_MAX_MESSAGE_BYTES={self.server.bridge.limit}", 413)
            body = self.rfile.read(length)
            if len(body) < length:
                raise WebError(grpc.StatusCode.INVALID_ARGUMENT, "request body ended early", 400)
        self._body_read = True
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_text = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                size = -1
            if size < 0:
                raise WebError(grpc.StatusCode.INVALID_ARGUMENT, "malformed chunked request body", 400)
            if size == 0:
                break
            total += size
            if total > limit:
                raise WebError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body exceeds "
                               f"GRPC_MAX_MESSAGE_BYTES={self.server.bridge.limit}", 413)
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields: none expected, none used
        return b"".join(parts)

    def _skip_body(self) -> None:
        length_text = self.headers.get("Content-Length", "0").strip()
        length = int(length_text) if length_text.isdigit() else 0
        if 0 < length <= 65536:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

