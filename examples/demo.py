"""The demo behind `./dev demo`: weightslabd on its embedded defaults, the example CNN attached to it,
and a running commentary read back from the daemon over gRPC (TLS with a client certificate).

Only two things differ from the defaults, both to keep the demo inside the checkout: the TLS files
are created in demo-state/certs, and runs are saved under demo-state/runs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from weightslab_shim.runtime import resolve_runtime_dir
from weightslabd.config import load_settings
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.security.tls import channel_credentials, generate_certs

HERE = Path(__file__).resolve().parent
STATE = HERE.parent / "demo-state"


def main() -> int:
    p = argparse.ArgumentParser(description="weightslabd with the example training attached")
    p.add_argument("--steps", type=int, default=600, help="training steps of the example run")
    p.add_argument("--keep-serving", action="store_true", help="keep the daemon up after training (Ctrl-C ends)")
    args = p.parse_args()

    certs = STATE / "certs"
    if not (certs / "ca.crt").exists():
        generate_certs(certs)
        print(f"created a CA, a server and a client certificate in {certs}")
    env = dict(os.environ, GRPC_TLS_CERT_DIR=str(certs), WEIGHTSLAB_ROOT_LOG_DIR=str(STATE / "runs"),
               PYTHONUNBUFFERED="1")
    settings = load_settings(None, env)
    runtime_dir = resolve_runtime_dir(env)
    state_file = runtime_dir / "daemon.json"
    state_file.unlink(missing_ok=True)

    daemon = subprocess.Popen([sys.executable, "-m", "weightslabd"], env=env)
    try:
        state = wait_ready(daemon, state_file)
        address = f"localhost:{state['grpc_port']}"
        print(f"\nweightslabd is serving gRPC (mTLS) on {address}; runs are saved in {STATE / 'runs'}\n")
        trainer = subprocess.Popen([sys.executable, str(HERE / "train_cnn.py"), "--steps", str(args.steps)], env=env)
        channel = grpc.secure_channel(address, channel_credentials(certs))
        stub = pb_grpc.ExperimentServiceStub(channel)
        watch(stub, trainer)
        rc = trainer.wait()
        suspects(channel)
        grid_tour(stub)
        summary(stub, settings.grpc_backend_port, certs, runtime_dir, state.get("grpc_web_port"))
        if args.keep_serving:
            print("serving until Ctrl-C ...")
            daemon.wait()
        return rc
    except KeyboardInterrupt:
        return 130
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(15)


def wait_ready(daemon: subprocess.Popen[bytes], state_file: Path, timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"weightslabd exited with status {daemon.returncode} (see its message above)")
        try:
            state = json.loads(state_file.read_text())
            if state.get("pid") == daemon.pid:
                return dict(state)
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit("weightslabd did not become ready in time")


def watch(stub: pb_grpc.ExperimentServiceStub, trainer: subprocess.Popen[bytes]) -> None:
    """Print the daemon's view of the run every few seconds while the trainer runs."""
    request = pb.GetLatestLoggerDataRequest(request_full_history=False)
    latest: dict[str, tuple[int, float]] = {}
    while trainer.poll() is None:
        time.sleep(3)
        try:
            for point in stub.GetLatestLoggerData(request, timeout=5).points:
                latest[point.metric_name] = (point.model_age, point.metric_value)
        except grpc.RpcError as exc:
            print(f"[daemon] {exc.code().name}: {exc.details()}")
            continue
        if latest:
            view = ", ".join(f"{name} {value:.3f} @ step {step}" for name, (step, value) in sorted(latest.items()))
            print(f"[daemon sees] {view}")


def suspects(channel: grpc.Channel) -> None:
    """The samples with the highest last loss, asked through the CLI method: the ones to look at."""
    cli = channel.unary_unary("/weightslabd.Cli/Execute", request_serializer=str.encode,
                              response_deserializer=bytes.decode)
    reply = json.loads(cli("samples train train-loss-CE 8", timeout=10))
    if not reply.get("ok"):
        print(f"[daemon] {reply.get('error')}")
        return
    print("\nhighest last loss (weightslabd cli: samples train train-loss-CE 8):")
    for s in reply["samples"]:
        print(f"  sample {s['id']:>5}  loss {s['train-loss-CE']:.3f}  label {s['label']:.0f}  "
              f"predicted {s['prediction']:.0f}  seen {s['encounters']}x")
    print("  (the example flips 10% of the labels on purpose: these are where they show)")


def grid_tour(stub: pb_grpc.ExperimentServiceStub) -> None:
    """What the Studio's grid does, through the same RPCs: sort by loss, tag the worst, count."""
    query = stub.ApplyDataQuery(pb.DataQueryRequest(query="sortby `train-loss-CE` desc"), timeout=10)
    if not query.success:
        print(f"[daemon] {query.message}")
        return
    page = stub.GetDataSamples(pb.DataSamplesRequest(start_index=0, records_cnt=8, include_raw_data=True,
                                                     resize_width=64, resize_height=64), timeout=10)
    worst = [r.sample_id for r in page.data_records]
    images = sum(any(s.name == "raw_data" for s in r.data_stats) for r in page.data_records)
    edit = stub.EditDataSample(pb.DataEditsRequest(stat_name="tags", string_value="suspect", type=pb.EDIT_ACCUMULATE,
                                                   samples_ids=worst, sample_origins=["train"] * len(worst)),
                               timeout=10)
    counts = stub.ApplyDataQuery(pb.DataQueryRequest(query="has_tag suspect"), timeout=10)
    print(f"\nthe Studio's grid, through its RPCs: sorted by loss ({query.message}); the first page of "
          f"{len(worst)} came with {images} thumbnails; tagged them 'suspect' ({edit.message}); "
          f"'has_tag suspect' now shows {counts.number_of_all_samples} samples")
    stub.ApplyDataQuery(pb.DataQueryRequest(query="reset"), timeout=10)


def summary(stub: pb_grpc.ExperimentServiceStub, port: int, certs: Path, runtime_dir: Path,
            web_port: int | None) -> None:
    hp = stub.ExperimentCommand(pb.TrainerCommand(get_hyper_parameters=True), timeout=5)
    # numerical_value is a 32-bit float on the Studio's wire: shown to its 7 significant digits (0.01, not
    # 0.009999999776482582; 64, not 64.0)
    values = ", ".join(f"{d.name}={d.string_value or format(d.numerical_value, '.7g')}"
                       for d in hp.hyper_parameters_descs)
    print("\nwhere to look:")
    print(f"  hyperparameters as the daemon holds them: {values}")
    print(f"  gRPC (Weights Studio's backend): localhost:{port}, client certificate in {certs}")
    if web_port:
        print(f"  Weights Studio in a browser: gRPC-Web on http://localhost:{web_port} (loopback only)")
    print(f"  runs on disk: {STATE / 'runs'}  (manifest.json, signals.log, edits.journal)")
    print(f"  runtime directory (control socket): {runtime_dir}")
    print("  effective settings: weightslabd config")
    print(f"  the CLI: GRPC_TLS_CERT_DIR={certs} weightslabd cli   (with --keep-serving)")
    print("  your own script attaches the same way: `import weightslab_shim as wl` (see README)")


if __name__ == "__main__":
    sys.exit(main())
