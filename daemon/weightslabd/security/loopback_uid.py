"""Which local user owns the other end of a loopback TCP connection (Linux: /proc/net/tcp, tcp6).

Loopback is reachable by every user of the machine. For a connection the daemon accepted, the peer's own
socket is listed in /proc/net/tcp (or tcp6) with the peer's address as its local address, the daemon's
as its remote one, and the uid that created it. Reading that table costs a few hundred microseconds per
connection; it is done once per accepted connection.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_loopback_address(host: str) -> bool:
    """A literal loopback address (127/8, ::1, or either mapped into IPv6)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _ip(text: str) -> IpAddress:
    raw = bytes.fromhex(text)
    # The kernel prints each 32-bit word in host byte order (little endian on every Linux we run on).
    swapped = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(swapped)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _endpoint(text: str) -> tuple[IpAddress, int]:
    address, _, port = text.partition(":")
    return _ip(address), int(port, 16)


def _normal(host: str, port: int) -> tuple[IpAddress, int]:
    ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(port)


def peer_uid(peer: tuple[str, int], ours: tuple[str, int], tables: tuple[Path, ...] = TABLES, *,
             match_remote_host: bool = True) -> int | None:
    """The uid owning the socket at `peer` connected to `ours` (our end of the connection), or None when
    no such socket is listed (not Linux, the peer already closed, or another network namespace). Without
    `match_remote_host`, only our port is matched (a server bound to every address)."""
    want_local, want_remote = _normal(*peer), _normal(*ours)
    for table in tables:
        try:
            text = table.read_text()
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 8:
                continue
            try:
                remote = _endpoint(fields[2])
                if _endpoint(fields[1]) == want_local and (
                        remote == want_remote if match_remote_host else remote[1] == want_remote[1]):
                    return int(fields[7])
            except ValueError:
                continue
    return None


def same_user(peer: tuple[str, int], ours: tuple[str, int]) -> tuple[bool, int | None]:
    """(whether the loopback peer runs as this process's uid, its uid when known)."""
    uid = peer_uid(peer, ours)
    return uid is not None and uid == os.geteuid(), uid


def tcp_peer(peer: str) -> tuple[str, int] | None:
    """grpc's peer string ('ipv4:127.0.0.1:5123', 'ipv6:[::1]:5123') as (host, port); None for a unix one."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


class OwnUserOnLoopback(grpc.ServerInterceptor):  # type: ignore[misc]
    """The plain gRPC port with neither TLS nor a token: every local user can reach loopback, so only calls
    whose TCP peer is this process's uid are served; others get PERMISSION_DENIED. Peers on unix sockets
    (the TLS front, the gRPC-Web bridge) pass: their sockets sit in the private runtime directory.
    A peer's uid is remembered for CACHE_SECONDS, so a polling client costs one table read per interval."""

    CACHE_SECONDS = 2.0
    CACHE_SIZE = 1024

    def __init__(self, open_methods: frozenset[str] = frozenset()) -> None:
        self.port = 0  # the server's bound port, set once it is known
        self._open = open_methods
        self._seen: dict[str, tuple[float, bool, int | None]] = {}
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or details.method in self._open:
            return handler
        return _checked(handler, self._check)

    def _check(self, context: grpc.ServicerContext) -> None:
        peer = context.peer()
        address = tcp_peer(peer)
        if address is None:
            return
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(peer)
        if seen is None or now - seen[0] > self.CACHE_SECONDS:
            uid = peer_uid(address, ("::", self.port), match_remote_host=False)
            seen = (now, uid is not None and uid == os.geteuid(), uid)
            with self._lock:
                if len(self._seen) >= self.CACHE_SIZE:
                    self._seen.clear()
                self._seen[peer] = seen
        if not seen[1]:
            who = "an unknown user" if seen[2] is None else f"uid {seen[2]}"
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"weightslabd serves only its own user (uid {os.geteuid()}) on a plain port without a "
                          f"token, and {who} called: set GRPC_AUTH_TOKEN, or keep GRPC_TLS_ENABLED=1")


def _checked(handler: grpc.RpcMethodHandler, check: Callable[[grpc.ServicerContext], None]) -> grpc.RpcMethodHandler:
    """The same method, with `check` run first (it aborts the call to refuse it)."""
    if handler.request_streaming and handler.response_streaming:
        make, behaviour = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    elif handler.request_streaming:
        make, behaviour = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    elif handler.response_streaming:
        make, behaviour = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    else:
        make, behaviour = grpc.unary_unary_rpc_method_handler, handler.unary_unary

    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        check(context)
        return behaviour(request, context)

    return make(guarded, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
