"""Ingest: one thread per attached ring turns its records into run state.

A record is persisted and applied before the read position moves past it, so a daemon killed at
any moment re-reads at most the record in hand (and `Run.apply_record` drops that duplicate).
"""

from __future__ import annotations

import threading
from typing import Protocol

import structlog

from weightslab_shim import ring
from weightslab_shim.records import MalformedPayload
from weightslab_shim.ring import CorruptRecord, RingReader
from weightslabd.store.run import Run

log = structlog.get_logger("weightslabd.ipc.ingest")
# After an empty look the thread waits IDLE_MIN, doubling up to IDLE_MAX while the ring stays empty.
# Each wake costs ~30-110 us of CPU on a small VM whatever it finds (the timed wait itself), so the
# first wait is already long: the shim's publisher writes in bursts (every 8 records or 50 ms), a
# 20 ms look finds most of a burst at once, and a full ring is never near (a burst is a few hundred KB
# against WEIGHTSLAB_RING_MB). Records waiting are read back to back with no wait in between.
IDLE_MIN = 0.02
IDLE_MAX = 0.1
BATCH = 256


class RecordSink(Protocol):
    """Where a ring's records go: a run, or a forwarding node's frames for the job's home (nodes/)."""

    dropped: int

    def apply_record(self, rtype: int, step: int, payload: memoryview, position: int) -> bool: ...


class RingDrain:
    def __init__(self, reader: RingReader, run: Run | RecordSink, sender: str, base: int = 0) -> None:
        self.reader = reader
        self.run = run
        self.base = base  # added to ring positions: a resumed run's new ring continues after its old records
        self.sender = sender  # who wrote the ring, for error lines
        self.corrupt = 0
        self.store_failing = False
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one drainer at a time: the thread, or a final drain
        self._thread = threading.Thread(target=self._loop, name=f"ingest-{reader.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        idle = IDLE_MIN
        while not self._stop.is_set():
            n = self.drain_once()
            if n:
                idle = IDLE_MIN
            else:
                self._stop.wait(idle)
                idle = min(idle * 2, IDLE_MAX)

    def drain_once(self, limit: int = BATCH) -> int:
        with self._lock:
            n = 0
            try:
                for rec in self.reader.records(limit):
                    try:
                        self.run.apply_record(rec.type, rec.step, rec.payload, rec.position + self.base)
                    except OSError as exc:
                        # A full disk: leave the record in the ring (the trainer drops and counts what no
                        # longer fits) and try again; nothing stored, nothing lost beyond that.
                        if not self.store_failing:
                            log.error("cannot store ring records; retrying", sender=self.sender,
                                      error=exc.strerror or str(exc))
                        self.store_failing = True
                        return n
                    except Exception as exc:  # noqa: BLE001 - one bad record must not stop this ring
                        self.corrupt += 1
                        log.error("malformed ring record skipped", sender=self.sender, position=rec.position,
                                  error=f"{type(exc).__name__}: {exc}" if not isinstance(exc, MalformedPayload)
                                  else str(exc))
                    if self.store_failing:
                        self.store_failing = False
                        log.info("storing ring records again", sender=self.sender)
                    self.reader.advance()
                    n += 1
            except CorruptRecord as exc:
                lost = self.reader.skip(exc.position)
                self.corrupt += 1
                log.error("corrupt ring record skipped", sender=self.sender, position=exc.position,
                          reason=exc.reason, bytes_lost=lost)
                n += 1
            dropped, _ = self.reader.dropped
            self.run.dropped = dropped
            return n

    def drain_all(self) -> int:
        total = 0
        while True:
            n = self.drain_once(1 << 30)
            total += n
            if n == 0 or self.reader.pending() == 0 or self.store_failing:
                return total

    def stop(self, *, final_drain: bool, unlink: bool) -> bool:
        """Stop reading; True when the ring was unlinked."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if final_drain:
            self.drain_all()
        if unlink and self.store_failing and self.reader.pending():
            unlink = False  # the disk refused what is left: a later start drains it (orphan recovery)
            log.error("ring kept for a later drain", sender=self.sender, pending_bytes=self.reader.pending())
        self.reader.close()
        if not unlink:
            return False
        try:
            ring.unlink(self.reader.name)
        except OSError as exc:  # the OS refused: logged, never raised
            log.error("ring segment could not be removed", sender=self.sender, ring=self.reader.name,
                      error=exc.strerror or str(exc))
            return False
        return True
