"""torchrun jobs: every rank of one job attaches to the same run, each through its own ring.

The first rank to say hello makes the run (under its own run id); the others' hellos name the same
job and are attached to it. Each rank's ring positions are moved into a lane of their own (rank <<
LANE_BITS), so the run keeps one order of records per rank (`Run` checks duplicates per lane). The map
is kept in the private runtime directory, so a restarted daemon puts re-attaching ranks back in their run.
A worker group torchrun restarted names the same job with a higher `restart` (a re-launch that resumes
the run, another job): its rings start at the group's slot in their lanes (`ring_base`), and the control
server journals the new group.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import structlog

from weightslab_shim import wire
from weightslabd.store.ranks import GROUP_BITS, GROUP_SLOTS, LANE_BITS

log = structlog.get_logger("weightslabd.ipc.jobs")
MAX_RANKS = 1 << 14
JOB_ID = re.compile(r"job-[0-9a-f]{16}")
FILE = "jobs.json"
KEEP = 200  # jobs remembered (the newest)


def job_and_rank(hello: wire.Message) -> tuple[str | None, int]:
    """(job, rank) a hello names; (None, 0) outside a job. Raises ValueError on malformed fields."""
    job = hello.get("job")
    if job is None:
        return None, 0
    rank, world = hello.get("rank", 0), hello.get("world_size", 1)
    if not (isinstance(job, str) and JOB_ID.fullmatch(job)):
        raise ValueError(f"job {str(job)[:40]!r} is not one the shim makes (job-<16 hex>)")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (rank, world)) or not 0 <= rank < world <= MAX_RANKS:
        raise ValueError(f"rank {rank!r} of world size {world!r} is not a rank of a job (0 <= rank < size <= "
                         f"{MAX_RANKS})")
    return job, rank


def restart_of(hello: wire.Message) -> int:
    """The torchrun restart count a job's hello names (0 if none). Raises ValueError on a bad one."""
    restart = hello.get("restart", 0)
    if isinstance(restart, bool) or not isinstance(restart, int) or not 0 <= restart < 1 << 20:
        raise ValueError(f"restart {str(restart)[:40]!r} is not a restart count (0 <= n < 2**20)")
    return restart


def lane_base(rank: int) -> int:
    return rank << LANE_BITS


def ring_base(rank: int, slot: int, lane_next: int) -> int:
    """Where a new ring of `rank` starts in its lane: after what the lane holds, and at least at its
    worker group's slot (store/ranks.py), so records a dead rank's ring still drains cannot collide with
    its successor's, and every record's position names its group."""
    return max(lane_base(rank) + (min(slot, GROUP_SLOTS - 1) << GROUP_BITS), lane_next)


class Jobs:
    def __init__(self, runtime_dir: Path) -> None:
        self.path = runtime_dir / FILE
        self._lock = threading.Lock()
        self.runs: dict[str, str] = self._load()  # job -> run id

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("record of jobs unreadable; ranks of earlier jobs attach as new runs", path=str(self.path),
                      error=str(exc))
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def run_of(self, job: str) -> str | None:
        with self._lock:
            return self.runs.get(job)

    def note(self, job: str, run_id: str) -> None:
        with self._lock:
            if self.runs.get(job) == run_id:
                return
            self.runs[job] = run_id
            while len(self.runs) > KEEP:
                self.runs.pop(next(iter(self.runs)))
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self.runs, f)
            os.replace(tmp, self.path)
        except OSError as exc:  # only a restart needs it: attaching goes on
            log.error("record of jobs not saved", path=str(self.path), error=str(exc))


def hello_for_job(hello: dict[str, Any], run_id: str) -> dict[str, Any]:
    """A later rank's hello, naming the job's run."""
    return dict(hello, run_id=run_id)
