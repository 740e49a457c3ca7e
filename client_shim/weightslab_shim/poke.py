"""A pipe that wakes a thread sleeping in a ZeroMQ poll, for the threads that own a socket.

A socket's thread sleeps in one `poll` until a frame arrives, a deadline of its own passes, or another
thread queues something for it and pokes: it never wakes every few milliseconds to look (each wake
costs CPU, and in the trainer it takes the GIL from the training thread). At most one byte is in the
pipe at a time: a poke while one is pending writes nothing.

    poke = Poke()
    poller.register(poke.fd, zmq.POLLIN)
    # another thread:  queue.append(item); poke()
    # the owner:       poller.poll(timeout); poke.clear(); then empty the queue
"""

from __future__ import annotations

import os

__all__ = ["Poke"]


class Poke:
    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending = False

    @property
    def fd(self) -> int:
        """The end to register in a poller (readable while a poke is pending)."""
        return self._read

    def __call__(self) -> None:
        """Wake the owner's poll (safe from any thread, and after close)."""
        if not self._pending:
            self._pending = True
            try:
                os.write(self._write, b"!")
            except OSError:  # full (the owner is awake anyway) or already closed
                pass

    def clear(self) -> None:
        """The owner, before it empties its queue: a later poke wakes it again. The pipe is emptied
        before the flag is reset: the other way round, a poke in between would write a byte that the
        read then takes, and leave the flag set over an empty pipe (every later poke a no-op, the owner
        asleep until its own deadline)."""
        try:
            os.read(self._read, 4096)
        except OSError:  # nothing pending, or closed
            pass
        self._pending = False

    def close(self) -> None:
        """Once no other thread can poke (a late poke is then a no-op)."""
        if self._read >= 0:
            self._pending = True
            os.close(self._read)
            os.close(self._write)
            self._read = self._write = -1
