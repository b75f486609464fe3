"""Image decoding with clear errors and a pixel limit (no silent decompression bombs)."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = int(os.environ.get("SAFIRE_MAX_PIXELS", 64_000_000))
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


class ImageLoadError(ValueError):
    """An image could not be decoded, or is too large."""


def load_image(source: Union[str, os.PathLike, bytes], max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str = "", exif_transpose: bool = False) -> np.ndarray:
    """Decode an image file or bytes to HxWx3 uint8 RGB.

    By default EXIF orientation is *not* applied: results refer to the stored pixel grid (what
    ``safire predict`` writes). ``exif_transpose=True`` turns the pixels the way a browser shows
    them (Label Studio's editor draws the EXIF-oriented image, so its masks are in that frame).
    The pixel count is checked from the header before decoding.

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
        if exif_transpose:
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # a broken EXIF block: keep the stored orientation
                pass
    if img.mode in ("I;16", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        arr = (255 * (arr - arr.min()) / max(arr.max() - arr.min(), 1)).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def save_png(path: Union[str, os.PathLike], array: np.ndarray) -> None:
    """Write a uint8 HxW (mode L) or HxWx3 (RGB) array as PNG, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
