"""Browser origins as the settings write them (`http://localhost:*`, `https://studio.example:8443`):
parsed and normalised. Below config, which validates WEIGHTSLAB_GRPC_WEB_ALLOWED_ORIGINS with it, and
below the CORS policy of the gRPC-Web endpoint (api/cors.py), which matches requests against it."""

from __future__ import annotations

import re
from dataclasses import dataclass

ANY = "*"
_PATTERN = re.compile(r"(?P<scheme>https?)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>\d{1,5}|\*))?")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: str  # "" = the scheme's default port, "*" = any port

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port else "")


def parse(text: str, *, wildcard: bool) -> Origin | None:
    match = _PATTERN.fullmatch(text.strip().lower())
    if match is None:
        return None
    scheme, host, port = match["scheme"], match["host"], match["port"] or ""
    if port == "*":
        return Origin(scheme, host, port) if wildcard else None
    if port:
        if int(port) > 65535:
            return None
        port = "" if int(port) == int(_DEFAULT_PORTS[scheme]) else str(int(port))
    return Origin(scheme, host, port)


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
        origin = parse(item, wildcard=True)
        if origin is None:
            raise ValueError(item)
        result.append(str(origin))
    return tuple(dict.fromkeys(result))
