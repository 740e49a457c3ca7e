"""Waiting on a condition with a deadline: how every test synchronises, never with a bare sleep.

`tests/` is on sys.path (its conftest.py), so unit and integration tests import this as `waiting`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll `condition` until it returns something truthy and return that; fail with `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
