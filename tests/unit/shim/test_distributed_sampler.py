"""The sharded, deny-aware sampler: every active id once per epoch across ranks, equal batch counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightslab_shim.distributed import ShardedBatchSampler, eval_shard, job_of


def _samplers(size: int, world: int, batch: int, *, shuffle: bool = True, drop_last: bool = False,
              denied: np.ndarray | None = None) -> list[ShardedBatchSampler]:
    out = [ShardedBatchSampler(size, batch, shuffle, drop_last, 7, rank=r, world_size=world) for r in range(world)]
    for s in out:
        if denied is not None:
            s.denied[:] = denied
    return out


def _epoch(samplers: list[ShardedBatchSampler], deny_at: dict[int, list[int]] | None = None) -> list[list[list[int]]]:
    """Draw one epoch on every rank in lockstep; deny_at[k]: ids denied on all ranks before batch k."""
    iters = [iter(s) for s in samplers]
    drawn: list[list[list[int]]] = [[] for _ in samplers]
    k = 0
    while True:
        for ids in (deny_at or {}).get(k, []):
            for s in samplers:
                s.denied[ids] = True
        got = [next(it, None) for it in iters]
        assert all(g is None for g in got) or all(g is not None for g in got), f"ranks disagree at batch {k}"
        if got[0] is None:
            return drawn
        for r, g in enumerate(got):
            drawn[r].append(g)  # type: ignore[arg-type]
        k += 1


@settings(max_examples=150, deadline=None)
@given(size=st.integers(0, 90), world=st.integers(1, 4), batch=st.integers(1, 9), drop_last=st.booleans(),
       shuffle=st.booleans(), data=st.data())
def test_every_active_id_once_and_equal_batches(size: int, world: int, batch: int, drop_last: bool, shuffle: bool,
                                                data: st.DataObject) -> None:
    denied = np.array(data.draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool)
    samplers = _samplers(size, world, batch, shuffle=shuffle, drop_last=drop_last, denied=denied)
    drawn = _epoch(samplers)
    counts = {len(d) for d in drawn}
    assert len(counts) == 1, f"batch counts differ across ranks: {[len(d) for d in drawn]}"
    assert counts.pop() == len(samplers[0])
    for r in range(world):
        assert all(len(b) == len(drawn[0][i]) for i, b in enumerate(drawn[r]))  # same batch sizes too
    seen = Counter(i for d in drawn for b in d for i in b)
    active = set(np.flatnonzero(~denied).tolist())
    assert not set(seen) - active, "a denied id was drawn"
    if drop_last:
        assert all(n == 1 for n in seen.values())
        assert len(active) - len(seen) < batch * world
    else:
        assert set(seen) == active
        pads = sum(seen.values()) - len(active)
        assert 0 <= pads < world and sum(seen.values()) % world == 0


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 80), world=st.integers(2, 4), batch=st.integers(1, 6), data=st.data())
def test_mid_epoch_discards_keep_ranks_in_step(size: int, world: int, batch: int, data: st.DataObject) -> None:
    deny_at = data.draw(st.dictionaries(st.integers(0, 10), st.lists(st.integers(0, size - 1), max_size=8),
                                        max_size=4))
    samplers = _samplers(size, world, batch)
    drawn = _epoch(samplers, deny_at)
    assert len({len(d) for d in drawn}) == 1
    denied_before: dict[int, set[int]] = {}
    acc: set[int] = set()
    for k in range(max(len(drawn[0]), 11) + 1):
        acc |= set(deny_at.get(k, []))
        denied_before[k] = set(acc)
    seen: Counter[int] = Counter()
    for k in range(len(drawn[0])):
        for r in range(world):
            for i in drawn[r][k]:
                seen[i] += 1
                if k < len(drawn[0]) - 1:  # padding in the last batch may repeat any drawn id
                    assert i not in denied_before[k], f"id {i} drawn at batch {k} after its discard"
    never_denied = set(range(size)) - acc
    assert never_denied <= set(seen), "an id never denied was not drawn"


def test_epochs_reshuffle_identically_on_every_rank() -> None:
    a, b = _samplers(40, 2, 5)
    first = [list(a), list(b)]
    second = [list(a), list(b)]
    assert first[0] != second[0]  # seed + epoch: a new order each epoch
    union = sorted(i for batches in second for batch in batches for i in batch)
    assert union == list(range(40))
    c = ShardedBatchSampler(40, 5, True, False, 7, rank=0, world_size=2)
    c.set_epoch(1)
    assert list(c) == second[0]


def test_bad_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        ShardedBatchSampler(10, 2, False, rank=2, world_size=2)


def test_job_of_torchrun_env() -> None:
    base = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    assert job_of(base) is None  # no rendezvous named: not torchrun
    assert job_of({**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}) == job_of(
        {**base, "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert job_of({**base, "TORCHELASTIC_RUN_ID": "abc"}) != job_of({**base, "TORCHELASTIC_RUN_ID": "abd"})
    assert job_of({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(1, 5), st.integers(1, 6))
def test_an_evaluation_pass_gives_every_rank_as_many_nonempty_batches_and_covers_the_split(
        size: int, world: int, batch: int) -> None:
    order = np.random.default_rng(size).permutation(size)
    shards = [eval_shard(order, batch, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and all(b.size for s in shards for b in s)
    assert all(b.size <= batch for s in shards for b in s)
    drawn = Counter(int(i) for s in shards for b in s for i in b)
    assert set(drawn) == set(order.tolist()) and sum(drawn.values()) - size < world
