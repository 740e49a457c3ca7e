"""TLS front: what terminating TLS in the daemon (tls_front.py) costs against grpc's own TLS.

A server process serves three small RPCs (a blob of N bytes, a sink that swallows a request, an empty
ping) on a 16-thread grpc server, reached in one of three ways:

- grpc-tls:     grpc's own mTLS on TCP (how the daemon served before the front);
- front:        the daemon's TLS front as the daemon runs it (front_process.py: the engine in a child
                process, mTLS with Python's ssl, asyncio), relaying to the grpc server over a unix socket;
- front-thread: the same engine on a thread of the server process (how it first ran in the daemon);
- plain:        no TLS, TCP (a floor).

Per way, from this process: download and upload throughput (1 MiB messages, about the size of a page
of thumbnails, back to back on one connection and on 4), and unary latency of an empty call: back to back
on one connection, on 20 connections each calling every 20 ms (1000 calls/s), and on 20 connections
calling flat out (the machine saturated: a closed loop, where the tail shows scheduling more than code).

    .venv/bin/python bench/tls_front.py [--megabytes 100] [--pings 2000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.daemon import scratch_dir  # noqa: E402

MIB = 1024 * 1024
LIMIT = 64 * MIB
WAYS = ("grpc-tls", "front", "front-thread", "plain")
OPTIONS = [("grpc.max_send_message_length", LIMIT), ("grpc.max_receive_message_length", LIMIT)]


# --- the server process ------------------------------------------------------------------------------


def serve(way: str, root: Path) -> None:
    from weightslabd.security.front_process import FrontProcess
    from weightslabd.security.peers import PeerTable
    from weightslabd.security.tls import TlsEnv, resolve_tls, server_credentials, server_ssl_context
    from weightslabd.security.tls_front import TlsFront

    blob = os.urandom(LIMIT)
    handlers = {
        "Blob": grpc.unary_unary_rpc_method_handler(lambda req, ctx: blob[:int.from_bytes(req, "big")]),
        "Sink": grpc.unary_unary_rpc_method_handler(lambda req, ctx: len(req).to_bytes(8, "big")),
        "Ping": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b""),
    }
    server = grpc.server(ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b.B", handlers),))
    cfg = resolve_tls(TlsEnv(cert_dir=str(root / "certs")))
    if way == "grpc-tls":
        port = server.add_secure_port("127.0.0.1:0", server_credentials(cfg))
    elif way == "plain":
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        runtime = root / f"rt-{way}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        server.add_insecure_port(f"unix:{runtime / 'grpc-tls.sock'}")
        front: TlsFront | FrontProcess
        if way == "front":
            front = FrontProcess("127.0.0.1", 0, cfg, runtime / "grpc-tls.sock", runtime, PeerTable(),
                                 lambda peer, reason: None)
        else:
            front = TlsFront("127.0.0.1", 0, server_ssl_context(cfg), runtime / "grpc-tls.sock", runtime,
                             PeerTable(), lambda peer, reason: None)
        port = front.bind()
        front.start()
    server.start()
    print(f"port={port}", flush=True)
    sys.stdin.read()  # until the bench closes our stdin


# --- the client ----------------------------------------------------------------------------------------


def channel(way: str, port: int, root: Path) -> grpc.Channel:
    from weightslabd.security.tls import channel_credentials

    own = [*OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    if way == "plain":
        return grpc.insecure_channel(f"127.0.0.1:{port}", options=own)
    return grpc.secure_channel(f"localhost:{port}", channel_credentials(root / "certs"), options=own)


def throughput(way: str, port: int, root: Path, megabytes: int, connections: int, upload: bool) -> float:
    """MB/s moving `megabytes` in 1 MiB messages over `connections` connections, each back to back."""
    per = max(1, megabytes // connections)
    channels = [channel(way, port, root) for _ in range(connections)]
    request = os.urandom(MIB) if upload else MIB.to_bytes(8, "big")
    calls = [c.unary_unary("/b.B/Sink" if upload else "/b.B/Blob") for c in channels]
    for call in calls:
        call(request, timeout=30)  # connect and warm up before the clock starts

    def run(call: grpc.UnaryUnaryMultiCallable) -> None:
        for _ in range(per):
            call(request, timeout=30)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in channels:
        c.close()
    return per * connections * MIB / elapsed / 1e6


def latencies(way: str, port: int, root: Path, pings: int, connections: int,
              every: float = 0.0) -> tuple[float, float]:
    """p50 and p99 ms of an empty unary call, `connections` connections calling at once, each at most once
    per `every` seconds."""
    channels = [channel(way, port, root) for _ in range(connections)]
    calls = [c.unary_unary("/b.B/Ping") for c in channels]
    for call in calls:
        call(b"", timeout=10)
    times: list[float] = []
    per = max(1, pings // connections)

    def run(call: grpc.UnaryUnaryMultiCallable, offset: float) -> None:
        due = time.perf_counter() + offset  # staggered: a steady rate, not 20 calls at the same instant
        time.sleep(offset)
        for _ in range(per):
            t0 = time.perf_counter()
            call(b"", timeout=10)
            times.append((time.perf_counter() - t0) * 1000)
            due += every
            time.sleep(max(0.0, due - time.perf_counter()))  # pacing, so the load is a rate, not a closed loop

    threads = [threading.Thread(target=run, args=(call, every * i / connections)) for i, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in channels:
        c.close()
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megabytes", type=int, default=100)
    p.add_argument("--pings", type=int, default=2000)
    p.add_argument("--serve", choices=WAYS, help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.root)
        return
    if args.quick:
        args.megabytes, args.pings = 20, 400
    from weightslabd.security.tls import generate_certs

    rows = []
    with scratch_dir("wl-bench-tls-") as root:
        generate_certs(root / "certs")
        for way in WAYS:
            server = subprocess.Popen([sys.executable, __file__, "--serve", way, "--root", str(root)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert server.stdout is not None
                line = ""
                while not line.startswith("port="):  # other lines: the server's log
                    line = server.stdout.readline()
                    assert line, "the server process ended"
                port = int(line[len("port="):])
                row = [way,
                       throughput(way, port, root, args.megabytes, 1, upload=False),
                       throughput(way, port, root, args.megabytes, 4, upload=False),
                       throughput(way, port, root, args.megabytes, 1, upload=True),
                       throughput(way, port, root, args.megabytes, 4, upload=True),
                       *latencies(way, port, root, args.pings, 1),
                       *latencies(way, port, root, args.pings * 2, 20, every=0.02),
                       *latencies(way, port, root, args.pings, 20)]
                rows.append(row)
            finally:
                assert server.stdin is not None
                server.stdin.close()
                server.wait(10)
    print(f"\nTLS front: {args.megabytes} MB in 1 MiB messages, {args.pings} empty calls "
          f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f})")
    print(f"{'':12} {'MB/s':>6} {'':7} {'':6} {'':6}   {'p50/p99 ms':>11}")
    print(f"{'':12} {'down':>6} {'down x4':>7} {'up':>6} {'up x4':>6}   {'1 conn':>11} {'20 conns 1000/s':>16} "
          f"{'20 flat out':>12}")
    for way, down1, down4, up1, up4, *ms in rows:
        pairs = [f"{ms[i]:.2f}/{ms[i + 1]:.2f}" for i in (0, 2, 4)]
        print(f"{way:12} {down1:6.0f} {down4:7.0f} {up1:6.0f} {up4:6.0f}   "
              f"{pairs[0]:>11} {pairs[1]:>16} {pairs[2]:>12}")


if __name__ == "__main__":
    main()
