"""Sample input tensors to encoded thumbnails for the Weights Studio grid.

`to_image` turns one sample's array into a PIL image, `fit_size` applies the Studio's resize rules,
`encode` resizes and compresses, `thumbnail` does all three. Pure functions: no I/O, no state.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from weightslab_shim.previews import channel_axis, to_uint8

__all__ = ["PNG_MAX_EDGE", "JPEG_QUALITY", "ThumbnailError", "to_image", "to_pixels", "pixel_layout", "fit_size",
           "choose_format", "encode", "encode_as", "thumbnail"]

# At or below this longest edge a thumbnail is lossless PNG: MNIST/CIFAR/64 px pixels are seen one by one,
# and 8x8 JPEG blocks on a 32 px image are plain to see. At 128 px an RGB PNG is ~8x a q85 JPEG (bench).
PNG_MAX_EDGE = 64
JPEG_QUALITY = 85


class ThumbnailError(ValueError):
    """The array cannot be shown as an image (its message is one line)."""


def to_image(array: np.ndarray) -> Image.Image:
    """One sample's array as a PIL image ("L", "RGB" or "RGBA"): see `to_pixels`."""
    return Image.fromarray(to_pixels(array))  # uint8 HW, HW3, HW4 -> "L", "RGB", "RGBA"


def to_pixels(array: np.ndarray) -> np.ndarray:
    """One sample's array as contiguous uint8 pixels: HW, HW3 or HW4.

    Layouts: HW, CHW (C in 1, 3, 4 and C smaller than H and W), HWC (C in 1, 3, 4); leading
    singleton axes are dropped first, so (1, C, H, W) and (1, H, W) work. An array with 2 or more
    than 4 channels shows its first channel as greyscale (the channel axis is the one that is not
    part of an equal pair of axes, else the shorter end).

    Values: uint8 as is; bool as 0/255; other integers as is when within 0..255, else min-max
    scaled; floats within [0, 1] times 255, within [-1, 1] as (x + 1) / 2, else min-max scaled over
    the whole image (a constant image is mid grey). NaN and infinities are left out of the range and
    shown as 0 (black).

    Raises ThumbnailError for what cannot be an image: 0-D, 1-D, 4-D and up after squeezing, an
    empty array, or a non-real dtype.
    """
    arr = np.asarray(array)
    if arr.dtype.kind not in "biuf":
        raise ThumbnailError(f"cannot show dtype {arr.dtype} as an image")
    if arr.size == 0:
        raise ThumbnailError(f"cannot show an empty array (shape {arr.shape}) as an image")
    return np.ascontiguousarray(to_uint8(pixel_layout(arr)[None])[0])  # the shim's rules, so its 8-bit previews agree


def pixel_layout(arr: np.ndarray) -> np.ndarray:
    """The view of one sample's array as rows of pixels (HW, HW3 or HW4), by `to_pixels`' layout rules.
    It depends on the shape alone, so an array of indices gives where each pixel comes from.
    Raises ThumbnailError for a shape that cannot be an image."""
    shape = arr.shape
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim < 2 or arr.ndim > 3:
        raise ThumbnailError(f"cannot show a {arr.ndim}-D array (shape {shape}) as an image")
    if arr.ndim == 3:
        if channel_axis((arr.shape[0], arr.shape[1], arr.shape[2])) == 0:
            arr = np.moveaxis(arr, 0, -1)
        if arr.shape[2] in (1, 2) or arr.shape[2] > 4:
            arr = arr[:, :, 0]
    return arr


def fit_size(width: int, height: int, req_width: int, req_height: int, default_longest: int) -> tuple[int, int]:
    """The thumbnail size for a width x height image under the Studio's resize request.

    Each non-zero request limits the scale: a positive one to fit that many pixels on its axis, a
    negative one to that percent of the original (-100 full size, -50 half). With both set the
    smaller scale wins, so the aspect ratio is kept. Both 0: the longest edge becomes
    `default_longest`. Never upscales; at least 1x1.
    """
    width, height = max(1, width), max(1, height)
    scales: list[float] = []
    for req, dim in ((req_width, width), (req_height, height)):
        if req > 0:
            scales.append(req / dim)
        elif req < 0:
            scales.append(-req / 100.0)
    if not scales:
        scales.append(max(1, default_longest) / max(width, height))
    scale = min(1.0, *scales)
    if scale >= 1.0:
        return width, height
    return (min(width, max(1, round(width * scale))), min(height, max(1, round(height * scale))))


def choose_format(image: Image.Image) -> str:
    """PNG up to PNG_MAX_EDGE; above it JPEG, or lossy WebP for an image with alpha.

    Why, from bench/thumbnails.py (synthetic 1/f-noise images, q85, one core): at 224 px RGB a JPEG
    is 10 KB in 0.14 ms, a PNG 76 KB in 15+ ms, a WebP 8 KB in 1.2 ms (method 0) to 4 ms (method 4);
    at 720 px JPEG 84 KB in 1.4 ms, WebP 60 KB in 10 ms. WebP's 20-30% saving is not worth 8-30x the
    encode time on a cold page of 128. Greyscale goes to JPEG too (720 px "L": 110 KB vs PNG 300 KB).
    JPEG has no alpha, so RGBA above the edge limit goes to WebP (rare for model inputs). Bytes count
    as much as time: the RPC sends each byte as a 4-byte float.
    """
    if max(image.size) <= PNG_MAX_EDGE:
        return "PNG"
    return "JPEG" if image.mode in ("L", "RGB") else "WEBP"


def encode_as(image: Image.Image, fmt: str) -> bytes:
    """The image encoded as PNG, JPEG or WEBP, with this module's settings for each."""
    buf = io.BytesIO()
    if fmt == "PNG":
        image.save(buf, "PNG", compress_level=6)
    elif fmt == "JPEG":
        rgb = image if image.mode in ("L", "RGB") else image.convert("RGB")
        rgb.save(buf, "JPEG", quality=JPEG_QUALITY)
    elif fmt == "WEBP":
        image.save(buf, "WEBP", quality=JPEG_QUALITY, method=0)  # method 0: ~4x faster than 4, ~10% larger
    else:
        raise ThumbnailError(f"unknown thumbnail format {fmt!r}")
    return buf.getvalue()


def encode(image: Image.Image, size: tuple[int, int]) -> bytes:
    """Resize the image to `size` (never called to upscale) and encode it (see `choose_format`)."""
    if image.size != size:
        # Pillow's BILINEAR is area-aware (no aliasing) and ~3x faster than LANCZOS; reducing_gap adds a
        # box pre-reduction for big shrinks, which is most of the 720->128 cost (bench/thumbnails.py)
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return encode_as(image, choose_format(image))


def thumbnail(array: np.ndarray, req_width: int, req_height: int, default_longest: int) -> bytes:
    """One sample's array as encoded thumbnail bytes (PNG, JPEG or WebP) for the given resize request."""
    image = to_image(array)
    return encode(image, fit_size(image.width, image.height, req_width, req_height, default_longest))
