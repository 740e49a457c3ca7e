"""torchrun jobs: who this process is in its job, its share of each epoch, and edits taken in step.

Sharding follows `DistributedSampler`: one order per epoch, the same on every rank (seeded by seed +
epoch), rank r drawing the positions r, r + W, r + 2W... of it. It stays deny-aware: each global batch
is the next `batch_size * W` samples of the order that are not denied (read live), so a discard leaves
whichever rank would have drawn the sample, and the last global batch is padded with repeated ids to a
multiple of W (or dropped with drop_last). Every rank therefore draws the same number of batches, as
long as every rank holds the same deny mask and batch size at each step boundary: `StepSync` sees to
that, by applying every command at the same step on every rank.

`StepSync`: rank 0 alone takes commands from the daemon. At each step boundary it broadcasts, through
the job's own process group (gloo), the commands it has; every rank applies them before the step. A
pause holds every rank at that boundary; while paused the ranks meet once per tick, briefly, so none
waits inside a collective for long, and the resume reaches all of them at the same tick.

An evaluation pass in a job runs on every rank, each over its shard of the split (`eval_shard`). Before
each batch the ranks agree, with one all-reduce, whether to go on: rank 0 brings a cancel or its timeout,
any rank an error of its evaluation; so a cancel, which only rank 0 hears, stops every rank at the same
batch, and no rank is left waiting in a collective of the user's own evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from .data import DenyAwareBatchSampler

PAUSE_TICK = 0.05  # seconds between the ranks' meetings while paused
NONCE_KEY = "weightslab/job"  # in torchrun's agent store: the job's nonce (job_nonce)
STORE_TIMEOUT = 10.0


def job_of(env: Mapping[str, str]) -> str | None:
    """The job this process is a rank of, the same for every rank of it; None outside torchrun.
    torchrun sets TORCHELASTIC_RUN_ID ("none" without a rendezvous id); on one node the rendezvous
    address and the agent process (every local rank's parent, kept across elastic restarts) tell jobs
    apart otherwise. A job on several nodes is named alike on all of them: the run id, the rendezvous
    address and a nonce the ranks share through torchrun's agent store (`job_nonce`)."""
    if not all(env.get(k, "").strip() for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return None
    run = env.get("TORCHELASTIC_RUN_ID", "").strip()
    master = f"{env.get('MASTER_ADDR', '').strip()}:{env.get('MASTER_PORT', '').strip()}"
    if (not run or run == "none") and master == ":":
        return None
    if spans_nodes(env):
        key = f"{run}|{master}|{job_nonce(env)}"
    else:
        key = f"{run}|{master}|{socket.gethostname()}|{os.getppid()}"
    return "job-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def spans_nodes(env: Mapping[str, str]) -> bool:
    """Whether the job has ranks on other nodes (torchrun's LOCAL_WORLD_SIZE below WORLD_SIZE)."""
    local, world = env.get("LOCAL_WORLD_SIZE", "").strip(), env.get("WORLD_SIZE", "").strip()
    return local.isdigit() and world.isdigit() and int(local) < int(world)


def node_rank_of(env: Mapping[str, str]) -> int:
    """This node's place in the job (torchrun's GROUP_RANK): 0 on rank 0's node, whose daemon is the
    job's home; the other nodes' daemons forward to it (docs/distributed.md)."""
    group = env.get("GROUP_RANK", "").strip()
    return int(group) if group.isdigit() and spans_nodes(env) else 0


def job_nonce(env: Mapping[str, str]) -> str:
    """A value every rank of the job reads alike and no other job has: the first rank to ask puts a
    random one in torchrun's agent store (at MASTER_ADDR:MASTER_PORT, up for the job's life), the others
    read it. "" without the agent's store: then the run id and the rendezvous address alone name the job
    (give torchrun a unique --rdzv-id)."""
    if env.get("TORCHELASTIC_USE_AGENT_STORE", "").strip().lower() != "true":
        return ""
    try:
        from datetime import timedelta

        import torch.distributed as dist

        store: Any = dist.TCPStore(  # type: ignore[attr-defined]
            env["MASTER_ADDR"].strip(), int(env["MASTER_PORT"]), is_master=False,
            timeout=timedelta(seconds=STORE_TIMEOUT))
        value = store.compare_set(NONCE_KEY, "", os.urandom(8).hex())
        return value.decode() if isinstance(value, bytes) else str(value)
    except Exception as exc:  # noqa: BLE001 - the job is still named, less surely
        print(f"weightslab: torchrun's agent store did not answer ({type(exc).__name__}: {exc}); the job is named "
              "by its run id and rendezvous address only", file=sys.stderr)
        return ""


def restart_of(env: Mapping[str, str]) -> int:
    """How many times torchrun's elastic agent has restarted this job's workers (0 the first time)."""
    count = env.get("TORCHELASTIC_RESTART_COUNT", "").strip()
    return int(count) if count.isdigit() else 0


class ShardedBatchSampler(DenyAwareBatchSampler):
    """Deny-aware batches of this rank's share of each epoch (see the module docstring)."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, drop_last: bool = False, seed: int = 0, *,
                 rank: int, world_size: int) -> None:
        super().__init__(size, batch_size, shuffle, drop_last, seed)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """As DistributedSampler's: the next epoch's order is seeded by seed + epoch."""
        self.epoch = epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng(self.seed + epoch).permutation(self.size)

    def _new_order(self) -> np.ndarray:
        return self.epoch_order(self.epoch)

    def _begin_epoch(self) -> tuple[np.ndarray, int]:
        begun = super()._begin_epoch()
        self.epoch += 1  # the next epoch, unless set_epoch says otherwise
        return begun

    def __iter__(self) -> Iterator[list[int]]:
        order, pos = self._begin_epoch()
        while True:
            want = self.batch_size * self.world_size  # read live: a batch-size edit applies to the next batch
            taken, pos = _next_active(order, self.denied, pos, want)
            if taken.size == 0 or (taken.size < want and self.drop_last):
                return
            if taken.size < want:  # the epoch's last global batch: pad to a multiple of the world size
                taken = _padded(taken, order, self.denied, self.world_size)
            self.marks.append(pos)
            yield taken[self.rank::self.world_size].tolist()
            if pos >= order.size:
                return

    def __len__(self) -> int:
        active = self.size - int(self.denied.sum())
        per_batch = self.batch_size * self.world_size
        return active // per_batch if self.drop_last else -(-active // per_batch)


def _next_active(order: np.ndarray, denied: np.ndarray, pos: int, want: int) -> tuple[np.ndarray, int]:
    """The next `want` ids of `order` from `pos` that are not denied, and the position after the last."""
    window = max(want * 2, 64)
    while True:
        part = order[pos:pos + window]
        keep = np.flatnonzero(~denied[part])
        if keep.size >= want:
            return part[keep[:want]], pos + int(keep[want - 1]) + 1
        if pos + window >= order.size:
            return part[keep], order.size
        window *= 4


def _padded(taken: np.ndarray, order: np.ndarray, denied: np.ndarray, world: int) -> np.ndarray:
    """`taken` grown to a multiple of `world` with ids repeated from the start of the epoch's order."""
    short = -taken.size % world
    if short == 0:
        return taken
    active = order[~denied[order]]
    return np.concatenate([taken, np.resize(active, short)])


class StepSync:
    """Commands taken at the same step boundary on every rank (see the module docstring)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self._group: Any = None
        self._dist: Any = None
        self.exchanges = 0
        self.seconds = 0.0  # spent in exchanges, for bench/ddp.py

    def ready(self) -> bool:
        """Whether the job's process group is up (until it is, each rank applies what it gets alone)."""
        if self._group is not None:
            return True
        torch = sys.modules.get("torch")
        if torch is None:
            return False
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return False
        # A collective every rank reaches at its first step boundary after init, in the same order.
        self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self._dist = dist
        return True

    @property
    def up(self) -> bool:
        """Whether the ranks meet now (the group is up; until it is, each rank evaluates alone)."""
        return self._group is not None

    def agree(self, code: int) -> int:
        """The highest of every rank's `code`: one 8-byte all-reduce, between two evaluation batches."""
        import torch

        flag = torch.tensor([code], dtype=torch.int64)
        self._dist.all_reduce(flag, op=self._dist.ReduceOp.MAX, group=self._group)
        return int(flag.item())

    def exchange(self, take: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Rank 0's commands (what `take` gives there), on every rank. One small broadcast when there
        are none; two (length, then bytes) when there are."""
        import torch

        dist = self._dist
        self.exchanges += 1
        began = time.perf_counter()
        payload = b""
        if self.rank == 0:
            cmds = take()
            payload = json.dumps(cmds, separators=(",", ":"), default=str).encode() if cmds else b""
        head = torch.tensor([len(payload)], dtype=torch.int64)
        dist.broadcast(head, src=0, group=self._group)
        n = int(head.item())
        if n == 0:
            self.seconds += time.perf_counter() - began
            return []
        buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if self.rank == 0 else torch.empty(
            n, dtype=torch.uint8)
        dist.broadcast(buf, src=0, group=self._group)
        self.seconds += time.perf_counter() - began
        if self.rank == 0:
            return list(json.loads(payload))
        return list(json.loads(bytes(buf.numpy())))

    def boundary(self, s: Any) -> None:
        """One step boundary of session `s` on this rank: the job's commands applied, pauses held, in step
        with every other rank. Rank 0's acks report each command (the others' repeat them, harmlessly)."""
        while True:
            cmds = self.exchange(lambda: _drain(s))
            with s._cond:
                for cmd in cmds:
                    s._apply(cmd)
            if s.step >= s.wake_at and not s._closed:  # an evaluation pass, on every rank alike
                s.evaluation.at_boundary()
                continue
            if not s.paused or s._closed:
                return
            with s._cond:
                waited = time.monotonic()
                if not s.inbox:
                    s._cond.wait(PAUSE_TICK)  # rank 0 wakes at once on a command; the others meet it then
                s.paused_seconds += time.monotonic() - waited


def eval_shard(order: np.ndarray, batch_size: int, rank: int, world_size: int) -> list[np.ndarray]:
    """This rank's batches of an evaluation pass over `order`: global batches of batch_size * W ids,
    rank r taking positions r, r + W... of each, so every rank has as many batches. A last global batch
    of fewer than W ids is padded with ids from the start of `order` so that no rank's share is empty."""
    want = max(1, batch_size) * world_size
    out = []
    for at in range(0, order.size, want):
        taken = order[at:at + want]
        if taken.size < world_size:
            taken = np.concatenate([taken, np.resize(order, world_size - taken.size)])
        out.append(taken[rank::world_size])
    return out


def _drain(s: Any) -> list[dict[str, Any]]:
    with s._cond:
        cmds = list(s.inbox)
        s.inbox.clear()
    return cmds
