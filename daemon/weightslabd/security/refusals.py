"""Repeated refusals, folded: one line at once, then at most one summary line per peer and reason per interval.

A client that retries a refused connection in a loop (a misconfigured one, or an attacker) would otherwise
write a log line and an audit line per attempt: thousands a second. Here the first refusal of a (peer
address, reason) pair is reported at once; the ones that follow within INTERVAL seconds are only counted,
and when the interval ends one summary says how many there were (`count`). A pair that keeps failing
gives one line per interval; a quiet one is forgotten. At most MAX_KEYS pairs are tracked per interval;
refusals beyond that are folded into one `(other peers)` key, so memory and lines stay bounded whatever
the number of addresses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL = 10.0  # seconds a (peer, reason) pair is summarised over
MAX_KEYS = 256  # pairs tracked at once; more are folded into OTHERS
OTHERS = "(other peers)"

# (peer, reason, count, seconds): count 1 for a first refusal, else the refusals folded over `seconds`.
Emit = Callable[[str, str, int, float], None]


def host_of(peer: str) -> str:
    """`ipv4:1.2.3.4:5678` -> `ipv4:1.2.3.4`, `ipv6:[::1]:5` -> `ipv6:[::1]`: a client's port changes per try."""
    if peer.startswith("ipv6:[") and "]" in peer:
        return peer[: peer.index("]") + 1]
    head, sep, tail = peer.rpartition(":")
    return head if sep and tail.isdigit() and head.count(":") >= 1 else peer


@dataclass
class _Window:
    started: float
    count: int = 0  # refusals folded since `started` (the first one was reported on its own)
    peer: str = ""  # the latest full peer (with port)


class RefusalAggregator:
    """Thread-safe; `refused` never blocks on I/O of its own beyond calling `emit` for a first refusal."""

    def __init__(self, emit: Emit, interval: float = INTERVAL, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refused(self, peer: str, reason: str) -> None:
        host = host_of(peer)
        now = self.clock()
        first = False
        with self._lock:
            key = (host, reason)
            window = self._windows.get(key)
            if window is None and len(self._windows) >= self.max_keys:
                key = (OTHERS, "refused")
                window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(now, 0, peer)
                first = True
            else:
                window.count += 1
                window.peer = peer
        if first:
            self.emit(peer, reason, 1, 0.0)
            self._ensure_thread()

    def flush(self, final: bool = False) -> None:
        """Summaries of every window that has ended (all of them when `final`)."""
        now = self.clock()
        due: list[tuple[str, str, int, float]] = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if not final and now - window.started < self.interval:
                    continue
                if window.count:
                    peer = key[0] if key[0] == OTHERS else window.peer
                    due.append((peer, key[1], window.count, now - window.started))
                    if not final:  # still refusing: the next interval starts now, reported at its end
                        self._windows[key] = _Window(now, 0, window.peer)
                        continue
                del self._windows[key]
        for peer, reason, count, seconds in due:
            self.emit(peer, reason, count, seconds)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.flush(final=True)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="refusals", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.interval / 4)):
            self.flush()
