"""Thumbnails and the preview cache: encode costs, cache latencies, and bytes -> repeated float.

No daemon: the modules are timed in-process, on synthetic 1/f-noise images (the spectrum of photos;
random pixels would flatter PNG's worst case and no codec sees those in practice).

1. Encode, per image: PNG (level 6), JPEG (q85), WebP (q85, method 0 and 4) at 32, 224 and 720 px
   RGB and 720 px greyscale; bytes and ms. Then resize filters for 2048->720 and 720->128, and
   `thumbnail()` end to end from a float32 CHW array.
2. PreviewCache.get_many of 128 keys: warm (goal: well under 1 ms, for a 30 ms page RPC), and cold
   with WL_BATCH_CHUNK_SIZE 0 and 16.
3. The RPC's bytes -> DataStat.value (repeated float) for a page of 128 thumbnails: extend(list(b)),
   extend(np.frombuffer(b, uint8).astype(float32)), extend(...tolist()), a DataStat cached per entry
   then CopyFrom / MergeFrom / append into the reply, and, for reference, the `thumbnail` bytes field.

    .venv/bin/python bench/thumbnails.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from PIL import Image

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store.previews import PreviewCache, data_stat
from weightslabd.store.thumbnails import encode_as, thumbnail, to_image

PAGE = 128


def natural(side: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """uint8 HWC (HW for one channel) noise with equal energy per octave, like a photo's spectrum."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((side, side, channels), np.float32)
    octave = 1
    while 2 ** octave <= side:
        small = rng.standard_normal((2 ** octave, 2 ** octave, channels)).astype(np.float32)
        up = [np.asarray(Image.fromarray(small[:, :, c]).resize((side, side), Image.Resampling.BICUBIC))
              for c in range(channels)]
        acc += np.stack(up, axis=-1) / octave
        octave += 1
    acc = (acc - acc.min()) / max(float(acc.max() - acc.min()), 1e-9) * 255
    out = acc.astype(np.uint8)
    return out[:, :, 0] if channels == 1 else out


def per_call_ms(fn: Callable[[], object], reps: int, budget_s: float = 0.4) -> float:
    """Median ms of up to `reps` calls (at least 3; fewer past `budget_s`) after one warm-up call."""
    fn()
    times: list[int] = []
    deadline = time.perf_counter_ns() + budget_s * 1e9
    while len(times) < reps and (len(times) < 3 or time.perf_counter_ns() < deadline):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6


def row(*cells: object, widths: tuple[int, ...]) -> str:
    return "| " + " | ".join(f"{c!s:<{w}}" if i == 0 else f"{c!s:>{w}}"
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"


def table(head: tuple[str, ...], rows: list[tuple[object, ...]], widths: tuple[int, ...]) -> None:
    print(row(*head, widths=widths))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(row(*r, widths=widths))


# -- 1. encoding ---------------------------------------------------------------------------------------

def bench_encode(reps: int) -> None:
    print("\n## 1. Encode one image (median ms per image; bytes)\n")
    formats: list[tuple[str, Callable[[Image.Image], bytes]]] = [
        ("PNG", lambda im: encode_as(im, "PNG")),
        ("JPEG q85", lambda im: encode_as(im, "JPEG")),
        ("WebP q85 m0", lambda im: encode_as(im, "WEBP")),
        ("WebP q85 m4", lambda im: _webp(im, 4)),
    ]
    rows: list[tuple[object, ...]] = []
    for side, channels in ((32, 3), (224, 3), (720, 3), (720, 1)):
        image = Image.fromarray(natural(side, channels))
        n = max(3, reps // (1 if side < 700 else 8))
        for name, fn in formats:
            rows.append((f"{side}x{side} {'RGB' if channels == 3 else 'L'}", name,
                         f"{per_call_ms(partial(fn, image), n):.3f}", len(fn(image))))
    table(("image", "format", "ms", "bytes"), rows, (12, 12, 8, 8))

    print("\n## Resize filters (median ms)\n")
    big, mid = Image.fromarray(natural(2048)), Image.fromarray(natural(720))
    filters = [("BILINEAR", Image.Resampling.BILINEAR, None), ("BILINEAR gap 2", Image.Resampling.BILINEAR, 2.0),
               ("BICUBIC", Image.Resampling.BICUBIC, None), ("LANCZOS", Image.Resampling.LANCZOS, None),
               ("LANCZOS gap 3", Image.Resampling.LANCZOS, 3.0)]
    rows = []
    for name, flt, gap in filters:
        def shrink(image: Image.Image, side: int, flt: Image.Resampling = flt, gap: float | None = gap) -> None:
            image.resize((side, side), flt, reducing_gap=gap)

        rows.append((name, f"{per_call_ms(partial(shrink, big, 720), 5):.2f}",
                     f"{per_call_ms(partial(shrink, mid, 128), reps):.2f}"))
    table(("filter", "2048->720", "720->128"), rows, (16, 10, 9))

    print("\n## thumbnail() end to end from float32 CHW in [0, 1] (default size 720; median ms)\n")
    rows = []
    for side in (32, 224, 720, 1024):
        arr = natural(side).transpose(2, 0, 1).astype(np.float32) / 255
        data = thumbnail(arr, 0, 0, 720)
        fmt = Image.open(io.BytesIO(data)).format
        rows.append((f"3x{side}x{side}", fmt, f"{per_call_ms(partial(to_image, arr), reps):.3f}",
                     f"{per_call_ms(partial(thumbnail, arr, 0, 0, 720), max(3, reps // 4)):.3f}", len(data)))
    table(("input", "format", "to_image", "thumbnail", "bytes"), rows, (12, 6, 8, 9, 7))


def _webp(image: Image.Image, method: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "WEBP", quality=85, method=method)
    return buf.getvalue()


# -- 2. the cache --------------------------------------------------------------------------------------

def bench_cache(reps: int) -> None:
    print(f"\n## 2. PreviewCache.get_many of {PAGE} keys (default size; source: in-memory float32 CHW)\n")
    rows: list[tuple[object, ...]] = []
    for side in (32, 224):
        arrays = [natural(side, seed=i).transpose(2, 0, 1).astype(np.float32) / 255 for i in range(8)]

        def source(split: str, sid: int, arrays: list[np.ndarray] = arrays) -> np.ndarray:
            return arrays[sid % len(arrays)]

        keys = [("train", i) for i in range(PAGE)]
        warm = PreviewCache(source, max_entries=2000, default_longest=720, warmup_wait_ms=100, chunk_size=0,
                            preload=False)
        warm.get_many(keys, 0, 0)
        warm_ms = per_call_ms(partial(warm.get_many, keys, 0, 0), reps * 20)
        rows.append((f"3x{side}x{side}", "warm", "-", f"{warm_ms * 1000:.0f} µs", "get_many"))
        page_ms = per_call_ms(partial(page_reply, warm.get_many, keys, data_stat), reps * 4)
        rows.append((f"3x{side}x{side}", "warm", "-", f"{page_ms:.2f} ms", "get_many + data_stat + serialize"))
        wrapped = PreviewCache(source, max_entries=2000, default_longest=720, warmup_wait_ms=100, chunk_size=0,
                               preload=False, wrap=data_stat)
        wrapped.get_many(keys, 0, 0)
        page_ms = per_call_ms(partial(page_reply, wrapped.get_many_wrapped, keys, None), reps * 4)
        rows.append((f"3x{side}x{side}", "warm", "-", f"{page_ms:.2f} ms", "get_many_wrapped + serialize"))
        for chunk in (0, 16):
            times = []
            for _ in range(max(2, reps // 8)):
                cold = PreviewCache(source, max_entries=2000, default_longest=720, warmup_wait_ms=100,
                                    chunk_size=chunk, preload=False)
                t0 = time.perf_counter_ns()
                cold.get_many(keys, 0, 0)
                times.append(time.perf_counter_ns() - t0)
            rows.append((f"3x{side}x{side}", "cold", chunk, f"{statistics.median(times) / 1e6:.1f} ms", "get_many"))
    table(("source", "cache", "chunk", "time", "what"), rows, (10, 5, 5, 9, 32))
    print("\nGoal: warm get_many well under 1 ms; the page RPC has 30 ms in all. `serialize`: the reply as gRPC "
          "would send it\n(DataSamplesResponse, one DataRecord with one DataStat per key, SerializeToString).")


def page_reply(get: Callable[[Sequence[tuple[str, int]], int, int], Sequence[object]],
               keys: list[tuple[str, int]], wrap: Callable[[bytes], pb.DataStat] | None) -> bytes:
    """The page reply the RPC would build from the cache (get_many or get_many_wrapped), serialized."""
    reply = pb.DataSamplesResponse(success=True)
    for i, item in enumerate(get(keys, 0, 0)):
        rec = reply.data_records.add(sample_id=i)
        if item is not None:
            rec.data_stats.append(wrap(item) if wrap is not None and isinstance(item, bytes) else item)
    return reply.SerializeToString()


# -- 3. bytes -> repeated float --------------------------------------------------------------------------

def bench_floats(reps: int) -> None:
    print(f"\n## 3. Bytes -> DataStat.value (repeated float) for a page of {PAGE} (median ms per page)\n")
    cases = [("32x32 RGB PNG", natural(32), "PNG"), ("128x128 RGB JPEG", natural(128), "JPEG"),
             ("128x128 RGB PNG", natural(128), "PNG")]
    rows: list[tuple[object, ...]] = []
    for label, arr, fmt in cases:
        blobs = [encode_as(Image.fromarray(np.roll(arr, i, axis=1)), fmt) for i in range(PAGE)]
        n = max(3, reps // (4 if label == "128x128 RGB PNG" else 1))
        rows.extend((label, sum(len(b) for b in blobs) // PAGE, *cells) for cells in _float_methods(blobs, n))
    table(("thumbnails", "B each", "method", "build", "serialize", "reply MB"), rows, (16, 6, 32, 7, 9, 8))


def _float_methods(blobs: list[bytes], reps: int) -> list[tuple[str, str, str, str]]:
    """(method, build ms, serialize ms, reply MB) for each way to put `blobs` into a page reply."""
    prebuilt = []
    for b in blobs:
        stat = pb.DataStat(name="raw_data", type="bytes")
        stat.value.extend(np.frombuffer(b, np.uint8).tolist())
        prebuilt.append(stat)

    def fill(add: Callable[[pb.DataRecord, int], None]) -> pb.DataSamplesResponse:
        reply = pb.DataSamplesResponse(success=True)
        for i in range(len(blobs)):
            add(reply.data_records.add(sample_id=i), i)
        return reply

    def new_stat(rec: pb.DataRecord) -> pb.DataStat:
        return rec.data_stats.add(name="raw_data", type="bytes")

    methods: list[tuple[str, Callable[[pb.DataRecord, int], None]]] = [
        ("extend(list(b))", lambda rec, i: new_stat(rec).value.extend(list(blobs[i]))),
        ("extend(frombuffer.astype(f32))",
         lambda rec, i: new_stat(rec).value.extend(np.frombuffer(blobs[i], np.uint8).astype(np.float32))),
        ("extend(frombuffer.tolist())",
         lambda rec, i: new_stat(rec).value.extend(np.frombuffer(blobs[i], np.uint8).tolist())),
        ("data_stat(b) per request, append", lambda rec, i: rec.data_stats.append(data_stat(blobs[i]))),
        ("cached DataStat, CopyFrom", lambda rec, i: rec.data_stats.add().CopyFrom(prebuilt[i])),
        ("cached DataStat, MergeFrom", lambda rec, i: rec.data_stats.add().MergeFrom(prebuilt[i])),
        ("cached DataStat, append", lambda rec, i: rec.data_stats.append(prebuilt[i])),
        ("bytes field `thumbnail` (ref.)",
         lambda rec, i: rec.data_stats.add(name="raw_data", type="bytes", thumbnail=blobs[i])),
    ]
    out = []
    for name, add in methods:
        build = per_call_ms(partial(fill, add), reps)
        reply = fill(add)
        serial = per_call_ms(reply.SerializeToString, reps)
        out.append((name, f"{build:.2f}", f"{serial:.2f}", f"{len(reply.SerializeToString()) / 1e6:.2f}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: a fraction of the repetitions")
    args = parser.parse_args()
    reps = 5 if args.quick else 25
    began = time.monotonic()
    bench_encode(reps)
    bench_cache(reps)
    bench_floats(reps)
    print(f"\n(took {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
