"""The watchdog: a thread that polls the daemon's state locks and every in-flight RPC.

- A lock held longer than GRPC_WATCHDOG_STUCK_SECONDS has its holder interrupted: WatchdogInterrupt
  (a BaseException) is raised in that thread at its next Python instruction, so `with`/`finally`
  release the lock. A thread blocked inside C (an fsync) is interrupted when it comes back.
- An RPC that made no progress for that long is stuck; GRPC_WATCHDOG_RESTART_THRESHOLD consecutive
  polls with a stuck RPC restart the gRPC server (clients reconnect), or, with
  GRPC_WATCHDOG_EXIT_ON_STUCK, exit the process for its supervisor to restart.
It only ever touches the daemon's own threads: the trainer is another process.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from weightslabd.ops.logs import log_watchdog
from weightslabd.security.peers import PeerTable, peer_address
from weightslabd.store.locks import WatchdogInterrupt, WatchedLock

log = structlog.get_logger("weightslabd.ops.watchdog")


def interrupt(thread_id: int) -> bool:
    """Raise WatchdogInterrupt in another thread of this process."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(WatchdogInterrupt))
    return int(done) == 1


@dataclass
class Call:
    method: str
    peer: str
    started: float
    progress: float

    def touch(self) -> None:
        self.progress = time.monotonic()


_current: ContextVar[Call | None] = ContextVar("weightslabd_call", default=None)


def touch() -> None:
    """A long-running handler (a stream waiting for news) says it is alive, not stuck."""
    call = _current.get()
    if call is not None:
        call.touch()


class InflightCalls(grpc.ServerInterceptor):
    """Knows every RPC in flight and when each last made progress (a stream: its last message)."""

    def __init__(self, peers: PeerTable | None = None) -> None:
        self._calls: dict[int, Call] = {}
        self._ids = itertools.count()
        self.peers = peers  # names the client behind the TLS front

    def stuck(self, now: float, seconds: float) -> list[Call]:
        return sorted((c for c in list(self._calls.values()) if now - c.progress > seconds),
                      key=lambda c: c.progress)

    @contextmanager
    def _tracked(self, method: str, context: grpc.ServicerContext) -> Iterator[Call]:
        now = time.monotonic()
        call = Call(method, peer_address(context, self.peers), now, now)
        key = next(self._ids)
        self._calls[key] = call
        token = _current.set(call)
        try:
            yield call
        except WatchdogInterrupt:
            context.abort(grpc.StatusCode.ABORTED, "interrupted by the watchdog: it held daemon state too long")
        finally:
            _current.reset(token)
            self._calls.pop(key, None)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                with self._tracked(method, context):
                    return inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with self._tracked(method, context) as call:
                    for item in inner_us(request, context):
                        call.touch()
                        yield item

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                        handler.response_serializer)
        return handler


class Watchdog:
    def __init__(self, *, stuck_seconds: float, interval: float, restart_threshold: int, details_limit: int,
                 exit_on_stuck: bool, locks: Callable[[], Iterable[WatchedLock]], calls: InflightCalls,
                 restart: Callable[[], None], exit_process: Callable[[int], None] = os._exit) -> None:
        self.stuck_seconds = stuck_seconds
        self.interval = interval
        self.restart_threshold = restart_threshold
        self.details_limit = details_limit
        self.exit_on_stuck = exit_on_stuck
        self._locks = locks
        self._calls = calls
        self._restart = restart
        self._exit = exit_process
        self.unhealthy_polls = 0
        self.restarts = 0
        self.interrupts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def replace_calls(self, calls: InflightCalls) -> None:
        self._calls = calls  # a restarted server tracks its own calls

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the watchdog itself must not die
                log.error("watchdog poll failed", error=f"{type(exc).__name__}: {exc}")

    def poll(self) -> None:
        now = time.monotonic()
        for lock in list(self._locks()):
            holder, since = lock.holder, lock.since
            if holder is not None and now - since > self.stuck_seconds and holder != threading.get_ident():
                interrupted = interrupt(holder)
                self.interrupts += interrupted
                log_watchdog(log, "state lock held too long; holder interrupted", lock=lock.name, thread=holder,
                             held_s=round(now - since, 1), interrupted=interrupted)
        stuck = self._calls.stuck(now, self.stuck_seconds)
        if not stuck:
            self.unhealthy_polls = 0
            return
        self.unhealthy_polls += 1
        log_watchdog(log, "stuck RPCs", count=len(stuck), unhealthy_polls=self.unhealthy_polls,
                     threshold=self.restart_threshold,
                     rpcs=[f"{c.method} from {c.peer}, {now - c.progress:.1f}s" for c in stuck[: self.details_limit]])
        if self.unhealthy_polls < self.restart_threshold:
            return
        self.unhealthy_polls = 0
        if self.exit_on_stuck:
            log_watchdog(log, "exiting for the supervisor to restart weightslabd")
            self._exit(1)
            return
        log_watchdog(log, "restarting the gRPC server")
        self.restarts += 1
        self._restart()
