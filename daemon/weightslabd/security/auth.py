"""Shared-token authentication for the gRPC server (GRPC_AUTH_TOKEN / GRPC_AUTH_TOKENS).

A call carries its token in one of three metadata headers; several tokens may be valid at once so
they can be rotated without downtime. Health checks stay open so supervisors and load balancers
can probe the daemon without a secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

AUTHORIZATION = "authorization"
API_KEY = "x-api-key"
AUTH_TOKEN = "x-grpc-auth-token"
CREDENTIAL_HEADERS = (AUTHORIZATION, API_KEY, AUTH_TOKEN)

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})

# Neither message says which header or token was expected, nor echoes what was sent.
MISSING_MESSAGE = "missing credentials: send 'authorization: Bearer <token>', x-api-key or x-grpc-auth-token"
INVALID_MESSAGE = "invalid credentials"

Metadata = Iterable[tuple[str, str | bytes]]


def _normalize(tokens: Sequence[str]) -> list[bytes]:
    # Bytes, because hmac.compare_digest refuses non-ASCII str.
    return [t.strip().encode() for t in tokens if t.strip()]


def presented_credentials(metadata: Metadata | None) -> list[bytes]:
    """Every credential the call carries, in header order (a Bearer prefix removed)."""
    found: list[bytes] = []
    for key, value in metadata or ():
        name = key.lower()
        if name not in CREDENTIAL_HEADERS:
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        text = text.strip()
        if name == AUTHORIZATION:
            scheme, _, rest = text.partition(" ")
            if scheme.lower() != "bearer":
                continue
            text = rest.strip()
        if text:
            found.append(text.encode())
    return found


def _match(presented: Sequence[bytes], tokens: Sequence[bytes]) -> int | None:
    """Index of the first configured token presented; every pair is compared so timing reveals nothing."""
    matched: int | None = None
    for candidate in presented:
        for index, token in enumerate(tokens):
            if hmac.compare_digest(candidate, token) and matched is None:
                matched = index
    return matched


def credential_label(metadata: Metadata | None, tokens: Sequence[str]) -> str:
    """Names the credential a call used without revealing it, for the audit log.

    "token#N" (N counts from 1 in `tokens` order), "invalid" (sent but not accepted), "none" (nothing
    sent) or "unchecked" (sent while no tokens are configured).
    """
    presented = presented_credentials(metadata)
    if not presented:
        return "none"
    normalized = _normalize(tokens)
    if not normalized:
        return "unchecked"
    index = _match(presented, normalized)
    return "invalid" if index is None else f"token#{index + 1}"


def _rejecting_handler(
    handler: grpc.RpcMethodHandler | None, message: str
) -> grpc.RpcMethodHandler:
    def reject(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # Same call shape as the real method, and no deserializer: an unauthenticated request is never parsed.
    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject)
    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject)
    return grpc.unary_unary_rpc_method_handler(reject)


class TokenAuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Lets a call through only with one of `tokens`; with no tokens, lets everything through."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = _normalize(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if not self._tokens or handler_call_details.method in OPEN_METHODS:
            return continuation(handler_call_details)
        presented = presented_credentials(handler_call_details.invocation_metadata)
        if presented and _match(presented, self._tokens) is not None:
            return continuation(handler_call_details)
        message = INVALID_MESSAGE if presented else MISSING_MESSAGE
        # The lookup only learns the call's shape; the real handler never runs.
        return _rejecting_handler(continuation(handler_call_details), message)
