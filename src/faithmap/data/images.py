"""Reading photos from disk, with one clear error for each kind of bad file."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import FaithmapError

MIN_SIDE = 32
"""Images whose shorter side is below this many pixels are refused (nothing left to explain)."""
MAX_PIXELS = 64_000_000
"""Images with more pixels than this are refused (about 8000 x 8000)."""


def load_image(path: str, convert: bool = False) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from ``path``, as the photo is displayed (EXIF orientation applied).

    Grayscale, RGBA/palette-with-alpha and 16-bit or float images are refused unless
    ``convert`` is true, in which case they are converted to 8-bit RGB (gray replicated, alpha
    composited on white, 16-bit scaled by 1/257). Tiny and huge images are always refused.
    """
    name = os.path.basename(path)
    if not os.path.exists(path):
        raise FaithmapError(f"no such file: {path}")
    if os.path.isdir(path):
        raise FaithmapError(f"{path} is a directory, not an image")
    if not os.access(path, os.R_OK):
        raise FaithmapError(f"cannot read {path}: permission denied")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise FaithmapError(f"{name} is too large ({w}x{h} pixels; at most {MAX_PIXELS // 1_000_000} megapixels)")
            im.load()
            im = ImageOps.exif_transpose(im)  # the pixels as the photo is displayed (EXIF orientation applied)
            w, h = im.size
    except FaithmapError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise FaithmapError(f"{name} is not an image file that Pillow can read") from None
        raise FaithmapError(f"{name} is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FaithmapError(f"cannot decode {name}: {str(exc).splitlines()[0][:160]}") from None
    if min(w, h) < MIN_SIDE:
        raise FaithmapError(f"{name} is too small ({w}x{h}; the shorter side must be at least {MIN_SIDE} pixels)")
    return to_rgb8(im, name, convert)


def to_rgb8(im: Image.Image, name: str = "image", convert: bool = False) -> np.ndarray:
    """An 8-bit RGB array from a PIL image, refusing other modes unless ``convert``."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode == "P" and "transparency" not in im.info:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    kind = _describe(mode)
    if not convert:
        raise FaithmapError(f"{name} is {kind} (mode {mode}); the model expects 8-bit RGB: pass --convert to convert it")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        scale = 257.0 if mode.startswith("I;16") or arr.max() > 255 else 1.0
        arr = np.clip(arr / scale, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "P") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _describe(mode: str) -> str:
    if mode in ("L", "1"):
        return "grayscale"
    if mode in ("RGBA", "LA", "PA", "P"):
        return "an image with an alpha channel"
    if mode.startswith("I;16") or mode == "I":
        return "16-bit"
    if mode == "F":
        return "floating-point"
    if mode == "CMYK":
        return "CMYK"
    return "not RGB"
