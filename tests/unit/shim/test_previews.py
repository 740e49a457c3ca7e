"""The shim's previews: thinned by a stride to at most 256 px a side, and 8-bit by the daemon's thumbnail
rules applied to each sample on its own, the same on the host (numpy) and on a device (torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from weightslab_shim.previews import (
    _reduce_host,
    _to_uint8_torch,
    preview_bytes,
    reduce,
    reduce_on_device,
    spatial_slices,
    to_uint8,
)

RNG = np.random.default_rng(7)


def one_by_one(batch: np.ndarray) -> np.ndarray:
    return np.stack([to_uint8(sample[None])[0] for sample in batch])


BATCHES = {
    "unit floats": RNG.random((4, 3, 8, 8), dtype=np.float32),
    "signed floats": RNG.uniform(-1, 1, (4, 8, 8)).astype(np.float32),
    "normalised floats": (RNG.normal(size=(4, 3, 8, 8)) * 3).astype(np.float32),
    "mixed ranges": np.stack([np.full((8, 8), 5.0), np.linspace(0, 1, 64).reshape(8, 8),
                              np.linspace(-1, 1, 64).reshape(8, 8), np.linspace(-50, 900, 64).reshape(8, 8)]),
    "not finite": np.where(RNG.random((3, 8, 8)) < 0.2, np.nan, RNG.normal(size=(3, 8, 8))),
    "all nan": np.full((2, 4, 4), np.nan, dtype=np.float32),
    "bytes as ints": RNG.integers(0, 256, (3, 8, 8)),
    "wide ints": RNG.integers(-3000, 3000, (3, 8, 8)),
    "constant ints": np.full((2, 4, 4), 7000),
    "half floats": RNG.random((2, 3, 8, 8)).astype(np.float16),
    "bools": RNG.random((2, 8, 8)) < 0.5,
}


@pytest.mark.parametrize("name", list(BATCHES))
def test_each_sample_is_scaled_on_its_own_and_torch_agrees_with_numpy(name: str) -> None:
    batch = BATCHES[name]
    out = to_uint8(batch)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    assert np.array_equal(out, one_by_one(batch))  # a sample's neighbours never change its pixels
    on_device = _to_uint8_torch(torch, torch.from_numpy(batch.astype(np.float32) if batch.dtype == np.float16
                                                        else batch)).numpy()
    assert np.abs(on_device.astype(int) - out.astype(int)).max(initial=0) <= 1  # float32 vs float64 rounding


def test_the_rules_are_the_documented_ones() -> None:
    ramp = np.array([[[0.0, 0.5, 1.0]]])
    assert to_uint8(ramp).tolist() == [[[0, 128, 255]]]  # [0, 1] times 255
    assert to_uint8(ramp * 2 - 1).tolist() == [[[0, 128, 255]]]  # [-1, 1] as (x + 1) / 2
    assert to_uint8(ramp * 10 + 3).tolist() == [[[0, 128, 255]]]  # anything else: min-max
    assert to_uint8(np.full((1, 1, 2), 42.0)).tolist() == [[[128, 128]]]  # constant: mid grey
    assert to_uint8(np.array([[[np.nan, 0.0, 1.0]]])).tolist() == [[[0, 0, 255]]]  # NaN left out, black


def clipped(batch: np.ndarray) -> np.ndarray:
    """The 8-bit rule in float64 with the clip always applied: what every sample must come out as."""
    data = batch.astype(np.float64).reshape(len(batch), -1)
    lo, hi = data.min(axis=1, keepdims=True), data.max(axis=1, keepdims=True)
    unit, signed = (lo >= 0) & (hi <= 1), (lo >= -1) & (hi <= 1)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.where(unit, data * 255, np.where(signed, (data + 1) * 127.5, (data - lo) * 255 / span))
    return np.floor(np.clip(scaled, 0, 255) + 0.5).astype(np.uint8).reshape(batch.shape)


def test_the_clip_is_left_out_only_where_rounding_cannot_wrap_a_value() -> None:
    """Values far from 0 with a narrow range: float32 steps of 16 at 2.5e8 would wrap 255 to 0 unclipped."""
    far = (1e6 + RNG.random((2, 3, 8, 8))).astype(np.float32)
    near = (RNG.normal(size=(2, 3, 8, 8)) * 5 + 20).astype(np.float32)
    for batch in (far, near, np.concatenate([near, far]), RNG.random((2, 8, 8), dtype=np.float32)):
        got, want = to_uint8(batch.copy(), scratch=True).astype(int), clipped(batch).astype(int)
        assert np.abs(got - want).max() <= (17 if batch.min() > 1e5 else 1)  # float32 rounding, never a wrap
        assert got.reshape(len(batch), -1).max(axis=1).min() >= 238  # each sample's top stays near white


@pytest.mark.parametrize(("shape", "kept"), [
    ((3, 224, 224), (3, 224, 224)),   # the modal's full resolution for ImageNet-sized inputs
    ((3, 512, 512), (3, 256, 256)),
    ((600, 300, 3), (200, 100, 3)),   # HWC
    ((1, 1000, 10), (1, 250, 3)),
    ((28, 28), (28, 28)),
    ((16,), (16,)),                   # not an image: sent whole
])
def test_the_stride_brings_the_longest_edge_to_256_or_less(shape: tuple[int, ...], kept: tuple[int, ...]) -> None:
    batch = np.zeros((2, *shape), dtype=np.float32)
    slices = spatial_slices(shape)
    assert (batch[slices] if slices else batch).shape[1:] == kept
    assert preview_bytes(batch, np.arange(2)) == 2 * int(np.prod(kept))


def test_reduce_picks_the_samples_and_defers_the_work_for_a_host_batch() -> None:
    batch = torch.rand(6, 3, 512, 256)
    deferred = reduce(batch, np.array([4, 1]))
    out = deferred.array()
    assert out.dtype == np.uint8 and out.shape == (2, 3, 256, 128)
    assert np.array_equal(out[1], to_uint8(batch[1:2, :, ::2, ::2].numpy())[0])
    assert deferred.nbytes() == out.nbytes


@pytest.mark.parametrize(("shape", "dtype"), [
    ((3, 224, 224), torch.float32),   # passes whole: the modal's resolution
    ((3, 512, 384), torch.float32),   # thinned by 2
    ((600, 300, 3), torch.float16),   # HWC, thinned by 3
    ((1, 28, 28), torch.uint8),
    ((28, 28), torch.int64),
])
def test_the_device_path_picks_thins_and_scales_as_the_host_path_does(
        shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """`reduce_on_device` is what a CUDA batch goes through (torch ops queued on its stream); the same ops on
    a CPU tensor must give the host path's previews, sample for sample."""
    if dtype.is_floating_point:
        batch = (torch.randn(5, *shape, generator=torch.Generator().manual_seed(3)) * 4 + 1).to(dtype)
    else:
        batch = torch.randint(0, 256 if dtype == torch.uint8 else 4000, (5, *shape), dtype=dtype)
    picked = np.array([3, 0, 4])
    on_device = reduce_on_device(torch, batch, picked)
    host = batch.float().numpy() if dtype == torch.float16 else batch.numpy()
    want = _reduce_host(host, picked)
    assert on_device.dtype == torch.uint8 and tuple(on_device.shape) == want.shape
    assert np.abs(on_device.numpy().astype(int) - want.astype(int)).max() <= 1  # float32 vs float64 rounding
    assert np.array_equal(reduce_on_device(torch, batch, None).numpy()[[3, 0, 4]], on_device.numpy())
