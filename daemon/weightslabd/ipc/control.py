"""The control channel's daemon end: a ROUTER socket in the private runtime directory.

One thread owns the socket. It welcomes trainers and attaches their rings, answers heartbeats,
sends the user's commands down and matches the acks, and notices dead trainers (pid gone) so their
ring is drained and unlinked and the run marked crashed.
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog
import zmq

from weightslab_shim import wire
from weightslab_shim.poke import Poke
from weightslab_shim.ring import RingError, RingReader, list_rings, shm_path, unlink
from weightslab_shim.runtime import control_endpoint, is_ring_name, is_run_id, ring_prefix
from weightslabd.ipc.ingest import RecordSink, RingDrain
from weightslabd.ipc.jobs import Jobs, hello_for_job, job_and_rank, restart_of, ring_base
from weightslabd.ipc.ring_record import RingRecord
from weightslabd.store import checkpoints
from weightslabd.store.run import PendingCommand, Run
from weightslabd.store.runs import RunRegistry

log = structlog.get_logger("weightslabd.ipc.control")
TICK = 0.1  # liveness checks, while trainers are attached
DETACH_WAIT = 5.0  # seconds a new worker group waits for the last records of the one before it
IDLE_POLL_MS = 1000  # the longest sleep with none attached (a frame or a poke wakes it at once)
SHIM_MESSAGES = frozenset({wire.HELLO, wire.HEARTBEAT, wire.ACK, wire.REGISTER, wire.END, wire.CHECKPOINT})
ANNOUNCED = "rings.json"  # in the runtime directory: the rings hellos named, for boot-time recovery
RING_RUN_ID_BYTES = 48  # the ring header keeps this much of the run id
DENY_IDS_MAX = 10_000  # a re-sent discard with more ids than this travels as a packed mask


class AnnouncedRings(RingRecord):
    """Rings a hello on our private control socket named, until they are unlinked. Kept in the
    private runtime directory: after a restart only these are read back (a segment someone merely
    put in /dev/shm under our prefix never is)."""

    UNREADABLE = "record of announced rings unreadable; no ring will be recovered from it"
    UNSAVED = "record of announced rings not saved"  # only a double crash needs it: attaching goes on

    def add(self, name: str, run_id: str, pid: int, **extra: Any) -> None:
        """extra: `run` (the run a resumed trainer's ring feeds) and `base` (RingDrain's)."""
        with self._lock:
            entry = {"run_id": run_id, "pid": pid, **extra}
            if self.rings.get(name) != entry:
                self.rings[name] = entry
                self._save()

    def discard(self, name: str) -> None:
        with self._lock:
            if self.rings.pop(name, None) is not None:
                self._save()


@dataclass
class Attachment:
    identity: bytes
    run: Run
    pid: int
    drain: RingDrain
    last_seen: float
    stalled: bool = False
    rank: int = 0  # in a torchrun job (jobs.py): commands go to rank 0, which hands them on
    forwarded: bool = False  # its records go to the job's home on another node (nodes/forwarder.py)

    @property
    def label(self) -> str:
        return f"pid {self.pid} run {self.run.run_id}" + (f" rank {self.rank}" if self.rank else "")


def _own_file(name: str) -> bool:
    try:
        st = os.lstat(shm_path(name))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def unacked_denies(run: Run) -> list[tuple[int, str, dict[str, Any]]]:
    """Discards and restores the trainer has not acknowledged (made while it was away), each under its
    edit's id, so that its ack journals it as applied, with the step; the full deny lists re-sent after
    them leave the trainer's exactly the daemon's. Call under the run lock."""
    out: list[tuple[int, str, dict[str, Any]]] = []
    for seq, entry in sorted(run.unacked_edits.items()):
        table = run.samples.get(str(entry.get("split"))) if entry.get("kind") == "deny" else None
        if table is None:
            continue
        args: dict[str, Any] = {"split": entry["split"], "ids": entry["ids"], "deny": bool(entry["deny"])}
        if len(entry["ids"]) > DENY_IDS_MAX:  # as the servicer sends them: a packed mask
            ids = np.asarray(entry["ids"], dtype=np.int64)
            mask = np.zeros(table.size, dtype=bool)
            mask[ids[(ids >= 0) & (ids < table.size)]] = True
            args = {"split": entry["split"], "mask": wire.pack_mask(mask), "deny": bool(entry["deny"])}
        out.append((seq, "deny", args))
    return out


def sees_files(hello: wire.Message) -> bool:
    """Whether this daemon sees the trainer's file system: the script folder the hello names is the very
    same one here (device and inode), not just a path that happens to exist (another container, a host).
    Then samples whose image file is readable send no pixels for their previews."""
    ident = hello.get("script_dir_id")
    if not (isinstance(ident, list) and len(ident) == 2 and all(isinstance(n, int) for n in ident)):
        return False
    try:
        st = os.stat(str(hello.get("script_dir", "")))
    except (OSError, ValueError):
        return False
    return [st.st_dev, st.st_ino] == ident


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Forwarding(Protocol):
    """A forwarding node's link to the home of its jobs (nodes/forwarder.py)."""

    home: str

    def forwards(self, hello: wire.Message) -> bool:
        """Whether this hello's job has its home on another node."""

    def attached(self, ring: str, hello: wire.Message) -> RecordSink:
        """Where the rank's ring records go (to the home, in order)."""

    def control(self, ring: str, msg: wire.Message) -> None:
        """A message of the rank the home should hear of (register, heartbeat)."""

    def gone(self, ring: str, status: str) -> None:
        """The rank left (its ring drained): ended, crashed or detached."""


class ControlServer:
    def __init__(self, runtime_dir: Path, registry: RunRegistry, *, hp_sync: bool, heartbeat_timeout: float) -> None:
        self.runtime_dir = runtime_dir
        self.endpoint = control_endpoint(runtime_dir)
        self.prefix = ring_prefix(runtime_dir)
        self.announced = AnnouncedRings(runtime_dir / ANNOUNCED)
        self.jobs = Jobs(runtime_dir)
        self.registry = registry
        self.hp_sync = hp_sync
        self.heartbeat_timeout = heartbeat_timeout
        self.attachments: dict[bytes, Attachment] = {}
        self._outbox: deque[tuple[bytes, wire.Message]] = deque()
        self._poke = Poke()  # wakes the socket's thread for the outbox and for stop
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)
        self.rejected_frames = 0
        self.wakes = 0  # times the socket's thread woke: a frame, a poke or a liveness check
        self._detaching: list[tuple[Run, threading.Thread]] = []  # final drains of dead trainers (this thread's)
        self._journaler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-journal")
        self.heartbeat_hooks: list[Callable[[Attachment, wire.Message], None]] = []  # e.g. evaluation progress
        self.forwarding: Forwarding | None = None  # set on a forwarding node (nodes/)
        self.remote_runs: Callable[[], list[Run]] = list  # on a home: runs other nodes' ranks feed (nodes/home.py)
        self.attach_lock = threading.RLock()  # a job's run is chosen once, by local and forwarded hellos alike

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"control socket {self.endpoint} did not come up")

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._poke()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._poke.close()
        self._journaler.shutdown(wait=True)  # checkpoints reported so far are journaled before the runs close
        for att in list(self.attachments.values()):
            # Leave rings in place: trainers keep writing and a restarted daemon drains them.
            att.drain.stop(final_drain=True, unlink=False)
            if att.forwarded and self.forwarding is not None:
                self.forwarding.gone(att.drain.reader.name, "detached")
            att.run.manifest["status"] = "detached"
            att.run.save_manifest()
        self.attachments.clear()

    def recover_orphans(self) -> None:
        """Rings of trainers that died while no daemon ran: drain those a hello announced into their
        runs, then unlink them. Anything else under our prefix that is not a ring of ours (another
        user's file, a malformed one) is skipped with one line and left alone."""
        announced = dict(self.announced.rings)
        for name in sorted(set(list_rings(self.prefix)) | set(announced)):
            try:
                self._recover(name, announced.get(name))
            except Exception as exc:  # noqa: BLE001 - one segment never stops a boot
                log.error("shared-memory segment skipped", ring=name, error=f"{type(exc).__name__}: {exc}")

    def _recover(self, name: str, entry: dict[str, Any] | None) -> None:
        if not is_ring_name(name, self.prefix):
            self.announced.discard(name)
            log.warning("shared-memory segment skipped", ring=name, error="not a ring name of this daemon")
            return
        if not os.path.lexists(shm_path(name)):
            self.announced.discard(name)  # unlinked while we were down
            return
        try:
            reader = RingReader(name)
        except RingError as exc:
            self.announced.discard(name)
            if _own_file(name) and not pid_alive(int(name[len(self.prefix):].split(".")[0])):
                # Ours, and its trainer died before writing the header: nothing to read.
                log.warning("unreadable ring of a dead trainer removed", ring=name, error=str(exc))
                self._unlink(name)
            else:
                log.warning("shared-memory segment skipped", ring=name, error=str(exc))
            return
        info = reader.info
        if pid_alive(info.writer_pid):
            reader.close()
            return  # its trainer lives and will say hello
        run = None
        if entry is None:
            what = "ring of a dead trainer that never attached removed"
        elif (entry.get("pid") != info.writer_pid
              or str(entry.get("run_id"))[:RING_RUN_ID_BYTES] != info.run_id):
            what = "ring of a dead trainer removed unread: it is not the one its hello announced"
        else:
            what = "ring of a dead trainer recovered and removed"
            run = self.registry.get(str(entry.get("run") or entry["run_id"]))
        if run is not None:
            drain = RingDrain(reader, run, f"pid {info.writer_pid} (dead) run {run.run_id}",
                              int((entry or {}).get("base", 0)))
            drain.drain_all()
            run.manifest["status"] = "ended" if reader.writer_closed else "crashed"
            run.save_manifest()
        log.warning(what, ring=name, run=info.run_id, pid=info.writer_pid, known_run=run is not None)
        reader.close()
        if self._unlink(name):
            self.announced.discard(name)

    def _unlink(self, name: str) -> bool:
        try:
            unlink(name)
            return True
        except OSError as exc:
            log.error("ring segment could not be removed", ring=name, error=exc.strerror or str(exc))
            return False

    # -- the socket thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME + 64)
        sock.bind(self.endpoint)
        os.chmod(self.endpoint[len("ipc://"):], 0o600)
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._poke.fd, zmq.POLLIN)
        next_tick = 0.0
        try:
            while not self._stop.is_set():
                # asleep until a frame, a poke (the outbox, stop) or the next liveness check: no wake
                # every few milliseconds (an idle daemon used 13 ms of CPU a second polling every 5)
                wait_ms = max(0.0, next_tick - time.monotonic()) * 1000 if self.attachments else IDLE_POLL_MS
                ready = poller.poll(int(wait_ms) + 1)
                self.wakes += 1
                if any(s is sock for s, _ in ready):
                    for _ in range(1000):
                        try:
                            parts = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._receive(sock, parts)
                self._poke.clear()  # before the outbox: a later send_command pokes again
                while self._outbox:
                    identity, msg = self._outbox.popleft()
                    self._send(sock, identity, msg)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK
                    try:
                        self._check_liveness(now)
                    except Exception as exc:  # noqa: BLE001 - keep serving every other trainer
                        log.error("liveness check failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            sock.close(0)
            ctx.term()

    def _send(self, sock: Any, identity: bytes, msg: wire.Message) -> None:
        try:
            sock.send_multipart([identity, wire.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # peer gone: its state is re-sent when it says hello again

    def _receive(self, sock: Any, parts: list[bytes]) -> None:
        identity = parts[0]
        att = self.attachments.get(identity)
        sender = att.label if att else f"peer {identity.hex()}"
        if len(parts) != 2:
            self.rejected_frames += 1
            log.error("control message rejected", sender=sender, error=f"expected 1 frame, got {len(parts) - 1}")
            return
        try:
            msg = wire.decode(parts[1])
        except wire.ProtocolError as exc:
            self.rejected_frames += 1
            log.error("control message rejected", sender=sender, error=str(exc))
            self._send(sock, identity, {"type": wire.REJECT, "reason": str(exc)})
            return
        try:
            self._handle(sock, identity, att, msg)
        except (KeyError, TypeError, ValueError) as exc:
            self.rejected_frames += 1
            problem = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            log.error("control message rejected", sender=sender, type=msg.get("type"), error=problem)
            self._send(sock, identity, {"type": wire.REJECT, "reason": f"bad {msg.get('type')} message: {problem}"})
        except Exception as exc:  # noqa: BLE001 - e.g. a run folder that cannot be written: this thread serves all
            self.rejected_frames += 1
            problem = f"{type(exc).__name__}: {exc}"
            log.error("control message failed", sender=sender, type=msg.get("type"), error=problem)
            self._send(sock, identity, {"type": wire.REJECT, "reason": f"weightslabd could not handle "
                                                                       f"{msg.get('type')}: {problem}"})

    def _handle(self, sock: Any, identity: bytes, att: Attachment | None, msg: wire.Message) -> None:
        kind = msg["type"]
        if kind not in SHIM_MESSAGES:
            raise ValueError(f"unknown message type {kind!r}")
        if kind == wire.HELLO:
            with self.attach_lock:
                self._hello(sock, identity, msg)
            return
        if att is None:
            self._send(sock, identity, {"type": wire.WHO})  # a trainer from before our restart: hello again
            return
        att.last_seen = time.monotonic()
        att.stalled = False
        run = att.run
        if kind == wire.HEARTBEAT:
            # No run lock here: an fsync in progress must not delay the answer every trainer waits for.
            run.paused = bool(msg.get("paused", run.paused))
            run.dropped = max(run.dropped, int(msg.get("dropped", 0)))
            run.manifest["status"] = "paused" if run.paused else "running"
            self._send(sock, identity, {"type": wire.PONG})
            for hook in self.heartbeat_hooks:  # each must be quick: this thread serves every trainer
                hook(att, msg)
        elif kind == wire.ACK:
            self._ack(run, msg)
        elif kind == wire.REGISTER:
            with run.lock:
                for split, size in dict(msg.get("splits") or {}).items():
                    run.samples.ensure_split(str(split), int(size))
                run.hparams.update(dict(msg.get("hparams") or {}))
            run.save_manifest()
        elif kind == wire.CHECKPOINT:  # journaled (fsync) off this thread, which every trainer needs; in order
            self._journaler.submit(self._checkpoint_written, run, msg)
        elif kind == wire.END:
            run.step = max(run.step, int(msg.get("step", 0)))
            self._detach(att, status="ended", unlink=True)
            self._send(sock, identity, {"type": wire.END_OK})
            log.info("trainer finished", sender=att.label, step=msg.get("step"))
        if att.forwarded and self.forwarding is not None and kind in (wire.HEARTBEAT, wire.REGISTER):
            self.forwarding.control(att.drain.reader.name, msg)

    def _hello(self, sock: Any, identity: bytes, msg: wire.Message) -> None:
        if msg.get("protocol") != wire.PROTOCOL_VERSION:
            raise ValueError(f"protocol {msg.get('protocol')} is not supported (this daemon speaks "
                             f"{wire.PROTOCOL_VERSION})")
        run_id, pid, ring_name = self._check_names(msg)
        ring_run_id = run_id
        resumed = checkpoints.resume_target(self.registry, msg)  # WEIGHTSLAB_RESUME: the run it continues
        if resumed is not None:
            msg, run_id = dict(msg, run_id=resumed), resumed
        job, rank = job_and_rank(msg)
        restart = restart_of(msg) if job else 0
        job_run = self.jobs.run_of(job) if job and resumed is None else None
        forwarded = bool(job and self.forwarding is not None and self.forwarding.forwards(msg))
        if job_run is not None and self.registry.get(job_run) is not None:  # a later rank of a known job
            msg, run_id = hello_for_job(msg, job_run), job_run
        for other in [a for a in self.attachments.values() if a.run.run_id == run_id]:
            if job and other.rank != rank and other.drain.reader.name != ring_name:
                continue  # another rank of the same job: it stays
            if other.drain.reader.name == ring_name:  # the same trainer saying hello again
                self.attachments[identity] = other  # add before removing: senders never see it missing
                if other.identity != identity:
                    self.attachments.pop(other.identity, None)
                other.identity, other.last_seen = identity, time.monotonic()
                self._welcome(identity, other.run, sees_files(msg) and not other.forwarded, resumed is not None,
                              restart > 0)
                return
            self.attachments.pop(other.identity, None)
            other.drain.stop(final_drain=True, unlink=False)
        try:
            reader = RingReader(ring_name)
        except RingError as exc:
            raise ValueError(str(exc)) from None
        if reader.info.run_id != ring_run_id[:RING_RUN_ID_BYTES] or reader.info.writer_pid != pid:
            reader.close()
            raise ValueError(f"ring {ring_name} belongs to run {reader.info.run_id} pid {reader.info.writer_pid}")
        try:
            run = self.registry.attach(msg)
        except BaseException:
            reader.close()
            raise
        known = self.announced.rings.get(ring_name) or {}
        base = int(known.get("base", run.last_position + 1 if resumed and not known else 0))
        if forwarded:  # records go to the home as the ring has them: the home puts them in the rank's lane
            assert self.forwarding is not None and job is not None
            base = 0
            self.jobs.note(job, run_id)
            run.manifest["home"] = self.forwarding.home  # this node's Studio lists the run by where it lives
            name = str(run.manifest.get("run_name") or run_id)
            if self.forwarding.home not in name:
                run.manifest["run_name"] = f"{name} (forwarded to {self.forwarding.home})"
            run.save_manifest()
        elif job:  # a ring seen before keeps its base; a new one starts at its worker group's slot in its lane
            group_slot = self._note_group(run, job, rank, restart, int(msg.get("world_size", 1)))
            base = int(known["base"]) if known else ring_base(rank, group_slot, run.lane_next(rank))
            self.jobs.note(job, run_id)
        extra = {"run": run_id, "base": base} if resumed or job else {}
        self.announced.add(ring_name, ring_run_id, pid, **extra)
        sender = f"pid {pid} run {run_id}" + (f" rank {rank}" if job else "")
        if forwarded:
            assert self.forwarding is not None
            drain = RingDrain(reader, self.forwarding.attached(ring_name, msg), sender + " (forwarded)")
        else:
            drain = RingDrain(reader, run, sender, base)
        att = Attachment(identity, run, pid, drain, time.monotonic(), rank=rank, forwarded=forwarded)
        self.attachments[identity] = att
        if not forwarded:  # a forwarded job's Studio is the home's: this node keeps its current run
            self.registry.make_current(run_id)
        drain.start()
        self._release_idle()  # the run that was current may now be of no use
        log.info("trainer attached", sender=att.label, ring=ring_name, folder=str(run.folder),
                 splits=msg.get("splits"), backlog_bytes=reader.pending(),
                 **({"home": self.forwarding.home} if forwarded and self.forwarding is not None else {}))
        # A forwarded rank sends its pixels: the home, on another node, may not see its files.
        self._welcome(identity, run, sees_files(msg) and not forwarded, resumed is not None, restart > 0)

    def _check_names(self, msg: wire.Message) -> tuple[str, int, str]:
        """The names a hello brings, exactly as the shim builds them; anything else is refused before
        a file is touched."""
        run_id, pid, ring = msg["run_id"], msg["pid"], msg.get("ring") or {}
        if not is_run_id(run_id):
            raise ValueError(f"run id {run_id!r} is not one the shim makes (<name>-<YYYYmmdd>-<HHMMSS>-<6 hex>, "
                             "a plain file name)")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid {pid!r} is not a process id")
        if not isinstance(ring, dict):
            raise ValueError(f"ring {ring!r} is not an object with a name")
        ring_name = ring["name"]
        if not is_ring_name(ring_name, self.prefix):
            raise ValueError(f"ring {ring_name!r} is not a ring name of this runtime directory "
                             f"({self.prefix}<pid>.<8 hex>)")
        script_dir = msg.get("script_dir")
        if script_dir is not None and not (isinstance(script_dir, str) and os.path.isabs(script_dir)
                                           and "\0" not in script_dir and ".." not in Path(script_dir).parts):
            raise ValueError(f"script_dir {script_dir!r} is not an absolute path without '..'")
        return run_id, pid, ring_name

    def _welcome(self, identity: bytes, run: Run, reads_files: bool, resume: bool = False,
                 restarted: bool = False) -> None:
        # Under the run lock, as edits are journaled and queued: the re-sent state and any new edit
        # reach the trainer in the order they were journaled. A resume's checkpoint loads before them.
        extra: dict[str, Any] = {"resume_from": checkpoints.resume_from(run)} if resume else {}
        if restarted:  # a worker group torchrun restarted: the run's latest checkpoint, else the step reached
            extra["restart_from"] = {"checkpoint": checkpoints.resume_from(run),
                                     "step": int(run.group.get("from_step", run.step))}
        with run.lock:
            resend = [*unacked_denies(run), *run.commands_to_resend()]
            self._outbox.append((identity, {"type": wire.WELCOME, "run_id": run.run_id, "hp_sync": self.hp_sync,
                                            "previews": run.preview_masks(), "reads_files": reads_files,
                                            "folder": str(run.folder.resolve()), "follows": len(resend), **extra}))
            for seq, op, args in resend:
                cmd_id = f"e{seq}" if seq else f"s{next(self._ids)}"
                self._outbox.append((identity, {"type": wire.COMMAND, "cmd_id": cmd_id, "op": op, "args": args}))
        self._poke()

    def _note_group(self, run: Run, job: str, rank: int, restart: int, world_size: int) -> int:
        """The slot of the worker group a job's hello belongs to. The first rank of a new group (torchrun
        restarted the workers, or a re-launch of another job continues the run) starts it: its curves
        merge over its own world size, and the group is journaled (off this thread) into `restarts`."""
        with run.lock:
            current = dict(run.group)
        if job == current.get("job") and restart <= int(current.get("restart", 0)):
            return int(current.get("slot", 0))
        # The group it follows may have died a moment ago, its ranks' rings not yet read to the end: every
        # record they hold is applied first, so that the new group counts on past every step they named
        # (a restart without a checkpoint) whatever the ingest threads' lag.
        for detached_run, thread in list(self._detaching):  # ranks found dead: their final drains
            if detached_run is run:
                thread.join(timeout=DETACH_WAIT)
        for att in [a for a in list(self.attachments.values()) if a.run is run and not a.forwarded]:
            att.drain.drain_all()  # ranks not found dead yet (the drain's lock keeps its thread out)
        group = run.new_worker_group(job, restart, world_size)
        found = checkpoints.resume_from(run)
        resumed_from = f"{found['hash']}@{found['step']}" if found else None  # what its welcome names
        log.warning("a new worker group of the job attaches to the run", run=run.run_id, restart=restart, rank=rank,
                    world_size=world_size, step=run.step, resumed_from=resumed_from)
        self._journaler.submit(self._restart_recorded, run, {"kind": "restart", **group, "rank": rank,
                                                             "step": run.step, "resumed_from": resumed_from})
        return int(group["slot"])

    def _restart_recorded(self, run: Run, entry: dict[str, Any]) -> None:
        try:
            run.journal_edit(entry)
            run.save_manifest()
        except OSError as exc:
            log.error("restart not journaled", run=run.run_id, error=str(exc)[:300])

    def _checkpoint_written(self, run: Run, msg: wire.Message) -> None:
        try:
            checkpoints.record_written(run, msg)
        except Exception as exc:  # noqa: BLE001 - a bad message or a full disk: logged, never raised
            log.error("checkpoint not journaled", run=run.run_id, error=f"{type(exc).__name__}: {exc}"[:300])

    def _checkpoint_loaded(self, run: Run, path: str) -> None:
        try:
            checkpoints.record_loaded(run, path)
        except Exception as exc:  # noqa: BLE001 - only the run book's last-used time is at stake
            log.error("checkpoint load not journaled", run=run.run_id, error=f"{type(exc).__name__}: {exc}"[:300])

    def _ack(self, run: Run, msg: wire.Message) -> None:
        cmd_id = str(msg.get("cmd_id"))
        ok = bool(msg.get("ok"))
        step = int(msg.get("step", -1))
        if cmd_id.startswith("e"):
            run.record_applied(int(cmd_id[1:]), step, ok, str(msg.get("message", "")))
        elif cmd_id == "resume" and ok:  # a resumed trainer loaded the checkpoint the welcome named
            self._journaler.submit(self._checkpoint_loaded, run, str(msg.get("restored", "")))
        elif cmd_id == "resume":
            log.error("the trainer could not load the checkpoint it resumes from", run=run.run_id,
                      error=str(msg.get("message", ""))[:300])
        with run.lock:
            pending = run.pending.pop(cmd_id, None)
        if pending is not None:
            pending.ack = msg
            pending.done.set()

    def _check_liveness(self, now: float) -> None:
        for att in list(self.attachments.values()):
            if not pid_alive(att.pid):
                log.warning("trainer died; run marked crashed", sender=att.label, step=att.run.step)
                self.attachments.pop(att.identity, None)
                # The final drain may take seconds: off this thread, which every other trainer needs.
                thread = threading.Thread(target=self._detach_logged, args=(att, "crashed"), name="detach",
                                          daemon=True)
                self._detaching = [(run, t) for run, t in self._detaching if t.is_alive()] + [(att.run, thread)]
                thread.start()
            elif now - att.last_seen > self.heartbeat_timeout and not att.stalled:
                att.stalled = True
                log.warning("trainer silent but alive", sender=att.label, silent_s=round(now - att.last_seen, 1),
                            timeout_s=self.heartbeat_timeout)

    def _detach_logged(self, att: Attachment, status: str) -> None:
        try:
            self._detach(att, status=status, unlink=True)
        except Exception as exc:  # noqa: BLE001
            log.error("detaching a trainer failed", sender=att.label, error=f"{type(exc).__name__}: {exc}")

    def _detach(self, att: Attachment, *, status: str, unlink: bool) -> None:
        self.attachments.pop(att.identity, None)
        if att.drain.stop(final_drain=True, unlink=unlink):
            self.announced.discard(att.drain.reader.name)
        if att.forwarded and self.forwarding is not None:  # after its last records
            self.forwarding.gone(att.drain.reader.name, status)
        others = (any(a.run is att.run for a in list(self.attachments.values()))  # a job's other ranks
                  or any(r is att.run for r in self.remote_runs()))  # on other nodes
        with att.run.lock:
            if not others:
                att.run.manifest["status"] = status
            if not others or att.rank == 0:  # rank 0 takes a job's commands
                for pending in att.run.pending.values():
                    pending.done.set()  # nobody will answer these now
                att.run.pending.clear()
            att.run.changed.notify_all()
        att.run.save_manifest()
        self._release_idle()

    def _release_idle(self) -> None:
        """Runs that are neither current nor attached leave memory (their snapshot written), off this thread."""
        keep = {a.run.run_id for a in list(self.attachments.values())} | {r.run_id for r in self.remote_runs()}
        threading.Thread(target=self.registry.release_idle, args=(keep,), name="release-runs", daemon=True).start()

    # -- called from other threads ------------------------------------------------------------------

    def send_command(self, run: Run, op: str, args: dict[str, Any], *, edit_seq: int = 0) -> PendingCommand | None:
        """Queue a command for the run's trainer; None when no trainer is attached."""
        att = min((a for a in list(self.attachments.values()) if a.run is run), key=lambda a: a.rank, default=None)
        if att is None:
            return None
        cmd_id = f"e{edit_seq}" if edit_seq else f"q{next(self._ids)}"
        pending = PendingCommand(cmd_id, op, args)
        with run.lock:
            run.pending[cmd_id] = pending
        self._outbox.append((att.identity, {"type": wire.COMMAND, "cmd_id": cmd_id, "op": op, "args": args}))
        self._poke()
        return pending
