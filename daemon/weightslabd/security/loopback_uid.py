"""Which local user owns the other end of a loopback TCP connection (Linux: /proc/net/tcp, tcp6).

Loopback is reachable by every user of the machine. For a connection the daemon accepted, the peer's own
socket is listed in /proc/net/tcp (or tcp6) with the peer's address as its local address, the daemon's
as its remote one, and the uid that created it. Reading that table costs a few hundred microseconds per
connection; it is done once per accepted connection.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

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


def peer_uid(peer: tuple[str, int], ours: tuple[str, int], tables: tuple[Path, ...] = TABLES) -> int | None:
    """The uid owning the socket at `peer` connected to `ours` (our end of the connection), or None when
    no such socket is listed (not Linux, the peer already closed, or another network namespace)."""
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
                if _endpoint(fields[1]) == want_local and _endpoint(fields[2]) == want_remote:
                    return int(fields[7])
            except ValueError:
                continue
    return None


def same_user(peer: tuple[str, int], ours: tuple[str, int]) -> tuple[bool, int | None]:
    """(whether the loopback peer runs as this process's uid, its uid when known)."""
    uid = peer_uid(peer, ours)
    return uid is not None and uid == os.geteuid(), uid
