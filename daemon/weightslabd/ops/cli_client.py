"""`weightslabd cli`: an interactive client for the CLI inspection server (line editing, history).

It connects the way the daemon serves the CLI: through the gRPC port (TLS with the client
certificate in GRPC_TLS_CERT_DIR, and the first configured token) when CLI_PORT is unset or equals
GRPC_BACKEND_PORT, else over TCP to CLI_HOST:CLI_PORT (loopback; `auth <token>` is sent only when the
daemon asks for it, i.e. when this process runs as another user than the daemon).
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from weightslabd.config import Settings

PROMPT = "weightslab> "
Execute = Callable[[str], dict[str, Any]]


def _connect_host(host: str) -> str:
    return "localhost" if host in ("0.0.0.0", "::", "") else host


def grpc_executor(settings: Settings, port: int) -> Execute:
    import grpc

    from weightslabd.security.tls import channel_credentials, settings_tls

    address = f"{_connect_host(settings.grpc_backend_host)}:{port}"
    tls = settings_tls(settings)
    if tls.enabled:
        channel = grpc.secure_channel(address, channel_credentials(tls.ca_file.path.parent,
                                                                   client_cert=tls.require_client_auth))
    else:
        channel = grpc.insecure_channel(address)
    call = channel.unary_unary("/weightslabd.Cli/Execute", request_serializer=str.encode,
                               response_deserializer=bytes.decode)
    tokens = settings.auth_tokens()
    metadata = (("authorization", f"Bearer {tokens[0]}"),) if tokens else ()

    def execute(line: str) -> dict[str, Any]:
        try:
            return dict(json.loads(call(line, metadata=metadata, timeout=30)))
        except grpc.RpcError as exc:
            return {"ok": False, "error": f"{exc.code().name}: {exc.details()}"}

    return execute


def tcp_executor(settings: Settings, port: int) -> Execute:
    sock = socket.create_connection((_connect_host(settings.cli_host), port), timeout=30)
    stream = sock.makefile("rw", encoding="utf-8", newline="\n")

    def send(line: str) -> dict[str, Any]:
        stream.write(line.replace("\n", " ") + "\n")
        stream.flush()
        reply = stream.readline()
        return dict(json.loads(reply)) if reply else {"ok": False, "error": "the daemon closed the connection"}

    tokens = settings.auth_tokens()

    def execute(line: str) -> dict[str, Any]:
        reply = send(line)
        # The daemon's own user needs no token; `auth` is sent only when the daemon asks for it.
        if reply.get("auth_required") and tokens:
            if not send(f"auth {tokens[0]}").get("ok"):
                return reply
            reply = send(line)
        return reply

    return execute


def show(reply: dict[str, Any], out: TextIO, pretty: bool) -> None:
    if not pretty:
        out.write(json.dumps(reply) + "\n")
        return
    if not reply.get("ok"):
        out.write(f"error: {reply.get('error') or reply.get('message')}\n")
        return
    body = {k: v for k, v in reply.items() if k != "ok"}
    if list(body) == ["message"]:
        out.write(f"{body['message']}\n")
    else:
        out.write(json.dumps(body, indent=2) + "\n")


def lines(stdin: TextIO, interactive: bool, history: Path) -> Iterable[str]:
    if not interactive:
        yield from (line.strip() for line in stdin if line.strip())
        return
    import readline  # line editing and history, where the terminal has them

    history.parent.mkdir(parents=True, exist_ok=True)
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    try:
        while True:
            try:
                line = input(PROMPT).strip()
            except EOFError:
                return
            if line in ("quit", "exit"):
                return
            if line:
                yield line
    finally:
        readline.write_history_file(history)


def run(settings: Settings, commands: list[str], state: dict[str, Any] | None) -> int:
    port = int((state or {}).get("cli_port") or 0)
    if settings.cli_shares_grpc_port():
        execute = grpc_executor(settings, port or int((state or {}).get("grpc_port") or settings.grpc_backend_port))
    else:
        execute = tcp_executor(settings, port or settings.cli_port)
    pretty = sys.stdout.isatty()
    source = commands or lines(sys.stdin, sys.stdin.isatty(), settings.log_dir() / "cli_history")
    ok = True
    for line in source:
        reply = execute(line)
        ok = ok and bool(reply.get("ok"))
        show(reply, sys.stdout, pretty)
    return 0 if ok else 1
