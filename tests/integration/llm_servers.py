"""Stand-ins for the hosted and local models: one real HTTP server (http.server, in a thread) that speaks
Ollama's API (/api/chat, /api/tags; NDJSON streaming or one JSON) and OpenRouter's OpenAI-compatible
API (/v1/chat/completions, /v1/models; SSE streaming or one JSON), as their documentation describes.

A test scripts what the "model" answers (`reply`), or makes it hold its answer until released
(`hold`), and reads back what the daemon sent (`requests`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OLLAMA_MODELS = ("llama3.2:3b", "qwen2.5:7b")
OPENROUTER_MODELS = ("meta-llama/llama-3.3-70b-instruct", "openai/gpt-4o-mini")
KEY = "sk-or-test-0123456789abcdef"


class ModelServer:
    def __init__(self) -> None:
        self.reply = '{"action": "reset"}'
        self.hold = False  # answer only once `release` is set (a model slower than any timeout)
        self.hold_seconds = 30.0  # ... or once this long has passed (bench/load.py: a slow model)
        self.release = threading.Event()
        self.status = 200  # anything else: an error reply in the API's own format
        self.requests: list[dict[str, Any]] = []
        self.held = threading.Event()  # set when a held request is waiting
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server._get(self)

            def do_POST(self) -> None:  # noqa: N802
                server._post(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]  # client gone
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name="model-server",
                                        daemon=True)

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def last_prompt(self) -> list[dict[str, str]]:
        return list(self.requests[-1]["body"]["messages"])

    # -- the wire ------------------------------------------------------------------------------------

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        self.requests.append({"method": "GET", "path": h.path, "auth": h.headers.get("authorization", "")})
        if h.path == "/api/tags":
            models = [{"name": m, "model": m, "modified_at": "2026-12-01T10:00:00Z", "size": 2019393189,
                       "digest": "a80c4f17acd5", "details": {"format": "gguf", "family": "llama",
                                                             "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}}
                      for m in OLLAMA_MODELS]
            return _json(h, 200, {"models": models})
        if h.path == "/v1/models":
            if not self._authorised(h):
                return None
            return _json(h, 200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1733000000, "owned_by": m.split("/")[0]}
                for m in OPENROUTER_MODELS]})
        return _json(h, 404, {"error": "not found"})

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers.get("content-length", "0"))) or b"{}")
        self.requests.append({"method": "POST", "path": h.path, "body": body,
                              "auth": h.headers.get("authorization", "")})
        if self.hold:
            self.held.set()
            self.release.wait(self.hold_seconds)
        if h.path == "/api/chat":
            return self._ollama_chat(h, body)
        if h.path == "/v1/chat/completions":
            if not self._authorised(h):
                return None
            return self._openai_chat(h, body)
        return _json(h, 404, {"error": "not found"})

    def _authorised(self, h: BaseHTTPRequestHandler) -> bool:
        if h.headers.get("authorization") == f"Bearer {KEY}":
            return True
        _json(h, 401, {"error": {"message": "No auth credentials found", "code": 401}})
        return False

    def _ollama_chat(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if self.status != 200:
            return _json(h, self.status, {"error": f"model '{body.get('model')}' not found"})
        model = body.get("model", "")
        if body.get("stream", True):  # Ollama streams unless told not to: one JSON object per line
            lines = [{"model": model, "created_at": _now(), "message": {"role": "assistant", "content": piece},
                      "done": False} for piece in _pieces(self.reply)]
            lines.append({"model": model, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                          "done": True, "done_reason": "stop", "total_duration": 1000, "eval_count": 10})
            return _chunked(h, "application/x-ndjson", (json.dumps(line) + "\n" for line in lines))
        return _json(h, 200, {"model": model, "created_at": _now(), "done": True, "done_reason": "stop",
                              "message": {"role": "assistant", "content": self.reply},
                              "total_duration": 1000, "eval_count": 10})

    def _openai_chat(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if self.status != 200:
            return _json(h, self.status, {"error": {"message": "Provider returned error", "code": self.status}})
        model = body.get("model", "")
        base = {"id": "gen-1", "created": 1733000000, "model": model}
        if body.get("stream"):  # server-sent events, each a chat.completion.chunk, then [DONE]
            events = [{**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}]}
                for piece in _pieces(self.reply)]
            events.append({**base, "object": "chat.completion.chunk",
                           "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            texts = [f"data: {json.dumps(e)}\n\n" for e in events] + ["data: [DONE]\n\n"]
            return _chunked(h, "text/event-stream", iter(texts))
        return _json(h, 200, {**base, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": self.reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _pieces(text: str) -> list[str]:
    size = max(7, len(text) // 64)  # a handful of events, small ones for a plan
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _json(h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    h.send_response(status)
    h.send_header("content-type", "application/json")
    h.send_header("content-length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _chunked(h: BaseHTTPRequestHandler, content_type: str, parts: Iterator[str]) -> None:
    h.send_response(200)
    h.send_header("content-type", content_type)
    h.send_header("transfer-encoding", "chunked")
    h.end_headers()
    try:
        for part in parts:
            data = part.encode()
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (a reply too large)
        pass
