"""A job's home: the daemon on rank 0's node takes the records other nodes' daemons forward.

`Forward` (protos/node_forwarding.proto) is served on WEIGHTSLAB_FORWARD_LISTEN over mutual TLS: a node
without a client certificate of the nodes' CA never gets past the handshake. Each frame goes into the
same path as a local rank's: a hello attaches the rank to its job's run (the job's run is made by rank
0's own hello, here: until then a node's hello is answered "unknown" and the node sends it again
later); its records go to `Run.apply_record` in the rank's lane (rank << LANE_BITS, ring positions
added), so duplicates sent again after a lost reply are dropped there, and curves merge over every
rank, local or not. Which lane a node's ring feeds is kept in `forwarded.json` in the runtime
directory, so a restarted home places the frames a node goes on sending.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

from weightslab_shim import wire
from weightslabd.ipc.control import ControlServer
from weightslabd.ipc.jobs import job_and_rank, restart_of, ring_base
from weightslabd.ipc.ring_record import RingRecord
from weightslabd.proto import node_forwarding_pb2 as pb
from weightslabd.proto import node_forwarding_pb2_grpc as pb_grpc
from weightslabd.store.run import Run
from weightslabd.store.runs import RunRegistry

log = structlog.get_logger("weightslabd.nodes.home")
FILE = "forwarded.json"
KEEP = 1000  # node rings remembered (the newest)
SILENT_SECONDS = 30.0  # a forwarded rank not heard of for this long counts as gone (it re-attaches if it speaks)


class ListenError(Exception):
    """WEIGHTSLAB_FORWARD_LISTEN cannot be bound; one line."""


@dataclass
class Remote:
    key: str
    run: Run
    rank: int
    base: int
    last_seen: float


class RemoteRings(RingRecord):
    """node|ring -> the run and lane base its records go to; kept in the private runtime directory."""

    UNREADABLE = "record of forwarded rings unreadable; nodes send their hellos again"
    UNSAVED = "record of forwarded rings not saved"  # only a restart of the home needs it: nodes send hellos then

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self.rings.get(key)

    def note(self, key: str, run_id: str, base: int, rank: int) -> None:
        entry = {"run": run_id, "base": base, "rank": rank}
        with self._lock:
            if self.rings.get(key) == entry:
                return
            self.rings.pop(key, None)
            self.rings[key] = entry
            while len(self.rings) > KEEP:
                self.rings.pop(next(iter(self.rings)))
            self._save()


class Home(pb_grpc.NodeForwardingServicer):
    def __init__(self, control: ControlServer, registry: RunRegistry, runtime_dir: Path) -> None:
        self.control = control
        self.registry = registry
        self.rings = RemoteRings(runtime_dir / FILE)
        self.attached: dict[str, Remote] = {}
        self._lock = threading.Lock()
        self.malformed = 0
        self.frames = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="forwarded-liveness", daemon=True)
        control.remote_runs = self.runs

    def runs(self) -> list[Run]:
        with self._lock:
            return [r.run for r in self.attached.values()]

    # -- the RPC --------------------------------------------------------------------------------------------

    def Forward(self, request_iterator: Iterator[pb.Frames], context: grpc.ServicerContext) -> pb.Taken:  # noqa: N802
        seq = 0
        for message in request_iterator:
            self.bytes += message.ByteSize()
            node = message.node[:300]
            for frame in message.frames:
                key = f"{node}|{frame.ring}"
                try:
                    placed = self._apply(key, frame)
                except OSError as exc:  # this disk refused: the node keeps the rest and sends it again
                    log.error("cannot store forwarded records; the node retries", node=node,
                              error=exc.strerror or str(exc))
                    return pb.Taken(seq=seq)
                if not placed:
                    return pb.Taken(seq=seq, unknown=[frame.ring])
                self.frames += 1
                if frame.seq:
                    seq = frame.seq
        return pb.Taken(seq=seq)

    def _apply(self, key: str, frame: pb.Frame) -> bool:
        """False when the frame's ring has no hello here (the node sends it, then the frame again)."""
        control = _control(frame) if frame.HasField("control") else None
        if control is not None and control.get("type") == wire.HELLO:
            return self._hello(key, control)
        remote = self._remote(key)
        if remote is None:
            return control is not None and control.get("type") == "gone"  # nothing to detach
        remote.last_seen = time.monotonic()
        if frame.HasField("record"):
            rec = frame.record
            try:
                remote.run.apply_record(rec.type, rec.step, memoryview(rec.payload), rec.position + remote.base)
            except OSError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad record must not stop the node's stream
                self.malformed += 1
                log.error("malformed forwarded record skipped", ring=key, rank=remote.rank,
                          error=f"{type(exc).__name__}: {exc}"[:300])
        elif control is None:
            self.malformed += 1
            log.error("malformed forwarded control message skipped", ring=key, rank=remote.rank)
        elif control.get("type") == wire.REGISTER:
            self._splits(remote.run, control)
        elif control.get("type") == wire.HEARTBEAT:
            dropped = control.get("dropped", 0)
            if isinstance(dropped, int):
                remote.run.dropped = max(remote.run.dropped, dropped)
        elif control.get("type") == "gone":
            self._gone(remote, str(control.get("status", "detached"))[:20])
        return True

    def _hello(self, key: str, hello: dict[str, Any]) -> bool:
        try:
            job, rank = job_and_rank(hello)
            restart = restart_of(hello) if job else 0
        except ValueError as exc:
            self.malformed += 1
            log.error("forwarded hello refused", ring=key, error=str(exc))
            return True
        if job is None or rank == 0:
            self.malformed += 1
            log.error("forwarded hello refused", ring=key, error="not a rank of a torchrun job" if job is None else
                      "rank 0 is the home's own: it never comes from another node")
            return True
        with self.control.attach_lock:
            run_id = self.control.jobs.run_of(job)
            run = self.registry.get(run_id) if run_id else None
            if run is None:
                return False  # rank 0 has not said hello here yet
            self._splits(run, hello)
            world = hello.get("world_size", 1)
            # As for a local rank's hello: its worker group (a restart), then its ring's place in its lane.
            slot = self.control._note_group(run, job, rank, restart, world if isinstance(world, int) else 1)
            known = self.rings.get(key)
            if known and known.get("run") == run.run_id:
                base = int(known["base"])
            else:
                base = ring_base(rank, slot, run.lane_next(rank))
            self.rings.note(key, run.run_id, base, rank)
            with self._lock:
                self.attached[key] = Remote(key, run, rank, base, time.monotonic())
            run.manifest["status"] = "paused" if run.paused else "running"
        log.info("forwarded rank attached", ring=key, run=run.run_id, rank=rank, restart=restart)
        return True

    def _remote(self, key: str) -> Remote | None:
        with self._lock:
            remote = self.attached.get(key)
        if remote is not None:
            return remote
        known = self.rings.get(key)  # a ring of before this daemon's restart
        run = self.registry.get(str(known["run"])) if known else None
        if known is None or run is None:
            return None
        remote = Remote(key, run, int(known["rank"]), int(known["base"]), time.monotonic())
        with self._lock:
            self.attached[key] = remote
        return remote

    @staticmethod
    def _splits(run: Run, msg: dict[str, Any]) -> None:
        splits = msg.get("splits") or {}
        if not isinstance(splits, dict):
            return
        with run.lock:
            for split, size in splits.items():
                if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                    run.samples.ensure_split(str(split), size)

    def _gone(self, remote: Remote, status: str) -> None:
        with self._lock:
            if self.attached.get(remote.key) is remote:
                del self.attached[remote.key]
            others = any(r.run is remote.run for r in self.attached.values())
        others = others or any(a.run is remote.run for a in list(self.control.attachments.values()))
        log.info("forwarded rank left", ring=remote.key, run=remote.run.run_id, rank=remote.rank, status=status)
        if not others:
            with remote.run.lock:
                remote.run.manifest["status"] = status
            remote.run.save_manifest()

    # -- liveness -------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._sweeper.ident is None:  # once, however many listeners serve it
            self._sweeper.start()

    def stop(self) -> None:
        self._stop.set()

    def _sweep(self) -> None:
        while not self._stop.wait(1.0):
            now = time.monotonic()
            with self._lock:
                silent = [r for r in self.attached.values() if now - r.last_seen > SILENT_SECONDS]
            for remote in silent:
                log.warning("forwarded rank silent; counted as gone until its node speaks again", ring=remote.key,
                            run=remote.run.run_id, rank=remote.rank, silent_s=round(now - remote.last_seen, 1))
                self._gone(remote, "detached")


def _control(frame: pb.Frame) -> dict[str, Any] | None:
    try:
        msg = json.loads(frame.control)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def serve(home: Home, listen: str, credentials: grpc.ServerCredentials, max_message_bytes: int) -> tuple[grpc.Server,
                                                                                                        int]:
    """The listener; (server, port bound). Raises ListenError with one line."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="forwarded"),
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", max_message_bytes),
                                  ("grpc.so_reuseport", 0)])
    pb_grpc.add_NodeForwardingServicer_to_server(home, server)
    try:
        port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise ListenError(f"WEIGHTSLAB_FORWARD_LISTEN={listen}: cannot listen ({exc})") from None
    if port == 0:
        raise ListenError(f"WEIGHTSLAB_FORWARD_LISTEN={listen}: cannot listen (address in use or not this host's)")
    server.start()
    home.start()
    return server, port
