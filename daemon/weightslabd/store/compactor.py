"""The background thread that moves a run's full history chunks to Parquet, so its memory stays flat:
the per-sample history's (sample_signals.py, parquet_history.py) and the step curves' (history.py,
parquet_curves.py).

A `SignalStore` tells it when a chunk fills (no append will touch that chunk again); the thread then
makes signals.log durable (a file on disk never holds a value the log could still lose), writes each
full chunk's file atomically (parquet_history.py) and swaps the chunk in memory for its file. A crash at
any point loses nothing: before the rename there is only a temporary file, removed at the next open;
after it, a file no snapshot names yet is found again by the replay that rebuilds its chunk (the file
is named by its content). Snapshots written afterwards name the files instead of copying the values.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from weightslabd.store import parquet_curves
from weightslabd.store.history import SignalHistory
from weightslabd.store.parquet_history import DIR as HISTORY_DIR
from weightslabd.store.parquet_history import pause_point, remove_temporaries
from weightslabd.store.sample_signals import CHUNK_MAX, SampleSignals

log = structlog.get_logger("weightslabd.store.compactor")
CHUNK_ENV = "WL_TEST_HISTORY_CHUNK_VALUES"  # test hook: smaller chunks, so a test fills some quickly


def chunk_values() -> int:
    """Values in a full-size chunk: CHUNK_MAX, or the test hook's."""
    try:
        return max(1, int(os.environ.get(CHUNK_ENV, "") or CHUNK_MAX))
    except ValueError:
        return CHUNK_MAX


def _return_free_memory() -> None:
    """Hand the dropped chunks' pages back (glibc keeps freed heap memory, and a chunk is tens of MB)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class HistoryCompactor:
    def __init__(self, folder: Path, name: str, signals: Callable[[], SampleSignals],
                 before: Callable[[], object], curves: Callable[[], SignalHistory | None] = lambda: None) -> None:
        self.folder = folder
        self._name = name
        self._signals = signals  # the run's current SampleSignals (a snapshot's adoption replaces it)
        self._curves = curves  # the run's current SignalHistory (likewise), if its curves go to disk too
        self._before = before  # make signals.log durable
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._failing = False
        self.moved = 0  # chunks moved to disk by this process
        removed = remove_temporaries(folder) + parquet_curves.remove_temporaries(folder)
        if removed:
            log.info("half-written history files of a crash removed", run=name, files=removed)

    def kick(self) -> None:
        """A chunk filled: compact soon (starts the thread at the first call)."""
        if self._stopping:
            return
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=f"compactor-{self._name}", daemon=True)
                    self._thread.start()
        self._wake.set()

    def kick_if_due(self) -> None:
        """After an open: full chunks the snapshot brought back in memory go to disk too."""
        if self._due():
            self.kick()

    def _due(self) -> bool:
        curves = self._curves()
        return any(s.hot_full_chunks() for s in self._signals().stores()) or bool(curves and curves.hot_full_chunks())

    def compact_now(self) -> int:
        """Move every full chunk to disk, on the caller's thread; how many (raises OSError on failure)."""
        if not self._due():
            return 0
        self._before()
        moved = sum(s.compact(self.folder, self._swapped) for s in self._signals().stores())
        curves = self._curves()
        if curves is not None:
            moved += curves.compact(self.folder, self._curve_swapped)
        self.moved += moved
        if moved:
            _return_free_memory()
        return moved

    def _swapped(self) -> None:
        pause_point("swapped", self.folder / HISTORY_DIR)

    def _curve_swapped(self) -> None:
        pause_point("curve-swapped", self.folder / parquet_curves.DIR)

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.compact_now()
                if self._failing:
                    log.info("history compaction works again", run=self._name)
                self._failing = False
            except Exception as exc:  # noqa: BLE001 - a full disk: chunks stay in memory, the log has them
                if not self._failing:
                    log.error("history compaction failed; chunks stay in memory", run=self._name,
                              error=f"{type(exc).__name__}: {exc}"[:300])
                self._failing = True

    def stop(self, finish: bool = False) -> None:
        """Stop the thread, letting a compaction in progress finish; with `finish`, then move what is
        left (the run is closing: the snapshot it writes next names every full chunk's file)."""
        self._stopping = True
        self._wake.set()
        with self._start_lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if finish:
            try:
                self.compact_now()
            except Exception as exc:  # noqa: BLE001 - the log has every value: the next open compacts
                log.error("history compaction failed at close", run=self._name,
                          error=f"{type(exc).__name__}: {exc}"[:300])
