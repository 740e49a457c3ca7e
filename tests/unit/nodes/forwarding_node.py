"""A forwarding node's buffer in a process of its own, for test_spool.py: `forwarding_node.py CERTS SPOOL HOME`.

Forwards steps 0..4 of rank 1 and waits until the home confirmed them ("confirmed"); after a line on stdin,
takes steps 5..9 (the home is away by then), says "held" and waits to be killed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from unit.nodes.support import JOB, step  # noqa: E402
from weightslab_shim import wire  # noqa: E402
from weightslab_shim.ring import RecordType  # noqa: E402
from weightslabd.config import Settings  # noqa: E402
from weightslabd.nodes.forwarder import Forwarder  # noqa: E402
from weightslabd.security.node_tls import node_credentials  # noqa: E402


def main(certs: str, spool: str, home: str) -> None:
    fwd = Forwarder(home, node_credentials(Settings(weightslab_forward_cert_dir=Path(certs))), "node1",
                    limit_bytes=1 << 20, spool=Path(spool))
    fwd.start()
    sink = fwd.attached("ring1", {"type": wire.HELLO, "job": JOB, "rank": 1, "world_size": 2, "splits": {"train": 8}})
    for s in range(5):
        sink.apply_record(RecordType.STEP, s, step(s, 1), 10 * s)
    deadline = time.monotonic() + 10
    while len(fwd.buffer) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("confirmed" if not len(fwd.buffer) else "not confirmed", flush=True)
    sys.stdin.readline()
    for s in range(5, 10):
        sink.apply_record(RecordType.STEP, s, step(s, 1), 10 * s)
    print("held", flush=True)
    sys.stdin.readline()  # killed here


if __name__ == "__main__":
    main(*sys.argv[1:4])
