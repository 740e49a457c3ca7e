"""A real browser speaks gRPC-Web to weightslabd: headless Chromium loads a page from another origin,
which calls GetDataSplits and reads StreamStatus with fetch() in the text and binary formats (frames
encoded by hand in JS), then posts what it received back here to be decoded."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import Daemon, Trainer, history, wait_for
from .test_grpcweb import BINARY, TEXT, b64_pieces, frames

TYPES = {"text": TEXT, "binary": BINARY}

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>gRPC-Web from a browser</title>
<script>
const BASE = "__BASE__";
const TYPES = {text: "__TEXT__", binary: "__BINARY__"};

function b64(bytes) { let s = ""; for (const b of bytes) s += String.fromCharCode(b); return btoa(s); }
function unb64(text) {  // padded pieces back to back: a stream is encoded chunk by chunk
  const out = [];
  for (const piece of text.match(/[^=]+=*/g) || []) {
    const s = atob(piece);
    for (let i = 0; i < s.length; i++) out.push(s.charCodeAt(i));
  }
  return Uint8Array.from(out);
}
function concat(chunks) {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}
function dataFrames(bytes) {
  let count = 0, i = 0;
  while (i + 5 <= bytes.length) {
    const length = ((bytes[i + 1] << 24) | (bytes[i + 2] << 16) | (bytes[i + 3] << 8) | bytes[i + 4]) >>> 0;
    if (i + 5 + length > bytes.length) break;
    if ((bytes[i] & 0x80) === 0) count++;
    i += 5 + length;
  }
  return count;
}

async function call(method, format, wanted) {
  const empty = new Uint8Array(5);  // flag 0, length 0: an Empty request is a zero-length message
  const abort = new AbortController();
  const response = await fetch(BASE + "/ExperimentService/" + method, {
    method: "POST", signal: abort.signal, body: format === "text" ? b64(empty) : empty,
    headers: {"content-type": TYPES[format], "accept": TYPES[format], "x-grpc-web": "1",
              "x-user-agent": "grpc-web-javascript/0.1"},
  });
  const reader = response.body.getReader();
  const chunks = [];
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    chunks.push(value);
    if (wanted) {  // a stream does not end by itself: stop once enough messages arrived
      const got = concat(chunks);
      const bytes = format === "text"
        ? unb64(new TextDecoder().decode(got.subarray(0, got.length - got.length % 4))) : got;
      if (dataFrames(bytes) >= wanted) { abort.abort(); break; }
    }
  }
  return {method, format, status: response.status, contentType: response.headers.get("content-type"),
          grpcStatus: response.headers.get("grpc-status"), body: b64(concat(chunks))};
}

(async () => {
  const results = [];
  for (const [method, wanted] of [["GetDataSplits", 0], ["StreamStatus", 2]]) {
    for (const format of ["text", "binary"]) {
      try { results.push(await call(method, format, wanted)); }
      catch (error) { results.push({method, format, error: String(error)}); }
    }
  }
  await fetch("/result", {method: "POST", headers: {"content-type": "application/json"},
                          body: JSON.stringify(results)});
})();
</script>
"""


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)


class PageServer:
    """The page's own origin (another loopback port), and where the page posts its results."""

    def __init__(self, page: str) -> None:
        self.results: list[dict[str, Any]] = []
        self.received = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                owner.results = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()
                owner.received.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def browser_binary() -> str:
    found = chromium()
    if found is None:
        why = "chromium not found: `apt-get install -y chromium` (./dev test installs it when run as root)"
        if os.environ.get("WL_TEST_SKIP_BROWSER") == "1":
            pytest.skip(f"{why}; skipped as WL_TEST_SKIP_BROWSER=1 asks")
        pytest.fail(f"{why}, or set WL_TEST_SKIP_BROWSER=1 to skip this test on purpose")
    return found


@pytest.fixture
def served(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[int, Trainer]]:
    env["WEIGHTSLAB_GRPC_WEB_PORT"] = "0"
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    trainer = Trainer(env, tmp_path, "--steps", "100000", "--step-sleep", "0.002")
    try:
        port = int(daemon.wait_ready()["grpc_web_port"])
        stub = daemon.stub()
        wait_for(lambda: len(history(stub)) > 2, 10, "the first steps")
        yield port, trainer
    finally:
        trainer.kill()
        daemon.stop()


def complete_messages(body: bytes, text: bool) -> list[bytes]:
    """The whole data frames at the start of a stream that the browser cut off on purpose."""
    raw = b64_pieces(body[: len(body) // 4 * 4]) if text else body
    messages = []
    while len(raw) >= 5 and len(raw) >= 5 + int.from_bytes(raw[1:5], "big"):
        length = int.from_bytes(raw[1:5], "big")
        if raw[0] == 0:
            messages.append(raw[5:5 + length])
        raw = raw[5 + length:]
    return messages


def test_chromium_calls_unary_and_streaming_rpcs_in_both_formats(browser_binary: str, served: tuple[int, Trainer],
                                                                   tmp_path: Path) -> None:
    port, trainer = served
    # The Studio's base URL is http://localhost:8080; the page itself comes from 127.0.0.1:<other port>.
    page = PageServer(PAGE.replace("__BASE__", f"http://localhost:{port}").replace("__TEXT__", TEXT)
                      .replace("__BINARY__", BINARY))
    browser_log = tmp_path / "chromium.log"
    with open(browser_log, "wb") as log:
        proc = subprocess.Popen(
            [browser_binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-breakpad", f"--user-data-dir={tmp_path / 'profile'}", page.url],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: page.received.is_set() or proc.poll() is not None, 25, "the page's results")
        assert page.received.is_set(), f"chromium exited with {proc.returncode}:\n{browser_log.read_text()[-3000:]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        page.close()

    results = {(r["method"], r["format"]): r for r in page.results}
    for fmt, content_type in TYPES.items():
        unary = results["GetDataSplits", fmt]
        assert "error" not in unary, unary
        assert unary["status"] == 200 and unary["contentType"] == content_type
        messages, trailers = frames(base64.b64decode(unary["body"]), fmt == "text")
        assert trailers["grpc-status"] == "0"
        assert list(pb.DataSplitsResponse.FromString(messages[0]).split_names) == ["train"]

        stream = results["StreamStatus", fmt]
        assert "error" not in stream, stream
        assert stream["status"] == 200 and stream["contentType"] == content_type
        statuses = [pb.TrainingStatusEx.FromString(m)
                    for m in complete_messages(base64.b64decode(stream["body"]), fmt == "text")]
        assert len(statuses) >= 2 and all(s.experiment_name == "trainer" for s in statuses)
        assert statuses[-1].model_age >= statuses[0].model_age
    assert trainer.proc.poll() is None
