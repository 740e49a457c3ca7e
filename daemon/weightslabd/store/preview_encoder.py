"""One sample's preview as it is kept at rest: an image of at most MAX_EDGE pixels a side and at most
MAX_BYTES bytes.

The shim already thins inputs to 256 px and 8 bits (`weightslab_shim.previews`), so a 224x224 RGB
input is kept whole: the Studio's modal (resize -100) shows it at 224x224, and a grid cell is a
resize of it. Above 64 px it is JPEG q85 (WebP for an image with alpha), as the thumbnail rules
(`thumbnails.choose_format`) encode it; an image whose q85 encoding passes MAX_BYTES (noise-like
content: uniform noise at 224 px is ~38 KB at q85) is encoded again at lower quality, then at half
size, until it fits: the bytes per sample are bounded whatever the content. Up to 64 px it is kept as
its 8-bit pixels ("RAW"): lossless, at most 16 KB, about the size of a PNG of it (3,072 bytes against
~2,400 at 3x32x32) and free to keep, so such a sample is encoded only when the Studio shows it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from weightslab_shim.previews import PREVIEW_MAX_EDGE
from weightslabd.store.thumbnails import PNG_MAX_EDGE, choose_format, encode_as, fit_size, to_pixels

__all__ = ["MAX_BYTES", "MAX_EDGE", "Encoded", "encode_preview", "decode"]

MAX_EDGE = PREVIEW_MAX_EDGE
MAX_BYTES = 32 * 1024
_FALLBACK_QUALITIES = (60, 40)  # below the thumbnails' q85
FORMATS = ("", "PNG", "JPEG", "WEBP", "RAW")  # index = the format code at rest; "" = no image
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


def encode_preview(array: np.ndarray) -> Encoded:
    """One sample's input (any layout and dtype `to_image` takes) as its preview at rest.
    Raises ThumbnailError for what is not an image."""
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
    if encoded.fmt == "RAW":
        mode = _RAW_MODES.get(len(encoded.data) // max(1, encoded.width * encoded.height), "")
        if not mode or len(encoded.data) != len(mode) * encoded.width * encoded.height:
            raise ValueError(f"a RAW preview of {len(encoded.data)} bytes is not {encoded.width}x{encoded.height}")
        return Image.frombytes(mode, encoded.size, encoded.data)
    image: Image.Image = Image.open(io.BytesIO(encoded.data))
    if fit is not None and encoded.fmt == "JPEG":
        image.draft(image.mode, fit)
    image.load()
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return image

