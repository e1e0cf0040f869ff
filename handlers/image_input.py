"""Decode an uploaded image and turn it into a scan like scikit-learn's digits.

load_digits holds 8x8 grids of 0-16 counts of inked pixels (bright = ink) of centred,
size-normalised handwriting. An uploaded photo or drawing (PNG or JPEG, any size, grey
or colour, dark ink on light paper or the reverse) is made to look the same:
greyscale -> ink made bright (inverted when the border is light) -> cropped to the ink's
bounding box -> padded to a centred square -> area-averaged to 8x8 -> scaled to 0-16.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from inputs import IMAGE_MAGIC
from ort_base import InputError
from PIL import Image, ImageOps, UnidentifiedImageError

MAGIC = tuple(IMAGE_MAGIC)
MAX_SIDE = 512  # the ink's longer side before it is padded to a square (then 8x8)


def looks_like_image(data: bytes) -> bool:
    return data.startswith(MAGIC)


def decode_grey(data: bytes, formats: tuple[str, ...] = ("PNG", "JPEG"), max_pixels: int = 16_000_000) -> np.ndarray:
    """Greyscale float32 [h, w] in 0-255; InputError for anything that is not a sound, small-enough image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(formats))
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(f"image is {width}x{height}; at most {max_pixels} pixels are accepted", "image", 413)
            img.load()
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"not a {' or '.join(formats)} image", "image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image could not be decoded ({type(exc).__name__}: {str(exc)[:120]})", "image") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))  # transparent = paper
    img = ImageOps.exif_transpose(img).convert("L")
    return np.asarray(img, dtype=np.float32)


def to_digit_grid(grey: np.ndarray, size: int = 8, max_value: float = 16.0) -> np.ndarray:
    """A size x size grid of ink intensity in [0, max_value], centred like load_digits."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    ink = 255.0 - grey if border.mean() > 127 else grey.copy()
    ink -= np.percentile(border if border.mean() <= 127 else 255.0 - border, 50)
    ink = np.clip(ink, 0, None)
    if ink.max() <= 0:
        return np.zeros((size, size), dtype=np.float32)  # a blank page
    rows, cols = np.nonzero(ink > 0.25 * ink.max())
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    if max(ink.shape) > MAX_SIDE:  # area-averaged down first: the square is side^2, and a thin line across a
        # 20000x800 image (within the pixel limit) would make it 1.6 GB
        scale = MAX_SIDE / max(ink.shape)
        shape = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
        ink = np.asarray(Image.fromarray(ink).resize(shape, Image.Resampling.BOX), dtype=np.float32)
    side = max(ink.shape)
    square = np.zeros((side, side), dtype=np.float32)
    top, left = (side - ink.shape[0]) // 2, (side - ink.shape[1]) // 2
    square[top:top + ink.shape[0], left:left + ink.shape[1]] = ink
    img = Image.fromarray(square / square.max() * 255.0).convert("F")
    grid = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    return np.clip(grid / 255.0 * max_value, 0, max_value)
