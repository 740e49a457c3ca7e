"""The audit log: every user interaction through gRPC, one line each, one file per experiment.

    <run folder>/audit.jsonl   (AUDIT_LOG_FORMAT=json)   or   audit.csv   (csv)   or nothing (none)

A line says when (UTC), what (the RPC), who (peer, client certificate, which token — never the
token), what it asked (the request, secrets masked, bounded) and the outcome (status code, and the
reply's success/message where it has them). RPC threads only enqueue; a writer thread appends each
line with one write(2) to a file opened O_APPEND, so a crash keeps every complete line, and a slow
disk costs an RPC nothing. A full queue drops the line and counts it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf import text_format
from google.protobuf.message import Message

from weightslabd.security.auth import credential_label
from weightslabd.security.peers import PeerTable, identify

log = structlog.get_logger("weightslabd.security.audit")
FIELDS = ("time", "action", "peer", "client_cert", "credential", "request", "outcome", "detail")
QUEUE_LIMIT = 10_000
REQUEST_LIMIT = 2000  # characters of the request kept in a line
SECRET_FIELDS = frozenset({"api_key"})
TLS_HANDSHAKE = "tls_handshake"  # the action of a refused TLS handshake (tls_front.py)
QUIET_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


class AuditLog:
    def __init__(self, fmt: str, fallback_dir: Path) -> None:
        self.format = fmt
        self.fallback_dir = fallback_dir  # for calls made while no run exists
        self.dropped = 0
        self._queue: queue.Queue[tuple[Path, dict[str, str]] | None] = queue.Queue(QUEUE_LIMIT)
        self._fds: dict[Path, int] = {}
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        if fmt != "none":
            self._thread.start()

    @property
    def filename(self) -> str:
        return "audit.jsonl" if self.format == "json" else "audit.csv"

    def record(self, folder: Path | None, event: dict[str, str]) -> None:
        if self.format == "none":
            return
        try:
            self._queue.put_nowait(((folder or self.fallback_dir) / self.filename, event))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        if self.format == "none":
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            path, event = item
            try:
                os.write(self._fd(path), self._line(event))
            except OSError as exc:
                self.dropped += 1
                log.error("audit line not written", file=str(path), error=exc.strerror or str(exc))

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if new and self.format == "csv":
                os.write(fd, _csv_line(dict(zip(FIELDS, FIELDS, strict=True))))
            self._fds[path] = fd
        return fd

    def _line(self, event: dict[str, str]) -> bytes:
        if self.format == "json":
            return (json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        return _csv_line(event)


def _csv_line(event: dict[str, str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([event.get(f, "") for f in FIELDS])
    return out.getvalue().encode()


def describe_request(request: Any) -> str:
    """The request as one bounded line of protobuf text, secret fields masked."""
    if isinstance(request, str):  # a CLI line
        return request[:REQUEST_LIMIT]
    if not isinstance(request, Message):
        return ""
    masked = request
    if any(f.name in SECRET_FIELDS for f, _ in request.ListFields()):
        masked = type(request)()
        masked.CopyFrom(request)
        for field in SECRET_FIELDS:
            if masked.DESCRIPTOR.fields_by_name.get(field) is not None and getattr(masked, field):
                setattr(masked, field, "****")
    text = text_format.MessageToString(masked, as_one_line=True)
    return text if len(text) <= REQUEST_LIMIT else text[:REQUEST_LIMIT] + "…"


def outcome_of(response: Any) -> tuple[str, str]:
    """A reply that says success=false is a refusal even with status OK: record it as such."""
    if isinstance(response, Message) and "success" in response.DESCRIPTOR.fields_by_name:
        message = str(getattr(response, "message", "") or getattr(response, "error_message", ""))
        return ("OK" if response.success else "REFUSED"), message
    return "OK", ""


def _text(value: str | bytes | None) -> str:
    """grpc hands status details back as bytes: the line shows the words, not a bytes literal."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def handshake_event(peer: str, reason: str) -> dict[str, str]:
    """A connection the TLS front refused before any call existed: no RPC, no token, only who and why."""
    return {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "action": TLS_HANDSHAKE,
            "peer": peer, "client_cert": "", "credential": "", "request": "", "outcome": "REFUSED",
            "detail": reason[:500]}


class AuditInterceptor(grpc.ServerInterceptor):
    """Outermost interceptor: it sees every call, the ones auth refuses included."""

    def __init__(self, audit: AuditLog, tokens: Sequence[str], folder: Callable[[], Path | None],
                 peers: PeerTable | None = None) -> None:
        self.audit = audit
        self.tokens = list(tokens)
        self.folder = folder
        self.peers = peers

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or self.audit.format == "none" or details.method in QUIET_METHODS:
            return handler
        credential = credential_label(details.invocation_metadata, self.tokens)
        action = details.method
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                with self._audited(action, credential, request, context) as result:
                    response = inner_uu(request, context)
                    result["response"] = response
                    return response

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with self._audited(action, credential, request, context) as result:
                    count = 0
                    for item in inner_us(request, context):
                        count += 1
                        yield item
                    result["detail"] = f"{count} messages"

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                        handler.response_serializer)
        return handler  # client- and bidi-streaming: none in this service

    @contextlib.contextmanager
    def _audited(self, action: str, credential: str, request: Any,
                 context: grpc.ServicerContext) -> Iterator[dict[str, Any]]:
        result: dict[str, Any] = {}
        outcome, detail = "OK", ""
        who = identify(context, self.peers)  # now: the front forgets a connection once it has closed
        try:
            yield result
            outcome, detail = outcome_of(result.get("response"))
            code = context.code() if hasattr(context, "code") else None
            if code is not None and code != grpc.StatusCode.OK:
                outcome, detail = code.name, _text(context.details())
        except grpc.RpcError:
            raise
        except Exception as exc:
            code = context.code() if hasattr(context, "code") else None
            outcome = code.name if code is not None and code != grpc.StatusCode.OK else "UNKNOWN"
            detail = _text(context.details()) if code is not None else f"{type(exc).__name__}"
            raise
        finally:
            detail = result.get("detail", detail)
            self.audit.record(self.folder(), {
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "action": action, "peer": who.address, "client_cert": who.client_cert,
                "credential": credential, "request": describe_request(request),
                "outcome": outcome, "detail": detail[:500],
            })
