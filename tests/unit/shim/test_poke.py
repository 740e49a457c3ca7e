"""The pipe that wakes a thread sleeping in a poll (weightslab_shim/poke.py, used by the shim's control
channel and the daemon's control thread): a poke makes its end readable, clear() empties it, and a poke
that lands while the owner clears is never lost."""

from __future__ import annotations

import os
import select

import pytest

from weightslab_shim import poke as poke_module
from weightslab_shim.poke import Poke


def readable(p: Poke) -> bool:
    return bool(select.select([p.fd], [], [], 0)[0])


def test_a_poke_wakes_and_clear_rearms() -> None:
    p = Poke()
    try:
        assert not readable(p)
        p()
        p()  # a second poke while one is pending writes nothing more
        assert readable(p)
        p.clear()
        assert not readable(p)
        p()
        assert readable(p)
    finally:
        p.close()
    p()  # after close: a no-op, no error


def test_a_poke_while_the_owner_clears_still_wakes_it_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread pokes right as the owner empties the pipe (forced here at the read): the owner's
    next poll must still see the next poke (once a CI run's daemon slept through stop() this way)."""
    p = Poke()
    real_read = os.read
    injected = []

    def read_after_a_poke(fd: int, n: int) -> bytes:
        if fd == p.fd and not injected:
            injected.append(1)
            p()  # the other thread's poke, between the owner's two steps
        return real_read(fd, n)

    try:
        p()
        monkeypatch.setattr(poke_module.os, "read", read_after_a_poke)
        p.clear()
        monkeypatch.undo()
        assert injected
        if readable(p):  # what the owner does on its next wake, if there is one
            p.clear()
        p()  # a later poke (stop, a command)
        assert readable(p), "the later poke wrote nothing: the owner would sleep until its own deadline"
    finally:
        p.close()
