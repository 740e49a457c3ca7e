"""The gRPC server: thread pool, limits, token auth and health, around the Studio servicer.

With TLS off it listens on GRPC_BACKEND_HOST:PORT itself; with TLS on, only on a unix socket in the private
runtime dir, behind the daemon's own TLS front (tls_front.py), which owns the TCP port.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from weightslabd.api.cli_server import CliCommands
from weightslabd.api.cli_server import grpc_handler as cli_handler
from weightslabd.api.servicer import ExperimentServicer
from weightslabd.config import Settings
from weightslabd.ops.watchdog import InflightCalls
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.security.audit import AuditInterceptor, AuditLog
from weightslabd.security.auth import OPEN_METHODS, TokenAuthInterceptor
from weightslabd.security.loopback_uid import OwnUserOnLoopback
from weightslabd.security.peers import PeerTable, peer_address

log = structlog.get_logger("weightslabd.api.server")
WORKERS = 32  # threads: a Studio tab holds a stream and a few calls at once; 20 tabs fit
SERVICE = "ExperimentService"
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last one a NUL


class BindError(Exception):
    """The gRPC address could not be bound."""


class StrictDecoding(grpc.ServerInterceptor):
    """Requests are decoded inside the handler, where the peer is known: a malformed one is logged
    with the peer and answered INVALID_ARGUMENT, instead of grpc's anonymous INTERNAL."""

    def __init__(self, peers: PeerTable | None = None) -> None:
        self.peers = peers

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None or (
                handler.unary_unary is None and handler.unary_stream is None):
            return handler
        decode = handler.request_deserializer
        method = details.method
        peers = self.peers

        def parsed(raw: bytes, context: grpc.ServicerContext) -> Any:
            try:
                return decode(raw)
            except Exception as exc:  # noqa: BLE001 - whatever the bytes, a clear refusal
                log.error("malformed request rejected", method=method, peer=peer_address(context, peers),
                          bytes=len(raw), error=f"{type(exc).__name__}: {exc}"[:300])
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method.rsplit('/', 1)[-1]} request")

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary
            return grpc.unary_unary_rpc_method_handler(lambda raw, ctx: inner_uu(parsed(raw, ctx), ctx), None,
                                                       handler.response_serializer)
        inner_us = handler.unary_stream
        assert inner_us is not None
        return grpc.unary_stream_rpc_method_handler(lambda raw, ctx: inner_us(parsed(raw, ctx), ctx), None,
                                                    handler.response_serializer)


@dataclass
class GrpcServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int
    address: str

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            self.health.set(name, status)

    def stop(self, grace: float) -> None:
        self.set_serving(False)
        self.server.stop(grace).wait(grace + 1)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def build_server(settings: Settings, servicer: ExperimentServicer, audit: AuditLog, calls: InflightCalls,
                 cli: CliCommands | None = None, *, web_socket: Path | None = None, front_socket: Path | None = None,
                 peers: PeerTable | None = None) -> GrpcServer:
    """The server on GRPC_BACKEND_HOST:PORT, or with `front_socket` (TLS on) on that unix socket instead, for
    the TLS front; with `web_socket`, also on that one, for the built-in gRPC-Web bridge. Unix sockets are
    plain: their folder is the private runtime dir. Same servicer, same interceptors on every socket;
    `peers` tells the audit who is behind the front's connections."""
    limit = settings.grpc_max_message_bytes
    options = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # Browsers hold streams open for hours: ping idle connections, tolerate client pings.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),  # clients pinging every 10 s keep a margin
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    # Neither TLS nor a token: loopback is every local user's, so only our own uid is served there.
    own_user = OwnUserOnLoopback(OPEN_METHODS) if not settings.grpc_tls_enabled and not settings.auth_tokens() \
        else None
    server = grpc.server(
        ThreadPoolExecutor(max_workers=settings.grpc_max_concurrent_rpcs or WORKERS, thread_name_prefix="grpc"),
        # Decoding first (a malformed request is refused with its peer named), then audit, so it records
        # the calls that auth refuses too, then auth, then the watchdog's in-flight tracking.
        interceptors=[StrictDecoding(peers),
                      AuditInterceptor(audit, settings.auth_tokens(), servicer.current_folder, peers),
                      TokenAuthInterceptor(settings.auth_tokens()), *([own_user] if own_user else []), calls],
        options=options,
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs or WORKERS,
    )
    pb_grpc.add_ExperimentServiceServicer_to_server(servicer, server)
    if cli is not None:
        server.add_generic_rpc_handlers((cli_handler(cli),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if front_socket is not None:
        _add_unix_port(server, front_socket, "the TLS front's socket", "use a shorter runtime dir")
        port, address = 0, f"unix:{front_socket}"
    else:
        wanted = host_port(settings.grpc_backend_host, settings.grpc_backend_port)
        try:
            port = server.add_insecure_port(wanted)
        except RuntimeError as exc:
            raise BindError(f"GRPC_BACKEND_HOST:GRPC_BACKEND_PORT={wanted}: cannot listen ({exc})") from None
        if port == 0:
            raise BindError(f"GRPC_BACKEND_HOST:GRPC_BACKEND_PORT={wanted}: cannot listen (address in use?)")
        address = host_port(settings.grpc_backend_host, port)
        if own_user is not None:
            own_user.port = port
    if web_socket is not None:
        _add_unix_port(server, web_socket, "the gRPC-Web socket",
                       "use a shorter runtime dir, or WEIGHTSLAB_GRPC_WEB_PORT=-1 to turn gRPC-Web off")
    result = GrpcServer(server, health_servicer, port, address)
    result.set_serving(False)
    return result


def _add_unix_port(server: grpc.Server, path: Path, what: str, hint: str) -> None:
    where = f"WEIGHTSLAB_RUNTIME_DIR={path.parent}: {what} {path}"
    if len(str(path).encode()) > UNIX_PATH_MAX:
        raise BindError(f"{where} is longer than a unix socket path may be ({UNIX_PATH_MAX} bytes); {hint}")
    try:
        bound = server.add_insecure_port(f"unix:{path}")
    except RuntimeError as exc:
        raise BindError(f"{where} cannot be listened on ({exc})") from None
    if bound == 0:
        raise BindError(f"{where} cannot be listened on")
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)  # the runtime dir (0700) already guards it; this says so again
