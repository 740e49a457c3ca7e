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
import errno
import io
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf import text_format
from google.protobuf.message import Message

from weightslabd.security import refusals
from weightslabd.security.auth import credential_label
from weightslabd.security.peers import PeerTable, identify

log = structlog.get_logger("weightslabd.security.audit")
FIELDS = ("time", "action", "peer", "client_cert", "credential", "request", "outcome", "detail")
QUEUE_LIMIT = 10_000
REQUEST_LIMIT = 2000  # characters of the request kept in a line
SECRET_FIELDS = frozenset({"api_key"})
TLS_HANDSHAKE = "tls_handshake"  # the action of a refused TLS handshake (tls_front.py)
WEB_PEER = "grpc_web_peer"  # a gRPC-Web call refused because another local user made it (grpcweb.py)
CLI_LINE = "cli"  # a line of the CLI line server (cli_server.py)
QUIET_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


RESERVE_BYTES = 256 * 1024  # allocated past the end of each audit file, so an edit's line always has room
RESERVE_LOW = 64 * 1024  # an edit is refused when the room left past the end cannot be kept above this
RESERVE_FLOOR = 32 * 1024  # lines of reads and refusals are dropped (counted) rather than eat below this
EDIT_WAIT = 5.0  # seconds an edit's reply waits for its audit line to be written
FALLOC_FL_KEEP_SIZE = 1
_Item = tuple[Path, dict[str, str], "_Pending | None"]


class _Pending:
    """An edit's line: the RPC thread waits until the writer has written it (or failed to)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


def _fallocate(fd: int, offset: int, length: int) -> None:
    """Allocates [offset, offset+length) without changing the file's size (Linux); OSError when it cannot."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    call = libc.fallocate
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if call(fd, FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class AuditLog:
    """The writer of every audit file. Each file keeps RESERVE_BYTES allocated past its end (fallocate,
    size unchanged): an edit first makes sure that room is there (`reserve`, else the edit is refused), and
    its reply waits for its line (`record(..., wait=True)`), so an acknowledged edit is always audited, even
    on a disk that filled up meanwhile."""

    def __init__(self, fmt: str, fallback_dir: Path) -> None:
        self.format = fmt
        self.fallback_dir = fallback_dir  # for calls made while no run exists
        self.dropped = 0
        self._queue: queue.Queue[_Item | None] = queue.Queue(QUEUE_LIMIT)
        self._fds: dict[Path, int] = {}
        self._fds_lock = threading.Lock()
        self._failures = 0  # lines not written since the last "audit line not written" log line
        self._failure_logged = 0.0
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        if fmt != "none":
            self._thread.start()

    @property
    def filename(self) -> str:
        return "audit.jsonl" if self.format == "json" else "audit.csv"

    def path(self, folder: Path | None) -> Path:
        return (folder or self.fallback_dir) / self.filename

    def reserve(self, folder: Path | None) -> None:
        """Makes sure the audit file has room for an edit's line; OSError (nothing changed) when the disk
        cannot give it, and then the edit must be refused."""
        if self.format == "none":
            return
        with self._fds_lock:
            fd = self._fd(self.path(folder))
            st = os.fstat(fd)
            if _room(st) >= RESERVE_LOW:
                return
            try:
                _fallocate(fd, st.st_size, RESERVE_BYTES)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    return  # a file system without fallocate: best effort, the line is still written first
                _fallocate(fd, st.st_size, RESERVE_LOW)  # what a nearly full disk can still give, or OSError

    def record(self, folder: Path | None, event: dict[str, str], *, wait: bool = False) -> bool:
        """Queues the line; with `wait` (an edit's line), returns once it is written: False if it was not."""
        if self.format == "none":
            return True
        pending = _Pending() if wait else None
        try:
            if pending is None:
                self._queue.put_nowait((self.path(folder), event, None))
            else:
                self._queue.put((self.path(folder), event, pending), timeout=EDIT_WAIT)
        except queue.Full:
            self.dropped += 1
            return False
        if pending is None:
            return True
        pending.done.wait(EDIT_WAIT)
        return pending.ok

    def close(self, timeout: float = 5.0) -> None:
        if self.format == "none":
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        with self._fds_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            path, event, pending = item
            try:
                line = self._line(event)
                with self._fds_lock:
                    fd = self._fd(path)
                    st = os.fstat(fd)
                    if pending is None and _room(st) - len(line) < RESERVE_FLOOR:
                        self._keep_room(fd)  # a read's or a refusal's line never eats the edits' room
                    if os.write(fd, line) < len(line):  # a full disk took part of it: no torn line stays
                        os.ftruncate(fd, st.st_size)
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                if pending is not None:
                    pending.ok = True
            except OSError as exc:
                self.dropped += 1
                self._failed(path, exc)
            finally:
                if pending is not None:
                    pending.done.set()

    def _keep_room(self, fd: int) -> None:
        st = os.fstat(fd)
        try:
            _fallocate(fd, st.st_size, RESERVE_BYTES)
            return
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                return  # no fallocate here: nothing is reserved, nothing to keep
        if _room(st) >= 4096:  # preallocated room, kept for edits: this line is dropped
            raise OSError(errno.ENOSPC, "No space left on device (the rest is kept for edits' lines)")

    def _failed(self, path: Path, exc: OSError) -> None:
        """One log line per 10 s at most, with how many lines it stands for: a full disk floods nothing."""
        self._failures += 1
        now = time.monotonic()
        if now - self._failure_logged >= 10.0:
            log.error("audit line not written", file=str(path), error=exc.strerror or str(exc),
                      lines=self._failures)
            self._failures, self._failure_logged = 0, now

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if new and self.format == "csv":
                os.write(fd, _csv_line(dict(zip(FIELDS, FIELDS, strict=True))))
            self._fds[path] = fd
            with contextlib.suppress(OSError):
                _fallocate(fd, os.fstat(fd).st_size, RESERVE_BYTES)  # room for edits, taken while there is some
        return fd

    def _line(self, event: dict[str, str]) -> bytes:
        if self.format == "json":
            return (json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        return _csv_line(event)


EDIT_COMMANDS = ("hyper_parameter_change", "deny_samples_operation", "deny_eval_samples_operation",
                 "remove_from_denylist_operation", "remove_eval_from_denylist_operation",
                 "save_checkpoint_operation", "load_checkpoint_operation", "plot_note_operation")
CLI_EDITS = frozenset({"pause", "resume", "tag", "untag", "discard", "restore", "checkpoint"})
# RPCs that change what the daemon keeps of runs (checkpoints restored, names, notes)
RUN_EDITS = frozenset({"/ExperimentService/RestoreCheckpoint", "/ExperimentService/RenameExperimentRun",
                       "/ExperimentService/SetExperimentRunNotes"})
EXPERIMENT_COMMAND = "/ExperimentService/ExperimentCommand"
EDIT_DATA_SAMPLE = "/ExperimentService/EditDataSample"
APPLY_DATA_QUERY = "/ExperimentService/ApplyDataQuery"  # natural language: the agent may edit (agent/executor.py)
CLI_METHOD = "/weightslabd.Cli/Execute"


def is_cli_edit(line: str) -> bool:
    words = line.lower().split()
    return bool(words) and (words[0] in CLI_EDITS or words[:2] == ["hp", "set"])


def is_edit(method: str, request: Any) -> bool:
    """Whether a call may change the run (an edit the journal keeps): its audit line must be written."""
    if method == EDIT_DATA_SAMPLE or method in RUN_EDITS:
        return True
    if method == APPLY_DATA_QUERY and isinstance(request, Message):  # its line keeps the prompt and the outcome
        return bool(getattr(request, "is_natural_language", False)) and bool(getattr(request, "query", "").strip())
    if method == EXPERIMENT_COMMAND and isinstance(request, Message):
        return any(request.HasField(name) for name in EDIT_COMMANDS
                   if name in request.DESCRIPTOR.fields_by_name)
    return method == CLI_METHOD and isinstance(request, str) and is_cli_edit(request)


def unaudited_edit_message(exc: OSError) -> str:
    return f"edit not saved, nothing changed: {exc.strerror or exc}"


def _edit_refusal(method: str, exc: OSError) -> Any:
    """The method's own refusal for an edit whose audit line has no room (None: abort the call)."""
    from weightslabd.proto import experiment_service_pb2 as pb

    message = unaudited_edit_message(exc)
    if method == EXPERIMENT_COMMAND:
        return pb.CommandResponse(success=False, message=message)
    if method == EDIT_DATA_SAMPLE:
        return pb.DataEditsResponse(success=False, message=message)
    if method == APPLY_DATA_QUERY:
        return pb.DataQueryResponse(success=False, message=message)
    if method == CLI_METHOD:
        return json.dumps({"ok": False, "error": message})
    return None


def _room(st: os.stat_result) -> int:
    """Bytes allocated past the end of the file."""
    return int(st.st_blocks) * 512 - st.st_size


def _csv_line(event: dict[str, str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([event.get(f, "") for f in FIELDS])
    return out.getvalue().encode()


def mask_cli_line(line: str, secrets: Sequence[str] = ()) -> str:
    """A CLI line for the audit log: `auth <token>` as `auth ****`, and any configured token masked."""
    words = line.split(maxsplit=1)
    if words and words[0].lower() == "auth":
        return "auth ****"
    for secret in secrets:
        if secret:
            line = line.replace(secret, "****")
    return line[:REQUEST_LIMIT]


def describe_request(request: Any, secrets: Sequence[str] = ()) -> str:
    """The request as one bounded line of protobuf text, secret fields (and configured tokens) masked."""
    if isinstance(request, str):  # a CLI line
        return mask_cli_line(request, secrets)
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
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
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


def handshake_event(peer: str, reason: str, count: int = 1) -> dict[str, str]:
    """A connection the TLS front refused before any call existed: no RPC, no token, only who and why.
    `count` > 1: a summary of that many refusals from this peer for this reason (refusals.py)."""
    return refusal_event(TLS_HANDSHAKE, peer, reason, count)


def refusal_event(action: str, peer: str, reason: str, count: int = 1, credential: str = "") -> dict[str, str]:
    """A refusal before any gRPC call existed; a summary (count > 1) says how many it stands for."""
    event = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "action": action,
             "peer": peer, "client_cert": "", "credential": credential, "request": "", "outcome": "REFUSED",
             "detail": reason[:500]}
    if count > 1:
        event["detail"] = f"{reason[:400]} (x{count} from this address within {refusals.INTERVAL:g} s)"
        event["count"] = str(count)
    return event


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
                edit = is_edit(action, request)
                if edit:
                    try:
                        self.audit.reserve(self.folder())
                    except OSError as exc:  # no room for its audit line: refused before anything changed
                        log.error("edit refused: its audit line cannot be written", method=action,
                                  error=exc.strerror or str(exc))
                        refusal = _edit_refusal(action, exc)
                        if refusal is None:
                            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, unaudited_edit_message(exc))
                        return refusal
                with self._audited(action, credential, request, context, edit) as result:
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
    def _audited(self, action: str, credential: str, request: Any, context: grpc.ServicerContext,
                 edit: bool = False) -> Iterator[dict[str, Any]]:
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
                "credential": credential, "request": describe_request(request, self.tokens),
                "outcome": outcome, "detail": detail[:500],
            }, wait=edit)  # an edit's reply leaves only once its line is written
