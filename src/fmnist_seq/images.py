"""Image files -> the model's input: uint8 (28, 28) grayscale, the item light on a dark background.

Any size and colour mode Pillow reads, within two limits (a file past them gets its own error, and no memory
is spent on it): at most MAX_PIXELS pixels (Pillow's own decompression-bomb limit, here an error rather than
a warning) and at most MAX_SIDE on the longest side. High bit depths are scaled to 8 bits, never clipped.

The image is padded to a centred square with the background and resized with Pillow's LANCZOS filter, but
the padded square is never built: a 1x100000 strip would need a 10 GB square. `resize_padded` computes what
Pillow computes on that square, bit for bit, from the image's own pixels (the padding is zeros, so its share
of every sum is zero), in memory that grows with the image, not the square. examples/web/preprocess.mjs does
the same in the browser.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fmnist_seq.classes import IMAGE_SIZE

MAX_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: about 90 megapixels, 0.36 GB as RGBA
MAX_SIDE = 131_072  # bounds the filter weights computed per image (about a second at this side)

# Modes of more than 8 bits per sample; Pillow's convert("L") would clip them at 255.
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La", "P")

# Pillow's 8-bit resampling (libImaging/Resample.c): weights in fixed point with this many fractional bits.
_PRECISION_BITS = 32 - 8 - 2
_LANCZOS_SUPPORT = 3.0


class ImageRefused(ValueError):
    """The file is an image, but one this command does not take (too large, unusable pixel values)."""


def check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ImageRefused(f"the image is empty ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageRefused(f"{width}x{height} is {width * height:,} pixels, over the limit of {MAX_PIXELS:,}")
    if max(width, height) > MAX_SIDE:
        raise ImageRefused(f"{width}x{height}: a side over {MAX_SIDE:,} pixels")


def _full_scale(image: Image.Image, values: np.ndarray) -> float:
    """The value that means white in a high-bit-depth image: from its bit depth where the file states it."""
    if image.mode.startswith("I;16"):
        return 65535.0
    if image.mode == "I":
        if image.format == "PNG":  # PNG's only deeper-than-8 grey is 16-bit
            return 65535.0
        tags = getattr(image, "tag_v2", {})
        bits = tags.get(258)  # TIFF BitsPerSample
        bits = bits[0] if isinstance(bits, tuple) else bits
        if isinstance(bits, int) and 8 < bits <= 32:
            signed = tags.get(339) in (2, (2,))  # TIFF SampleFormat: 2 = signed integer
            return float(2 ** (bits - 1 if signed else bits) - 1)
    # Floating point (and integers of unknown depth): the smallest usual full scale that holds the values.
    top = float(values.max()) if values.size else 0.0
    return next((scale for scale in (1.0, 255.0, 65535.0, 2.0**32 - 1) if top <= scale), top)


def to_8_bits(image: Image.Image) -> np.ndarray:
    """A high-bit-depth grey image (16-bit PNG or TIFF, 32-bit integer or float TIFF) as uint8, scaled by
    its full scale (a 16-bit value v becomes v / 257, so an 8-bit image saved as 16 bits comes back exact)."""
    values = np.asarray(image)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ImageRefused("the image has NaN or infinite pixel values")
    scale = _full_scale(image, values)
    scaled = values.astype(np.float64) * (255.0 / scale) if scale > 0 else np.zeros(values.shape)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def grayscale(image: Image.Image, dark_on_light: bool = False) -> np.ndarray:
    """uint8 (height, width): transparency flattened onto the background, light item on dark."""
    if image.mode in _HIGH_DEPTH:
        gray = to_8_bits(image)
    else:
        if image.mode in _WITH_ALPHA or "transparency" in image.info:
            # Transparent areas are background: flatten onto white for photos, black otherwise.
            canvas = Image.new("RGBA", image.size, (255, 255, 255, 255) if dark_on_light else (0, 0, 0, 255))
            image = Image.alpha_composite(canvas, image.convert("RGBA"))
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
    return 255 - gray if dark_on_light else gray


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -_LANCZOS_SUPPORT <= x < _LANCZOS_SUPPORT else 0.0


def _windows(in_size: int, out_size: int) -> list[tuple[int, np.ndarray]]:
    """Per output pixel, Pillow's input window: its first position and fixed-point weights (precompute_coeffs
    and normalize_coeffs_8bpc in Resample.c, with the same double arithmetic, math.sin being C's sin)."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filter_scale
    windows = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's (int)
        length = min(int(center + support + 0.5), in_size) - xmin
        weights = [_lanczos((x + xmin - center + 0.5) * (1.0 / filter_scale)) for x in range(length)]
        total = 0.0
        for w in weights:  # one by one, as C adds them (Python's sum() may compensate rounding)
            total += w
        if total != 0.0:
            weights = [w / total for w in weights]
        fixed = [int((-0.5 if w < 0 else 0.5) + w * (1 << _PRECISION_BITS)) for w in weights]
        windows.append((xmin, np.array(fixed, dtype=np.float64)))
    return windows


def _clip8(sums: np.ndarray) -> np.ndarray:
    return np.clip(np.floor_divide(sums, 1 << _PRECISION_BITS), 0, 255).astype(np.uint8)


def _pass(pixels: np.ndarray, offset: int, windows: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """One pass along axis 1 of `pixels`, which sit at [offset, offset + width) of the padded axis:
    (rows, width) uint8 -> (rows, len(windows)) uint8. Sums are exact in float64 (integers below 2^53)."""
    rows, width = pixels.shape
    out = np.zeros((rows, len(windows)), dtype=np.uint8)  # a window over padding alone sums to 0
    for i, (xmin, fixed) in enumerate(windows):
        lo, hi = max(xmin, offset), min(xmin + len(fixed), offset + width)
        if lo >= hi:
            continue
        weights = fixed[lo - xmin:hi - xmin]
        step = max(1, (1 << 21) // (hi - lo))  # rows per block: a few MB of float64 at a time
        for start in range(0, rows, step):
            block = pixels[start:start + step, lo - offset:hi - offset].astype(np.float64)
            out[start:start + step, i] = _clip8(block @ weights + (1 << (_PRECISION_BITS - 1)))
    return out


def resize_padded(gray: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """What `Image.resize((size, size), LANCZOS)` gives for `gray` padded with 0 to a centred square of side
    max(height, width) (pasted at ((side - width) // 2, (side - height) // 2)), without building the square."""
    height, width = gray.shape
    side = max(height, width)
    left, top = (side - width) // 2, (side - height) // 2
    if side == size:  # Pillow returns the square as it is
        square = np.zeros((size, size), dtype=np.uint8)
        square[top:top + height, left:left + width] = gray
        return square
    windows = _windows(side, size)
    # Pillow resamples rows first (side x side -> side x size), then columns (-> size x size); the rows of
    # padding come out of the first pass as zeros, so only the image's own rows go through it.
    wide = _pass(np.ascontiguousarray(gray, dtype=np.uint8), left, windows)  # (height, size)
    return np.ascontiguousarray(_pass(wide.T, top, windows).T)


_BOMB = re.compile(r"\((\d+) pixels\)")


def to_pixels(path: str | Path, dark_on_light: bool = False) -> np.ndarray:
    """An image file -> uint8 (28, 28), aspect kept by padding to a square with the background.

    Raises ImageRefused for an image past the limits, and what Pillow raises for a file it cannot read.
    """
    with warnings.catch_warnings():
        # Pillow warns between its limit and twice it; here the limit is an error, checked before decoding.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                check_size(*image.size)
                gray = grayscale(ImageOps.exif_transpose(image), dark_on_light)
        except Image.DecompressionBombError as exc:  # past twice the limit, refused by Image.open itself
            found = _BOMB.search(str(exc))
            pixels = f"{int(found.group(1)):,} pixels" if found else "its size"
            raise ImageRefused(f"{pixels}, over the limit of {MAX_PIXELS:,}") from None
    return resize_padded(gray)
