"""The preview cache with real threads: LRU, preload, the warm-up wait, chunking, failures, wraps.

Nothing here sleeps to synchronise: tests wait on events or on `PreviewCache.wait_until`, each with a
deadline.
"""

from __future__ import annotations

import io
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image
from structlog.testing import capture_logs

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store.previews import DEFAULT_SIZE, PreviewCache, data_stat
from weightslabd.store.thumbnails import thumbnail

DEADLINE = 10.0


def sample(sid: int, side: int = 40) -> np.ndarray:
    """A CHW float image, different per sample id."""
    return np.random.default_rng(sid).random((3, side, side), dtype=np.float32)


class Source:
    """A counting source; `gate_ids` block until `gate` is set (the first call for each only)."""

    def __init__(self, side: int = 40, gate_ids: tuple[int, ...] = (), missing: tuple[int, ...] = (),
                 failing: tuple[int, ...] = ()) -> None:
        self.side = side
        self.calls: Counter[tuple[str, int]] = Counter()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.gate_ids, self.missing, self.failing = gate_ids, missing, failing
        self.lock = threading.Lock()

    def __call__(self, split: str, sid: int) -> np.ndarray | None:
        with self.lock:
            self.calls[(split, sid)] += 1
            first = self.calls[(split, sid)] == 1
        if sid in self.failing:
            raise OSError(f"cannot read sample {sid}")
        if sid in self.missing:
            return None
        if sid in self.gate_ids and first:
            self.entered.set()
            assert self.gate.wait(DEADLINE), "the test never opened the gate"
        return sample(sid, self.side)


def make(source: Callable[[str, int], np.ndarray | None], *, max_entries: int = 100, default_longest: int = 720,
         warmup_wait_ms: int = 0, chunk_size: int = 0, preload: bool = False,
         wrap: Callable[[bytes], object] | None = None) -> PreviewCache:
    return PreviewCache(source, max_entries=max_entries, default_longest=default_longest,
                        warmup_wait_ms=warmup_wait_ms, chunk_size=chunk_size, preload=preload, wrap=wrap)


@pytest.fixture
def caches() -> Iterator[list[PreviewCache]]:
    """Caches made in a test are stopped after it, even when it fails."""
    made: list[PreviewCache] = []
    yield made
    for cache in made:
        cache.stop()


def started(made: list[PreviewCache], cache: PreviewCache) -> PreviewCache:
    made.append(cache)
    cache.start()
    return cache


def idle(stats: dict[str, int]) -> bool:
    return stats["queued"] == 0 and stats["preloading"] == 0


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


KEYS = [("train", i) for i in range(10)]


# -- basics ----------------------------------------------------------------------------------------

def test_miss_then_hit_returns_the_encoded_thumbnail() -> None:
    source = Source()
    cache = make(source)
    first = cache.get_many(KEYS[:3], 0, 0)
    assert first == [thumbnail(sample(i), 0, 0, 720) for i in range(3)]
    assert cache.get_many(KEYS[:3], 0, 0) == first
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["encodes"], stats["entries"]) == (3, 3, 3, 3)
    assert stats["bytes_held"] == sum(len(b) for b in first if b is not None)
    assert all(n == 1 for n in source.calls.values())


def test_each_request_size_is_its_own_entry_encoded_from_the_source() -> None:
    source = Source(side=100)
    cache = make(source, default_longest=80)
    (default,) = cache.get_many([("val", 7)], 0, 0)
    (small,) = cache.get_many([("val", 7)], 50, 50)
    (full,) = cache.get_many([("val", 7)], -100, -100)
    assert default is not None and small is not None and full is not None
    assert (size_of(default), size_of(small), size_of(full)) == ((80, 80), (50, 50), (100, 100))
    assert source.calls[("val", 7)] == 3  # never resized from the 80 px entry
    assert cache.stats()["entries"] == 3


def test_missing_preview_is_none_and_not_cached() -> None:
    source = Source(missing=(1,))
    cache = make(source)
    assert cache.get_many([("train", 0), ("train", 1)], 0, 0)[1] is None
    assert cache.get_many([("train", 1)], 0, 0) == [None]
    assert source.calls[("train", 1)] == 2
    assert cache.stats()["entries"] == 1


def test_failing_source_gives_none_and_one_logged_error() -> None:
    cache = make(Source(failing=(2,)))
    with capture_logs() as logs:
        out = cache.get_many(KEYS[:4], 0, 0)
        again = cache.get_many([("train", 2)], 0, 0)
    assert out[2] is None and again == [None]
    assert all(b is not None for i, b in enumerate(out) if i != 2)
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1  # logged once per sample, not at every grid refresh
    assert errors[0]["sample_id"] == 2 and "OSError" in errors[0]["error"]
    assert cache.stats()["errors"] == 2


def test_array_that_is_not_an_image_gives_none() -> None:
    cache = make(lambda split, sid: np.zeros(10, dtype=np.float32))
    with capture_logs() as logs:
        assert cache.get_many(KEYS[:2], 0, 0) == [None, None]
    assert len([e for e in logs if "ThumbnailError" in e.get("error", "")]) == 2


def test_numpy_ids_are_plain_keys() -> None:
    cache = make(Source())
    cache.get_many([("train", np.int64(3))], 0, 0)  # type: ignore[list-item]
    assert cache.get_many([("train", 3)], 0, 0)[0] is not None
    assert cache.stats()["hits"] == 1


# -- WL_MAX_PREVIEW_CACHE_SIZE -------------------------------------------------------------------

def test_max_entries_evicts_the_least_recently_used() -> None:
    source = Source()
    cache = make(source, max_entries=3)
    cache.get_many(KEYS[0:3], 0, 0)
    cache.get_many([KEYS[0]], 0, 0)         # 0 is now the most recent; 1 the least
    cache.get_many([KEYS[3]], 0, 0)         # evicts 1
    assert cache.stats()["evictions"] == 1 and cache.stats()["entries"] == 3
    before = sum(source.calls.values())
    cache.get_many([KEYS[0], KEYS[2], KEYS[3]], 0, 0)
    assert sum(source.calls.values()) == before  # all still held
    cache.get_many([KEYS[1]], 0, 0)
    assert source.calls[KEYS[1]] == 2  # it had gone
    held = cache.get_many([KEYS[1], KEYS[2], KEYS[3]], 0, 0)
    assert cache.stats()["bytes_held"] == sum(len(b) for b in held if b is not None)


def test_larger_max_entries_keeps_everything() -> None:
    source = Source()
    cache = make(source, max_entries=10)
    for _ in range(2):
        cache.get_many(KEYS, 0, 0)
    assert cache.stats()["evictions"] == 0 and sum(source.calls.values()) == 10


# -- WL_PRELOAD_IMAGE_OVERVIEW ---------------------------------------------------------------------

def test_preload_on_encodes_offered_samples_without_any_get(caches: list[PreviewCache]) -> None:
    source = Source()
    cache = make(source, preload=True)
    caches.append(cache)
    cache.offer("train", range(5))  # offered before start: preloaded once it starts
    cache.start()
    cache.offer("val", [0, 1])
    assert cache.wait_until(lambda s: s["preloaded"] == 7 and idle(s), DEADLINE)
    assert cache.stats()["entries"] == 7
    assert cache.get_many([("train", i) for i in range(5)], 0, 0) == [thumbnail(sample(i), 0, 0, 720)
                                                                       for i in range(5)]
    stats = cache.stats()
    assert stats["hits"] == 5 and stats["misses"] == 0 and stats["encodes"] == 7


def test_preload_off_encodes_nothing_until_asked(caches: list[PreviewCache]) -> None:
    source = Source()
    cache = started(caches, make(source, preload=False))
    cache.offer("train", range(5))
    stats = cache.stats()
    assert (stats["queued"], stats["entries"], stats["encodes"], stats["preloaded"]) == (0, 0, 0, 0)
    assert not source.calls
    cache.get_many(KEYS[:2], 0, 0)
    assert cache.stats()["encodes"] == 2


def test_preload_skips_what_is_cached_and_never_evicts(caches: list[PreviewCache]) -> None:
    source = Source()
    cache = make(source, max_entries=4, preload=True)
    caches.append(cache)
    cache.get_many(KEYS[:2], 0, 0)
    cache.offer("train", range(10))  # 0 and 1 are cached; room for 2 more
    cache.start()
    assert cache.wait_until(idle, DEADLINE)
    stats = cache.stats()
    assert (stats["preloaded"], stats["entries"], stats["evictions"], stats["preload_dropped"]) == (2, 4, 0, 6)
    assert source.calls[KEYS[0]] == 1


# -- WL_PREVIEW_CACHE_WARMUP_WAIT_MS -----------------------------------------------------------------

def read_in_thread(cache: PreviewCache, keys: list[tuple[str, int]]) -> tuple[threading.Thread, list[bytes | None]]:
    out: list[bytes | None] = []
    thread = threading.Thread(target=lambda: out.extend(cache.get_many(keys, 0, 0)))
    thread.start()
    return thread, out


def test_warmup_wait_lets_the_worker_finish_instead_of_encoding_twice(caches: list[PreviewCache]) -> None:
    source = Source(gate_ids=(0,))
    cache = started(caches, make(source, preload=True, warmup_wait_ms=1000))
    cache.offer("train", [0])
    assert source.entered.wait(DEADLINE)  # the worker is encoding sample 0 now
    thread, out = read_in_thread(cache, [KEYS[0]])
    assert cache.wait_until(lambda s: s["waiting"] == 1, DEADLINE)  # the reader waits for the worker
    source.gate.set()
    thread.join(DEADLINE)
    assert out == [thumbnail(sample(0), 0, 0, 720)]
    stats = cache.stats()
    assert (stats["encodes"], stats["waited_hits"], stats["misses"]) == (1, 1, 1)
    assert source.calls[KEYS[0]] == 1


def test_no_warmup_wait_encodes_at_once(caches: list[PreviewCache]) -> None:
    source = Source(gate_ids=(0,))
    cache = started(caches, make(source, preload=True, warmup_wait_ms=0))
    cache.offer("train", [0])
    assert source.entered.wait(DEADLINE)
    # the worker is still held at the gate: a waiting reader would hang here
    assert cache.get_many([KEYS[0]], 0, 0) == [thumbnail(sample(0), 0, 0, 720)]
    stats = cache.stats()
    assert (stats["encodes"], stats["waited_hits"], stats["waited_ms_total"]) == (1, 0, 0)
    source.gate.set()
    assert cache.wait_until(lambda s: idle(s) and s["encodes"] == 2, DEADLINE)  # encoded twice
    assert cache.stats()["entries"] == 1


def test_warmup_wait_is_bounded(caches: list[PreviewCache]) -> None:
    source = Source(gate_ids=(0,))
    cache = started(caches, make(source, preload=True, warmup_wait_ms=60, chunk_size=1))
    cache.offer("train", [0, 1, 2])
    assert source.entered.wait(DEADLINE)
    out = cache.get_many(KEYS[:3], 0, 0)  # 0 is being encoded, 1 and 2 queued behind it
    assert all(b is not None for b in out)
    stats = cache.stats()
    assert 50 <= stats["waited_ms_total"] < 1000  # one wait for the whole call, not one per key
    assert stats["waited_hits"] == 0 and stats["encodes"] == 3
    source.gate.set()


def test_warmup_wait_is_clamped() -> None:
    cache = make(Source(), warmup_wait_ms=10**6)
    assert cache._wait_s == 1.0
    assert make(Source(), warmup_wait_ms=-5)._wait_s == 0.0


# -- WL_BATCH_CHUNK_SIZE -----------------------------------------------------------------------------

@pytest.mark.parametrize(("chunk_size", "chunks"), [(0, 1), (3, 4), (10, 1), (1, 10)])
def test_chunk_size_splits_on_demand_misses(chunk_size: int, chunks: int) -> None:
    cache = make(Source(), chunk_size=chunk_size)
    assert all(b is not None for b in cache.get_many(KEYS, 0, 0))
    assert cache.stats()["chunks"] == chunks
    cache.get_many(KEYS, 0, 0)  # all hits: no chunk
    assert cache.stats()["chunks"] == chunks


@pytest.mark.parametrize(("chunk_size", "chunks"), [(0, 1), (4, 3)])
def test_chunk_size_splits_the_preload_queue(caches: list[PreviewCache], chunk_size: int, chunks: int) -> None:
    cache = make(Source(), chunk_size=chunk_size, preload=True)
    caches.append(cache)
    cache.offer("train", range(10))
    cache.start()
    assert cache.wait_until(lambda s: s["preloaded"] == 10 and idle(s), DEADLINE)
    assert cache.stats()["chunks"] == chunks


@pytest.mark.parametrize(("chunk_size", "hit"), [(2, True), (0, False)])
def test_chunks_are_published_before_the_batch_ends(caches: list[PreviewCache], chunk_size: int, hit: bool) -> None:
    source = Source(gate_ids=(5,))
    cache = started(caches, make(source, chunk_size=chunk_size, preload=True))
    cache.offer("train", range(10))
    assert source.entered.wait(DEADLINE)  # the worker is held on sample 5
    assert cache.get_many([KEYS[0]], 0, 0)[0] is not None
    # in chunks of 2, samples 0-3 are out already; as one batch, nothing is until sample 9 is done
    assert (cache.stats()["hits"] == 1) is hit
    source.gate.set()
    assert cache.wait_until(idle, DEADLINE)


# -- wrap ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 1, 127, 128, 16383, 16384, 70000])
def test_data_stat_is_one_float_per_byte(length: int) -> None:
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    slow = pb.DataStat(name="raw_data", type="bytes", shape=[length])
    slow.value.extend(list(data))
    assert data_stat(data) == slow
    assert data_stat(data, name="other").name == "other"


def test_wrap_is_built_once_and_cached_with_the_bytes() -> None:
    built: list[bytes] = []

    def wrap(data: bytes) -> pb.DataStat:
        built.append(data)
        return data_stat(data)

    cache = make(Source(), wrap=wrap)
    first = cache.get_many_wrapped(KEYS[:3], 0, 0)
    second = cache.get_many_wrapped(KEYS[:3], 0, 0)
    assert len(built) == 3 and all(a is b for a, b in zip(first, second, strict=True))
    raw = cache.get_many(KEYS[:3], 0, 0)
    for stat, data in zip(first, raw, strict=True):
        assert isinstance(stat, pb.DataStat) and data is not None
        assert bytes(int(v) for v in stat.value) == data
    assert cache.stats()["wrapped_bytes_held"] == sum(s.ByteSize() for s in first if isinstance(s, pb.DataStat))


def test_without_wrap_the_wrapped_are_the_bytes() -> None:
    cache = make(Source())
    assert cache.get_many_wrapped(KEYS[:2], 0, 0) == cache.get_many(KEYS[:2], 0, 0)
    assert cache.stats()["wrapped_bytes_held"] == 0


def test_failing_wrap_gives_none() -> None:
    def wrap(data: bytes) -> object:
        raise RuntimeError("no")

    with capture_logs():
        assert make(Source(), wrap=wrap).get_many_wrapped(KEYS[:1], 0, 0) == [None]


# -- concurrency ---------------------------------------------------------------------------------

def test_readers_and_worker_together_stay_consistent(caches: list[PreviewCache]) -> None:
    source = Source(side=24, failing=(13,))
    cache = started(caches, make(source, max_entries=20, preload=True, warmup_wait_ms=5, chunk_size=3))
    expected = {i: thumbnail(sample(i, 24), 0, 0, 720) for i in range(40) if i != 13}
    errors: list[BaseException] = []
    go = threading.Barrier(5)

    def reader(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            go.wait(DEADLINE)
            for _ in range(40):
                ids = rng.integers(0, 40, 8).tolist()
                for sid, data in zip(ids, cache.get_many([("train", s) for s in ids], 0, 0), strict=True):
                    assert data == expected.get(sid)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    with capture_logs():
        go.wait(DEADLINE)
        for start in range(0, 40, 5):
            cache.offer("train", range(start, start + 5))
        for t in threads:
            t.join(DEADLINE)
        assert cache.wait_until(idle, DEADLINE)
    assert not errors, errors
    stats = cache.stats()
    assert stats["entries"] <= 20 and stats["hits"] + stats["misses"] == 4 * 40 * 8
    held = cache.get_many([("train", i) for i in range(40)], 0, 0)
    assert cache.stats()["entries"] <= 20
    assert all(b is None or b == expected[i] for i, b in enumerate(held))


def test_stop_keeps_the_cache_readable_and_start_is_idempotent() -> None:
    cache = make(Source(), preload=True)
    cache.start()
    cache.start()
    cache.offer("train", [0])
    assert cache.wait_until(lambda s: s["preloaded"] == 1, DEADLINE)
    cache.stop()
    cache.stop()
    assert cache.get_many([KEYS[0], KEYS[1]], 0, 0)[1] is not None
    assert cache.stats()["hits"] == 1
    assert DEFAULT_SIZE == (0, 0)


def test_a_cell_size_that_resolves_to_the_default_picture_shares_its_entry() -> None:
    source = Source(side=40)
    cache = make(source, preload=True)
    cache.offer("train", [1, 2])
    cache.start()
    try:
        assert cache.wait_until(lambda s: s["preloaded"] == 2, DEADLINE)
        # a 40 px image in a 128 px cell is never upscaled: the same picture as the default thumbnail
        assert cache.get_many([("train", 1), ("train", 2)], 128, 128) == cache.get_many(
            [("train", 1), ("train", 2)], 0, 0)
        assert cache.stats()["encodes"] == 2
        half = cache.get_many([("train", 1)], -50, -50)[0]  # a different picture is encoded
        assert half is not None and Image.open(io.BytesIO(half)).size == (20, 20)
        assert cache.stats()["encodes"] == 3
    finally:
        cache.stop()
