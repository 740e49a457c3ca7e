"""The run's state lock, watchable from outside: who holds it and since when.

The watchdog (ops/watchdog.py) polls these and raises `WatchdogInterrupt` in a holder that kept one
too long; the store only needs the lock itself, so both live here, below their users.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class WatchdogInterrupt(BaseException):
    """Raised by the watchdog in a thread that held a state lock too long."""


class WatchedLock:
    """A reentrant lock that says who holds it and since when. Works under threading.Condition."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.RLock()
        self.holder: int | None = None
        self.since = 0.0
        self._depth = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        if self._depth == 0:
            self.holder, self.since = threading.get_ident(), time.monotonic()
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.holder = None
        self._lock.release()

    def __enter__(self) -> WatchedLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # threading.Condition uses these to release the lock fully while waiting.
    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def _release_save(self) -> Any:
        depth, self._depth, self.holder = self._depth, 0, None
        return self._lock._release_save(), depth  # type: ignore[attr-defined]

    def _acquire_restore(self, saved: Any) -> None:
        inner, depth = saved
        self._lock._acquire_restore(inner)  # type: ignore[attr-defined]
        self._depth, self.holder, self.since = depth, threading.get_ident(), time.monotonic()
