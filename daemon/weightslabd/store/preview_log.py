"""The on-disk format of a run's previews (see preview_store.py for how they are kept).

    previews.log     a FramedLog: frame 0 is the header (MAGIC, then JSON {"generation": g}); every other
                     frame is one sample's entry:
                         b"E" | sample id i64 | split length u16 | path length u16 | format u8 |
                         width u16 | height u16 | split (utf-8) | path (utf-8) | encoded image
                     format: 0 no image (the path alone), 1 PNG, 2 JPEG, 3 WebP
    previews.index   where each sample's latest entry is, as of a prefix of previews.log:
                         crc32 of the rest (8 hex) "\\n" JSON meta "\\n" int64 offsets of each split
                     replaced atomically (temporary file, fsync, rename); opening trusts it only while
                     the log has its generation and still ends a frame where it says

A previews.log whose frame 0 is not the header is of an older daemon (each frame a ring record of
raw inputs): it is renamed to previews.legacy.N.log and converted (preview_store.py).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weightslabd.store.preview_encoder import FORMATS, Encoded, Pixels

__all__ = ["LOG", "INDEX", "MAGIC", "Entry", "Index", "header", "generation_of", "pack_entry", "pack_block",
           "unpack_entry", "write_index", "read_index", "write_atomically"]

LOG = "previews.log"
INDEX = "previews.index"
MAGIC = b"weightslabd-previews\n"
_ENTRY = struct.Struct("<cqHHBHH")
_KIND = b"E"
# _ENTRY as a numpy record, to lay out many entries' heads at once (pack_block)
_HEAD = np.dtype([("kind", "S1"), ("sample_id", "<i8"), ("split_len", "<u2"), ("path_len", "<u2"), ("fmt", "u1"),
                  ("width", "<u2"), ("height", "<u2")])
assert _HEAD.itemsize == _ENTRY.size


@dataclass(frozen=True, slots=True)
class Entry:
    split: str
    sample_id: int
    path: str  # the sample's image file as the trainer named it ("" for none)
    image: Encoded | None  # the input's preview; None when only the path was sent


def header(generation: int) -> bytes:
    return MAGIC + json.dumps({"generation": generation}).encode()


def generation_of(payload: bytes) -> int | None:
    """The generation a header frame names; None when the frame is not a header (an older log)."""
    if not payload.startswith(MAGIC):
        return None
    return int(json.loads(payload[len(MAGIC):])["generation"])


def pack_entry(entry: Entry) -> bytes:
    split, path = entry.split.encode(), entry.path.encode()
    image = entry.image
    fmt = FORMATS.index(image.fmt) if image is not None else 0
    width, height = image.size if image is not None else (0, 0)
    head = _ENTRY.pack(_KIND, entry.sample_id, len(split), len(path), fmt, width, height)
    return b"".join((head, split, path, image.data if image is not None else b""))


def pack_block(split: str, ids: np.ndarray, pixels: Pixels) -> np.ndarray:
    """The entries of a block of samples of one split, no path, each kept as its pixels, as rows of one
    uint8 array (one payload per row): what `pack_entry` gives for each, without a call per sample."""
    name = split.encode()
    n, size = pixels.data.shape
    out = np.empty((n, _ENTRY.size + len(name) + size), np.uint8)
    head = np.zeros(n, _HEAD)
    head["kind"], head["sample_id"], head["split_len"] = _KIND, ids, len(name)
    head["fmt"], head["width"], head["height"] = FORMATS.index(pixels.fmt), pixels.width, pixels.height
    out[:, :_ENTRY.size] = head.view(np.uint8).reshape(n, _ENTRY.size)
    out[:, _ENTRY.size:_ENTRY.size + len(name)] = np.frombuffer(name, np.uint8)
    out[:, _ENTRY.size + len(name):] = pixels.data
    return out


def unpack_entry(payload: bytes | memoryview) -> Entry:
    """Raises ValueError for a frame that is not an entry."""
    view = memoryview(payload)
    if len(view) < _ENTRY.size:
        raise ValueError(f"a preview entry of {len(view)} bytes is too short")
    kind, sid, split_len, path_len, fmt, width, height = _ENTRY.unpack_from(view)
    pos = _ENTRY.size + split_len + path_len
    if kind != _KIND or fmt >= len(FORMATS) or pos > len(view):
        raise ValueError("not a preview entry")
    split = bytes(view[_ENTRY.size:_ENTRY.size + split_len]).decode()
    path = bytes(view[_ENTRY.size + split_len:pos]).decode()
    image = Encoded(bytes(view[pos:]), FORMATS[fmt], width, height) if fmt else None
    return Entry(split, sid, path, image)


@dataclass
class Index:
    generation: int
    end: int  # the prefix of previews.log it covers
    last_frame: tuple[int, int] | None  # (offset, crc) of the frame ending there
    live_bytes: int  # frames of latest entries (header excluded)
    dead_bytes: int  # frames superseded by a newer entry of their sample
    offsets: dict[str, np.ndarray]  # per split, the offset of each sample's latest entry (-1: none)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` so that a crash leaves the old or the new content: temporary file, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_index(path: Path, index: Index) -> None:
    meta = {"generation": index.generation, "end": index.end, "last_frame": index.last_frame,
            "live_bytes": index.live_bytes, "dead_bytes": index.dead_bytes,
            "splits": [[name, len(o)] for name, o in index.offsets.items()]}
    body = json.dumps(meta).encode() + b"\n" + b"".join(o.astype("<i8").tobytes() for o in index.offsets.values())
    write_atomically(path, f"{zlib.crc32(body):08x}\n".encode() + body)


def read_index(path: Path) -> Index | None:
    """The index, or None when there is none or it does not check out (then the log is scanned)."""
    try:
        raw = path.read_bytes()
        crc, body = raw[:8], raw[9:]
        if raw[8:9] != b"\n" or int(crc, 16) != zlib.crc32(body):
            return None
        line, arrays = body.split(b"\n", 1)
        meta: dict[str, Any] = json.loads(line)
        offsets: dict[str, np.ndarray] = {}
        pos = 0
        for name, count in meta["splits"]:
            offsets[str(name)] = np.frombuffer(arrays, "<i8", int(count), pos).astype(np.int64)
            pos += 8 * int(count)
        last = meta["last_frame"]
        return Index(int(meta["generation"]), int(meta["end"]), None if last is None else (int(last[0]), int(last[1])),
                     int(meta["live_bytes"]), int(meta["dead_bytes"]), offsets)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
