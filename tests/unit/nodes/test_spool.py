"""A forwarding node's daemon killed (SIGKILL) with frames the home had not confirmed: the next one on the same
spool sends them, each once, in order; a last entry cut short by the kill is skipped, nothing else lost."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port
from waiting import wait_for

from weightslab_shim.ring import RecordType
from weightslabd.config import Settings
from weightslabd.nodes import buffer
from weightslabd.nodes.buffer import FRAME_OVERHEAD, FrameBuffer
from weightslabd.nodes.forwarder import Forwarder
from weightslabd.nodes.home import FILE, Home, serve
from weightslabd.security.node_tls import home_credentials, node_credentials
from weightslabd.store.run import Run

from .support import curve, step

NODE = Path(__file__).with_name("forwarding_node.py")


@pytest.mark.timeout(30)
def test_a_killed_node_sends_what_the_home_had_not_confirmed_at_its_next_start(
        certs: Settings, home: tuple[Home, Run], tmp_path: Path) -> None:
    h, run = home
    port = free_port()
    server, _ = serve(h, f"127.0.0.1:{port}", home_credentials(certs), 1 << 24)
    spool = tmp_path / "node-rt" / "forward-spool.wlf"
    node = subprocess.Popen([sys.executable, str(NODE), str(certs.weightslab_forward_cert_dir), str(spool),
                             f"127.0.0.1:{port}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    fwd = None
    try:
        for s in range(10):
            run.apply_record(RecordType.STEP, s, step(s, 0), 10 * s)  # rank 0's own
        assert node.stdout is not None and node.stdin is not None
        assert node.stdout.readline().strip() == "confirmed"  # the hello and steps 0..4, taken by the home
        assert sorted(curve(run)) == list(range(5)) and h.frames == 6
        server.stop(0).wait()  # the home goes away
        node.stdin.write("go\n")
        node.stdin.flush()
        assert node.stdout.readline().strip() == "held"  # steps 5..9 out of the ring, in the node's buffer
        node.send_signal(signal.SIGKILL)
        assert node.wait(5) == -signal.SIGKILL
        assert sorted(curve(run)) == list(range(5))
        torn = struct.pack("<II", 64, 0) + b"\x01" * 20  # a write the kill cut short
        with open(spool, "ab") as f:
            f.write(torn)

        h.stop()  # the home is back, restarted, and has lost which lane the node's ring feeds
        (h.rings.path.parent / FILE).unlink()
        h = Home(h.control, h.registry, h.rings.path.parent)
        server, _ = serve(h, f"127.0.0.1:{port}", home_credentials(certs), 1 << 24)
        fwd = Forwarder(f"127.0.0.1:{port}", node_credentials(certs), "node1", limit_bytes=1 << 20, spool=spool)
        fwd.start()
        assert fwd.buffer.spool is not None and fwd.buffer.spool.torn_bytes == len(torn)
        assert fwd.buffer.reloaded == 5 and fwd.buffer.hello_of("ring1")  # the hello, for the home's "unknown"
        wait_for(lambda: len(fwd.buffer) == 0, 10, "the spooled frames delivered")
        wait_for(lambda: sorted(curve(run)) == list(range(10)), 5, "steps 5..9")
        assert curve(run) == {s: pytest.approx(s + 0.5) for s in range(10)}  # the mean of both ranks, once
        assert run.samples.get("train").encounters.sum() == 20
        assert h.frames == 6 and h.malformed == 0  # the hello again and steps 5..9: none of 0..4 sent again
        fwd.stop(flush_seconds=0)
        fwd = None
        again = FrameBuffer(1 << 20, spool)  # all confirmed: nothing to send, the hello still kept
        assert len(again) == 0 and again.hello_of("ring1") and again.spool is not None
        assert again.spool.torn_bytes == 0
        again.close()
    finally:
        if node.poll() is None:
            os.kill(node.pid, signal.SIGKILL)
            node.wait()
        if fwd is not None:
            fwd.stop(flush_seconds=0)
        server.stop(0)
        h.stop()


def test_the_spool_keeps_only_what_is_unconfirmed_and_numbering_goes_on(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buffer, "COMPACT_MIN", 0)  # rewritten at every confirmation
    path = tmp_path / "spool"
    buf = FrameBuffer(1 << 20, path)
    assert buf.put_control("a", b'{"type":"hello"}', hello=True)
    assert all(buf.put_record(r, RecordType.STEP, s, 10 * s, b"x" * 1000) for s in range(3) for r in "ab")
    assert buf.confirm(5) == 5 and path.stat().st_size < 3 * 1000  # two records left (and the hello)
    assert buf.drop_ring("b") == 1
    buf.close()
    again = FrameBuffer(1 << 20, path)
    assert [(f.seq, f.ring, f.record.step) for f in again.head(1 << 20)] == [(6, "a", 2)]
    assert again.hello_of("a") == b'{"type":"hello"}' and again.bytes == 1000 + FRAME_OVERHEAD
    assert again.put_control("a", b"{}") and [f.seq for f in again.head(1 << 20)] == [6, 7]
    again.close()
