"""A forwarding node's buffer (bounded, in order) and its link to the home: real mutual TLS over loopback,
a real home feeding a real run; the home goes away and comes back, and nothing is lost or doubled."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from ports import free_port
from waiting import wait_for

from weightslab_shim import wire
from weightslab_shim.ring import RecordType
from weightslabd.config import Settings
from weightslabd.nodes.buffer import FRAME_OVERHEAD, FrameBuffer
from weightslabd.nodes.forwarder import Forwarder
from weightslabd.nodes.home import Home, serve
from weightslabd.nodes.link import NodeLink, NodesError
from weightslabd.security.node_tls import home_credentials, node_credentials
from weightslabd.security.tls import generate_certs
from weightslabd.store.run import Run

from .support import JOB, curve, step


def test_the_buffer_keeps_order_and_its_bound_refusing_records_and_dropping_heartbeats() -> None:
    buf = FrameBuffer(limit_bytes=3 * (100 + FRAME_OVERHEAD))
    assert all(buf.put_record("r", RecordType.STEP, s, 10 * s, b"x" * 100) for s in range(3))
    assert not buf.put_record("r", RecordType.STEP, 3, 30, b"x" * 100)  # full: it waits in its ring
    assert not buf.put_control("r", b'{"type":"heartbeat"}', droppable=True)  # dropped and counted
    assert buf.put_control("r", b'{"type":"gone"}')  # a rank's leaving always enters
    assert (buf.refused_records, buf.dropped_heartbeats) == (1, 1)
    head = buf.head(2 * (100 + FRAME_OVERHEAD))
    assert [f.seq for f in head] == [1, 2] and [f.record.step for f in head] == [0, 1]
    assert buf.confirm(head[-1].seq) == 2  # the home took them: room again
    assert buf.put_record("r", RecordType.STEP, 3, 30, b"x" * 100)
    assert [(f.seq, f.WhichOneof("body")) for f in buf.head(1 << 20)] == [(3, "record"), (4, "control"),
                                                                           (5, "record")]
    assert buf.drop_ring("r") == 3 and len(buf) == 0 and buf.bytes == 0


def test_the_node_holds_records_while_the_home_is_away_and_delivers_each_once_in_order(
        certs: Settings, home: tuple[Home, Run]) -> None:
    h, run = home
    port = free_port()
    server, _ = serve(h, f"127.0.0.1:{port}", home_credentials(certs), 1 << 24)
    fwd = Forwarder(f"127.0.0.1:{port}", node_credentials(certs), "node1", limit_bytes=1 << 20)
    fwd.start()
    try:
        hello = {"type": wire.HELLO, "job": JOB, "rank": 1, "world_size": 2, "splits": {"train": 8}}
        sink = fwd.attached("ring1", hello)
        position = 0
        for s in range(10):
            run.apply_record(RecordType.STEP, s, step(s, 0), 10 * s)  # rank 0's own, in lane 0
        for s in range(5):
            sink.apply_record(RecordType.STEP, s, step(s, 1), position)
            position += 10
        wait_for(lambda: sorted(curve(run)) == list(range(5)), 10, "steps 0..4 of both ranks")
        # The home confirms what it applied a moment after applying it: until then the frames stay held (a
        # home that went away first is sent them again, and skips what it has)
        wait_for(lambda: len(fwd.buffer) == 0, 10, "the home's confirmation of steps 0..4")
        server.stop(0).wait()  # the home goes away
        for s in range(5, 10):
            sink.apply_record(RecordType.STEP, s, step(s, 1), position)
            position += 10
        wait_for(lambda: not fwd.reachable, 10, "a failed call")
        assert len(fwd.buffer) == 5 and sorted(curve(run)) == list(range(5))  # held, in order
        h.stop()  # back as a new home (a restarted daemon): forwarded.json places the node's ring again
        h = Home(h.control, h.registry, h.rings.path.parent)
        server, _ = serve(h, f"127.0.0.1:{port}", home_credentials(certs), 1 << 24)
        wait_for(lambda: len(fwd.buffer) == 0, 15, "the held frames delivered")
        wait_for(lambda: sorted(curve(run)) == list(range(10)), 5, "steps 5..9")
        assert curve(run) == {s: pytest.approx(s + 0.5) for s in range(10)}  # the mean of both ranks, once
        assert run.samples.get("train").encounters.sum() == 20  # ten steps, one sample per rank each
        assert fwd.failures >= 1 and h.malformed == 0 and h.frames == 5
    finally:
        fwd.stop(flush_seconds=0)
        server.stop(0)
        h.stop()


def test_a_full_buffer_leaves_records_in_the_ring_and_a_node_of_another_ca_is_refused(
        certs: Settings, home: tuple[Home, Run], tmp_path: Path) -> None:
    h, run = home
    port = free_port()
    server, _ = serve(h, f"127.0.0.1:{port}", home_credentials(certs), 1 << 24)
    generate_certs(tmp_path / "other")  # a CA the home does not trust
    other = Settings(weightslab_forward_cert_dir=tmp_path / "other")
    fwd = Forwarder(f"127.0.0.1:{port}", node_credentials(other), "intruder", limit_bytes=4096)
    fwd.start()
    try:
        sink = fwd.attached("ring1", {"type": wire.HELLO, "job": JOB, "rank": 1, "world_size": 2})
        with pytest.raises(OSError, match="forwarding buffer full"):
            for s in range(1000):
                sink.apply_record(RecordType.STEP, s, step(s, 1), 10 * s)
        wait_for(lambda: fwd.failures >= 1, 10, "the handshake refused")
        assert not fwd.reachable and h.frames == 0 and not h.attached and curve(run) == {}
    finally:
        fwd.stop(flush_seconds=0)
        server.stop(0)


def test_node_settings_and_certificates_are_checked_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(NodesError, match="not both"):
        NodeLink(Settings(weightslab_forward_to="a:1", weightslab_forward_listen="127.0.0.1:0"))
    with pytest.raises(NodesError) as caught:
        NodeLink(Settings(weightslab_forward_to="a:1", weightslab_forward_cert_dir=tmp_path / "none"))
    assert str(caught.value) == f"WEIGHTSLAB_FORWARD_CERT_DIR={tmp_path / 'none' / 'ca.crt'}: file not found " \
                                "(run 'weightslabd certs' to create one)"


def test_a_listen_address_in_use_is_one_line(certs: Settings, home: tuple[Home, Run], tmp_path: Path) -> None:
    h, _ = home
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        link = NodeLink(certs.model_copy(update={"weightslab_forward_listen": listen}))
        with pytest.raises(NodesError) as caught:
            link.listen_for_nodes(h.control, h.registry, tmp_path / "rt")
    assert str(caught.value).startswith(f"WEIGHTSLAB_FORWARD_LISTEN={listen}: cannot listen (")
    assert "\n" not in str(caught.value)
