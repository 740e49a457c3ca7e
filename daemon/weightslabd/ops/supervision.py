"""systemd's notify protocol: READY=1 once serving, WATCHDOG=1 pings at half WatchdogSec, STOPPING=1.

One datagram per message to $NOTIFY_SOCKET; without it (not under systemd) every call is a no-op."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Supervisor:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address  # abstract namespace
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.ping_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._next_ping = 0.0

    def _send(self, message: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError:
            pass  # systemd gone or socket full: supervision is best effort, serving is not

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def ping_if_due(self, healthy: bool) -> None:
        """Called from the main loop; a loop that hangs stops pinging, and systemd restarts us."""
        if self.ping_interval is None or not healthy:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            self._send("WATCHDOG=1")
            self._next_ping = now + self.ping_interval

    def wait_timeout(self, default: float) -> float:
        return min(default, self.ping_interval) if self.ping_interval else default
