"""The ring's single writer, on a thread of its own.

The training thread only hands over a step's values (`submit`, a deque append). Converting them to
arrays, encoding, checksumming and copying into the ring happen here, mostly while the trainer is
inside torch code that has released the GIL. The queue is bounded: when this thread falls behind,
the newest record is dropped and counted, and the trainer never waits.

Every time this thread wakes it takes the GIL, and a trainer that comes back from torch code meanwhile
waits for it: waking costs the trainer a GIL hand-over or two whatever the record. So the thread is not
woken for each record. Once WAKE_RECORDS records wait, or the oldest has waited WAKE_AFTER seconds
(checked as records come in), or a preview record waits (its 8-bit reduction is the heaviest work here,
best done one step at a time), a wake is due: it happens at the next `nudge`, which the session gives
when the training thread records a loss, right before backward, whose engine runs without the GIL; or
at once when twice that is waiting (a loop that records no loss), or when the inputs kept for previews
reach WAKE_HELD bytes. With nothing new the thread looks again every IDLE_WAIT by itself.

Woken by a nudge, the thread first sleeps NUDGE_SETTLE. The nudge comes a few torch calls before the
trainer enters backward; a thread that took the GIL at once would hold it, in its first stretch of
Python, while the trainer waits to get there. Settling first, its work falls inside backward (on the
2-core development VM: GIL waits of the trainer in a first epoch 0.29-0.34 % of a step, against
1.9 % without the settle, `bench/attached.py`).

The thread runs under SCHED_BATCH where the OS has it (Linux): woken while the trainer is on a core, it
does not take that core from the trainer at once, but waits for an idle one or its turn. Without it, on a
2-core machine whose other core was busy with the daemon, a woken publisher preempted the training thread
(its run-queue wait in a first epoch 54-62 us a step, 19-21 us under SCHED_BATCH, `bench/attached.py`). Its
share of the CPU is unchanged: only wake-up preemption is given up.

A record's fields are a list, or a `Build`: an object that gives them when called, here, right before the
record is written (a preview record picks its samples then, see preview_offers.py).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from . import records
from .records import SEP
from .ring import WORDSUM_MIN, RecordType, RingWriter

MAX_QUEUE = 256  # records waiting to be written (device copies in flight included)
POLL_PENDING = 0.001  # how often to look again at a record whose device copy is still running
WAKE_RECORDS = 8
WAKE_AFTER = 0.05  # seconds
WAKE_HELD = 16 << 20  # bytes of the user's inputs kept alive for previews not yet reduced
IDLE_WAIT = 0.25  # seconds: a record never waits longer for a wake
NUDGE_SETTLE = 0.0005  # seconds a nudged wake sleeps before it takes the GIL (the trainer enters backward)
# The GIL is handed back after each record while what is left to write is no more than a wake brings
# (SHORT_QUEUE records): a trainer that waits for it waits one record at most. With a longer backlog it is
# handed back every YIELD_AFTER seconds of writing instead: with the CPUs busy, a thread that gives the GIL
# away waits for its turn to take it back, and at one record a turn a backlog never shrank (beside two CPU
# hogs a trainer of 400 steps a second lost a fifth of its records, and more under SCHED_BATCH, whose wake
# waits for its turn).
SHORT_QUEUE = 2 * WAKE_RECORDS
YIELD_AFTER = 0.0005

Fields = list[tuple[str, Any]]  # (name, Staged | Lazy | Deferred)


class Build(Protocol):
    """A record's fields, made on the publisher's thread when it is written."""

    held: int  # bytes of the user's data it keeps alive until then
    fields: Fields  # the fields made so far (what a dropped record gives back)

    def ready(self) -> bool: ...  # noqa: D102 - device copies it waits for are done
    def __call__(self) -> Fields: ...  # noqa: D102 - the fields (the same ones if called again)


Content = Fields | Build


class Publisher:
    def __init__(self, ring: RingWriter, on_dropped: Callable[[int, Content], None]) -> None:
        self.ring = ring
        self.dropped = 0  # records dropped because this thread was behind (the ring counts its own)
        self.errors = 0
        self._reported: set[str] = set()
        self._on_dropped = on_dropped
        self._queue: deque[tuple[int, int, Content]] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()  # set when the queue has run empty (flush waits on it)
        self._submitted = 0  # records queued (the training thread counts them)
        self._done = 0  # records written or dropped here (this thread counts them)
        # Since the last wake (training thread only): records queued, when the first was, bytes held.
        self._unwoken = 0
        self._since = 0.0
        self._held = 0
        self.due = False  # a wake is due at the next nudge
        self._nudged = False  # the last wake came from a nudge
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="weightslab-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, rtype: int, step: int, fields: Content) -> None:
        if len(self._queue) >= MAX_QUEUE:
            self.dropped += 1
            self._on_dropped(rtype, fields)
            return
        self._queue.append((rtype, step, fields))
        self._submitted += 1
        now = time.monotonic()
        if not self._unwoken:
            self._since = now
        self._unwoken += 1
        if isinstance(fields, list):
            if rtype == RecordType.PREVIEW:
                self._held += sum(getattr(value, "held", 0) for _, value in fields)
        else:
            self._held += fields.held
        if self._held >= WAKE_HELD or self._unwoken >= 2 * WAKE_RECORDS or now - self._since >= 2 * WAKE_AFTER:
            self.wake()
        elif self._unwoken >= WAKE_RECORDS or now - self._since >= WAKE_AFTER or rtype == RecordType.PREVIEW:
            self.due = True

    def nudge(self) -> None:
        """The training thread is about to run torch code without the GIL (backward): wake if due."""
        if self.due:
            self._nudged = True
            self.wake()

    def wake(self) -> None:
        """Have the thread write what is queued now (training thread)."""
        self.due = False
        self._unwoken = 0
        self._held = 0
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait (bounded) until everything submitted so far is in the ring (or dropped)."""
        target = self._submitted
        deadline = time.monotonic() + timeout
        while self._done < target:
            self._idle.clear()
            if self._done >= target:
                break
            self.wake()
            if not self._idle.wait(max(0.0, deadline - time.monotonic())):
                return self._done >= target
        return True

    def close(self, timeout: float) -> None:
        self.flush(timeout)
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        yield_on_wake()
        pending = False
        while not (self._stopping and not self._queue):
            self._wake.wait(POLL_PENDING if pending else IDLE_WAIT)
            self._wake.clear()
            if self._nudged:
                self._nudged = False
                time.sleep(NUDGE_SETTLE)  # the trainer is on its way into backward: no GIL taken from it
            try:
                pending = self._drain()
            except Exception:  # noqa: BLE001 - a record that cannot be written is dropped, the thread lives
                if self._queue:
                    rtype, _, fields = self._queue.popleft()
                    self._done += 1
                    self.dropped += 1
                    self._on_dropped(rtype, fields)
                pending = bool(self._queue)
            if not self._queue:
                self._idle.set()
            if self._stopping and pending:
                break  # device copies that never finish do not hold the exit

    def _drain(self) -> bool:
        """Write what is ready, in order; True if the head still waits for a device copy."""
        held_since = time.perf_counter()
        while self._queue:
            rtype, step, fields = self._queue[0]
            if not (fields.ready() if not isinstance(fields, list) else all(value.ready() for _, value in fields)):
                return True
            self._queue.popleft()
            self._write(rtype, step, fields)
            self._done += 1
            left = len(self._queue)
            if left and (left <= SHORT_QUEUE or time.perf_counter() - held_since >= YIELD_AFTER):
                time.sleep(0)  # hand the GIL back (with nothing left, the wait for a wake gives it back)
                held_since = time.perf_counter()
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

    def _write(self, rtype: int, step: int, content: Content) -> None:
        fields = content if isinstance(content, list) else content()
        if not fields:
            return  # a built record with nothing in it (its samples had been sent already)
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


def yield_on_wake() -> bool:
    """Put the calling thread under SCHED_BATCH (no wake-up preemption of the thread on the core it wakes
    on); False where the OS has no such policy or refuses it (the thread runs as it did)."""
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:
        return False
    try:
        os.sched_setscheduler(0, batch, os.sched_param(0))  # 0: the calling thread (Linux)
    except OSError:
        return False
    return True
