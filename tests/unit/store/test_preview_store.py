"""Previews at rest: one encoded image per sample, bounded in bytes, encoded off the ingest path and
once per sample; the log compacted atomically (a SIGKILL during it loses nothing); the index read back
at open; a previews.log of an older daemon (raw inputs) served and converted without loss."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from weightslab_shim import records, wire
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType
from weightslabd.store import preview_store as ps
from weightslabd.store.framedlog import FramedLog, read_frames
from weightslabd.store.preview_encoder import MAX_BYTES, Encoded, decode, encode_block, encode_preview
from weightslabd.store.preview_log import INDEX, LOG, Entry, pack_block, pack_entry, unpack_entry
from weightslabd.store.preview_store import PreviewStore
from weightslabd.store.previews import PreviewCache
from weightslabd.store.run import Run, RunOptions
from weightslabd.store.thumbnails import to_image

SIZES = {"train": 64, "val": 8}
ROOT = Path(__file__).resolve().parents[3]


def natural(side: int, seed: int) -> np.ndarray:
    """CHW uint8 with a photo's spectrum (equal energy per octave), as bench/thumbnails.py makes it."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((side, side, 3), np.float32)
    octave = 1
    while 2 ** octave <= side:
        small = rng.standard_normal((2 ** octave, 2 ** octave, 3)).astype(np.float32)
        acc += np.stack([np.asarray(Image.fromarray(small[:, :, c]).resize((side, side), Image.Resampling.BICUBIC))
                         for c in range(3)], axis=-1) / octave
        octave += 1
    acc = (acc - acc.min()) / float(acc.max() - acc.min()) * 255
    return np.moveaxis(acc.astype(np.uint8), -1, 0)


def record(ids: list[int], inputs: np.ndarray | None = None, paths: list[str] | None = None,
           split: str = "train") -> dict[str, np.ndarray]:
    """A preview record's fields, decoded from its encoding as the ring delivers them."""
    fields: list[tuple[str, np.ndarray]] = [(f"pids{SEP}{split}{SEP}0", np.asarray(ids, np.int64))]
    if inputs is not None:
        fields.append((f"x{SEP}{split}{SEP}0", inputs))
    if paths is not None:
        fields.append((f"xpath{SEP}{split}{SEP}0", records.json_field({"paths": paths})))
    return records.decode(memoryview(records.encode(fields)))


def grey(ids: list[int], side: int = 8) -> np.ndarray:
    """One flat grey image per id, its level the id: a small image is kept lossless, so levels compare."""
    return (np.asarray(ids, np.uint8)[:, None, None] + np.zeros((1, side, side), np.uint8)).astype(np.uint8)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Callable[..., PreviewStore]]:
    made: list[PreviewStore] = []

    def make(start: bool = True, on_stored: Any = None) -> PreviewStore:
        store = PreviewStore(tmp_path, SIZES.get, on_stored)
        made.append(store)
        if start:
            store.start()
        return store

    yield make
    for store in made:
        store.close(timeout=5)


def level(picture: Any) -> int:
    """The grey level of a stored picture (Encoded) or of an input still queued."""
    if isinstance(picture, Encoded):
        return int(np.asarray(decode(picture)).reshape(-1)[0])
    return int(np.asarray(to_image(picture)).reshape(-1)[0])  # by the thumbnail rules: floats in [0, 1] x 255


def entries(folder: Path) -> list[Any]:
    return [unpack_entry(frame) for _, frame in list(read_frames(folder / LOG))[1:]]


# -- what is kept ---------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_224_rgb_input_is_kept_whole_under_32_kb_and_the_modal_is_served_those_bytes(
        stores: Callable[..., PreviewStore]) -> None:
    store = stores()
    batch = np.stack([natural(224, seed) for seed in range(4)]).astype(np.float32) / 255  # as a trainer has it
    store.ingest(record([0, 1, 2, 3], batch))
    assert store.wait_idle(10)
    at_rest = entries(store.folder)
    assert [e.sample_id for e in at_rest] == [0, 1, 2, 3]
    assert {(e.image.fmt, e.image.size) for e in at_rest} == {("JPEG", (224, 224))}
    assert max(len(e.image.data) for e in at_rest) <= MAX_BYTES
    cache = PreviewCache(store.source, max_entries=10, default_longest=720, warmup_wait_ms=0, chunk_size=0,
                         preload=False)
    modal, cell = cache.get_many([("train", 2)], -100, -100)[0], cache.get_many([("train", 2)], 64, 64)[0]
    assert modal == at_rest[2].image.data  # the modal: the bytes at rest, not encoded again
    assert modal is not None and cell is not None and Image.open(io.BytesIO(cell)).size == (64, 64)


@pytest.mark.parametrize("content", ["uniform noise", "natural"])
def test_the_bytes_at_rest_are_bounded_whatever_the_content(content: str) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (3, 224, 224), dtype=np.uint8) if content == "uniform noise" else natural(224, 1)
    kept = encode_preview(array)
    assert len(kept.data) <= MAX_BYTES and kept.size == (224, 224)  # noise: a lower quality, not a smaller image
    big = encode_preview(rng.integers(0, 256, (3, 1024, 512), dtype=np.uint8))  # an older shim's full-size input
    assert max(big.size) == 256 and len(big.data) <= MAX_BYTES


@pytest.mark.parametrize(("shape", "dtype", "kept_as"), [
    ((3, 32, 32), np.uint8, "PLANAR"), ((4, 20, 12), np.uint8, "PLANAR"), ((1, 3, 32, 32), np.uint8, "PLANAR"),
    ((32, 32, 3), np.uint8, "RAW"), ((28, 28), np.uint8, "RAW"), ((1, 28, 28), np.uint8, "RAW"),
    ((3, 32, 32), np.float32, "RAW"), ((2, 16, 16), np.uint8, "RAW")])
def test_a_small_input_is_kept_as_its_pixels_and_shown_exactly(shape: tuple[int, ...], dtype: type,
                                                                kept_as: str) -> None:
    rng = np.random.default_rng(7)
    array = rng.random(shape).astype(dtype) if dtype is np.float32 else rng.integers(0, 256, shape, dtype=np.uint8)
    kept = encode_preview(array)
    expected = np.asarray(to_image(array))  # the thumbnail rules' pixels of the input itself
    assert kept.fmt == kept_as and kept.size == (expected.shape[1], expected.shape[0])
    assert np.array_equal(np.asarray(decode(kept)), expected)
    cache = PreviewCache(lambda *_: kept, max_entries=4, default_longest=720, warmup_wait_ms=0, chunk_size=0,
                         preload=False)
    shown = cache.get_many([("train", 0)], -100, -100)[0]  # the modal: a PNG of exactly those pixels
    assert shown is not None and np.array_equal(np.asarray(Image.open(io.BytesIO(shown))), expected)


@pytest.mark.parametrize("shape", [(3, 32, 32), (4, 20, 12), (1, 3, 32, 32), (32, 32, 3), (28, 28), (1, 28, 28),
                                   (2, 16, 16), (6, 10, 10), (16, 16, 1), (3, 64, 48)])
def test_a_block_of_small_images_is_kept_as_each_alone_would_be(shape: tuple[int, ...]) -> None:
    batch = np.random.default_rng(11).integers(0, 256, (5, *shape), dtype=np.uint8)
    alone = [encode_preview(x) for x in batch]
    block = encode_block(batch)
    assert block is not None and (block.fmt, block.width, block.height) == (alone[0].fmt, *alone[0].size)
    assert [row.tobytes() for row in block.data] == [e.data for e in alone]
    ids = np.array([7, 3, 60, 0, 12], np.int64)
    packed = pack_block("train", ids, block)  # the entries at rest, as pack_entry writes each
    assert [row.tobytes() for row in packed] == [pack_entry(Entry("train", int(i), "", e))
                                                 for i, e in zip(ids, alone, strict=True)]


@pytest.mark.parametrize(("shape", "dtype"), [((3, 65, 65), np.uint8), ((3, 224, 224), np.uint8),
                                              ((3, 32, 32), np.float32), ((3, 32, 32), np.int64)])
def test_a_block_that_is_not_small_8_bit_images_is_encoded_sample_by_sample(shape: tuple[int, ...],
                                                                           dtype: type) -> None:
    assert encode_block(np.zeros((2, *shape), dtype)) is None


# -- off the ingest path, once per sample ---------------------------------------------------------------


@pytest.mark.timeout(30)
def test_ingest_only_queues_and_the_queue_coalesces_and_is_bounded(stores: Callable[..., PreviewStore],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ps, "MAX_PENDING", 4)
    store = stores(start=False)
    store.ingest(record([0, 1, 2], grey([10, 11, 12])))
    store.ingest(record([1], grey([21])))  # newer input of a queued sample: replaces it
    store.ingest(record([3, 4, 5], grey([13, 14, 15])))  # only one more fits
    stats = store.stats()
    assert (stats["encoded"], stats["pending"], stats["coalesced"], stats["dropped"]) == (0, 4, 1, 2)
    assert level(store.source("train", 1)) == 21  # served from the queue before it is encoded
    assert np.flatnonzero(store.masks()["train"]).tolist() == [0, 1, 2, 3]  # the welcome lacks the dropped
    store.start()
    assert store.wait_idle(10)
    assert [(e.sample_id, level(e.image)) for e in entries(store.folder)] == [(0, 10), (1, 21), (2, 12), (3, 13)]


@pytest.mark.timeout(30)
def test_a_record_is_stored_in_one_write_and_a_sample_twice_in_it_keeps_its_later_input(
        stores: Callable[..., PreviewStore]) -> None:
    store = stores(start=False)
    batch = np.random.default_rng(5).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    store.ingest(record([4, 9, 4, 17, 30, 2], batch))  # sample 4 twice: rows 0 and 2
    assert store.stats()["pending"] == 5 and store.stats()["coalesced"] == 1
    size = store.log.size
    store.start()
    assert store.wait_idle(10)
    at_rest = entries(store.folder)
    assert [e.sample_id for e in at_rest] == [9, 4, 17, 30, 2]
    assert [e.image.data for e in at_rest] == [encode_preview(batch[i]).data for i in (1, 2, 3, 4, 5)]
    assert store.log.size - size == sum(len(pack_entry(e)) + 8 for e in at_rest)


@pytest.mark.timeout(30)
def test_a_sample_sent_while_its_block_is_stored_is_skipped_and_served_meanwhile(
        stores: Callable[..., PreviewStore]) -> None:
    store = stores(start=False)
    writing, release = threading.Event(), threading.Event()
    append_rows = store.log.append_rows

    def held(rows: np.ndarray, **kwargs: Any) -> np.ndarray:
        writing.set()
        assert release.wait(10)
        return append_rows(rows, **kwargs)

    store.log.append_rows = held  # type: ignore[method-assign]
    store.ingest(record([0, 1], grey([10, 11])))
    store.start()
    assert writing.wait(10)  # the block is being stored
    store.ingest(record([1, 2], grey([21, 22])))  # 1: in the block being stored; 2: new
    assert store.stats()["skipped"] == 1 and store.stats()["pending"] == 1
    assert level(store.source("train", 1)) == 11  # served from the block being stored
    assert np.flatnonzero(store.masks()["train"]).tolist() == [0, 1, 2]
    release.set()
    assert store.wait_idle(10)
    assert [(e.sample_id, level(e.image)) for e in entries(store.folder)] == [(0, 10), (1, 11), (2, 22)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(4))
def test_the_queue_accounts_for_every_sample_whatever_the_mix_of_records(
        stores: Callable[..., PreviewStore], monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Records of random ids (repeats within one, samples already queued or being stored), sizes that
    thin under pressure and bounds that drop: once idle, nothing is left counted in the queue, and every
    sample sent has its entry at rest unless it was dropped, its latest input at rest when it was queued."""
    monkeypatch.setattr(ps, "MAX_PENDING", 40)
    monkeypatch.setattr(ps, "MAX_PENDING_BYTES", 2 * 40 * 3 * 80 * 80)  # thinned past half: ~40 whole inputs
    rng = np.random.default_rng(seed)
    running = bool(seed % 2)  # stopped: everything queues (coalescing, drops); running: in flight too
    store = stores(start=running)
    sent: dict[int, list[int]] = {}
    for step in range(30):
        ids = rng.integers(0, SIZES["train"], int(rng.integers(1, 24))).tolist()
        side = int(rng.choice([8, 80]))  # 8 px kept as pixels, a block at once; 80 px JPEG, sample by sample
        levels = [(step * 37 + i * 11) % 250 for i in range(len(ids))]
        store.ingest(record(ids, (np.asarray(levels, np.uint8)[:, None, None, None]
                                  + np.zeros((1, 3, side, side), np.uint8))))
        for sid, lvl in zip(ids, levels, strict=True):
            sent.setdefault(sid, []).append(lvl)
        queued = store.stats()
        assert queued["pending"] <= ps.MAX_PENDING and queued["pending_bytes"] <= ps.MAX_PENDING_BYTES
        if step % 10 == 9:
            store.looked([("train", i) for i in range(0, SIZES["train"], 3)])
    store.start()
    assert store.wait_idle(20)
    stats = store.stats()
    assert (stats["pending"], stats["pending_bytes"]) == (0, 0)
    at_rest = {e.sample_id: level(e.image) for e in entries(store.folder)}  # the latest entry of each
    assert set(np.flatnonzero(store.masks()["train"]).tolist()) == set(at_rest) <= set(sent)
    assert stats["dropped"] > 0 or set(at_rest) == set(sent)
    for sid, lvl in at_rest.items():  # JPEG: within 2 of what was sent
        expected = sent[sid] if running else sent[sid][-1:]  # queued all along: the latest input
        assert min(abs(lvl - e) for e in expected) <= 2, (sid, lvl, sent[sid])


@pytest.mark.timeout(30)
def test_when_the_encoder_is_behind_new_inputs_are_queued_at_thumbnail_size(
        stores: Callable[..., PreviewStore], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ps, "MAX_PENDING_BYTES", 3 * 3 * 224 * 224)  # half of it: one and a half inputs
    store = stores(start=False)
    batch = np.stack([natural(224, seed) for seed in range(3)])
    store.ingest(record([0], batch[:1]))  # fits in the first half: queued whole
    store.ingest(record([1, 2], batch[1:]))  # would pass the first half: thinned by a stride of 4
    assert store.stats()["thinned"] == 2 and store.stats()["dropped"] == 0
    store.start()
    assert store.wait_idle(10)
    assert {e.sample_id: e.image.size for e in entries(store.folder)} == {0: (224, 224), 1: (56, 56), 2: (56, 56)}


@pytest.mark.timeout(30)
def test_a_sample_sent_again_is_encoded_again_only_after_the_studio_looked(
        stores: Callable[..., PreviewStore]) -> None:
    store = stores()
    store.ingest(record([0, 1], grey([10, 11])))
    assert store.wait_idle(10)
    for _ in range(3):  # every epoch, say
        store.ingest(record([0, 1], grey([30, 31])))
    assert store.wait_idle(10)
    assert store.stats()["encoded"] == 2 and store.stats()["skipped"] == 6
    store.looked([("train", 1)])
    store.ingest(record([0, 1], grey([40, 41])))
    assert store.wait_idle(10)
    assert store.stats()["encoded"] == 3
    assert level(store.source("train", 0)) == 10 and level(store.source("train", 1)) == 41
    assert [e.sample_id for e in entries(store.folder)] == [0, 1, 1]  # the older entry of 1: superseded


@pytest.mark.timeout(30)
def test_the_studios_look_outlasts_a_newer_input_that_did_not_fit_in_the_queue(
        stores: Callable[..., PreviewStore], monkeypatch: pytest.MonkeyPatch) -> None:
    store = stores()
    store.ingest(record([0], grey([10])))
    assert store.wait_idle(10)
    store.close()
    monkeypatch.setattr(ps, "MAX_PENDING", 1)
    again = stores(start=False)
    again.looked([("train", 0)])
    again.ingest(record([5], grey([15])))  # the queue is full
    again.ingest(record([0], grey([20])))  # dropped: the look still stands
    assert again.stats()["dropped"] == 1
    again.start()
    assert again.wait_idle(10)
    again.ingest(record([0], grey([30])))  # sent again (the next epoch): encoded, as the Studio looked
    assert again.wait_idle(10)
    assert level(again.source("train", 0)) == 30


@pytest.mark.timeout(30)
def test_a_renewed_preview_is_forgotten_by_the_thumbnail_cache(stores: Callable[..., PreviewStore]) -> None:
    cache: list[PreviewCache] = []

    def stored(split: str, ids: list[int], renewed: list[int]) -> None:
        cache[0].forget(split, renewed)

    store = stores(on_stored=stored)
    cache.append(PreviewCache(store.source, max_entries=10, default_longest=720, warmup_wait_ms=0, chunk_size=0,
                              preload=False))
    store.ingest(record([0], grey([10])))
    assert store.wait_idle(10)
    assert level(Encoded(cache[0].get_many([("train", 0)], 0, 0)[0] or b"", "PNG", 8, 8)) == 10  # PNG served
    store.looked([("train", 0)])
    store.ingest(record([0], grey([50])))
    assert store.wait_idle(10)
    assert level(Encoded(cache[0].get_many([("train", 0)], 0, 0)[0] or b"", "PNG", 8, 8)) == 50


# -- at rest across restarts ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_reopened_store_reads_its_index_and_scans_only_the_tail(stores: Callable[..., PreviewStore]) -> None:
    store = stores()
    store.ingest(record([0, 1, 2], grey([10, 11, 12])))
    store.close()
    assert (store.folder / INDEX).exists()
    again = stores()
    assert again.log.skipped == store.log.size  # the index covered the whole log
    again.ingest(record([5], grey([15])))
    assert again.wait_idle(10)
    again.close(timeout=0)
    (store.folder / INDEX).unlink()  # as after a crash before any index: the whole log is scanned
    third = stores()
    assert third.log.skipped == 0
    assert {sid: level(third.source("train", sid)) for sid in (0, 1, 2, 5)} == {0: 10, 1: 11, 2: 12, 5: 15}
    assert third.source("train", 3) is None


def superseded(store: PreviewStore, rounds: int) -> None:
    """Every sample of train written `rounds` times, each round looked at, so each write supersedes."""
    ids = list(range(SIZES["train"]))
    for r in range(rounds):
        store.looked([("train", i) for i in ids])
        store.ingest(record(ids, grey([(i + r) % 250 for i in ids], side=80), split="train"))  # 80 px: JPEG
        assert store.wait_idle(10)


@pytest.mark.timeout(60)
def test_compaction_keeps_only_the_latest_entry_of_each_sample(stores: Callable[..., PreviewStore],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ps, "COMPACT_MIN_BYTES", 1 << 30)  # compact only when this test asks
    store = stores()
    superseded(store, 4)
    before = {i: level(store.source("train", i)) for i in range(SIZES["train"])}
    size = store.log.size
    store.compact()  # the worker is idle: no entry is appended meanwhile
    assert store.log.size < size / 3
    assert sorted(e.sample_id for e in entries(store.folder)) == list(range(SIZES["train"]))
    assert {i: level(store.source("train", i)) for i in range(SIZES["train"])} == before
    assert store.stats()["dead_bytes"] == 0 and store.generation == 1
    store.close()
    again = stores()
    assert again.log.skipped == again.log.size  # the index of the compacted log
    assert {i: level(again.source("train", i)) for i in range(SIZES["train"])} == before


@pytest.mark.timeout(60)
def test_the_worker_compacts_once_most_of_the_log_is_superseded(stores: Callable[..., PreviewStore],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ps, "COMPACT_MIN_BYTES", 1)
    store = stores()
    superseded(store, 3)
    assert store.stats()["compactions"] >= 1
    assert store.stats()["dead_bytes"] <= store.stats()["live_bytes"]


KILLED = """
import sys, threading
from pathlib import Path
from weightslabd.store import preview_log, preview_store as ps
from weightslabd.store.framedlog import FramedLog

folder, where = Path(sys.argv[1]), sys.argv[2]
def stop_here(what):
    print(what, flush=True)
    threading.Event().wait()  # until SIGKILL

class Halting(FramedLog):
    def append(self, payload, *, sync=False):
        offset = super().append(payload, sync=sync)
        if where == "copying" and self.path.name.endswith(ps.COMPACT_SUFFIX) and offset > 0 and self.size > 4000:
            stop_here("copying")
        return offset

ps.FramedLog = Halting
if where == "renamed":
    write_index = preview_log.write_index
    preview_log.write_index = lambda path, index: stop_here("renamed") if index.generation else write_index(path, index)
store = ps.PreviewStore(folder, {"train": 64, "val": 8}.get)
store.compact()
print("finished", flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["copying", "renamed"])
def test_a_sigkill_during_compaction_loses_nothing_and_leaves_no_half_file_in_use(
        stores: Callable[..., PreviewStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    monkeypatch.setattr(ps, "COMPACT_MIN_BYTES", 1 << 30)
    store = stores()
    superseded(store, 3)
    want = {i: level(store.source("train", i)) for i in range(SIZES["train"])}
    store.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "daemon"), str(ROOT / "client_shim")])}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED), str(tmp_path), where],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == where  # it stopped there, the file half written or renamed
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    leftover = tmp_path / (LOG + ps.COMPACT_SUFFIX)
    assert leftover.exists() == (where == "copying")
    again = stores()
    assert not leftover.exists()
    assert again.generation == (1 if where == "renamed" else 0)
    assert {i: level(again.source("train", i)) for i in range(SIZES["train"])} == want
    assert np.flatnonzero(again.masks()["train"]).tolist() == list(range(SIZES["train"]))


# -- a previews.log of an older daemon --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_older_daemons_raw_log_is_served_then_converted_and_removed(tmp_path: Path,
                                                                        stores: Callable[..., PreviewStore]) -> None:
    files = tmp_path / "images"
    files.mkdir()
    Image.fromarray(np.full((6, 10, 3), 200, np.uint8)).save(files / "a.png")
    old = FramedLog(tmp_path / LOG)  # one ring record per frame, raw inputs: what the older daemon wrote
    old.append(records.encode([(f"pids{SEP}train{SEP}0", np.arange(4, dtype=np.int64)),
                               (f"x{SEP}train{SEP}0", grey([10, 11, 12, 13]).astype(np.float32) / 255)]))
    old.append(records.encode([(f"pids{SEP}train{SEP}0", np.array([2], np.int64)),
                               (f"x{SEP}train{SEP}0", grey([22]).astype(np.float32) / 255)]))  # newer input of 2
    old.append(records.encode([(f"pids{SEP}val{SEP}0", np.array([1], np.int64)),
                               (f"xpath{SEP}val{SEP}0", records.json_field({"paths": [str(files / "a.png")]}))]))
    old.close()
    store = stores(start=False)
    assert [p.name for p in tmp_path.glob("previews.legacy.*.log")] == ["previews.legacy.1.log"]
    served = {i: level(store.source("train", i)) for i in range(4)}
    assert served == {0: 10, 1: 11, 2: 22, 3: 13}  # from the raw log, as before
    assert np.asarray(store.source("val", 1)).shape == (6, 10, 3)  # the named file
    store.start()
    assert store.wait_idle(10, converted=True)  # the conversion ends with the legacy file's removal
    assert not list(tmp_path.glob("previews.legacy.*.log"))
    assert {i: level(store.source("train", i)) for i in range(4)} == served
    assert {(e.split, e.sample_id) for e in entries(tmp_path)} == {("train", i) for i in range(4)} | {("val", 1)}
    store.close()
    again = stores()
    assert {i: level(again.source("train", i)) for i in range(4)} == served
    assert np.asarray(again.source("val", 1)).shape == (6, 10, 3)


@pytest.mark.timeout(60)
def test_a_run_of_an_older_daemon_opens_from_its_snapshot_and_keeps_its_previews(tmp_path: Path) -> None:
    folder, options = tmp_path / "run", RunOptions(save_predictions_h5=False)
    run = Run.create(folder, {"run_id": "r", "created": 0.0, "splits": {"train": 8}}, options)
    ids = np.arange(4, dtype=np.int64)
    run.apply_record(RecordType.STEP, 0, memoryview(records.encode([
        (f"ids{SEP}train{SEP}loss{SEP}0", ids), (f"sig{SEP}train{SEP}loss{SEP}0", ids.astype(np.float32))])), 1)
    run.close()  # writes a snapshot
    (folder / INDEX).unlink()
    (folder / LOG).unlink()
    old = FramedLog(folder / LOG)  # what the older daemon kept instead: raw inputs, one record a frame
    old.append(records.encode([(f"pids{SEP}train{SEP}0", ids), (f"x{SEP}train{SEP}0", grey([10, 11, 12, 13]))]))
    old.close()
    again = Run.open(folder, options)
    try:
        assert again.opened_from_snapshot
        assert [level(again.preview_array("train", i)) for i in range(4)] == [10, 11, 12, 13]
        assert again.preview_store.wait_idle(10, converted=True)
        assert again.preview_store.stats()["converted"] == 4
    finally:
        again.close()
    third = Run.open(folder, options)
    try:
        assert third.opened_from_snapshot and not list(folder.glob("previews.legacy.*"))
        assert [level(third.preview_array("train", i)) for i in range(4)] == [10, 11, 12, 13]
        assert np.flatnonzero(wire.unpack_mask(third.preview_masks()["train"], 8)).tolist() == [0, 1, 2, 3]
    finally:
        third.close()
