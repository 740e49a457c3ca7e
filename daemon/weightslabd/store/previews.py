"""The preview cache: encoded thumbnails of sample inputs, least recently used out first.

Entries are keyed by (split, sample id, size key); the size key is the request's (req_width,
req_height), (0, 0) for the default size. A request whose size resolves to the same pixels as the
default thumbnail (a small image in a bigger grid cell: nothing is ever upscaled) is served the
default entry, so preloading warms the grid whatever cell size it asks for.

A background worker can preload default-size thumbnails of new samples (WL_PRELOAD_IMAGE_OVERVIEW);
a reader that misses a key the worker is about to encode waits for it a bounded time
(WL_PREVIEW_CACHE_WARMUP_WAIT_MS) rather than encode it twice. Encoding always happens outside the
lock; encoded thumbnails are published in chunks of WL_BATCH_CHUNK_SIZE.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store.preview_encoder import Encoded, decode
from weightslabd.store.thumbnails import encode, fit_size, to_image

__all__ = ["DEFAULT_SIZE", "PreviewCache", "data_stat"]

log = structlog.get_logger("weightslabd.store.previews")

DEFAULT_SIZE = (0, 0)
SizeKey = tuple[int, int]
Key = tuple[str, int, SizeKey]
Source = Callable[[str, int], "np.ndarray | Encoded | None"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def data_stat(data: bytes, name: str = "raw_data") -> pb.DataStat:
    """DataStat(name, type="bytes", shape=[len(data)]) with `data` one float per byte in `value`, as the
    Studio's grid cell reads an encoded image.

    Built by parsing hand-serialized packed floats: ~3 µs for 2.4 KB where value.extend() of the same
    floats takes ~450 µs (bench/thumbnails.py), since upb copies a packed field in one go."""
    floats = np.frombuffer(data, np.uint8).astype("<f4").tobytes()
    head = pb.DataStat(name=name, type="bytes", shape=[len(data)]).SerializeToString()
    return pb.DataStat.FromString(head + b"\x22" + _varint(len(floats)) + floats)  # 0x22: field 4, packed


@dataclass(frozen=True, slots=True)
class _Entry:
    data: bytes
    wrapped: object  # wrap(data), or data itself without a wrap
    held: int  # bytes counted in bytes_held/wrapped_bytes_held for this entry
    source_size: tuple[int, int] = (0, 0)  # the input image's (width, height)
    size: tuple[int, int] = (0, 0)  # the thumbnail's (width, height)


class PreviewCache:
    """Thread-safe LRU of encoded thumbnails over `source(split, sample_id) -> input array | Encoded | None`
    (an Encoded image at rest is served as it is when the request keeps its size, else resized).

    `source` is called from reader threads and the preload worker at once, so it must be thread-safe.
    `wrap`, when given, turns each new entry's bytes into a ready-made reply object (for example a
    protobuf DataStat) that is cached with it and returned by `get_many_wrapped`.
    """

    def __init__(self, source: Source, *, max_entries: int, default_longest: int, warmup_wait_ms: int,
                 chunk_size: int, preload: bool, wrap: Callable[[bytes], object] | None = None) -> None:
        self._source = source
        self._max_entries = max(1, max_entries)
        self._default_longest = max(1, default_longest)
        self._wait_s = min(1000, max(0, warmup_wait_ms)) / 1000.0
        self._chunk_size = max(0, chunk_size)
        self._preload = preload
        self._wrap = wrap
        self._cond = threading.Condition(threading.Lock())
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._queue: deque[tuple[str, int]] = deque()  # default-size previews the worker is to encode
        self._queued: set[tuple[str, int]] = set()
        self._worker_busy: set[tuple[str, int]] = set()  # taken by the worker, not yet published
        self._reader_busy: dict[Key, int] = {}  # keys readers are encoding now: the worker skips them
        self._failed: set[tuple[str, int]] = set()  # logged once each, so a polling grid does not flood the log
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._waiting = 0
        self._stats = dict.fromkeys(
            ("hits", "misses", "waited_hits", "encodes", "errors", "evictions", "waited_ms_total", "preloaded",
             "preload_dropped", "chunks", "bytes_held", "wrapped_bytes_held"), 0)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the preload worker (only with preload on); it encodes whatever was offered so far."""
        with self._cond:
            if not self._preload or self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="preview-preload", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the worker after the chunk it is encoding; the cache stays readable."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join()

    # -- API -----------------------------------------------------------------------------------------

    def offer(self, split: str, ids: Sequence[int]) -> None:
        """New samples whose inputs just arrived: queue their default-size thumbnails for preloading."""
        if not self._preload:
            return
        with self._cond:
            for sid in ids:
                item = (split, int(sid))
                if item in self._queued or (split, item[1], DEFAULT_SIZE) in self._entries:
                    continue
                # preload only fills free room: encoding more than the cache holds would evict its own work
                if len(self._queue) + len(self._entries) >= self._max_entries:
                    self._stats["preload_dropped"] += 1
                    continue
                self._queue.append(item)
                self._queued.add(item)
            self._cond.notify_all()

    def forget(self, split: str, ids: Sequence[int]) -> None:
        """Drop every size of these samples' thumbnails: a newer preview of them is at rest."""
        gone = {int(sid) for sid in ids}
        if not gone:
            return
        with self._cond:
            for key in [k for k in self._entries if k[0] == split and k[1] in gone]:
                old = self._entries.pop(key)
                self._stats["bytes_held"] -= len(old.data)
                self._stats["wrapped_bytes_held"] -= old.held
            self._cond.notify_all()

    def get_many(self, keys: Sequence[tuple[str, int]], req_width: int, req_height: int) -> list[bytes | None]:
        """Encoded thumbnails for (split, sample id) keys at one request size; None where there is none."""
        return [None if e is None else e.data for e in self._get(keys, (req_width, req_height))]

    def get_many_wrapped(self, keys: Sequence[tuple[str, int]], req_width: int,
                         req_height: int) -> list[object | None]:
        """As get_many, but each entry's cached wrap(bytes) (the bytes themselves without a wrap)."""
        return [None if e is None else e.wrapped for e in self._get(keys, (req_width, req_height))]

    def wait_until(self, predicate: Callable[[dict[str, int]], bool], timeout: float) -> bool:
        """Block until predicate(stats()) holds, at most `timeout` seconds; whether it held. Every
        change of state notifies, so this is how a test or the bench waits for the worker."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._snapshot()), timeout)

    def stats(self) -> dict[str, int]:
        """Counters: hits (served from the cache at once), misses (not there when asked; some then
        waited for), waited_hits (misses the preload worker delivered within the wait), encodes
        (thumbnails encoded, by readers and worker), errors, evictions, waited_ms_total, preloaded,
        preload_dropped (offers past the cache's room), chunks (encoded chunks published), bytes_held
        (encoded bytes), wrapped_bytes_held (ByteSize of protobuf wraps); gauges: entries, queued,
        preloading (being encoded by the worker), waiting (readers waiting for it)."""
        with self._cond:
            return self._snapshot()

    def _snapshot(self) -> dict[str, int]:
        return {**self._stats, "entries": len(self._entries), "queued": len(self._queue),
                "preloading": len(self._worker_busy), "waiting": self._waiting,
                "warmup_wait_ms": round(self._wait_s * 1000), "max_entries": self._max_entries}

    # -- internals -----------------------------------------------------------------------------------

    def _get(self, keys: Sequence[tuple[str, int]], size: SizeKey) -> list[_Entry | None]:
        out: list[_Entry | None] = [None] * len(keys)
        todo: list[tuple[int, str, int]] = []  # (index in keys, split, sample id as a plain int)
        with self._cond:
            for i, (split, sid) in enumerate(keys):
                entry = self._lookup(split, sid, size)
                if entry is not None:
                    out[i] = entry
                else:
                    todo.append((i, split, int(sid)))
            self._stats["hits"] += len(keys) - len(todo)
            self._stats["misses"] += len(todo)
            if not todo:
                self._cond.notify_all()  # counters changed: wake wait_until
            if todo and self._wait_s > 0 and self._thread is not None:
                todo = self._wait_for_worker(todo, out, size)
                if not todo:
                    self._cond.notify_all()
            for _, split, sid in todo:
                key = (split, sid, size)
                self._reader_busy[key] = self._reader_busy.get(key, 0) + 1
        step = self._chunk_size or len(todo)
        for start in range(0, len(todo), max(1, step)):
            chunk = todo[start:start + step]
            encoded = [self._encode(split, sid, size) for _, split, sid in chunk]  # outside the lock
            with self._cond:
                for (i, split, sid), entry in zip(chunk, encoded, strict=True):
                    key = (split, sid, size)
                    left = self._reader_busy.pop(key) - 1
                    if left:
                        self._reader_busy[key] = left
                    if entry is not None:
                        out[i] = self._store(key, entry)
                self._stats["chunks"] += 1
                self._cond.notify_all()
        return out

    def _lookup(self, split: str, sid: int, size: SizeKey) -> _Entry | None:
        """Under the lock: the entry for this size, or the default one when it is the same picture."""
        entry = self._entries.get((split, sid, size))
        key = (split, sid, size)
        if entry is None and size != DEFAULT_SIZE:
            default = self._entries.get((split, sid, DEFAULT_SIZE))
            w, h = default.source_size if default is not None else (0, 0)
            if default is not None and fit_size(w, h, size[0], size[1], self._default_longest) == default.size:
                entry, key = default, (split, sid, DEFAULT_SIZE)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def _wait_for_worker(self, todo: list[tuple[int, str, int]], out: list[_Entry | None],
                         size: SizeKey) -> list[tuple[int, str, int]]:
        """Under the lock: wait (once, bounded) for keys the worker has queued or is encoding at the
        default size; fill `out` with what it published and return the misses still to encode."""
        def pending() -> bool:
            return any((split, sid) in self._queued or (split, sid) in self._worker_busy for _, split, sid in todo)

        if not pending():
            return todo
        began = time.monotonic()
        self._waiting += 1
        self._cond.notify_all()
        try:
            self._cond.wait_for(lambda: not pending() or self._thread is None, timeout=self._wait_s)
        finally:
            self._waiting -= 1
        self._stats["waited_ms_total"] += round((time.monotonic() - began) * 1000)
        still: list[tuple[int, str, int]] = []
        for i, split, sid in todo:
            entry = self._lookup(split, sid, size)
            if entry is None:
                still.append((i, split, sid))
            else:
                out[i] = entry
                self._stats["waited_hits"] += 1
        return still

    def _encode(self, split: str, sid: int, size: SizeKey) -> _Entry | None:
        """Read and encode one thumbnail, outside the lock; None (logged once) where it cannot be had."""
        try:
            picture = self._source(split, sid)
            if picture is None:
                return None
            if isinstance(picture, Encoded):  # an image at rest: served as it is where no resize is asked
                source_size = picture.size
                out_size = fit_size(*source_size, size[0], size[1], self._default_longest)
                as_is = out_size == source_size and not picture.is_pixels
                data = picture.data if as_is else encode(decode(picture, out_size), out_size)
            else:
                image = to_image(picture)
                source_size = (image.width, image.height)
                out_size = fit_size(image.width, image.height, size[0], size[1], self._default_longest)
                data = encode(image, out_size)
            wrapped = data if self._wrap is None else self._wrap(data)
        except Exception as exc:  # noqa: BLE001 - one bad sample must not fail a page of thumbnails
            with self._cond:
                self._stats["errors"] += 1
                self._cond.notify_all()
                first = (split, sid) not in self._failed
                if first and len(self._failed) < self._max_entries:
                    self._failed.add((split, sid))
            if first:
                log.error("preview failed", split=split, sample_id=sid, error=f"{type(exc).__name__}: {exc}")
            return None
        byte_size = getattr(wrapped, "ByteSize", None)  # a protobuf's encoded size: what it holds, roughly
        held = int(byte_size()) if wrapped is not data and callable(byte_size) else 0
        with self._cond:
            self._stats["encodes"] += 1
            self._cond.notify_all()
        return _Entry(data, wrapped, held, source_size, out_size)

    def _store(self, key: Key, entry: _Entry) -> _Entry:
        """Under the lock: insert (or keep an equal entry a racing encoder stored first) and evict."""
        current = self._entries.get(key)
        if current is not None:
            self._entries.move_to_end(key)
            return current
        self._entries[key] = entry
        self._stats["bytes_held"] += len(entry.data)
        self._stats["wrapped_bytes_held"] += entry.held
        while len(self._entries) > self._max_entries:
            _, old = self._entries.popitem(last=False)
            self._stats["bytes_held"] -= len(old.data)
            self._stats["wrapped_bytes_held"] -= old.held
            self._stats["evictions"] += 1
        return entry

    def _work(self) -> None:
        """The preload worker: encode queued default-size thumbnails, one chunk at a time."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or bool(self._queue))
                if self._stopping:
                    return
                take = min(len(self._queue), self._chunk_size or len(self._queue))
                chunk: list[tuple[str, int]] = []
                for _ in range(take):
                    item = self._queue.popleft()
                    self._queued.discard(item)
                    key = (item[0], item[1], DEFAULT_SIZE)
                    if key not in self._entries and key not in self._reader_busy:
                        chunk.append(item)
                self._worker_busy.update(chunk)
                self._cond.notify_all()  # readers waiting on skipped items can stop waiting
            encoded = [(item, self._encode(item[0], item[1], DEFAULT_SIZE)) for item in chunk]
            with self._cond:
                for item, entry in encoded:
                    self._worker_busy.discard(item)
                    key = (item[0], item[1], DEFAULT_SIZE)
                    # preload never evicts: a full cache keeps what readers asked for
                    if entry is not None and (key in self._entries or len(self._entries) < self._max_entries):
                        self._store(key, entry)
                        self._stats["preloaded"] += 1
                self._stats["chunks"] += 1
                self._cond.notify_all()
