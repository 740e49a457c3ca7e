"""Load: Studio-like pollers against weightslabd while a trainer runs.

Each poller is its own gRPC connection doing what an open Studio tab does, faster: hyperparameters
(ExperimentCommand), new plot points (GetLatestLoggerData, incremental, after one full read reduced
to 1000 points per curve) and the splits, every 100 ms.
Reported: unary latency p50/p99 over all calls, and the trainer's median step time with 0 and with N
pollers, measured in the same run (the trainer prints the wall time of every step). With --tls the daemon
runs with its default security (mTLS through its TLS front) and the pollers present the client pair.
With --agent, a third phase keeps the data-query agent busy as well: chat requests (ApplyDataQuery, natural
language) to a local model that takes AGENT_MODEL_SECONDS to answer each (a real HTTP server speaking
Ollama's API), always as many in flight as the agent takes; the pollers' latency is reported for both phases.

    .venv/bin/python bench/load.py [--pollers 20] [--seconds 15] [--tls] [--agent] [--quick]
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
AGENT_MODEL_SECONDS = 2.0


def asker(address: str, credentials: grpc.ChannelCredentials | None, stop: threading.Event,
          answered: list[float], errors: list[str]) -> None:
    """A chat box that sends a natural-language request as soon as the last one is answered."""
    stub = pb_grpc.ExperimentServiceStub(connect(address, credentials))
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            reply = stub.ApplyDataQuery(pb.DataQueryRequest(query="the worst fifty", is_natural_language=True),
                                        timeout=30)
            if reply.success:
                answered.append(time.perf_counter() - t0)
            else:
                errors.append(reply.message[:80])
        except grpc.RpcError as exc:
            errors.append(exc.code().name)


def percentiles(latencies: list[float]) -> str:
    if not latencies:
        return "  n/a"
    p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
    return f"{p50:6.1f} / {p99:.1f} ms   (goal p99 <= {GOAL_P99_MS:g} ms: {'ok' if p99 <= GOAL_P99_MS else 'MISSED'})"


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
    p.add_argument("--agent", action="store_true", help="a phase with the data-query agent waiting on a slow model")
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
        model = None
        if args.agent:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from integration.llm_servers import ModelServer

            model = ModelServer().__enter__()
            model.hold, model.hold_seconds = True, AGENT_MODEL_SECONDS
            model.reply = '{"action": "filter", "query": "sortby loss desc", "limit": 50}'
            (root / "agent").mkdir()
            (root / "agent" / "agent_config.yaml").write_text(
                f"agent:\n  provider: ollama\n  ollama_model: llama3.2:3b\n  ollama_host: 127.0.0.1\n"
                f"  ollama_port: {model.port}\n  ollama_request_timeout: 20\n")
            env["AGENT_CONFIG_PATH"] = str(root / "agent")
        daemon = start_daemon(env, root / "daemon.log")
        trainer = subprocess.Popen([sys.executable, "-c", TRAINER], env=env, stdout=subprocess.PIPE, text=True)
        steps = Steps(trainer)
        address = f"{'localhost' if args.tls else '127.0.0.1'}:{env['GRPC_BACKEND_PORT']}"
        latencies: list[float] = []
        errors: list[str] = []
        agent_latencies: list[float] = []
        answered: list[float] = []
        agent_errors: list[str] = []
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
            loaded_until = time.time()
            if args.agent:  # the same pollers go on, now beside chat requests waiting on the model
                phase = len(latencies)
                agent_stop = threading.Event()
                askers = [threading.Thread(target=asker, args=(address, credentials, agent_stop, answered,
                                                               agent_errors)) for _ in range(2)]
                for t in askers:
                    t.start()
                time.sleep(args.seconds)
                agent_latencies = latencies[phase:]
                agent_stop.set()
            stop.set()
            for t in threads:
                t.join()
            if args.agent:
                model.release.set()  # type: ignore[union-attr]
                for t in askers:
                    t.join()
        finally:
            stop_trainer_then_daemon(trainer, daemon, Path(env["WEIGHTSLAB_RUNTIME_DIR"]))
            if model is not None:
                model.__exit__(None, None, None)
    quiet, loaded = step_ms(steps, quiet_from, loaded_from), step_ms(steps, loaded_from, loaded_until)
    if agent_latencies:
        latencies = latencies[:len(latencies) - len(agent_latencies)]
    print(f"\nLoad: {args.pollers} Studio-like pollers, each a connection calling every 100 ms, "
          f"for {args.seconds:g} s, {'mTLS' if args.tls else 'plain TCP'} "
          f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f})")
    kinds = ", ".join(f"{code} x{errors.count(code)}" for code in sorted(set(errors)))
    print(f"  unary calls          {len(latencies):6d}   errors {len(errors)}{f' ({kinds})' if kinds else ''}")
    print(f"  latency p50 / p99    {percentiles(latencies)}")
    print(f"  trainer step, median {quiet:6.2f} ms alone, {loaded:.2f} ms under load ({loaded / quiet:.2f}x)")
    if args.agent:
        print(f"  with the agent busy  {percentiles(agent_latencies)}   ({len(agent_latencies)} calls while "
              f"{len(answered)} chat requests were answered, each waiting ~{AGENT_MODEL_SECONDS:g} s on the model; "
              f"{len(agent_errors)} refused as busy or failed)")


if __name__ == "__main__":
    main()
