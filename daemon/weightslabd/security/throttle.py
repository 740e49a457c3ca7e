"""Failed `auth` attempts, slowed down: per peer address, an exponential lockout; per connection, a cap.

Per peer address (all connections from it together): the first FREE_FAILURES failures cost nothing; each
later one locks the address out for BASE_SECONDS * 2**(n - FREE_FAILURES - 1) seconds, at most MAX_SECONDS
(1, 2, 4, ... 60 s). An attempt made while locked out is not checked at all (the answer says how long to
wait), so parallel connections gain nothing. A success clears the address; an address quiet for FORGET_SECONDS
is forgotten, and at most MAX_PEERS addresses are remembered (the longest quiet go first).
Per connection: after CONNECTION_FAILURES failed attempts the connection is closed.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FREE_FAILURES = 3
BASE_SECONDS = 1.0
MAX_SECONDS = 60.0
CONNECTION_FAILURES = 5
FORGET_SECONDS = 900.0
MAX_PEERS = 4096


@dataclass
class _Peer:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class AuthThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._peers: OrderedDict[str, _Peer] = OrderedDict()

    def wait_left(self, peer: str) -> float:
        """Seconds until `peer` may try again (0: it may now)."""
        now = self.clock()
        with self._lock:
            self._forget(now)
            entry = self._peers.get(peer)
            return max(0.0, entry.locked_until - now) if entry is not None else 0.0

    def failed(self, peer: str) -> float:
        """Counts a failed attempt; returns the lockout it starts (0 while still free)."""
        now = self.clock()
        with self._lock:
            entry = self._peers.pop(peer, None) or _Peer()
            entry.failures += 1
            entry.last = now
            lockout = 0.0
            if entry.failures > FREE_FAILURES:
                lockout = min(MAX_SECONDS, BASE_SECONDS * 2 ** (entry.failures - FREE_FAILURES - 1))
                entry.locked_until = now + lockout
            self._peers[peer] = entry
            while len(self._peers) > MAX_PEERS:
                self._peers.popitem(last=False)
            return lockout

    def succeeded(self, peer: str) -> None:
        with self._lock:
            self._peers.pop(peer, None)

    def _forget(self, now: float) -> None:
        while self._peers:
            key, entry = next(iter(self._peers.items()))
            if now - entry.last < FORGET_SECONDS or now < entry.locked_until:
                return
            del self._peers[key]
