"""Free loopback ports for the daemons and servers that tests start.

A port the kernel hands out for `bind(0)` lies in its ephemeral range, where any outgoing connection
(a gRPC client of another test, say) may take it between this check and the daemon's own bind: a CI run
saw a daemon exit with "Address already in use" on such a port. So a port is drawn at random below the
ephemeral range, where only listeners live, and checked free by binding it. `tests/` is on sys.path
(its conftest.py): tests import this as `ports`."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000
_DRAW = random.SystemRandom()


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, below the ephemeral range when there is room there (else the kernel's
    choice)."""
    high = ephemeral_low()
    if high - LOWEST >= 1000:
        for _ in range(200):
            port = _DRAW.randrange(LOWEST, high)
            if _bindable(port):
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
