"""A torchrun job on several nodes has one name on all of them (a nonce shared through a real TCPStore, as
torchrun's agent store), and each rank knows whether its node is rank 0's."""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as torch_dist  # torch==2.13.0 is a test dependency: no skip

from weightslab_shim.distributed import job_nonce, job_of, node_rank_of, spans_nodes


def rank_env(port: int, rank: int, *, host_ppid: str = "") -> dict[str, str]:
    """Rank `rank` of a 4-rank job on 2 nodes (2 each), its agent store at 127.0.0.1:port."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank % 2), "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": str(rank // 2), "TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True"}


def test_every_rank_of_every_node_names_the_job_alike_and_another_job_differently() -> None:
    store = torch_dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10))
    jobs = {job_of(rank_env(store.port, r)) for r in range(4)}
    assert len(jobs) == 1 and None not in jobs
    assert [node_rank_of(rank_env(store.port, r)) for r in range(4)] == [0, 0, 1, 1]
    other = torch_dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10))
    assert job_of(rank_env(other.port, 0)) not in jobs  # a later job, even on the same address, is another
    assert job_nonce(rank_env(store.port, 3)) == job_nonce(rank_env(store.port, 0)) != ""


def test_one_node_jobs_keep_their_name_and_node_rank_zero() -> None:
    one = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    assert not spans_nodes(one) and node_rank_of(one) == 0
    assert job_of(one) == job_of({k: v for k, v in one.items() if k != "LOCAL_WORLD_SIZE"})  # no store asked
    assert job_nonce({**one, "TORCHELASTIC_USE_AGENT_STORE": "False"}) == ""
