"""One sample's preview as it is kept at rest: an image of at most MAX_EDGE pixels a side and at most
MAX_BYTES bytes.

The shim already thins inputs to 256 px and 8 bits (`weightslab_shim.previews`), so a 224x224 RGB
input is kept whole: the Studio's modal (resize -100) shows it at 224x224, and a grid cell is a
resize of it. Above 64 px it is JPEG q85 (WebP for an image with alpha), as the thumbnail rules
(`thumbnails.choose_format`) encode it; an image whose q85 encoding passes MAX_BYTES (noise-like
content: uniform noise at 224 px is ~38 KB at q85) is encoded again at lower quality, then at half
size, until it fits: the bytes per sample are bounded whatever the content. Up to 64 px it is kept as
its 8-bit pixels: lossless, at most 16 KB, about the size of a PNG of it (3,072 bytes against
~2,400 at 3x32x32) and free to keep, so such a sample is encoded only when the Studio shows it. The
pixels are kept in the layout they came in: "PLANAR" (channels first, as the shim sends a CHW batch)
or "RAW" (rows of pixels); turning planes into pixels is a strided copy (~5 us at 3x32x32, more than
the rest of the work on such a sample), so it is done when the Studio looks, not for every sample.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from weightslab_shim.previews import PREVIEW_MAX_EDGE, channel_axis
from weightslabd.store.thumbnails import (
    PNG_MAX_EDGE,
    ThumbnailError,
    choose_format,
    encode_as,
    fit_size,
    pixel_layout,
    to_pixels,
)

__all__ = ["MAX_BYTES", "MAX_EDGE", "PIXEL_FORMATS", "Encoded", "Pixels", "encode_preview", "encode_block", "decode"]

MAX_EDGE = PREVIEW_MAX_EDGE
MAX_BYTES = 32 * 1024
_FALLBACK_QUALITIES = (60, 40)  # below the thumbnails' q85
FORMATS = ("", "PNG", "JPEG", "WEBP", "RAW", "PLANAR")  # index = the format code at rest; "" = no image
PIXEL_FORMATS = ("RAW", "PLANAR")  # 8-bit pixels as they are, not an encoded file
_RAW_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # bytes per pixel of a RAW image


@dataclass(frozen=True, slots=True)
class Encoded:
    """An encoded image at rest: its bytes, format and size (what the modal shows at -100)."""

    data: bytes
    fmt: str
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def is_pixels(self) -> bool:
        """8-bit pixels kept as they are (no file format: served only once encoded)."""
        return self.fmt in PIXEL_FORMATS


def encode_preview(array: np.ndarray) -> Encoded:
    """One sample's input (any layout and dtype `to_image` takes) as its preview at rest.
    Raises ThumbnailError for what is not an image."""
    planar = _planar(array)
    if planar is not None:
        return planar
    pixels = to_pixels(array)
    height, width = pixels.shape[:2]
    if max(width, height) <= PNG_MAX_EDGE:
        return Encoded(pixels.tobytes(), "RAW", width, height)
    image = Image.fromarray(pixels)
    size = fit_size(width, height, 0, 0, MAX_EDGE)  # inputs of older shims may be larger
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    fmt = choose_format(image)
    data = encode_as(image, fmt)
    qualities = list(_FALLBACK_QUALITIES) if fmt != "PNG" else []
    while len(data) > MAX_BYTES:
        if qualities:
            data = _lossy(image, fmt, qualities.pop(0))
            continue
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BILINEAR)
        fmt = choose_format(image)
        data = encode_as(image, fmt) if fmt == "PNG" else _lossy(image, fmt, _FALLBACK_QUALITIES[-1])
    return Encoded(data, fmt, image.width, image.height)


@dataclass(frozen=True, slots=True)
class Pixels:
    """The previews of a block of samples kept as their pixels: one row of `data` per sample."""

    data: np.ndarray  # uint8 (samples, bytes of one image)
    fmt: str  # "RAW" or "PLANAR"
    width: int
    height: int


def encode_block(inputs: np.ndarray) -> Pixels | None:
    """The previews of a block of samples of one shape (axis 0), all at once, when they are kept as their
    pixels (8-bit and up to PNG_MAX_EDGE: what a first epoch of small images sends); None otherwise (each
    is then encoded alone by `encode_preview`). The same bytes as `encode_preview` of each sample: for
    uint8 inputs the format and layout follow from the shape alone, so the layout of an array of indices
    of that shape gives one gather for them all."""
    if inputs.dtype != np.uint8 or inputs.ndim < 3 or len(inputs) == 0:
        return None
    flat = np.ascontiguousarray(inputs).reshape(len(inputs), -1)
    planar = _planar(inputs[0])
    if planar is not None:
        return Pixels(flat, planar.fmt, planar.width, planar.height)
    try:
        where = np.ascontiguousarray(pixel_layout(np.arange(flat.shape[1]).reshape(inputs.shape[1:])))
    except ThumbnailError:
        return None  # each is tried alone, and the error said
    height, width = where.shape[:2]
    if max(width, height) > PNG_MAX_EDGE:
        return None
    if not np.array_equal(where.reshape(-1), np.arange(flat.shape[1])):
        flat = flat[:, where.reshape(-1)]  # planes into pixels, or the first of several channels
    return Pixels(flat, "RAW", width, height)


def _planar(array: np.ndarray) -> Encoded | None:
    """A uint8 channels-first input of 3 or 4 channels up to PNG_MAX_EDGE, kept as its bytes; None
    for anything else (`to_pixels` then decides)."""
    arr = array
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] not in (3, 4):
        return None
    channels, height, width = arr.shape
    if max(height, width) > PNG_MAX_EDGE or channel_axis((channels, height, width)) != 0:
        return None
    return Encoded(arr.tobytes(), "PLANAR", width, height)


def _lossy(image: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, "JPEG", quality=quality)
    else:
        image.save(buf, "WEBP", quality=quality, method=0)
    return buf.getvalue()


def decode(encoded: Encoded, fit: tuple[int, int] | None = None) -> Image.Image:
    """The image back, as "L", "RGB" or "RGBA". With `fit`, a JPEG is decoded at the smallest of 1/2,
    1/4, 1/8 scale still at least that size (libjpeg's draft mode): a grid cell costs a fraction."""
    if encoded.is_pixels:
        mode = _RAW_MODES.get(len(encoded.data) // max(1, encoded.width * encoded.height), "")
        if not mode or len(encoded.data) != len(mode) * encoded.width * encoded.height:
            raise ValueError(f"a {encoded.fmt} preview of {len(encoded.data)} bytes is not "
                             f"{encoded.width}x{encoded.height}")
        if encoded.fmt == "PLANAR" and len(mode) > 1:
            planes = np.frombuffer(encoded.data, np.uint8).reshape(len(mode), encoded.height, encoded.width)
            return Image.fromarray(np.ascontiguousarray(planes.transpose(1, 2, 0)))
        return Image.frombytes(mode, encoded.size, encoded.data)
    image: Image.Image = Image.open(io.BytesIO(encoded.data))
    if fit is not None and encoded.fmt == "JPEG":
        image.draft(image.mode, fit)
    image.load()
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return image

