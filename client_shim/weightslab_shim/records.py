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

FIELD = struct.Struct("<HBBI")
_DTYPES: tuple[np.dtype[Any], ...] = tuple(np.dtype(t) for t in (
    np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
    np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
))
_CODE = {dt: i for i, dt in enumerate(_DTYPES)}
Fields = Sequence[tuple[str, np.ndarray]]


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


def _prepare(fields: Fields) -> list[tuple[bytes, np.ndarray, int]]:
    out = []
    for name, arr in fields:
        if arr.dtype not in _CODE:
            if arr.dtype.kind not in "biuf":
                continue  # strings, objects, complex: nothing the daemon can plot; never an error
            arr = arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        out.append((name.encode(), arr, _CODE[arr.dtype]))
    return out


def encoded_size(prepared: list[tuple[bytes, np.ndarray, int]]) -> int:
    size = 0
    for name, arr, _ in prepared:
        head = FIELD.size + 4 * arr.ndim + len(name)
        size += head + _pad8(head) + arr.nbytes + _pad8(arr.nbytes)
    return size


def encode_into(view: memoryview, prepared: list[tuple[bytes, np.ndarray, int]]) -> None:
    pos = 0
    for name, arr, code in prepared:
        FIELD.pack_into(view, pos, len(name), code, arr.ndim, arr.nbytes)
        pos += FIELD.size
        if arr.ndim:
            struct.pack_into(f"<{arr.ndim}I", view, pos, *arr.shape)
            pos += 4 * arr.ndim
        view[pos: pos + len(name)] = name
        pos += len(name)
        pos += _pad8(pos)
        n = arr.nbytes
        if n:
            view[pos: pos + n] = arr.reshape(-1).view(np.uint8).data
        pos += n + _pad8(n)


def prepare(fields: Fields) -> list[tuple[bytes, np.ndarray, int]]:
    return _prepare(fields)


def encode(fields: Fields) -> bytes:
    prepared = _prepare(fields)
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
