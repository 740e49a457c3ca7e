"""Load: Studio-like pollers against weightslabd while a trainer runs.

Each poller is its own gRPC connection doing what an open Studio tab does, faster: hyperparameters
(ExperimentCommand), new plot points (GetLatestLoggerData, incremental, after one full read reduced
to 1000 points per curve) and the splits, every 100 ms.
Reported: unary latency p50/p99 over all calls, and the trainer's median step time with 0 and with N
pollers, measured in the same run (the trainer prints the wall time of every step). With --tls the daemon
runs with its default security (mTLS through its TLS front) and the pollers present the client pair.

    .venv/bin/python bench/load.py [--pollers 20] [--seconds 15] [--tls] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.security.tls import channel_credentials, generate_certs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import TRAINER, Steps, start_daemon  # noqa: E402
from support.daemon import daemon_env, scratch_dir, stop_trainer_then_daemon  # noqa: E402

GOAL_P99_MS = 50.0


def connect(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own, as each browser has
    if credentials is None:
        return grpc.insecure_channel(address, options=own)
    return grpc.secure_channel(address, credentials, options=own)


def poller(address: str, credentials: grpc.ChannelCredentials | None, stop: threading.Event, latencies: list[float],
           errors: list[str]) -> None:
    stub = pb_grpc.ExperimentServiceStub(connect(address, credentials))
    calls = [
        lambda: stub.ExperimentCommand(pb.TrainerCommand(get_hyper_parameters=True), timeout=5),
        lambda: stub.GetLatestLoggerData(pb.GetLatestLoggerDataRequest(request_full_history=False), timeout=5),
        lambda: stub.GetDataSplits(pb.Empty(), timeout=5),
    ]
    # As the Studio does: the full history once, reduced to 1000 points per curve, then what is new.
    stub.GetLatestLoggerData(pb.GetLatestLoggerDataRequest(request_full_history=True, max_points=1000), timeout=5)
    i = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            calls[i % len(calls)]()
            latencies.append((time.perf_counter() - t0) * 1000)
        except grpc.RpcError as exc:
            errors.append(exc.code().name)
        i += 1
        stop.wait(0.1)


def step_ms(steps: Steps, since: float, until: float) -> float:
    times = [t for t in steps.times if since <= t <= until]
    return statistics.median(np.diff(times)) * 1000 if len(times) > 2 else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pollers", type=int, default=20)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--tls", action="store_true", help="mTLS, as the daemon's defaults (through its TLS front)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.seconds = 4.0
    with scratch_dir("wl-bench-load-") as root:
        env = daemon_env(root)
        credentials = None
        if args.tls:
            generate_certs(root / "certs")
            env.update(GRPC_TLS_ENABLED="1", GRPC_TLS_CERT_DIR=str(root / "certs"))
            credentials = channel_credentials(root / "certs")
        daemon = start_daemon(env, root / "daemon.log")
        trainer = subprocess.Popen([sys.executable, "-c", TRAINER], env=env, stdout=subprocess.PIPE, text=True)
        steps = Steps(trainer)
        address = f"{'localhost' if args.tls else '127.0.0.1'}:{env['GRPC_BACKEND_PORT']}"
        latencies: list[float] = []
        errors: list[str] = []
        try:
            stub = pb_grpc.ExperimentServiceStub(connect(address, credentials))
            while not stub.GetDataSplits(pb.Empty(), timeout=5).success:
                time.sleep(0.05)
            quiet_from = time.time()
            time.sleep(args.seconds)  # the baseline: the trainer alone with its daemon
            loaded_from = time.time()
            stop = threading.Event()
            threads = [threading.Thread(target=poller, args=(address, credentials, stop, latencies, errors))
                       for _ in range(args.pollers)]
            for t in threads:
                t.start()
            time.sleep(args.seconds)
            stop.set()
            for t in threads:
                t.join()
            loaded_until = time.time()
        finally:
            stop_trainer_then_daemon(trainer, daemon, Path(env["WEIGHTSLAB_RUNTIME_DIR"]))
    quiet, loaded = step_ms(steps, quiet_from, loaded_from), step_ms(steps, loaded_from, loaded_until)
    p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
    print(f"\nLoad: {args.pollers} Studio-like pollers, each a connection calling every 100 ms, "
          f"for {args.seconds:g} s, {'mTLS' if args.tls else 'plain TCP'} "
          f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f})")
    kinds = ", ".join(f"{code} x{errors.count(code)}" for code in sorted(set(errors)))
    print(f"  unary calls          {len(latencies):6d}   errors {len(errors)}{f' ({kinds})' if kinds else ''}")
    print(f"  latency p50 / p99    {p50:6.1f} / {p99:.1f} ms   (goal p99 <= {GOAL_P99_MS:g} ms: "
          f"{'ok' if p99 <= GOAL_P99_MS else 'MISSED'})")
    print(f"  trainer step, median {quiet:6.2f} ms alone, {loaded:.2f} ms under load ({loaded / quiet:.2f}x)")


if __name__ == "__main__":
    main()
