"""Bytes per second a forwarding node sends its job's home, on the wire (mutual TLS, HTTP/2, protobuf).

Two real daemons on this machine: A, the home (WEIGHTSLAB_FORWARD_LISTEN), and B, a node forwarding
to it (WEIGHTSLAB_FORWARD_TO) through a TCP relay that counts the bytes each way; certificates made
here. The job: world 8 on 2 nodes, 4 ranks on B (ranks 4..7) and rank 0 on A (it makes the run; the
others of node 0 do not matter here). Each rank: numpy only, batch 256, paced at 10 steps/s, per step
two per-sample signals (loss through the loss wrapper, with predictions and targets, and `margin`
through save_signals) and a scalar (`lr`); inputs 3x32x32 float32, previews during the first epoch only
(the shim sends at most 64 a step per rank, thinned to 8 bits; it would go on offering the samples a rank
has not sent yet in later epochs: the bench turns that off). 20480 samples: an epoch is 10 global
batches of 2048, one second. Reported: the first epoch's rate, the steady rate after it (bytes/s, node
to home, and back), and what that is per rank-step.

    .venv/bin/python bench/forwarding.py [--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.daemon import COMMAND, free_port, scratch_dir, wait_rings_gone  # noqa: E402

NODE_RANKS = 4
WORLD = 8
BATCH = 256
RATE = 10.0  # steps/s per rank
SIZE = 20480
SHAPE = (3, 32, 32)


def worker(out: str, seconds: float) -> None:
    import numpy as np

    import weightslab_shim as wl

    class Optimizer:
        param_groups = [{"lr": 0.1}]

    rng = np.random.default_rng(int(os.environ["RANK"]))
    images = rng.random((SIZE, *SHAPE), dtype=np.float32)
    data = [(images[i], int(i % 10)) for i in range(SIZE)]
    wl.watch_or_edit({"learning_rate": 0.1, "batch_size": BATCH}, flag="hyperparameters")
    loader = wl.watch_or_edit(data, flag="data", loader_name="train", batch_size=BATCH, shuffle=True,
                              is_training=True)
    optimizer = wl.watch_or_edit(Optimizer(), flag="optimizer")
    criterion = wl.watch_or_edit(lambda o, y: (o - y) ** 2, flag="loss", signal_name="loss")
    session = wl.session()
    epochs: list[float] = []
    began = time.time()
    tick = time.monotonic()
    epoch = -1
    while time.time() - began < seconds:
        with wl.guard_training_context:
            x, ids, y = next(loader)
            if loader.sampler.epoch - 1 != epoch:
                epoch = loader.sampler.epoch - 1
                epochs.append(time.time())
                if epoch == 1:  # previews off after the first epoch (the shim would go on offering them)
                    session.note_inputs = lambda *a, **k: None  # type: ignore[method-assign]
            o = x.mean(axis=(1, 2, 3)) * 10
            criterion(o, y, batch_ids=ids, preds=np.round(o))
            wl.save_signals({"margin": np.abs(o - y).astype(np.float32)}, batch_ids=ids)
            wl.save_signals({"lr": np.asarray(optimizer.param_groups[0]["lr"])})
        tick += 1 / RATE
        time.sleep(max(0.0, tick - time.monotonic()))
    session.flush()
    Path(out).write_text(json.dumps({"epochs": epochs, "steps": session.step, "dropped": session.dropped,
                                     "ended": time.time()}))
    wl.close()


class Relay:
    """A TCP relay from a local port to `target`, counting bytes each way, with timestamps."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = self.down = 0  # node -> home, home -> node
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.samples: list[tuple[float, int, int]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                with self.lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def sample(self) -> None:
        with self.lock:
            self.samples.append((time.time(), self.up, self.down))

    def between(self, t0: float, t1: float) -> tuple[float, float]:
        """Bytes/s each way between the samples nearest after t0 and before t1."""
        after = [s for s in self.samples if s[0] >= t0]
        before = [s for s in self.samples if s[0] <= t1]
        a, b = after[0], before[-1]
        span = b[0] - a[0]
        return (b[1] - a[1]) / span, (b[2] - a[2]) / span


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(COMMAND, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not (Path(env["WEIGHTSLAB_RUNTIME_DIR"]) / "daemon.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"weightslabd did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=12.0, help="how long each rank trains")
    p.add_argument("--quick", action="store_true", help="smoke run: 5 s")
    p.add_argument("--worker", nargs=2, metavar=("OUT", "SECONDS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker[0], float(args.worker[1]))
        return
    from weightslabd.security.tls import generate_certs

    seconds = 5.0 if args.quick else args.seconds

    with scratch_dir("wl-forwarding-") as root:
        generate_certs(root / "certs")
        home_port = free_port()
        relay = Relay(("127.0.0.1", home_port))
        envs = []
        for name in ("a", "b"):
            (root / name).mkdir()
            envs.append(dict(os.environ, WEIGHTSLAB_RUNTIME_DIR=str(root / name / "rt"), GRPC_TLS_ENABLED="0",
                             GRPC_BACKEND_HOST="127.0.0.1", GRPC_BACKEND_PORT=str(free_port()),
                             WEIGHTSLAB_GRPC_WEB_PORT="-1", WEIGHTSLAB_ROOT_LOG_DIR=str(root / name / "logs"),
                             WEIGHTSLAB_FORWARD_CERT_DIR=str(root / "certs"), PYTHONUNBUFFERED="1"))
        envs[0]["WEIGHTSLAB_FORWARD_LISTEN"] = f"127.0.0.1:{home_port}"
        envs[1]["WEIGHTSLAB_FORWARD_TO"] = f"127.0.0.1:{relay.port}"
        daemons = [start_daemon(env, root / f"{name}.log") for env, name in zip(envs, "ab", strict=True)]
        job = {"WORLD_SIZE": str(WORLD), "LOCAL_WORLD_SIZE": str(NODE_RANKS), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": "29999", "TORCHELASTIC_RUN_ID": f"bench-{secrets.token_hex(4)}",
               "WEIGHTSLAB_RUN_NAME": "forwarding", "OMP_NUM_THREADS": "1"}
        ranks = [(0, envs[0], 0)] + [(NODE_RANKS + i, envs[1], 1) for i in range(NODE_RANKS)]
        trainers = []
        try:
            for rank, env, node in ranks:
                env = dict(env, **job, RANK=str(rank), LOCAL_RANK=str(rank % NODE_RANKS), GROUP_RANK=str(node))
                trainers.append((rank, subprocess.Popen(
                    [sys.executable, __file__, "--worker", str(root / f"rank{rank}.json"), str(seconds)],
                    env=env)))
            while any(t.poll() is None for _, t in trainers):
                relay.sample()
                time.sleep(0.25)
            time.sleep(1.0)  # the last frames
            relay.sample()
            for rank, t in trainers:
                if t.returncode != 0:
                    raise RuntimeError(f"rank {rank} exited with {t.returncode}")
            for name in "ab":
                if not wait_rings_gone(root / name / "rt"):
                    raise RuntimeError(f"a ring of daemon {name} was left in /dev/shm")
        finally:
            for _, t in trainers:
                if t.poll() is None:
                    t.kill()
            for d in daemons[::-1]:
                d.send_signal(signal.SIGTERM)
                d.wait(15)
        node = [json.loads((root / f"rank{r}.json").read_text()) for r, _, n in ranks if n == 1]
        first_end = max(w["epochs"][1] for w in node)  # every node rank past its first epoch
        end = min(w["ended"] for w in node)
        start = min(w["epochs"][0] for w in node)
        steps = sum(w["steps"] for w in node)
        up, down = relay.between(first_end + 0.5, end - 0.5)
        first_up, _ = relay.between(start, first_end)
        print(f"forwarding node: {NODE_RANKS} ranks, batch {BATCH}, {RATE:g} steps/s each, 2 per-sample signals "
              f"(+ preds, targets), {SHAPE} float32 inputs, world {WORLD}; {steps} rank-steps in "
              f"{end - start:.1f} s, dropped {sum(w['dropped'] for w in node)}")
        print(f"  first epoch (previews): {first_up / 1e3:.1f} kB/s node->home "
              f"({first_up / (NODE_RANKS * RATE):.0f} B per rank-step)")
        print(f"  after it: {up / 1e3:.1f} kB/s node->home ({up / (NODE_RANKS * RATE):.0f} B per rank-step), "
              f"{down / 1e3:.2f} kB/s home->node")


if __name__ == "__main__":
    main()
