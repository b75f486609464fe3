"""Dataset file level: the :class:`Item` record, :class:`DatasetError`, and the image / mask
readers, label decoders and list-file parser the readers in :mod:`training.datasets` share.

Everything public here is re-exported by :mod:`training.datasets` (import it from there).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

IGNORE = 255
_NONE_MASKS = {"", "none", "negative", "null"}


class DatasetError(Exception):
    """A dataset file is missing, unreadable or inconsistent (the message names the file)."""


@dataclass
class Item:
    """One image with its source labels.

    Attributes:
        name: sample name (image file name without extension).
        image: ``H x W x 3`` uint8 RGB.
        labels: ``H x W`` uint8; source index per pixel, :data:`IGNORE` = unlabelled.
        num_sources: number of sources (1 = authentic).
        meta: per-sample metadata (``meta/NAME.json`` for the safire layout).
        image_path: absolute path of the image file.
        mask_path: path of the mask the labels came from (``None`` for authentic images).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    num_sources: int
    meta: Dict[str, Any] = field(default_factory=dict)
    image_path: str = ""
    mask_path: Optional[str] = None

    @property
    def authentic(self) -> bool:
        return self.num_sources == 1

    @property
    def binary(self) -> np.ndarray:
        """``H x W`` uint8: 0 = source 0, 1 = any other source, 255 kept as ignore."""
        out = (self.labels >= 1).astype(np.uint8)
        out[self.labels == IGNORE] = IGNORE
        return out


# ---------------------------------------------------------------------------------------------
# File readers and decoders
# ---------------------------------------------------------------------------------------------

def _open(path: str, kind: str) -> Image.Image:
    if not os.path.isfile(path):
        raise DatasetError(f"{kind} file not found: {path}")
    try:
        im = Image.open(path)
        im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read {kind} {path}: {e}") from e
    return im


def _high_bit_depth_to_u8(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    if a.dtype == np.uint16 or (im.mode.startswith("I") and a.size and a.max() > 255):
        return (a.astype(np.uint32) >> 8).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def read_image(path: str, exif_transpose: bool = False) -> np.ndarray:
    """Read an image as ``H x W x 3`` uint8 RGB; raises :class:`DatasetError`."""
    im = _open(path, "image")
    try:
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            g = _high_bit_depth_to_u8(im)
            return np.repeat(g[:, :, None], 3, axis=2)
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot decode image {path}: {e}") from e
    finally:
        im.close()


def read_mask(path: str, raw_palette: bool = False) -> np.ndarray:
    """Read a single-channel ``H x W`` uint8 mask.

    Colour masks are converted to luminance. With ``raw_palette`` a palette ("P") image gives
    its palette indices (index masks), otherwise its grey values.
    """
    im = _open(path, "mask")
    try:
        if im.mode == "L" or (raw_palette and im.mode == "P"):
            return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            a = np.asarray(im)
            if a.size and a.max() <= 255:
                return a.astype(np.uint8)
            return _high_bit_depth_to_u8(im)
        return np.ascontiguousarray(np.asarray(im.convert("L"), dtype=np.uint8))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot decode mask {path}: {e}") from e
    finally:
        im.close()


def decode_safirems(mask: np.ndarray, strict: bool = False, path: str = "") -> np.ndarray:
    """SafireMS grey levels ``50*i`` -> source index ``i`` (0..5), nearest level.

    With ``strict`` a value farther than 12 grey levels from ``50*i`` raises DatasetError.
    """
    lab = np.clip(np.rint(mask.astype(np.float32) / 50.0), 0, 5).astype(np.uint8)
    if strict and np.any(np.abs(mask.astype(np.int16) - 50 * lab.astype(np.int16)) > 12):
        raise DatasetError(f"mask {path or '<array>'} has values that are not 50*i "
                           f"(found {np.unique(mask)[:12].tolist()})")
    return lab


def decode_binary(mask: np.ndarray, threshold: int = 127, nonzero: bool = False) -> np.ndarray:
    """Binary mask -> {0, 1}: ``> threshold`` (or ``> 0`` with ``nonzero``) is forged."""
    return (mask > (0 if nonzero else threshold)).astype(np.uint8)


def _fit_mask(mask: np.ndarray, shape_hw: Tuple[int, int], resize: bool, mask_path: str,
              image_path: str) -> np.ndarray:
    if mask.shape == tuple(shape_hw):
        return mask
    if resize:
        return np.asarray(Image.fromarray(mask).resize((shape_hw[1], shape_hw[0]),
                                                       Image.NEAREST), dtype=np.uint8)
    raise DatasetError(
        f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {image_path} is "
        f"{shape_hw[1]}x{shape_hw[0]}; pass resize_mismatched=True to resize the mask (nearest)")


def _num_sources(labels: np.ndarray) -> int:
    valid = labels[labels != IGNORE]
    return int(valid.max()) + 1 if valid.size else 1


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _resolve(root: str, rel: str) -> str:
    return rel if os.path.isabs(rel) else os.path.join(root, rel)


def _is_none_mask(m: Optional[str]) -> bool:
    return m is None or str(m).strip().lower() in _NONE_MASKS


def read_pair_list(path: str) -> List[Tuple[str, Optional[str], List[str]]]:
    """Parse a list file into ``(image, mask or None, extra columns)``.

    ``.json``: IMDL-BenCo list ``[[img, mask | "Negative"], ...]``; otherwise text lines
    ``img,mask[,extra...]`` (blank lines and ``#`` comments skipped, ``None`` = authentic).
    """
    if not os.path.isfile(path):
        raise DatasetError(f"list file not found: {path}")
    out: List[Tuple[str, Optional[str], List[str]]] = []
    if path.lower().endswith(".json"):
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot parse JSON list {path}: {e}") from e
        if not isinstance(data, list):
            raise DatasetError(f"JSON list {path} must be a list of [image, mask] pairs")
        for k, entry in enumerate(data):
            if (not isinstance(entry, (list, tuple)) or not entry
                    or not isinstance(entry[0], str)):
                raise DatasetError(f"{path}: entry {k} is not an [image, mask] pair: {entry!r}")
            mask = entry[1] if len(entry) > 1 else None
            out.append((entry[0], None if _is_none_mask(mask) else str(mask),
                        [str(x) for x in entry[2:]]))
        return out
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read list file {path}: {e}") from e
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split(",")]
        mask = cols[1] if len(cols) > 1 else None
        out.append((cols[0], None if _is_none_mask(mask) else mask, cols[2:]))
    return out
