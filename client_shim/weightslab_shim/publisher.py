"""The ring's single writer, on a thread of its own.

The training thread only hands over a step's values (`submit`, a deque append). Converting them to
arrays, encoding, checksumming and copying into the ring happen here, mostly while the trainer is
inside torch code that has released the GIL. The queue is bounded: when this thread falls behind,
the newest record is dropped and counted, and the trainer never waits.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import records
from .records import SEP
from .ring import WORDSUM_MIN, RecordType, RingWriter

MAX_QUEUE = 256  # records waiting to be written (device copies in flight included)
POLL_PENDING = 0.001  # how often to look again at a record whose device copy is still running

Fields = list[tuple[str, Any]]  # (name, Staged | Lazy)


class Publisher:
    def __init__(self, ring: RingWriter, on_dropped: Callable[[int, Fields], None]) -> None:
        self.ring = ring
        self.dropped = 0  # records dropped because this thread was behind (the ring counts its own)
        self.errors = 0
        self._reported: set[str] = set()
        self._on_dropped = on_dropped
        self._queue: deque[tuple[int, int, Fields]] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="weightslab-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, rtype: int, step: int, fields: Fields) -> None:
        if len(self._queue) >= MAX_QUEUE:
            self.dropped += 1
            self._on_dropped(rtype, fields)
            return
        self._idle.clear()
        self._queue.append((rtype, step, fields))
        if not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait (bounded) until everything submitted is in the ring."""
        self._wake.set()
        return self._idle.wait(timeout)

    def close(self, timeout: float) -> None:
        self.flush(timeout)
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        pending = False
        while not (self._stopping and not self._queue):
            self._wake.wait(POLL_PENDING if pending else 0.5)
            self._wake.clear()
            try:
                pending = self._drain()
            except Exception:  # noqa: BLE001 - a record that cannot be written is dropped, the thread lives
                if self._queue:
                    rtype, _, fields = self._queue.popleft()
                    self.dropped += 1
                    self._on_dropped(rtype, fields)
                pending = bool(self._queue)
            if not self._queue:
                self._idle.set()
            if self._stopping and pending:
                break  # device copies that never finish do not hold the exit

    def _drain(self) -> bool:
        """Write what is ready, in order; True if the head still waits for a device copy."""
        while self._queue:
            rtype, step, fields = self._queue[0]
            if not all(value.ready() for _, value in fields):
                return True
            self._queue.popleft()
            self._write(rtype, step, fields)
            time.sleep(0)  # hand the GIL back between records: a trainer waiting for it waits one record
        return False

    def _arrays(self, fields: Fields) -> list[tuple[str, Any]]:
        """Each value as an array; one that cannot be converted is left out and reported once."""
        out = []
        for name, value in fields:
            try:
                out.append((name, value.array()))
            except Exception as exc:  # noqa: BLE001 - never the whole record for one odd value
                self.errors += 1
                key = f"{name.split(SEP)[0]}: {type(exc).__name__}: {exc}"[:300]
                if key not in self._reported:
                    self._reported.add(key)
                    sys.stderr.write(f"weightslab: a value could not be published ({key}); it is left out "
                                     "(ignored; training continues)\n")
        return out

    def _write(self, rtype: int, step: int, fields: Fields) -> None:
        prepared = records.prepare(self._arrays(fields))
        size = records.encoded_size(prepared)
        view = self.ring.reserve(rtype, step, size)
        if view is None:
            if rtype == RecordType.PREVIEW:
                self._on_dropped(rtype, fields)
            return
        if size >= WORDSUM_MIN:  # sum while copying: no second pass over a big record
            self.ring.commit(records.encode_into(view, prepared, summing=True))
        else:
            records.encode_into(view, prepared)
            self.ring.commit()

