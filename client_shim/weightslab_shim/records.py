"""The payload of a ring record: named arrays, written straight into the ring without a staging copy.

    field:  name length u16 | dtype code u8 | ndim u8 | data bytes u32 | shape u32 * ndim | name
            | pad to 8 | data | pad to 8

Text travels as a uint8 array (`text()`), so one codec serves every record type.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .ring import MASK64, copy_summing, word_sum

FIELD = struct.Struct("<HBBI")
_DTYPES: tuple[np.dtype[Any], ...] = tuple(np.dtype(t) for t in (
    np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
))
_CODE = {dt: i for i, dt in enumerate(_DTYPES)}
Fields = Sequence[tuple[str, np.ndarray]]
SEP = "\x1f"  # separates kind, split, signal name and serial in a field name; never in user names


class MalformedPayload(ValueError):
    """A record payload that does not decode: the sender wrote something this codec cannot read."""


def _pad8(n: int) -> int:
    return (8 - n % 8) % 8


def text(value: str) -> np.ndarray:
    return np.frombuffer(value.encode(), dtype=np.uint8)


def as_text(arr: np.ndarray) -> str:
    return arr.tobytes().decode()


def as_json(arr: np.ndarray) -> Any:
    return json.loads(arr.tobytes())


def json_field(value: Mapping[str, Any]) -> np.ndarray:
    return text(json.dumps(value, separators=(",", ":"), default=float))


# (head, data, pad): the field header with shape, name and padding (cached: names and shapes repeat
# every step), the array's bytes, and how many zero bytes follow them.
Prepared = tuple[bytes, memoryview, int]


_HEADS: dict[tuple[str, int, tuple[int, ...]], bytes] = {}
_HEADS_LIMIT = 4096
_EMPTY = memoryview(b"")


def _head(name: str, dtype: np.dtype[Any], shape: tuple[int, ...], nbytes: int) -> bytes:
    key = (name, dtype.num, shape)
    head = _HEADS.get(key)
    if head is None:
        raw = name.encode()
        head = FIELD.pack(len(raw), _CODE[dtype], len(shape), nbytes) + struct.pack(f"<{len(shape)}I", *shape) + raw
        head += bytes(_pad8(len(head)))
        if len(_HEADS) >= _HEADS_LIMIT:
            _HEADS.clear()
        _HEADS[key] = head
    return head


def prepare(fields: Fields) -> list[Prepared]:
    out = []
    for name, arr in fields:
        dtype = arr.dtype
        if dtype not in _CODE:
            if dtype.kind not in "biuf":
                continue  # strings, objects, complex: nothing the daemon can plot; never an error
            arr = arr.astype(np.float64 if dtype.kind == "f" else np.int64)
            dtype = arr.dtype
        n = arr.nbytes
        if not n:
            data = _EMPTY
        else:
            try:
                data = (arr if arr.ndim else arr.reshape(1)).data.cast("B")
            except TypeError:  # not C-contiguous
                arr = np.ascontiguousarray(arr)
                data = arr.data.cast("B")
        head = _HEADS.get((name, dtype.num, arr.shape)) or _head(name, dtype, arr.shape, n)
        out.append((head, data, -n % 8))
    return out


def encoded_size(prepared: list[Prepared]) -> int:
    return sum(len(head) + len(data) + pad for head, data, pad in prepared)


def encode_into(view: memoryview, prepared: list[Prepared], *, summing: bool = False) -> int:
    """Write the fields into `view`. With summing, also return the 64-bit word sum of everything
    written (padding zeroed), each large array summed chunk by chunk while it is still in cache:
    the ring's checksum then needs no second pass over a big record."""
    pos = 0
    total = 0
    for head, data, pad in prepared:
        end = pos + len(head)
        view[pos:end] = head
        if summing:
            total += word_sum(view[pos:end])
        pos = end
        n = len(data)
        if n:
            if summing:
                total += copy_summing(view[pos: pos + n + pad], data, pad)
            else:
                view[pos: pos + n] = data
        pos += n + pad
    return total & MASK64


def encode(fields: Fields) -> bytes:
    prepared = prepare(fields)
    buf = bytearray(encoded_size(prepared))
    encode_into(memoryview(buf), prepared)
    return bytes(buf)


def decode(payload: memoryview | bytes) -> dict[str, np.ndarray]:
    """Arrays are views of `payload`: copy what must outlive it."""
    view = memoryview(payload)
    end = len(view)
    pos = 0
    out: dict[str, np.ndarray] = {}
    while pos < end:
        if pos + FIELD.size > end:
            raise MalformedPayload(f"truncated field header at byte {pos}")
        nlen, code, ndim, nbytes = FIELD.unpack_from(view, pos)
        pos += FIELD.size
        if code >= len(_DTYPES):
            raise MalformedPayload(f"unknown dtype code {code} at byte {pos}")
        if pos + 4 * ndim + nlen > end:
            raise MalformedPayload(f"field at byte {pos} runs past the payload")
        shape = struct.unpack_from(f"<{ndim}I", view, pos) if ndim else ()
        pos += 4 * ndim
        try:
            name = bytes(view[pos: pos + nlen]).decode()
        except UnicodeDecodeError:
            raise MalformedPayload(f"field name at byte {pos} is not utf-8") from None
        pos += nlen
        pos += _pad8(pos)
        dtype = _DTYPES[code]
        count = math.prod(shape) if ndim else 1  # Python ints: a hostile shape cannot overflow
        if count * dtype.itemsize != nbytes or pos + nbytes > end:
            raise MalformedPayload(f"field {name!r}: shape {shape} does not match {nbytes} bytes")
        arr = np.frombuffer(view, dtype=dtype, count=count, offset=pos)
        out[name] = arr.reshape(shape) if ndim else arr.reshape(())
        pos += nbytes + _pad8(nbytes)
    return out
