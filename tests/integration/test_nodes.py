"""A torchrun job on two "nodes" of one machine: two daemons (own runtime directories and ports), two ranks
each (gloo, CPU). Node 1's daemon forwards its ranks' records to node 0's, the job's home, over mutual TLS
with certificates made here; the home shows one run of four ranks, and an edit sent to it lands at the same
step on all four. A node with a certificate of another CA is refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from weightslab_shim.ring import RingError, RingReader, list_rings, unlink
from weightslab_shim.runtime import ring_prefix
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import node_forwarding_pb2 as fpb
from weightslabd.proto import node_forwarding_pb2_grpc as fpb_grpc
from weightslabd.security.tls import CA_CERT, CLIENT_CERT, CLIENT_KEY, generate_certs

from .harness import Daemon, base_env, free_port, history, set_hparams, wait_for
from .test_distributed import DDP_TRAINER, applied, assert_merged, end, loss_steps, rank_log

NODES, PER_NODE = 2, 2
WORLD = NODES * PER_NODE


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """Daemon A (the home, listening for nodes) and daemon B (forwarding to A), sharing one CA."""
    generate_certs(tmp_path / "certs")
    listen = free_port()
    envs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        env = base_env(tmp_path / name)
        env["WEIGHTSLAB_FORWARD_CERT_DIR"] = str(tmp_path / "certs")
        envs.append(env)
    envs[0]["WEIGHTSLAB_FORWARD_LISTEN"] = f"127.0.0.1:{listen}"
    envs[1]["WEIGHTSLAB_FORWARD_TO"] = f"127.0.0.1:{listen}"
    a = Daemon(envs[0], tmp_path / "a.log").start()
    b = Daemon(envs[1], tmp_path / "b.log").start()
    yield a, b
    b.stop()
    a.stop()
    for d in (a, b):  # what a failed test's killed ranks left (no daemon on these dirs will drain them)
        for name in list_rings(ring_prefix(d.runtime_dir)):
            try:
                reader = RingReader(name)
            except RingError:
                unlink(name)
                continue
            dead = not Path(f"/proc/{reader.info.writer_pid}").exists()
            reader.close()
            if dead:
                unlink(name)


def start_node(node: int, daemon: Daemon, tmp: Path, master_port: int) -> subprocess.Popen[bytes]:
    with open(tmp / f"node{node}.out", "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", f"--nnodes={NODES}", f"--nproc_per_node={PER_NODE}",
             f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={master_port}", str(DDP_TRAINER),
             "--log-dir", str(tmp), "--until", str(tmp / "stop"), "--step-sleep", "0.01"],
            env={**daemon.env, "WEIGHTSLAB_RUN_NAME": "ddp"}, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.timeout(90)
def test_two_nodes_are_one_run_at_the_home_and_an_edit_lands_on_all_four_ranks_at_one_step(
        nodes: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    a, b = nodes
    port = free_port()
    procs = [start_node(n, d, tmp_path, port) for n, d in enumerate(nodes)]
    try:
        home = a.stub()
        wait_for(lambda: len(loss_steps(home)) > 6, 40, "the job's first steps at the home")
        runs = home.ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5).runs
        assert len(runs) == 1, runs  # both nodes' ranks in one run
        lr_at = applied(set_hparams(home, learning_rate=0.05))  # through rank 0, to every rank of both nodes
        wait_for(lambda: all(rank_log(tmp_path, r) and rank_log(tmp_path, r)[-1]["step"] > lr_at + 3
                             for r in range(WORLD)), 20, "steps after the edit on every rank")
        (tmp_path / "stop").touch()
        for n, proc in enumerate(procs):
            assert proc.wait(30) == 0, (tmp_path / f"node{n}.out").read_text()
    finally:
        for proc in procs:
            end(proc, tmp_path)

    logs = [rank_log(tmp_path, r) for r in range(WORLD)]
    steps = [d["step"] for d in logs[0]]
    assert all([d["step"] for d in log] == steps for log in logs)
    for log in logs:  # the learning rate changed at the same step on all four ranks
        assert [d["lr"] == pytest.approx(0.05) for d in log] == [s >= lr_at for s in steps], "lr not at its step"

    # The home's curve: every step, the mean over all four ranks (node 1's forwarded); every sample's count
    # from all four.
    wait_for(lambda: sorted(loss_steps(home)) == steps, 10, "every step of every rank at the home")
    assert_merged(home, logs, steps)
    assert {i for log in logs[2:] for d in log for i in d["ids"]}  # node 1's ranks drew samples too

    # Node 1's own Studio API serves no partial run: its one entry names the home.
    there = b.stub()
    listed = there.ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5).runs
    assert len(listed) == 1 and a.env["WEIGHTSLAB_FORWARD_LISTEN"] in listed[0].experiment_name, listed
    assert not history(there)
    b.stop()  # restarted, node 1's daemon shows that run (its newest); an edit sent there is sent home
    b.start()
    reply = set_hparams(b.stub(), learning_rate=0.2)
    assert not reply.success and a.env["WEIGHTSLAB_FORWARD_LISTEN"] in reply.message, reply


@pytest.mark.timeout(30)
def test_a_node_with_a_certificate_of_another_ca_is_refused(nodes: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    a, _ = nodes
    generate_certs(tmp_path / "other")
    other = tmp_path / "other"
    creds = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "certs" / CA_CERT).read_bytes(),
                                         private_key=(other / CLIENT_KEY).read_bytes(),
                                         certificate_chain=(other / CLIENT_CERT).read_bytes())
    with grpc.secure_channel(a.env["WEIGHTSLAB_FORWARD_LISTEN"], creds) as channel:
        stub = fpb_grpc.NodeForwardingStub(channel)
        hello = fpb.Frame(seq=1, ring="r", control=b'{"type":"hello"}')
        with pytest.raises(grpc.RpcError) as caught:
            stub.Forward(iter([fpb.Frames(node="intruder", frames=[hello])]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not a.stub().ListExperimentRuns(pb.ListExperimentRunsRequest(), timeout=5).runs
    assert "forwarded rank attached" not in a.log()
