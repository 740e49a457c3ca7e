"""Thumbnails: array layouts and dtypes to images, the Studio's resize rules, and the encoded formats."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from weightslabd.store.thumbnails import (
    PNG_MAX_EDGE,
    ThumbnailError,
    choose_format,
    encode,
    encode_as,
    fit_size,
    thumbnail,
    to_image,
)

FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# -- to_image: layouts -------------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "mode", "size"), [
    ((28, 28), "L", (28, 28)),
    ((20, 30), "L", (30, 20)),  # PIL sizes are (width, height)
    ((1, 28, 28), "L", (28, 28)),
    ((1, 1, 28, 28), "L", (28, 28)),
    ((3, 32, 48), "RGB", (48, 32)),
    ((1, 3, 32, 48), "RGB", (48, 32)),
    ((4, 16, 16), "RGBA", (16, 16)),
    ((32, 48, 3), "RGB", (48, 32)),
    ((16, 16, 4), "RGBA", (16, 16)),
    ((28, 28, 1), "L", (28, 28)),
    ((2, 16, 24), "L", (24, 16)),    # 2 channels: the first as greyscale
    ((16, 24, 2), "L", (24, 16)),
    ((8, 16, 16), "L", (16, 16)),    # more than 4 channels: the first
    ((64, 7, 7), "L", (7, 7)),       # a feature map: channels first, spatial pair equal
    ((7, 7, 64), "L", (7, 7)),
    ((4, 4, 3), "RGB", (4, 4)),      # C not below H, W: channels last
    ((1, 5), "L", (5, 1)),
])
def test_layouts(shape: tuple[int, ...], mode: str, size: tuple[int, int]) -> None:
    image = to_image(np.random.default_rng(0).random(shape, dtype=np.float32))
    assert (image.mode, image.size) == (mode, size)


def test_chw_and_hwc_give_the_same_picture() -> None:
    hwc = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    assert np.array_equal(pixels(to_image(hwc)), pixels(to_image(hwc.transpose(2, 0, 1))))
    assert np.array_equal(pixels(to_image(hwc)), hwc)


def test_extra_channels_show_the_first_channel() -> None:
    chw = np.random.default_rng(2).integers(0, 256, (6, 10, 10), dtype=np.uint8)
    assert np.array_equal(pixels(to_image(chw)), chw[0])


@pytest.mark.parametrize("value", [
    np.zeros(5), np.zeros((0, 4)), np.zeros((3, 0, 4)), np.zeros((2, 3, 8, 8)), np.zeros((2, 2, 2, 2, 2)),
    np.float32(1.0), np.zeros((4, 4), dtype=np.complex64), np.array([["a", "b"], ["c", "d"]]),
    np.zeros((4, 4), dtype=object),
])
def test_what_is_not_an_image(value: np.ndarray) -> None:
    with pytest.raises(ThumbnailError) as info:
        to_image(value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


# -- to_image: values ----------------------------------------------------------------------------

def test_unit_range_floats_times_255() -> None:
    out = pixels(to_image(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)))
    assert out.tolist() == [[0, 128, 255]]


def test_symmetric_range_floats() -> None:
    out = pixels(to_image(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)))
    assert out.tolist() == [[0, 128, 255]]


def test_standardized_floats_are_min_max_scaled() -> None:
    out = pixels(to_image(np.array([[-2.1, 0.0, 3.0]], dtype=np.float64)))
    assert out[0, 0] == 0 and out[0, 2] == 255 and 100 < out[0, 1] < 110


def test_min_max_is_over_all_channels_together() -> None:
    chw = np.stack([np.full((4, 4), 10.0), np.full((4, 4), 20.0), np.full((4, 4), 30.0)])
    out = pixels(to_image(chw))
    assert out[0, 0].tolist() == [0, 128, 255]


def test_constant_image_is_mid_grey() -> None:
    assert set(pixels(to_image(np.full((5, 5), 7.5))).ravel()) == {128}
    assert set(pixels(to_image(np.full((5, 5), 1000, dtype=np.int32))).ravel()) == {128}


def test_non_finite_is_black_and_left_out_of_the_range() -> None:
    arr = np.array([[np.nan, 0.0, 0.5, np.inf, -np.inf, 1.0]], dtype=np.float32)
    assert pixels(to_image(arr)).tolist() == [[0, 0, 128, 0, 0, 255]]
    assert pixels(to_image(np.full((3, 3), np.nan))).max() == 0


def test_extreme_floats_do_not_overflow() -> None:
    big = np.finfo(np.float64).max
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pixels(to_image(np.array([[-big, 0.0, big]])))
    assert out.tolist() == [[0, 128, 255]]


def test_bool_and_integers() -> None:
    assert pixels(to_image(np.array([[True, False]]))).tolist() == [[255, 0]]
    assert pixels(to_image(np.array([[0, 7, 255]], dtype=np.int64))).tolist() == [[0, 7, 255]]
    assert pixels(to_image(np.array([[0, 500, 1000]], dtype=np.uint16))).tolist() == [[0, 128, 255]]
    assert pixels(to_image(np.array([[-128, 127]], dtype=np.int8))).tolist() == [[0, 255]]
    assert pixels(to_image(np.array([[0, 2**64 - 1]], dtype=np.uint64))).tolist() == [[0, 255]]


def test_float16_and_non_contiguous() -> None:
    assert pixels(to_image(np.array([[0.0, 1.0]], dtype=np.float16))).tolist() == [[0, 255]]
    strided = np.random.default_rng(3).integers(0, 256, (20, 20), dtype=np.uint8)[::2, ::3]
    assert np.array_equal(pixels(to_image(strided)), strided)


DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8,
                          np.uint16, np.uint32, np.uint64, np.bool_])
ARRAYS = DTYPES.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0,
                                                                  max_side=9)))


@FUZZ
@given(ARRAYS)
def test_any_array_is_an_image_or_a_thumbnail_error(arr: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-cast RuntimeWarning on the way either
        try:
            image = to_image(arr)
        except ThumbnailError as exc:
            assert "\n" not in str(exc)
            return
        assert image.mode in ("L", "RGB", "RGBA")
        assert image.width * image.height <= arr.size
        data = thumbnail(arr, 0, 0, 720)
    assert decode(data).size == image.size


# -- fit_size ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "expected"), [
    ((1000, 500, 0, 0, 720), (720, 360)),     # default: longest edge -> default_longest
    ((500, 1000, 0, 0, 720), (360, 720)),
    ((32, 32, 0, 0, 720), (32, 32)),          # never upscale
    ((1000, 500, 100, 100, 720), (100, 50)),  # box fit keeps aspect
    ((500, 1000, 100, 100, 720), (50, 100)),
    ((1000, 500, 200, 0, 720), (200, 100)),   # only width constrained
    ((1000, 500, 0, 100, 720), (200, 100)),   # only height constrained
    ((32, 32, 128, 128, 720), (32, 32)),      # a bigger box does not upscale
    ((1000, 500, -100, -100, 720), (1000, 500)),  # -100: full resolution, ignoring the default
    ((1000, 500, -50, 0, 720), (500, 250)),
    ((1000, 500, -50, -25, 720), (250, 125)),  # both percent: the smaller keeps aspect
    ((1000, 500, -200, -300, 720), (1000, 500)),  # percent above 100 does not upscale
    ((1000, 500, -1, -1, 720), (10, 5)),
    ((1000, 1, 0, 0, 720), (720, 1)),         # at least 1 px
    ((1000, 1, -1, 0, 720), (10, 1)),
    ((1, 1, 1, 1, 720), (1, 1)),
    ((300, 200, 0, 0, 1), (1, 1)),
])
def test_fit_size(args: tuple[int, int, int, int, int], expected: tuple[int, int]) -> None:
    assert fit_size(*args) == expected


SIDE = st.integers(min_value=1, max_value=5000)
REQ = st.integers(min_value=-400, max_value=5000)


@FUZZ
@given(SIDE, SIDE, REQ, REQ, st.integers(min_value=1, max_value=2000))
def test_fit_size_never_upscales_and_fits_the_box(w: int, h: int, rw: int, rh: int, longest: int) -> None:
    fw, fh = fit_size(w, h, rw, rh, longest)
    assert 1 <= fw <= w and 1 <= fh <= h
    if rw > 0:
        assert fw <= rw or fw == 1
    if rh > 0:
        assert fh <= rh or fh == 1
    if rw == 0 and rh == 0:
        assert max(fw, fh) <= max(longest, 1) or max(fw, fh) == 1
    if fw > 1 and fh > 1:  # aspect kept to within a pixel's rounding
        assert abs(fw / fh - w / h) <= (w / h) * (1 / fw + 1 / fh) + 1e-9


# -- encode --------------------------------------------------------------------------------------

def natural(side: int, channels: int = 3) -> np.ndarray:
    """A smooth random image (what photos look like to a codec), uint8 HWC."""
    rng = np.random.default_rng(side)
    small = rng.integers(0, 256, (8, 8, channels), dtype=np.uint8)
    image = Image.fromarray(small if channels > 1 else small[:, :, 0]).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(image)


def test_small_images_are_lossless_png() -> None:
    arr = natural(PNG_MAX_EDGE)
    data = thumbnail(arr, 0, 0, 720)
    assert data.startswith(PNG_MAGIC)
    assert np.array_equal(pixels(decode(data)), arr)


def test_large_images_are_jpeg_with_the_fitted_size() -> None:
    data = thumbnail(natural(300), 0, 0, 200)
    assert data.startswith(JPEG_MAGIC)
    assert decode(data).size == (200, 200)
    grey = thumbnail(natural(300, 1), -50, -50, 720)
    assert grey.startswith(JPEG_MAGIC) and decode(grey).mode == "L" and decode(grey).size == (150, 150)


def test_alpha_keeps_alpha() -> None:
    rgba = np.dstack([natural(200), np.full((200, 200), 100, dtype=np.uint8)])
    big = decode(thumbnail(rgba, 0, 0, 720))
    assert big.mode == "RGBA" and big.format == "WEBP"
    small = decode(thumbnail(rgba, 32, 32, 720))
    assert small.format == "PNG" and pixels(small)[0, 0, 3] == 100


def test_resize_downscales_smoothly() -> None:
    # a fine checkerboard must average to grey, not alias into stripes
    board = (np.indices((400, 400)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = pixels(decode(encode(to_image(board), (100, 100))))
    assert abs(float(small.mean()) - 127.5) < 3 and small.std() < 6


def test_choose_format_and_encode_as() -> None:
    assert choose_format(Image.new("RGB", (64, 10))) == "PNG"
    assert choose_format(Image.new("RGB", (65, 10))) == "JPEG"
    assert choose_format(Image.new("L", (10, 300))) == "JPEG"
    assert choose_format(Image.new("RGBA", (300, 300))) == "WEBP"
    image = Image.new("RGB", (40, 40), (10, 200, 30))
    assert encode_as(image, "PNG").startswith(PNG_MAGIC)
    assert encode_as(image, "JPEG").startswith(JPEG_MAGIC)
    assert encode_as(image, "WEBP")[8:12] == b"WEBP"
    with pytest.raises(ThumbnailError):
        encode_as(image, "GIF")
