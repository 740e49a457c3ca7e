"""Which browser origins may call the gRPC-Web endpoint (WEIGHTSLAB_GRPC_WEB_ALLOWED_ORIGINS), and the
CORS headers that tell the browser so. No grpc here: config.py validates the setting with it."""

from __future__ import annotations

import re
from dataclasses import dataclass

ANY = "*"
_PATTERN = re.compile(r"(?P<scheme>https?)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>\d{1,5}|\*))?")
_DEFAULT_PORTS = {"http": "80", "https": "443"}

# What gRPC-Web clients (grpc-web, @protobuf-ts/grpcweb-transport) send, plus our credential headers.
ALLOW_HEADERS = (
    "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "authorization", "x-api-key",
    "x-grpc-auth-token", "x-client-id", "x-accept-content-transfer-encoding", "x-accept-response-streaming",
    "content-transfer-encoding", "cache-control", "keep-alive",
)
EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")
ALLOW_METHODS = "POST, OPTIONS"
MAX_AGE_SECONDS = 7200  # Chromium caches a preflight for 2 h at most anyway


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: str  # "" = the scheme's default port, "*" = any port

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port else "")


def _parse(text: str, *, wildcard: bool) -> _Origin | None:
    match = _PATTERN.fullmatch(text.strip().lower())
    if match is None:
        return None
    scheme, host, port = match["scheme"], match["host"], match["port"] or ""
    if port == "*":
        return _Origin(scheme, host, port) if wildcard else None
    if port:
        if int(port) > 65535:
            return None
        port = "" if int(port) == int(_DEFAULT_PORTS[scheme]) else str(int(port))
    return _Origin(scheme, host, port)


def parse_origins(text: str) -> tuple[str, ...]:
    """The normalised items of a comma-separated origin list; ValueError names the first bad item."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("no origin")
    result = []
    for item in items:
        if item == ANY:
            result.append(ANY)
            continue
        origin = _parse(item, wildcard=True)
        if origin is None:
            raise ValueError(item)
        result.append(str(origin))
    return tuple(dict.fromkeys(result))


class OriginPolicy:
    """Answers whether an `Origin` header is allowed, and with which headers."""

    def __init__(self, spec: str) -> None:
        items = parse_origins(spec)
        self.any = ANY in items
        self._patterns = [p for p in (_parse(item, wildcard=True) for item in items if item != ANY) if p]

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        parsed = _parse(origin, wildcard=False)
        if parsed is None:  # "null" (file:// pages, sandboxed frames) and anything malformed
            return False
        return any(p.scheme == parsed.scheme and p.host == parsed.host and p.port in ("*", parsed.port)
                   for p in self._patterns)

    @staticmethod
    def response_headers(origin: str, exposed: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """Headers for an actual response to an allowed origin."""
        expose = ", ".join(dict.fromkeys((*EXPOSE_HEADERS, *exposed)))
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                ("Access-Control-Expose-Headers", expose)]

    @staticmethod
    def preflight_headers(origin: str, private_network: bool) -> list[tuple[str, str]]:
        """Headers for the answer to an OPTIONS preflight from an allowed origin."""
        headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin"),
                   ("Access-Control-Allow-Methods", ALLOW_METHODS),
                   ("Access-Control-Allow-Headers", ", ".join(ALLOW_HEADERS)),
                   ("Access-Control-Expose-Headers", ", ".join(EXPOSE_HEADERS)),
                   ("Access-Control-Max-Age", str(MAX_AGE_SECONDS))]
        if private_network:  # Chromium's Private Network Access: a public page asking to reach this host
            headers.append(("Access-Control-Allow-Private-Network", "true"))
        return headers
