"""What a preview carries: each sample's input reduced to at most PREVIEW_MAX_EDGE pixels a side by a
strided pick, and to 8 bits, before it enters the ring.

The rules for 8 bits are the daemon's thumbnail rules (it imports `to_uint8` from here), applied to each
sample on its own: uint8 as is; bool as 0/255; other integers as is within 0..255, else min-max scaled;
floats within [0, 1] times 255, within [-1, 1] as (x + 1) / 2, else min-max scaled (a constant image is
mid grey); NaN and infinities left out of the range and shown as 0.

The training thread only picks which samples to send. For a CUDA batch the pick, the stride and the
8-bit scaling are queued on the user's stream (no synchronisation) and only the small result is copied
to the host; for a CPU batch everything happens later, on the publisher's thread.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import numpy as np

from .tensors import Deferred, Staged, stage, take

# The Studio's modal shows a sample at full resolution: 224 px inputs pass whole, larger ones are thinned.
PREVIEW_MAX_EDGE = 256
_COLOUR_CHANNELS = (1, 3, 4)


def channel_axis(shape: tuple[int, ...]) -> int:
    """Which axis of one sample's 3-D shape holds the channels: 0 (CHW) or 2 (HWC)."""
    c0, mid, c2 = shape
    if c0 in _COLOUR_CHANNELS and c0 < mid and c0 < c2:
        return 0
    if c2 in _COLOUR_CHANNELS:
        return 2
    if c0 in _COLOUR_CHANNELS:
        return 0
    # 2 or more than 4 channels: the two spatial axes are the equal pair, else the channels are the shorter end
    if mid == c2 and mid != c0:
        return 0
    if mid == c0 and mid != c2:
        return 2
    return 0 if c0 <= c2 else 2


def spatial_slices(sample_shape: tuple[int, ...], max_edge: int = PREVIEW_MAX_EDGE) -> tuple[slice, ...]:
    """Slices of a batch (sample axis first) that keep every `s`-th row and column, `s` the smallest stride
    that brings the longest spatial edge to `max_edge` or less; whole for what is not an image."""
    shape = list(sample_shape)
    lead = 0
    while len(shape) > 2 and shape[0] == 1:  # (1, C, H, W), (1, H, W): leading singletons
        shape.pop(0)
        lead += 1
    if len(shape) == 2:
        spatial = (lead, lead + 1)
    elif len(shape) == 3:
        spatial = (lead + 1, lead + 2) if channel_axis((shape[0], shape[1], shape[2])) == 0 else (lead, lead + 1)
    else:
        return ()
    stride = max(1, math.ceil(max(sample_shape[spatial[0]], sample_shape[spatial[1]]) / max_edge))
    if stride == 1:
        return ()
    picks = [slice(None)] * (len(sample_shape) + 1)
    for axis in spatial:
        picks[axis + 1] = slice(None, None, stride)
    return tuple(picks)


def to_uint8(batch: np.ndarray, *, scratch: bool = False) -> np.ndarray:
    """Each sample (along axis 0) of a real array to uint8, by the rules in the module docstring. With
    `scratch`, a float batch is overwritten on the way (no second buffer the size of the batch)."""
    if batch.dtype == np.uint8:
        return batch
    if batch.dtype == np.bool_:
        return np.asarray(batch.astype(np.uint8) * np.uint8(255))
    if batch.size == 0:
        return np.zeros(batch.shape, dtype=np.uint8)
    axes = tuple(range(1, batch.ndim))
    shape = (len(batch),) + (1,) * (batch.ndim - 1)
    if batch.dtype.kind in "iu":
        lo = batch.min(axis=axes).reshape(shape).astype(np.float64)
        hi = batch.max(axis=axes).reshape(shape).astype(np.float64)
        as_is = (lo >= 0) & (hi <= 255)
        flat = hi == lo
        scale = np.where(as_is, 1.0, np.where(flat, 0.0, 255.0 / np.where(flat, 1.0, hi - lo)))
        offset = np.where(as_is, 0.0, np.where(flat, 128.0, -lo * scale))
        return np.asarray(np.rint(batch * scale + offset).astype(np.uint8))
    # floats: float16 math is slow and overflows early, so compute in float32 at least
    data = batch.astype(np.float64 if batch.dtype.itemsize > 4 else np.float32, copy=False)
    lo, hi = data.min(axis=axes).reshape(shape), data.max(axis=axes).reshape(shape)
    finite: np.ndarray | None = None
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):  # min/max see any NaN or inf: one pass when clean
        finite = np.isfinite(data)
        data = np.where(finite, data, 0)
        lo = np.where(finite, data, np.inf).min(axis=axes).reshape(shape)
        hi = np.where(finite, data, -np.inf).max(axis=axes).reshape(shape)
        none = ~np.isfinite(lo)  # no finite value at all: black
        lo, hi = np.where(none, 0.0, lo), np.where(none, 0.0, hi)
    scale, offset = _affine(lo, hi)
    in_place = scratch and finite is None and data is batch and data.flags.writeable
    scaled = np.multiply(data, scale.astype(data.dtype), out=data if in_place else None)
    scaled += (offset + 0.5).astype(data.dtype)  # + 0.5: round half up on the truncating cast
    if finite is not None or not _within_rounding(lo, hi):
        np.clip(scaled, 0.5, 255.5, out=scaled)  # the same as clipping to 0..255 before adding the half
    out = scaled.astype(np.uint8)
    if finite is not None:
        out[~finite] = 0
    return out


def _within_rounding(lo: np.ndarray, hi: np.ndarray) -> bool:
    """Whether every sample's scaled values stay within [0, 256) before the cast with no clip: each maps
    [lo, hi] onto [0, 255] (+ 0.5), and its rounding error, at most a few float32 ulps of the largest
    magnitude it multiplies, is far below 0.5 unless that magnitude dwarfs the sample's range."""
    lo, hi = lo.astype(np.float64), hi.astype(np.float64)
    small = (lo >= -1.0) & (hi <= 1.0)  # [0, 1] and [-1, 1]: scaled by at most 255
    half_span = hi * 0.5 - lo * 0.5  # halves: hi - lo can overflow near the float maximum
    return bool(np.all(small | (lo == hi) | (np.maximum(np.abs(lo), np.abs(hi)) * 5e-4 <= half_span)))


def _affine(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, (scale, offset) with uint8 = value * scale + offset, from the sample's finite range."""
    unit = (lo >= 0.0) & (hi <= 1.0)
    signed = (lo >= -1.0) & (hi <= 1.0)
    flat = lo == hi
    half_span = np.where(flat, 1.0, hi * 0.5 - lo * 0.5)  # halves: hi - lo can overflow near the float maximum
    minmax = 127.5 / half_span
    scale = np.where(unit, 255.0, np.where(signed, 127.5, np.where(flat, 0.0, minmax)))
    offset = np.where(unit, 0.0, np.where(signed, 127.5, np.where(flat, 128.0, -(lo * 0.5) * minmax * 2.0)))
    return scale, offset


def _to_uint8_torch(torch: Any, batch: Any) -> Any:
    """`to_uint8` with torch ops on the tensor's own device: queued, never synchronised."""
    if batch.dtype == torch.uint8:
        return batch
    if batch.dtype == torch.bool:
        return batch.to(torch.uint8) * 255
    dims = tuple(range(1, batch.dim()))
    if not batch.dtype.is_floating_point:
        data = batch.double()
        lo, hi = data.amin(dim=dims, keepdim=True), data.amax(dim=dims, keepdim=True)
        flat = hi == lo
        as_is = (lo >= 0) & (hi <= 255)
        scale = torch.where(as_is, 1.0, torch.where(flat, 0.0, 255.0 / torch.where(flat, 1.0, hi - lo)))
        offset = torch.where(as_is, 0.0, torch.where(flat, 128.0, -lo * scale))
        return (data * scale + offset).round().to(torch.uint8)
    data = batch.float() if batch.element_size() <= 4 else batch
    finite = torch.isfinite(data)
    data = torch.where(finite, data, 0.0)
    lo = torch.where(finite, data, math.inf).amin(dim=dims, keepdim=True)
    hi = torch.where(finite, data, -math.inf).amax(dim=dims, keepdim=True)
    none = ~torch.isfinite(lo)
    lo, hi = torch.where(none, 0.0, lo), torch.where(none, 0.0, hi)
    flat = lo == hi
    minmax = 127.5 / torch.where(flat, 1.0, hi * 0.5 - lo * 0.5)
    scale = torch.where((lo >= 0) & (hi <= 1), 255.0, torch.where((lo >= -1) & (hi <= 1), 127.5,
                                                                     torch.where(flat, 0.0, minmax)))
    minmax_offset = -(lo * 0.5) * minmax * 2.0
    offset = torch.where((lo >= 0) & (hi <= 1), 0.0, torch.where((lo >= -1) & (hi <= 1), 127.5,
                                                                    torch.where(flat, 128.0, minmax_offset)))
    out = ((data * scale + offset).clamp(0.0, 255.0) + 0.5).to(torch.uint8)
    return torch.where(finite, out, 0)


def reduce(inputs: Any, picked: np.ndarray | None) -> Staged | Deferred:
    """The previews of the `picked` samples of a batch (None: all of them), thinned and 8-bit (see the
    module docstring)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(inputs, torch.Tensor):
        batch = inputs.detach()
        if batch.is_cuda:
            return stage(reduce_on_device(torch, batch, picked))
        held = batch.element_size() * batch.nelement()
        if batch.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
            return Deferred(lambda: _reduce_host((batch if picked is None else batch[torch.from_numpy(picked)])
                                                 .float().numpy()), preview_bytes(batch, picked), held)
        return Deferred(lambda: _reduce_host(batch.numpy(), picked), preview_bytes(batch, picked), held)
    array = np.asarray(inputs)
    return Deferred(lambda: _reduce_host(array, picked), preview_bytes(array, picked), array.nbytes)


def reduce_on_device(torch: Any, batch: Any, picked: np.ndarray | None) -> Any:
    """The pick, the stride and the 8-bit scaling as torch ops on `batch`'s own device (for a CUDA batch:
    queued on the current stream, nothing waits for it); the small uint8 result stays there."""
    chosen = batch if picked is None else take(batch, picked)
    slices = spatial_slices(tuple(chosen.shape[1:]))
    return _to_uint8_torch(torch, chosen[slices] if slices else chosen)


def _reduce_host(batch: np.ndarray, picked: np.ndarray | None = None) -> np.ndarray:
    slices = spatial_slices(tuple(batch.shape[1:]))
    thinned = batch[slices] if slices else batch
    if picked is None:  # the user's memory, read only: the scaling's first pass writes a new array
        return to_uint8(thinned)
    return to_uint8(thinned[picked], scratch=True)  # fancy indexing copies: ours to overwrite


def preview_bytes(batch: Any, picked: np.ndarray | None, count: int | None = None) -> int:
    """Bytes the previews will take: one per value that the stride keeps, for the `picked` samples (None:
    `count` of them, else the whole batch)."""
    if picked is not None:
        count = len(picked)
    elif count is None:
        count = int(batch.shape[0])
    return count * _kept_per_sample(tuple(int(n) for n in batch.shape[1:]))


@functools.lru_cache(maxsize=64)
def _kept_per_sample(shape: tuple[int, ...]) -> int:
    slices = spatial_slices(shape)[1:] or (slice(None),) * len(shape)
    return math.prod(len(range(*s.indices(n))) for s, n in zip(slices, shape, strict=True))
