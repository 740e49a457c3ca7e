"""The CLI inspection server: one command per line in, one JSON object per line out.

Served two ways, one command set:
- on the gRPC server itself, as the method `/weightslabd.Cli/Execute` (a UTF-8 line in, a JSON line
  out), when CLI_PORT equals GRPC_BACKEND_PORT (the default): same port, TLS, tokens and audit log;
- as a plain TCP line server on CLI_HOST:CLI_PORT when the ports differ, on loopback only (the boot refuses
  any other CLI_HOST). It serves the daemon's own user at once; another local user must first send
  `auth <token>` (one of the gRPC tokens), and failed attempts are throttled.
Every command goes through the same servicer paths as the Studio's edits (journal first).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
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
from google.protobuf.descriptor import FieldDescriptor

from weightslabd.api import runs_rpc
from weightslabd.api.grid import short_repr, split_tags
from weightslabd.api.servicer import HP_FIELDS, ExperimentServicer, hparam_descs
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.security import refusals
from weightslabd.security.audit import CLI_LINE, AuditLog, is_cli_edit, mask_cli_line, unaudited_edit_message
from weightslabd.security.loopback_uid import same_user
from weightslabd.security.peers import grpc_address
from weightslabd.security.refusals import RefusalAggregator, host_of
from weightslabd.security.throttle import CONNECTION_FAILURES, AuthThrottle
from weightslabd.store.run import Run

log = structlog.get_logger("weightslabd.cli")
CLI_METHOD = "/weightslabd.Cli/Execute"
HELP = {
    "help": "this list",
    "status": "the current run: name, step, state, splits, curves, a job's restarts",
    "hp": "the hyperparameters as the daemon holds them",
    "hp set KEY=VALUE ...": "change hyperparameters (learning_rate, batch_size, training_steps_to_do, ...)",
    "pause / resume": "stop or restart training at the next step boundary",
    "samples SPLIT [SIGNAL] [N]": "the N samples (default 10) with the highest last SIGNAL (default: the first)",
    "tag SPLIT TAG ID...": "add TAG to samples; `untag SPLIT TAG ID...` removes it",
    "discard SPLIT ID... / restore SPLIT ID...": "take samples out of the training loop, or bring them back",
    "eval SPLIT [--tags a,b] [--full] | eval status | eval cancel [REASON]":
        "evaluate a split (only samples with any of the tags; --full: discarded ones too), its progress, stop it",
    "checkpoint save | list | restore HASH[@STEP]": "write a checkpoint now, list the run's, or roll back to one",
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
        except Exception as exc:  # a bug must not drop the connection: the reply (and its audit) still go out
            log.exception("cli command failed", command=name)
            return {"ok": False, "error": f"{name} failed: {type(exc).__name__}"}

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
                "restarts": list(run.manifest.get("restarts") or ()),
                "splits": {n: t.size for n, t in run.samples.splits.items()}, "samples": total,
                "in_loop": in_loop, "discarded": denied, "curves": run.history.names(),
                "previews": run.preview_cache.stats(), "previews_at_rest": run.preview_store.stats()}

    def cmd_hp(self, args: list[str]) -> dict[str, Any]:
        run = self._run()
        if args and args[0] == "set":
            if not args[1:]:
                raise ValueError("hp set needs KEY=VALUE pairs")
            # The Studio's message, typed by its fields, through the Studio's path (validation included).
            hp = pb.HyperParameters(**dict(_assignment(a) for a in args[1:]))
            return self._reply(self.servicer.change_hparams(run, hp))
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
        split, text, ids = args[0], args[1], _ids(args[2:])
        if not ids:
            raise ValueError("name at least one sample id")
        tags = split_tags(text)  # TAG names tags as the Studio's string_value does (`;`-separated)
        if not tags:
            raise ValueError("name a tag")
        return self._reply(self.servicer.edit_tags(self._run(), split, ids, tags, mode))

    def cmd_checkpoint(self, args: list[str]) -> dict[str, Any]:
        return runs_rpc.cli(self.servicer.runs_api, self._run(), args)

    def cmd_eval(self, args: list[str]) -> dict[str, Any]:
        evaluations = self.servicer.evaluations
        if not args:
            raise ValueError("eval needs a split, `status` or `cancel`")
        if args[0] == "status":
            return {"ok": True, **evaluations.status(self._run())}
        if args[0] == "cancel":
            return self._reply_pair(evaluations.cancel(self._run(), " ".join(args[1:]) or "cli"))
        split, tags, full, rest = args[0], [], False, args[1:]
        while rest:
            word = rest.pop(0)
            if word == "--tags" and rest:
                tags = split_tags(rest.pop(0).replace(",", ";"))
            elif word == "--full":
                full = True
            else:
                raise ValueError(f"eval: unexpected {short_repr(word)}; usage: eval SPLIT [--tags a,b] [--full]")
        return self._reply_pair(evaluations.trigger(self._run(), split, tags, full))

    @staticmethod
    def _reply_pair(reply: tuple[bool, str]) -> dict[str, Any]:
        return {"ok": reply[0], "message": reply[1]}

    def cmd_discard(self, args: list[str]) -> dict[str, Any]:
        return self._reply(self.servicer.deny(self._run(), args[0], _ids(args[1:]), True))

    def cmd_restore(self, args: list[str]) -> dict[str, Any]:
        return self._reply(self.servicer.deny(self._run(), args[0], _ids(args[1:]), False))


def _ids(words: list[str]) -> list[int]:
    """Sample ids as typed; their range, count and split are the servicer's checks (as for gRPC)."""
    try:
        return [int(w) for w in words]
    except ValueError:
        bad = next(w for w in words if not w.lstrip("+-").isdigit())
        raise ValueError(f"sample ids are integers, got {short_repr(bad)}") from None


HP_KEYS = {key: name for name, key in HP_FIELDS.items()} | {name: name for name in HP_FIELDS}


def _assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` as a `HyperParameters` field and a value of the field's type; ValueError otherwise."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {short_repr(text)}")
    name = HP_KEYS.get(key)
    if name is None:
        raise ValueError(f"{short_repr(key)} is not a hyperparameter the daemon can set; one of: "
                         f"{', '.join(sorted(HP_FIELDS.values()))}")
    kind = pb.HyperParameters.DESCRIPTOR.fields_by_name[name].cpp_type
    if kind == FieldDescriptor.CPPTYPE_STRING:
        return name, raw
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{key} takes true or false, got {short_repr(raw)}")
        return name, raw.lower() in ("true", "1")
    what = "a number" if kind == FieldDescriptor.CPPTYPE_FLOAT else "a 32-bit integer"
    value: Any
    try:
        value = float(raw) if kind == FieldDescriptor.CPPTYPE_FLOAT else int(raw)
        pb.HyperParameters(**{name: value})  # the field's own range check
    except (ValueError, TypeError):
        raise ValueError(f"{key} takes {what}, got {short_repr(raw)}") from None
    return name, value


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
    """The CLI on its own TCP port (CLI_HOST:CLI_PORT, when it differs from the gRPC port): loopback only.

    A connection from weightslabd's own user (its socket's uid, security/loopback_uid.py) is served at once;
    one from another local user only after `auth <token>` (a GRPC_AUTH_TOKEN(S) token). Failed `auth` lines
    are throttled (security/throttle.py) and audited with repeats folded (security/refusals.py)."""

    def __init__(self, host: str, port: int, commands: CliCommands, tokens: Sequence[str], audit: AuditLog,
                 folder: Callable[[], Path | None]) -> None:
        if not is_loopback(host):
            raise ValueError(f"CLI_HOST={host} is not loopback: the CLI line server is plain text; set "
                             "CLI_HOST=127.0.0.1, or unset CLI_PORT to serve the CLI on the gRPC port with TLS")
        secrets = [t.encode() for t in tokens]
        throttle = self.throttle = AuthThrottle()

        def record(peer: str, credential: str, request: str, outcome: str, detail: str, count: int = 1,
                   wait: bool = False) -> None:
            event = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                     "action": CLI_LINE, "peer": peer, "client_cert": "", "credential": credential,
                     "request": mask_cli_line(request, tokens), "outcome": outcome,
                     "detail": _masked(detail, tokens)[:500]}
            if count > 1:
                event["detail"] = f"{detail[:400]} (x{count} from this address within {refusals.INTERVAL:g} s)"
                event["count"] = str(count)
            audit.record(folder(), event, wait=wait)

        def report(peer: str, reason: str, count: int, seconds: float) -> None:
            log.warning("CLI line refused", peer=peer, reason=reason, count=count)
            record(peer, "", "", "REFUSED", reason, count)

        self.refusals = RefusalAggregator(report)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                host_, port_ = self.client_address[:2]
                peer = grpc_address(host_, port_)
                same, uid = same_user((host_, port_), self.connection.getsockname()[:2])
                credential = "same-user" if same else "none"
                failures = 0
                for raw in self.rfile:
                    line = raw.decode("utf-8", "replace").strip()
                    words = line.split(maxsplit=1)
                    if words and words[0].lower() == "auth":
                        credential, reply = self._auth(line, peer, credential)
                        if not reply["ok"]:
                            failures += 1
                            if failures >= CONNECTION_FAILURES:
                                reply["error"] += f"; closing after {CONNECTION_FAILURES} failed attempts"
                                self._send(reply)
                                return
                    elif credential == "none":
                        who = f"uid {uid}" if uid is not None else "an unknown user"
                        reply = {"ok": False, "auth_required": True, "error": (
                            f"this CLI port serves only weightslabd's own user (uid {os.geteuid()}); this connection "
                            f"is from {who}: first send `auth <token>` (GRPC_AUTH_TOKEN)")}
                        refusals_.refused(peer, "another local user without a token")
                    else:
                        reply = self._execute(line, peer, credential)
                    self._send(reply)

            def _auth(self, line: str, peer: str, credential: str) -> tuple[str, dict[str, Any]]:
                """Never echoes what was sent; audited as `auth ****`, refusals folded."""
                address = host_of(peer)
                wait = throttle.wait_left(address)
                if wait > 0:
                    refusals_.refused(peer, "auth attempted while locked out")
                    return credential, {"ok": False, "error": f"too many failed `auth` from {address}: "
                                                              f"try again in {wait:.0f} s"}
                checked = _check_auth(line, secrets)
                if checked.startswith("token#"):
                    throttle.succeeded(address)
                    record(peer, checked, "auth", "OK", "authenticated")
                    return checked, {"ok": True, "message": "authenticated"}
                lockout = throttle.failed(address)
                refusals_.refused(peer, "invalid token" if secrets else "auth sent but no token is configured")
                error = "invalid token" if secrets else "no token is configured in weightslabd (GRPC_AUTH_TOKEN)"
                if lockout:
                    error += f"; next attempt from {address} in {lockout:.0f} s"
                return credential, {"ok": False, "error": error}

            def _execute(self, line: str, peer: str, credential: str) -> dict[str, Any]:
                edit = is_cli_edit(line)
                if edit:
                    try:
                        audit.reserve(folder())  # an edit whose audit line has no room is refused first
                    except OSError as exc:
                        log.error("edit refused: its audit line cannot be written", error=exc.strerror or str(exc))
                        return {"ok": False, "error": unaudited_edit_message(exc)}
                reply = commands.execute(line)
                record(peer, credential, line, "OK" if reply.get("ok") else "REFUSED",
                       str(reply.get("message") or reply.get("error") or ""), wait=edit)
                return reply

            def _send(self, reply: dict[str, Any]) -> None:
                self.wfile.write((_masked(json.dumps(reply), tokens) + "\n").encode())

        refusals_ = self.refusals
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
        self.refusals.close()


def _masked(text: str, secrets: Sequence[str]) -> str:
    """No configured token in a reply or an audit line, even one the user typed as a tag."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    return text


def _check_auth(line: str, secrets: list[bytes]) -> str:
    word, _, token = line.partition(" ")
    if word.lower() != "auth" or not token.strip():
        return "none"
    given = token.strip().encode()
    matched = [hmac.compare_digest(given, s) for s in secrets]  # compare with all: timing tells nothing
    return f"token#{matched.index(True) + 1}" if any(matched) else "invalid"
