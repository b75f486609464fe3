"""Image checks and conversion of ``scripts/install_photos.py``: the flat-colour pre-filter
(:func:`looks_flat`), grey and perceptual-hash checks, and :func:`convert`, which decode-checks a
candidate and produces the bytes and manifest entry to store.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

from photos_sources import Candidate


# ---------------------------------------------------------------------------------------------
# Image checks and conversion
# ---------------------------------------------------------------------------------------------

def looks_flat(im: Image.Image) -> float:
    """Pre-filter score in [0, 1]: the share of a 128-px thumbnail covered by its 8 most common
    colours (quantised to 4 bits per channel). Drawings and renders score high, photos low.
    Only marks sheets for review; the decision is the by-eye :data:`EXCLUDE` list."""
    t = im.convert("RGBA").copy()
    t.thumbnail((128, 128), Image.Resampling.NEAREST)
    a = np.asarray(t)
    keep = a[..., 3] > 127
    if keep.sum() < 16:
        return 1.0
    q = (a[..., :3][keep] >> 4).astype(np.int32)
    codes = q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]
    counts = np.sort(np.bincount(codes))[::-1]
    return float(counts[:8].sum() / counts.sum())


def is_grey(im: Image.Image) -> bool:
    if im.mode in ("L", "LA", "1", "I", "I;16"):
        return True
    t = im.convert("RGB").copy()
    t.thumbnail((256, 256))
    a = np.asarray(t).astype(np.int16)
    return bool(np.percentile(np.abs(a[..., 0] - a[..., 1]) + np.abs(a[..., 1] - a[..., 2]), 99)
                <= 6)


def dhash(im: Image.Image) -> int:
    g = np.asarray(im.convert("L").resize((17, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def _alpha_ok(im: Image.Image) -> bool:
    """A cut-out needs a real mask: some transparent and a fair amount of opaque pixels."""
    if "A" not in im.getbands() and "transparency" not in im.info:
        return False
    a = np.asarray(im.convert("RGBA"))[..., 3]
    return bool((a < 16).mean() > 0.02 and (a > 240).mean() > 0.05)


@dataclass
class Stored:
    entry: Dict
    data: bytes
    ext: str


def convert(c: Candidate, max_side: int) -> Tuple[Optional[Stored], str]:
    """Decode-check a candidate and produce the bytes to store, or ``(None, why)``."""
    try:
        im = Image.open(io.BytesIO(c.data))
        im.load()
    except Exception as e:  # noqa: BLE001 - any undecodable file is just skipped
        return None, f"undecodable ({type(e).__name__})"
    fmt = im.format
    w0, h0 = im.size
    if c.kind == "cutout":
        if not _alpha_ok(im):
            return None, "no usable alpha mask"
        if im.mode != "RGBA":
            im = im.convert("RGBA")
    elif im.mode not in ("RGB", "L"):
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            a = np.asarray(im.convert("RGBA"))[..., 3]
            if (a < 250).mean() > 0.01:  # a few soft edge pixels are flattened away
                return None, "host with transparency"
        im = im.convert("RGB")
    if max(w0, h0) < (200 if c.kind == "host" else 64):
        return None, f"too small ({w0}x{h0})"
    scale = 1.0
    if max(w0, h0) > max_side:
        scale = max_side / max(w0, h0)
        im = im.resize((max(1, round(w0 * scale)), max(1, round(h0 * scale))),
                       Image.Resampling.LANCZOS)
    keep = scale == 1.0 and fmt in ("JPEG", "PNG") and (
        c.kind == "cutout" or Image.open(io.BytesIO(c.data)).mode in ("RGB", "L"))
    if keep:
        data, ext = c.data, (".jpg" if fmt == "JPEG" else ".png")
    else:
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=4)
        data, ext = buf.getvalue(), ".png"
    w, h = im.size
    entry = {
        "name": c.name, "package": c.package, "path": c.path, "width": w, "height": h,
        "orig_width": w0, "orig_height": h0, "scale": round(scale, 6), "format": fmt,
        "stored": "original bytes" if keep else "decoded to PNG",
        "licence": c.licence, "copyright": c.copyright, "kind": c.kind,
        "grey": is_grey(im), "group": c.group or c.name, "weight": c.weight,
        "flat": round(looks_flat(im), 3), "dhash": f"{dhash(im):064x}",
    }
    return Stored(entry, data, ext), ""
