"""Who a call is from (peers.py), and how the TLS front words a refused handshake (tls_front.py)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

from weightslabd.security.peers import Peer, PeerTable, grpc_address, identify, peer_address
from weightslabd.security.tls_front import common_name, handshake_reason


class Context:
    """The parts of grpc.ServicerContext that identify() reads."""

    def __init__(self, peer: str, metadata: tuple[tuple[str, str], ...] = (), cn: bytes | None = None) -> None:
        self._peer, self._metadata = peer, metadata
        self._auth = {"x509_common_name": [cn]} if cn is not None else {}

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


@pytest.mark.parametrize(("host", "port", "expected"), [
    ("127.0.0.1", 5678, "ipv4:127.0.0.1:5678"),
    ("::1", 5678, "ipv6:[::1]:5678"),
    ("::ffff:10.1.2.3", 80, "ipv4:10.1.2.3:80"),  # a v4 client on a dual-stack socket, as grpc writes it
    ("10.0.0.7", None, "ipv4:10.0.0.7"),
    ("not an address", None, "unknown:not an address"),
])
def test_grpc_address_writes_peers_as_grpc_does(host: str, port: int | None, expected: str) -> None:
    assert grpc_address(host, port) == expected


def test_a_front_connection_is_named_by_the_table_until_it_is_removed() -> None:
    table = PeerTable()
    table.add("unix:/rt/peers/1", Peer("ipv4:10.0.0.7:4242", "weightslabd client", 1.0))
    context: Any = Context("unix:/rt/peers/1", (("x-forwarded-for", "203.0.113.9"),))
    assert identify(context, table) == Peer("ipv4:10.0.0.7:4242", "weightslabd client", 1.0)
    table.remove("unix:/rt/peers/1")
    # Gone from the table (the connection closed): grpc's own view, never the header.
    assert identify(context, table) == Peer("unix:/rt/peers/1", "")
    assert len(table) == 0


def test_forwarded_for_is_believed_only_from_the_unbound_unix_peer_of_the_bridge() -> None:
    forwarded = (("x-forwarded-for", "127.0.0.1"),)
    bridge: Any = Context("unix:", forwarded)
    assert identify(bridge, PeerTable()).address == "ipv4:127.0.0.1"
    assert peer_address(bridge, None) == "ipv4:127.0.0.1"
    tcp: Any = Context("ipv4:127.0.0.1:5000", (("x-forwarded-for", "203.0.113.9"),), cn=b"weightslabd client")
    assert identify(tcp, None) == Peer("ipv4:127.0.0.1:5000", "weightslabd client")
    assert identify(Context("unix:"), None).address == "unix:"  # type: ignore[arg-type]


def _ssl_error(cls: type[ssl.SSLError], reason: str, **attrs: Any) -> ssl.SSLError:
    exc = cls(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    for key, value in attrs.items():
        setattr(exc, key, value)
    return exc


@pytest.mark.parametrize(("exc", "reason"), [
    (_ssl_error(ssl.SSLError, "PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no client certificate"),
    (_ssl_error(ssl.SSLCertVerificationError, "CERTIFICATE_VERIFY_FAILED", verify_message="certificate has expired"),
     "certificate verify failed: certificate has expired"),
    (_ssl_error(ssl.SSLError, "HTTP_REQUEST"), "not a TLS client hello (http request)"),
    (_ssl_error(ssl.SSLError, "WRONG_VERSION_NUMBER"), "not a TLS client hello (wrong version number)"),
    (_ssl_error(ssl.SSLError, "UNSUPPORTED_PROTOCOL"),
     "TLS version not accepted, 1.2 or later required (unsupported protocol)"),
    (_ssl_error(ssl.SSLError, "TLSV1_ALERT_UNKNOWN_CA"),
     "the client ended the handshake with an alert (tlsv1 alert unknown ca)"),
    (_ssl_error(ssl.SSLEOFError, "UNEXPECTED_EOF_WHILE_READING"), "connection closed during the handshake"),
    (ConnectionResetError(104, "reset"), "connection closed during the handshake"),
    (asyncio.TimeoutError(), "handshake not finished within 10 s"),
])
def test_handshake_reasons_are_one_line_and_name_the_problem(exc: BaseException, reason: str) -> None:
    assert handshake_reason(exc, 10.0) == reason


def test_common_name_of_a_verified_certificate() -> None:
    cert = {"subject": ((("organizationName", "weightslabd"),), (("commonName", "weightslabd client"),))}
    assert common_name(cert) == "weightslabd client"
    assert common_name({}) == "" and common_name(None) == ""
