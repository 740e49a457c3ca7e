"""The CLI inspection server: one command per line in, one JSON object per line out.

Served two ways, one command set:
- on the gRPC server itself, as the method `/weightslabd.Cli/Execute` (a UTF-8 line in, a JSON line
  out), when CLI_PORT equals GRPC_BACKEND_PORT (the default): same port, TLS, tokens and audit log;
- as a plain TCP line server on CLI_HOST:CLI_PORT when the ports differ. Bound to loopback it asks no
  credential; otherwise the first line must be `auth <token>` (one of the gRPC tokens).
Every command goes through the same servicer paths as the Studio's edits (journal first).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import shlex
import socketserver
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import structlog

from weightslabd.api.servicer import ExperimentServicer, hparam_descs
from weightslabd.security.audit import AuditLog
from weightslabd.store.run import Run

log = structlog.get_logger("weightslabd.cli")
CLI_METHOD = "/weightslabd.Cli/Execute"
HELP = {
    "help": "this list",
    "status": "the current run: name, step, state, splits, curves",
    "hp": "the hyperparameters as the daemon holds them",
    "hp set KEY=VALUE ...": "change hyperparameters (learning_rate, batch_size, training_steps_to_do, ...)",
    "pause / resume": "stop or restart training at the next step boundary",
    "samples SPLIT [SIGNAL] [N]": "the N samples (default 10) with the highest last SIGNAL (default: the first)",
    "tag SPLIT TAG ID...": "add TAG to samples; `untag SPLIT TAG ID...` removes it",
    "discard SPLIT ID... / restore SPLIT ID...": "take samples out of the training loop, or bring them back",
}


class CliCommands:
    def __init__(self, servicer: ExperimentServicer) -> None:
        self.servicer = servicer

    def execute(self, line: str) -> dict[str, Any]:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return {"ok": False, "error": f"cannot parse the line: {exc}"}
        if not words:
            return {"ok": False, "error": "empty command; try `help`"}
        name, args = words[0].lower(), words[1:]
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown command {name!r}; try `help`"}
        if name != "help" and self.servicer.registry.current() is None:
            return {"ok": False, "error": "no training run has attached to weightslabd yet"}
        try:
            return dict(handler(args))
        except (ValueError, IndexError) as exc:
            return {"ok": False, "error": str(exc) or f"bad arguments to {name}; try `help`"}

    def _run(self) -> Run:
        run = self.servicer.registry.current()
        assert run is not None
        return run

    @staticmethod
    def _reply(response: Any) -> dict[str, Any]:
        return {"ok": bool(response.success), "message": response.message}

    def cmd_help(self, args: list[str]) -> dict[str, Any]:
        return {"ok": True, "commands": HELP}

    def cmd_status(self, args: list[str]) -> dict[str, Any]:
        run = self._run()
        total, in_loop, denied = run.samples.counts()
        return {"ok": True, "run": run.run_id, "name": run.manifest.get("run_name"), "step": run.step,
                "state": run.manifest.get("status"), "paused": run.paused, "dropped": run.dropped,
                "splits": {n: t.size for n, t in run.samples.splits.items()}, "samples": total,
                "in_loop": in_loop, "discarded": denied, "curves": run.history.names(),
                "previews": run.preview_cache.stats()}

    def cmd_hp(self, args: list[str]) -> dict[str, Any]:
        run = self._run()
        if args and args[0] == "set":
            values = dict(_assignment(a) for a in args[1:])
            if not values:
                raise ValueError("hp set needs KEY=VALUE pairs")
            return self._reply(self.servicer.set_hparams(run, values))
        return {"ok": True, "hyperparameters": {d.name: (d.string_value or d.numerical_value)
                                                for d in hparam_descs(run)}}

    def cmd_pause(self, args: list[str]) -> dict[str, Any]:
        return self._reply(self.servicer.set_hparams(self._run(), {"is_training": False}))

    def cmd_resume(self, args: list[str]) -> dict[str, Any]:
        return self._reply(self.servicer.set_hparams(self._run(), {"is_training": True}))

    def cmd_samples(self, args: list[str]) -> dict[str, Any]:
        run = self._run()
        table = run.samples.get(args[0]) if args else None
        if table is None:
            raise ValueError(f"name a split: {', '.join(run.samples.splits) or 'none yet'}")
        signal = args[1] if len(args) > 1 else next(iter(table.signals), None)
        count = int(args[2]) if len(args) > 2 else 10
        if signal is None or signal not in table.signals:
            raise ValueError(f"name a signal: {', '.join(table.signals) or 'none yet'}")
        values = table.signals[signal]
        order = np.argsort(np.where(np.isnan(values), -np.inf, values))[::-1][:count]
        return {"ok": True, "split": table.name, "signal": signal, "samples": [
            {"id": int(i), signal: _num(values[i]), "label": _num(table.label[i]),
             "prediction": _num(table.prediction[i]), "encounters": int(table.encounters[i]),
             "discarded": bool(table.denied[i]), "tags": table.tags_of(int(i))} for i in order]}

    def cmd_tag(self, args: list[str]) -> dict[str, Any]:
        return self._tags(args, "add")

    def cmd_untag(self, args: list[str]) -> dict[str, Any]:
        return self._tags(args, "remove")

    def _tags(self, args: list[str], mode: str) -> dict[str, Any]:
        split, tag, ids = args[0], args[1], [int(i) for i in args[2:]]
        if not ids:
            raise ValueError("name at least one sample id")
        return self._reply(self.servicer.edit_tags(self._run(), split, ids, [tag], mode))

    def cmd_discard(self, args: list[str]) -> dict[str, Any]:
        return self._reply(self.servicer.deny(self._run(), args[0], [int(i) for i in args[1:]], True))

    def cmd_restore(self, args: list[str]) -> dict[str, Any]:
        return self._reply(self.servicer.deny(self._run(), args[0], [int(i) for i in args[1:]], False))


def _assignment(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    if raw.lower() in ("true", "false"):
        return key, raw.lower() == "true"
    for kind in (int, float):
        try:
            return key, kind(raw)
        except ValueError:
            pass
    return key, raw


def _num(value: Any) -> float | None:
    return None if np.isnan(value) else float(value)


def grpc_handler(commands: CliCommands) -> grpc.GenericRpcHandler:
    """`/weightslabd.Cli/Execute` on the gRPC server: the line in, the JSON reply out."""

    def execute(line: str, context: grpc.ServicerContext) -> str:
        return json.dumps(commands.execute(line))

    return grpc.method_handlers_generic_handler("weightslabd.Cli", {
        "Execute": grpc.unary_unary_rpc_method_handler(
            execute, request_deserializer=lambda b: b.decode("utf-8", "replace"),
            response_serializer=lambda s: s.encode()),
    })


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LineServer:
    """The CLI on its own TCP port (CLI_HOST:CLI_PORT, when it differs from the gRPC port)."""

    def __init__(self, host: str, port: int, commands: CliCommands, tokens: Sequence[str], audit: AuditLog,
                 folder: Callable[[], Path | None]) -> None:
        need_token = not is_loopback(host)
        if need_token and not tokens:
            raise ValueError(f"CLI_HOST={host} is not loopback: set GRPC_AUTH_TOKEN(S) so the CLI can "
                             "authenticate, or bind it to 127.0.0.1")
        secrets = [t.encode() for t in tokens]

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                peer = f"{self.client_address[0]}:{self.client_address[1]}"
                credential = "loopback" if not need_token else "none"
                for raw in self.rfile:
                    line = raw.decode("utf-8", "replace").strip()
                    if need_token and credential in ("none", "invalid"):
                        credential = _check_auth(line, secrets)
                        reply = ({"ok": True, "message": "authenticated"} if credential.startswith("token")
                                 else {"ok": False, "error": "first send `auth <token>`"})
                        audit_line = "auth ****"
                    else:
                        reply = commands.execute(line)
                        audit_line = line
                    audit.record(folder(), {
                        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                        "action": "cli", "peer": peer, "client_cert": "", "credential": credential,
                        "request": audit_line[:2000], "outcome": "OK" if reply.get("ok") else "REFUSED",
                        "detail": str(reply.get("message") or reply.get("error") or "")[:500]})
                    self.wfile.write((json.dumps(reply) + "\n").encode())

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="cli", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _check_auth(line: str, secrets: list[bytes]) -> str:
    word, _, token = line.partition(" ")
    if word != "auth" or not token:
        return "none"
    given = token.strip().encode()
    matched = [hmac.compare_digest(given, s) for s in secrets]  # compare with all: timing tells nothing
    return f"token#{matched.index(True) + 1}" if any(matched) else "invalid"
