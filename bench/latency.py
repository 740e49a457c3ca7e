"""Control latencies: how fast a paused trainer resumes, and how fast a trainer re-attaches to a
restarted daemon.

1. Resume: a trainer (numpy loop, 1 ms steps) is paused over gRPC; the benchmark then sends
   is_training=true and measures, on the same clock, the time until the trainer starts its next step
   (the trainer prints the wall time at each step boundary). Goal: within 100 ms.
2. Re-attach: the daemon is killed with SIGKILL mid-run and started again; the time from its
   "weightslabd ready" log line to its "trainer attached" line, both stamped by the daemon.
   Goal: within 1 s.

    .venv/bin/python bench/latency.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import grpc

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.daemon import daemon_env, scratch_dir, stop_trainer_then_daemon  # noqa: E402

TRAINER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import weightslab_shim as wl
    data = [(np.zeros(4, dtype=np.float32), i % 10) for i in range(512)]
    loader = wl.watch_or_edit(data, flag="data", loader_name="train", batch_size=16, is_training=True)
    loss = wl.watch_or_edit(lambda out, y: (out - y) ** 2, flag="loss", signal_name="loss")
    while True:
        with wl.guard_training_context:
            print(f"{time.time():.6f}", flush=True)
            x, ids, y = next(loader)
            loss(x.mean(axis=1), y, batch_ids=ids)
        time.sleep(0.001)
""")


class Steps:
    """Reads the trainer's step timestamps as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.times: list[float] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.times.append(float(line))

    def first_after(self, t: float, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                later = [x for x in self.times[-200:] if x > t]
            if later:
                return later[0]
            time.sleep(0.0005)
        raise RuntimeError("the trainer did not step")


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    state = Path(env["WEIGHTSLAB_RUNTIME_DIR"]) / "daemon.json"
    state.unlink(missing_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "weightslabd"], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not state.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"weightslabd did not start: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    return proc


def events(log: Path, name: str) -> list[float]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            out.append(datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp())
    return out


def set_training(stub: pb_grpc.ExperimentServiceStub, on: bool) -> pb.CommandResponse:
    cmd = pb.TrainerCommand(hyper_parameter_change=pb.HyperParameterCommand(
        hyper_parameters=pb.HyperParameters(is_training=on)))
    return stub.ExperimentCommand(cmd, timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resumes", type=int, default=30)
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.resumes, args.restarts = 5, 2
    with scratch_dir("wl-bench-latency-") as root:
        env = daemon_env(root)
        log = root / "daemon.log"
        daemon = start_daemon(env, log)
        trainer = subprocess.Popen([sys.executable, "-c", TRAINER], env=env, stdout=subprocess.PIPE, text=True)
        steps = Steps(trainer)
        stub = pb_grpc.ExperimentServiceStub(grpc.insecure_channel(f"127.0.0.1:{env['GRPC_BACKEND_PORT']}"))
        try:
            while not stub.GetDataSplits(pb.Empty(), timeout=5).success:
                time.sleep(0.05)
            resume_ms = []
            for _ in range(args.resumes):
                assert set_training(stub, False).success
                time.sleep(0.05)  # paused at a boundary now (the reply said so); resume from rest
                t0 = time.time()
                assert set_training(stub, True).success
                resume_ms.append((steps.first_after(t0) - t0) * 1000)
            attach_ms = []
            for _ in range(args.restarts):
                daemon.send_signal(signal.SIGKILL)
                daemon.wait()
                before = len(events(log, "trainer attached"))
                daemon = start_daemon(env, log)
                deadline = time.monotonic() + 10
                while len(events(log, "trainer attached")) == before and time.monotonic() < deadline:
                    time.sleep(0.01)
                attach_ms.append((events(log, "trainer attached")[-1] - events(log, "weightslabd ready")[-1]) * 1000)
        finally:
            stop_trainer_then_daemon(trainer, daemon, Path(env["WEIGHTSLAB_RUNTIME_DIR"]))
    print(f"\nControl latencies ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f})")
    print(f"{'what':<52} {'n':>3} {'p50 ms':>7} {'max ms':>7}  goal")
    print(f"{'resume: is_training=true sent -> next step starts':<52} {len(resume_ms):>3} "
          f"{statistics.median(resume_ms):>7.1f} {max(resume_ms):>7.1f}  <= 100 ms")
    print(f"{'re-attach: daemon ready after SIGKILL -> trainer attached':<52} {len(attach_ms):>3} "
          f"{statistics.median(attach_ms):>7.1f} {max(attach_ms):>7.1f}  <= 1000 ms")


if __name__ == "__main__":
    main()
