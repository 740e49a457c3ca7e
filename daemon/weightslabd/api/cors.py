"""Which browser origins may call the gRPC-Web endpoint (WEIGHTSLAB_GRPC_WEB_ALLOWED_ORIGINS), and the
CORS headers that tell the browser so. The origin grammar itself is in origins.py, below config."""

from __future__ import annotations

from weightslabd.origins import ANY, parse, parse_origins

# What gRPC-Web clients (grpc-web, @protobuf-ts/grpcweb-transport) send, plus our credential headers.
ALLOW_HEADERS = (
    "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "authorization", "x-api-key",
    "x-grpc-auth-token", "x-client-id", "x-accept-content-transfer-encoding", "x-accept-response-streaming",
    "content-transfer-encoding", "cache-control", "keep-alive",
)
EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin")
ALLOW_METHODS = "POST, OPTIONS"
MAX_AGE_SECONDS = 7200  # Chromium caches a preflight for 2 h at most anyway


class OriginPolicy:
    """Answers whether an `Origin` header is allowed, and with which headers."""

    def __init__(self, spec: str) -> None:
        items = parse_origins(spec)
        self.any = ANY in items
        self._patterns = [p for p in (parse(item, wildcard=True) for item in items if item != ANY) if p]

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        parsed = parse(origin, wildcard=False)
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
