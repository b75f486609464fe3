"""Pixel operations of the synthetic-forgery generator (``training.synth``).

Float32 ``H x W x 3`` arrays in 0..255 (values may leave the range in between): resizing, noise
fields, JPEG round trips at a given 8x8 / 16x16 grid phase, periodic patterns, the Bayer-mosaic
(CFA) re-sampling and demosaicing, PRNU, the interpreter of processing histories
(:func:`_apply_ops`) and the push-pull inpainting fill.
"""

from __future__ import annotations

import io
import math
from typing import Any, Dict, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
}


def _to_u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _gauss(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return a
    return ndimage.gaussian_filter(a, sigma=(sigma, sigma, 0), truncate=3.0)


def _pil_resize(a: np.ndarray, size_hw: Tuple[int, int], filt: str) -> np.ndarray:
    im = Image.fromarray(_to_u8(a)).resize((size_hw[1], size_hw[0]), _FILTERS[filt])
    return np.asarray(im, dtype=np.float32)


def _float_resize(a: np.ndarray, size_hw: Tuple[int, int], filt=Image.BILINEAR) -> np.ndarray:
    """Resize a float H x W (x C) array exactly to ``size_hw`` (no quantisation)."""
    if a.ndim == 2:
        return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(
            (size_hw[1], size_hw[0]), filt), dtype=np.float32)
    return np.stack([_float_resize(a[..., c], size_hw, filt) for c in range(a.shape[2])], axis=2)


def _noise_field(rng: np.random.Generator, shape_hw: Tuple[int, int], corr: float,
                 chroma: float) -> np.ndarray:
    """Unit-variance noise, H x W x 3; ``chroma`` = share of channel-independent variance,
    ``corr`` = spatial correlation (Gaussian sigma in pixels, 0 = white)."""
    h, w = shape_hw
    n = rng.standard_normal((h, w, 1), dtype=np.float32)
    if chroma > 0:
        nc = rng.standard_normal((h, w, 3), dtype=np.float32)
        n = math.sqrt(1.0 - chroma) * n + math.sqrt(chroma) * nc
    else:
        n = np.repeat(n, 3, axis=2)
    if corr > 0:
        n = _gauss(n, corr)
        n /= max(float(n.std()), 1e-6)
    return n


def _jpeg(a: np.ndarray, quality: int, phase: Sequence[int], origin: Tuple[int, int],
          subsampling: int) -> np.ndarray:
    """JPEG round trip with the 16x16 MCU grid at image phase ``phase`` for a patch whose
    top-left pixel sits at image coordinates ``origin``."""
    py = (origin[0] - phase[0]) % 16
    px = (origin[1] - phase[1]) % 16
    u = _to_u8(a)
    if py or px:
        u = np.pad(u, ((py, 0), (px, 0), (0, 0)), mode="edge")
    buf = io.BytesIO()
    Image.fromarray(u).save(buf, format="JPEG", quality=int(quality), subsampling=int(subsampling))
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("RGB"), dtype=np.float32)
    return out[py:, px:]


def _periodic(rng_seed: int, shape_hw: Tuple[int, int], origin: Tuple[int, int], period: int,
              amplitude: float, mono: bool) -> np.ndarray:
    r = np.random.default_rng(rng_seed)
    tile = r.standard_normal((period, period, 1 if mono else 3)).astype(np.float32)
    tile -= tile.mean(axis=(0, 1), keepdims=True)
    tile /= max(float(tile.std()), 1e-6)
    h, w = shape_hw
    oy, ox = origin[0] % period, origin[1] % period
    reps = ((h + oy) // period + 1, (w + ox) // period + 1, 1)
    pat = np.tile(tile, reps)[oy:oy + h, ox:ox + w]
    if mono:
        pat = np.repeat(pat, 3, axis=2)
    return amplitude * pat


# Bayer patterns by the (row, column) parity of their red sites.
_CFA_PATTERNS = {"RGGB": (0, 0), "GRBG": (0, 1), "GBRG": (1, 0), "BGGR": (1, 1)}
_K_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32) / 4.0
_K_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 4.0


def _cfa(a: np.ndarray, pattern: str, method: str, origin: Tuple[int, int]) -> np.ndarray:
    """Keep one colour per pixel through a Bayer mosaic (phase from image coordinates) and
    demosaic again: ``bilinear``, or ``edge`` (green along the smoother direction, red and blue
    by bilinear colour differences). Leaves the periodic inter-channel correlation of a camera."""
    h, w = a.shape[:2]
    ry, rx = _CFA_PATTERNS[pattern]
    yr = ((np.arange(h) + origin[0]) % 2 == ry)[:, None]
    xr = ((np.arange(w) + origin[1]) % 2 == rx)[None, :]
    m_r = (yr & xr).astype(np.float32)
    m_b = (~yr & ~xr).astype(np.float32)
    m_g = 1.0 - m_r - m_b
    g_s = a[..., 1] * m_g

    def conv(x: np.ndarray, k: np.ndarray) -> np.ndarray:
        return ndimage.convolve(x, k, mode="mirror")  # mirror keeps the mosaic parity

    if method == "bilinear":
        g = conv(g_s, _K_G)
        r = conv(a[..., 0] * m_r, _K_RB)
        b = conv(a[..., 2] * m_b, _K_RB)
    else:  # "edge"
        gp = np.pad(g_s, 1, mode="reflect")
        left, right, up, down = gp[1:-1, :-2], gp[1:-1, 2:], gp[:-2, 1:-1], gp[2:, 1:-1]
        gh, gv = np.abs(left - right), np.abs(up - down)
        est = np.where(gh < gv, 0.5 * (left + right),
                       np.where(gv < gh, 0.5 * (up + down), 0.25 * (left + right + up + down)))
        g = np.where(m_g > 0, g_s, est)
        r = conv((a[..., 0] - g) * m_r, _K_RB) + g
        b = conv((a[..., 2] - g) * m_b, _K_RB) + g
    return np.stack([r, g, b], axis=2)


def _prnu(a: np.ndarray, seed: int, strength: float, mono: bool) -> np.ndarray:
    """Photo-response non-uniformity: a per-source multiplicative white fixed pattern."""
    k = np.random.default_rng(seed).standard_normal(a.shape[:2] + (1 if mono else 3,),
                                                     dtype=np.float32)
    return a * (1.0 + strength * k)


def _apply_ops(a: np.ndarray, ops: Sequence[Dict[str, Any]], rng: np.random.Generator,
               origin: Tuple[int, int], mono: bool) -> np.ndarray:
    """Apply a processing history to a patch whose top-left is at image ``origin``."""
    for op in ops:
        kind = op["op"]
        if kind == "blur":
            a = _gauss(a, op["sigma"])
        elif kind == "noise":
            n = _noise_field(rng, a.shape[:2], op["corr"], 0.0 if mono else op["chroma"])
            p = op["poisson"]
            std = op["sigma"] * np.sqrt((1.0 - p) + p * np.clip(a, 0, 255) * (1.0 / 128.0))
            if "channel_gains" in op and not mono:  # e.g. white balance amplifies blue noise
                std = std * np.asarray(op["channel_gains"], dtype=np.float32)
            a = a + n * std
        elif kind == "cfa":
            a = _cfa(a, op["pattern"], op["method"], origin)
            if mono:
                a = np.repeat((a @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None],
                              3, axis=2)
        elif kind == "prnu":
            a = _prnu(a, op["seed"], op["strength"], mono)
        elif kind == "resize":  # global only: changes the image size
            a = _pil_resize(a, (int(op["size"][0]), int(op["size"][1])), op["filter"])
        elif kind == "gamma":
            g = np.asarray(op["gains"], dtype=np.float32)
            a = 255.0 * np.power(np.clip(a, 0, 255) / 255.0, op["gamma"]) * g + op["offset"]
        elif kind == "jpeg":
            a = _jpeg(a, op["quality"], op["phase"], origin, op["subsampling"])
        elif kind == "resample":
            h, w = a.shape[:2]
            f = op["factor"]
            mid = (max(2, int(round(h * f))), max(2, int(round(w * f))))
            a = _pil_resize(_pil_resize(a, mid, op["filter"]), (h, w), op["filter_back"])
        elif kind == "sharpen":
            a = a + op["amount"] * (a - _gauss(a, op["radius"]))
        elif kind == "median":
            im = Image.fromarray(_to_u8(a)).filter(ImageFilter.MedianFilter(op["size"]))
            a = np.asarray(im, dtype=np.float32)
        elif kind == "tone":
            m = a.mean(axis=(0, 1), keepdims=True)
            a = (a - m) * op["contrast"] + m + op["brightness"]
        elif kind == "periodic":
            a = a + _periodic(op["seed"], a.shape[:2], origin, op["period"], op["amplitude"], mono)
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown op {kind!r}")
    return a


def _pushpull_fill(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Fill ``hole`` pixels of ``img`` (h x w x 3) by multiscale push-pull diffusion."""
    levels = []
    wgt = (~hole).astype(np.float32)
    val = img * wgt[..., None]
    while True:
        levels.append((val, wgt))
        if wgt.min() > 0 or min(wgt.shape) <= 2:
            break
        h2, w2 = (wgt.shape[0] + 1) // 2, (wgt.shape[1] + 1) // 2
        pv = np.pad(val, ((0, 2 * h2 - val.shape[0]), (0, 2 * w2 - val.shape[1]), (0, 0)))
        pw = np.pad(wgt, ((0, 2 * h2 - wgt.shape[0]), (0, 2 * w2 - wgt.shape[1])))
        val = pv.reshape(h2, 2, w2, 2, 3).sum(axis=(1, 3))
        wgt = pw.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
    val, wgt = levels[-1]
    mean = img[~hole].mean(axis=0) if (~hole).any() else np.full(3, 128.0, np.float32)
    est = np.where(wgt[..., None] > 0, val / np.maximum(wgt, 1e-6)[..., None], mean)
    for val, wgt in reversed(levels[:-1]):
        up = _float_resize(est, wgt.shape, Image.BILINEAR)
        est = np.where(wgt[..., None] > 0, val / np.maximum(wgt, 1e-6)[..., None], up)
    out = img.copy()
    smooth = _gauss(est, 1.5)
    out[hole] = smooth[hole]
    return out
