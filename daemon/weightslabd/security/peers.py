"""Who is on the other end of a call, when grpc itself only sees a unix socket.

With TLS on, clients reach the gRPC server through the TLS front (tls_front.py), which connects to it
over a private unix socket from a client socket bound to a path of its own (`<runtime>/peers/<n>`);
grpc's `context.peer()` is then `unix:<that path>`, and the front's table maps it to the TCP peer and
the client certificate it verified. The gRPC-Web bridge connects without binding (`unix:`): only there
is its `x-forwarded-for` believed.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

FORWARDED_FOR = "x-forwarded-for"
UNBOUND_UNIX = "unix:"  # a unix client that bound no address: the gRPC-Web bridge's channel


@dataclass(frozen=True)
class Peer:
    """A client as the audit log names it: grpc-style address and client certificate CN."""

    address: str
    client_cert: str = ""
    since: float = 0.0  # wall time of the TLS handshake; 0 when not through the front


class PeerTable:
    """The front's live connections, by the peer string grpc shows for them; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peers: dict[str, Peer] = {}

    def add(self, key: str, peer: Peer) -> None:
        with self._lock:
            self._peers[key] = peer

    def remove(self, key: str) -> None:
        with self._lock:
            self._peers.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._peers.clear()

    def get(self, key: str) -> Peer | None:
        with self._lock:
            return self._peers.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._peers)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._peers)


def grpc_address(host: str, port: int | None = None) -> str:
    """`ipv4:1.2.3.4:5678` / `ipv6:[::1]:5678`, as grpc writes peers (a v4-mapped v6 address as v4)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return f"unknown:{host}" if port is None else f"unknown:{host}:{port}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    where = f"ipv4:{ip}" if ip.version == 4 else f"ipv6:[{ip}]"
    return where if port is None else f"{where}:{port}"


def _forwarded(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == FORWARDED_FOR and isinstance(value, str) and value.strip():
            return value.split(",")[0].strip()[:100]  # the bridge sends one address; the first is the client
    return None


def _common_name(context: grpc.ServicerContext) -> str:
    auth = context.auth_context() or {}
    return b",".join(auth.get("x509_common_name", [])).decode(errors="replace")


def _behind(context: grpc.ServicerContext, table: PeerTable | None) -> tuple[str, Peer | None]:
    raw = context.peer() or ""
    known = table.get(raw) if table is not None else None
    if known is None and raw == UNBOUND_UNIX:
        forwarded = _forwarded(context.invocation_metadata())
        if forwarded:
            known = Peer(grpc_address(forwarded))
    return raw, known


def identify(context: grpc.ServicerContext, table: PeerTable | None) -> Peer:
    """The real client of a call: the front's TCP peer and certificate, the bridge's browser, or grpc's view."""
    raw, known = _behind(context, table)
    return known if known is not None else Peer(raw, _common_name(context))


def peer_address(context: grpc.ServicerContext, table: PeerTable | None) -> str:
    """`identify(...).address`, without reading the certificate."""
    raw, known = _behind(context, table)
    return known.address if known is not None else raw
