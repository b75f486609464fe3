"""Image decoding with clear errors and a pixel limit (no silent decompression bombs).

:func:`load_image` decodes any still image Pillow reads (8- and 16-bit, greyscale, palette, CMYK,
with or without alpha) straight into an ``HxWx3`` uint8 RGB array, in bands of about a million
pixels, so its memory is the decoded file (Pillow's own buffer) plus the 3 bytes per pixel of the
result: no float64 or int64 copy of the whole image is ever made (a 40 MP 16-bit PNG needs about
200 MB, not gigabytes).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = int(os.environ.get("SAFIRE_MAX_PIXELS", 64_000_000))
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
BAND_PIXELS = 1 << 20  # pixels converted at a time
_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageLoadError(ValueError):
    """An image could not be decoded, or is too large."""


def _band_rows(width: int) -> int:
    return max(1, BAND_PIXELS // max(1, width))


def _rgb_uint8(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image -> new C-contiguous HxWx3 uint8 array, converted band by band.

    8-bit modes go through Pillow's own conversion to RGB (alpha dropped, palette expanded, CMYK
    converted without a colour profile); high-bit-depth greyscale (``I;16``, ``I``, ``F``) is
    stretched from its min..max to 0..255.
    """
    w, h = img.size
    out = np.empty((h, w, 3), dtype=np.uint8)
    step = _band_rows(w)
    if img.mode in _HIGH_DEPTH:
        lo, hi = np.inf, -np.inf
        for y in range(0, h, step):
            band = np.asarray(img.crop((0, y, w, min(h, y + step))))
            if band.size:
                lo, hi = min(lo, float(np.nanmin(band))), max(hi, float(np.nanmax(band)))
        if not np.isfinite(lo):
            lo, hi = 0.0, 0.0
        span = max(hi - lo, 1.0)
        for y in range(0, h, step):
            band = np.asarray(img.crop((0, y, w, min(h, y + step))), dtype=np.float64)
            band = np.nan_to_num(band, nan=lo)
            out[y:y + band.shape[0]] = (255 * (band - lo) / span).astype(np.uint8)[:, :, None]
        return out
    for y in range(0, h, step):
        part = img.crop((0, y, w, min(h, y + step)))
        if part.mode != "RGB":
            part = part.convert("RGB")
        out[y:y + part.size[1]] = np.asarray(part)
    return out


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2..8) to an HxWx3 array, as ``PIL.ImageOps.exif_transpose`` does."""
    if orientation == 2:
        view = arr[:, ::-1]
    elif orientation == 3:
        view = arr[::-1, ::-1]
    elif orientation == 4:
        view = arr[::-1]
    elif orientation == 5:
        view = arr.transpose(1, 0, 2)
    elif orientation == 6:
        view = np.rot90(arr, k=-1)
    elif orientation == 7:
        view = arr[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        view = np.rot90(arr, k=1)
    else:
        return arr
    return np.ascontiguousarray(view)


def load_image(source: Union[str, os.PathLike, bytes], max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str = "", exif_transpose: bool = False) -> np.ndarray:
    """Decode an image file or bytes to HxWx3 uint8 RGB (a new, writable, C-contiguous array).

    By default EXIF orientation is *not* applied: results refer to the stored pixel grid (what
    ``safire predict`` writes). ``exif_transpose=True`` turns the pixels the way a browser shows
    them (Label Studio's editor draws the EXIF-oriented image, so its masks are in that frame).
    The pixel count is checked from the header before decoding; the conversion to uint8 RGB works
    in bands (see the module docstring), whatever the bit depth or mode.

    Raises:
        ImageLoadError: unreadable, truncated, not an image, or more than ``max_pixels`` pixels.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "image bytes")
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as e:
        raise ImageLoadError(f"cannot open {label}: {e.strerror or e}") from e
    with fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(
                        f"{label} is {w}x{h} = {w * h / 1e6:.1f} MP, above the limit of "
                        f"{max_pixels / 1e6:.1f} MP (SAFIRE_MAX_PIXELS)"
                    )
                img.load()
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageLoadError(f"{label} is too large to decode safely: {e}") from e
        except Exception as e:
            raise ImageLoadError(f"cannot decode {label} as an image: {type(e).__name__}: {e}") from e
        orientation = 1
        if exif_transpose:
            try:
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block: keep the stored orientation
                orientation = 1
        try:
            arr = _rgb_uint8(img)
        except Exception as e:
            raise ImageLoadError(f"cannot convert {label} ({img.mode}) to RGB: {type(e).__name__}: {e}") from e
        finally:
            img.close()
            del img
    return _orient(arr, orientation)


def save_png(path: Union[str, os.PathLike], array: np.ndarray) -> None:
    """Write a uint8 HxW (mode L) or HxWx3 (RGB) array as PNG, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
