"""Synthetic multi-source forgeries, in the spirit of SafireMS-Auto, from offline photos only.

A sample is a *host* view of a pool photograph (random crop, scale, flip, colour jitter) with
``num_sources - 1`` foreign regions painted on top, each of which carries its own low-level
processing history. A history is camera-like: optics blur, photo-response non-uniformity (a
per-source multiplicative fixed pattern), signal-dependent noise with its own level, spatial
correlation, chroma share and per-channel gains, a colour-filter-array trace (the image re-sampled
through a Bayer mosaic and demosaiced again, bilinearly or edge-directed, at the source's own
pattern phase), tone / white balance, in-camera sharpening, JPEG / double JPEG at its own quality
and 8x8 grid phase, resampling. Manipulations:

* ``splicing``   -- a region from another photo (own view, own camera history); when the region
  is a photo cut-out it is pasted with the cut-out's own soft alpha; other splices may have a
  feathered selection edge;
* ``copy-move``  -- a region of the current image moved elsewhere (optionally scaled, rotated,
  flipped), then locally processed; a segment-shaped copy-move moves a real segment of the
  host (the object at its source keeps its outline at the destination);
* ``removal``    -- the region is inpainted (multiscale push-pull diffusion fill, optionally with
  high-frequency texture borrowed from a nearby area) and re-noised;
* ``generative`` -- the region is re-synthesised: low-passed content (down/up-sampling by k), the
  original detail scaled by ``1 - strength`` plus synthetic correlated texture scaled by
  ``strength``, colour drift and an optional faint periodic (upsampling-like) pattern;
* ``retouch``    -- the region's own content processed locally (blur, sharpen, median, tone).

Region shapes: geometric (polygon, ellipse, blob, rectangle), ``cutout`` (the alpha of a photo
cut-out of the installed pool, :attr:`PhotoPool.cutouts`; skipped when none is installed) and
``segment`` (a segment, or a union of neighbouring segments, of a Felzenszwalb or SLIC
over-segmentation of the host view, so that the outline follows edges of the image). The share of
each depends on the manipulation (:data:`OBJECT_SHARE`).

Every sample then gets a global post-processing chain, authentic samples included, so
"processed" never means "forged": none, basic (light JPEG / down-up resampling / noise / blur),
``social`` (as a social network shares it: an earlier JPEG, a downscale to a long side of at most
:data:`SOCIAL_MAX_SIDE` when larger -- the masks follow -- mild sharpening, JPEG q 70-85 4:2:0)
or ``double-jpeg`` (two whole-image JPEGs, the first possibly at a shifted grid).

Conventions: images are ``H x W x 3`` uint8 RGB; ``sources`` is an ``H x W`` uint8 index mask,
``0`` = the largest source (always the host), ``1..K-1`` the others by decreasing area. A pixel's
label is the last source painted on it *before* the global post-processing (which may blend
values across boundaries by a pixel or two; soft cut-out alphas and feathered edges count from
alpha 0.5). Output is a deterministic function of ``(seed, index, num_sources, size_range, photo
pool, difficulty)``: samples can be generated in any order or in parallel. Every random draw
comes from ``_rng(seed, index, stream)``, one stream per purpose (see ``_S_*``). Pillow's JPEG
codec is part of the pipeline, so byte-identity across machines also needs the same libjpeg
build.

CLI: ``python -m training.synth --out DIR --n N [--sources 1-4] ...`` writes the layout of
``docs/dataset-format.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage
from skimage import draw, segmentation

from training.photos import Photo, PhotoPool
from training.synth_fill import plan_fill, render_fill
from training.synth_recolour import plan_recolour, render_recolour

__all__ = [
    "Sample",
    "generate_sample",
    "sample_name",
    "choose_num_sources",
    "write_dataset",
    "main",
    "MANIPULATIONS",
    "HELD_OUT_MANIPULATIONS",
    "parse_manipulations",
    "OBJECT_SHARE",
    "SOCIAL_MAX_SIDE",
    "SYNTH_VERSION",
]

SYNTH_VERSION = 2
_SALT = 0x5AF1E  # mixed into every seed sequence so other generators seeded alike differ
# Random streams of a sample, ``_rng(seed, index, stream)``. 0 and 1 are the v1 streams (0: size,
# photos, layout geometry, histories, rendering; 1: number of sources); the v2 additions draw from
# their own streams so that the v1 draws keep their order where they still exist.
_S_MAIN = 0
_S_COUNT = 1
_S_SHAPES = 2  # manipulation kinds, object-shaped regions (cut-outs, host segments, moves)
_S_CAMERA = 3  # camera-history extensions (CFA, PRNU, sharpening, noise colour)
_S_POST = 4  # choice of the global post-processing chain
_S_PASTE = 5  # paste details (feathering, cut-out resize filter)

#: Manipulation kinds of the foreign sources and their default probabilities.
MANIPULATIONS: Dict[str, float] = {
    "splicing": 0.34,
    "copy-move": 0.18,
    "removal": 0.16,
    "generative": 0.20,
    "retouch": 0.12,
    # held out of every default recipe on purpose (probability 0): the families that
    # benchmarks/bench_retrain.py teaches by retraining (training/synth_fill.py,
    # training/synth_recolour.py)
    "exemplar-fill": 0.0,
    "recolour": 0.0,
}
#: Kinds no default recipe generates (weight 0 above); ask for them with ``manipulations``.
HELD_OUT_MANIPULATIONS = ("exemplar-fill", "recolour")
SHAPES = ("polygon", "ellipse", "blob", "rectangle")
#: Share of object-shaped regions per manipulation: (photo cut-out alpha, host segment); the
#: rest is geometric :data:`SHAPES`. Without installed cut-outs their share is geometric too.
OBJECT_SHARE: Dict[str, Tuple[float, float]] = {
    "splicing": (0.45, 0.25),
    "copy-move": (0.15, 0.35),
    "removal": (0.15, 0.45),
    "generative": (0.10, 0.40),
    "retouch": (0.10, 0.40),
    "exemplar-fill": (0.15, 0.45),
    "recolour": (0.0, 0.7),  # an object of the host itself (or a selection) changes colour
}
#: "social" chain: images whose long side exceeds this are downscaled to it (masks follow).
SOCIAL_MAX_SIDE = 1600
#: Probabilities of the "social" and "double-jpeg" global chains per difficulty.
_CHAIN_P = {"easy": (0.12, 0.08), "medium": (0.18, 0.10), "hard": (0.25, 0.12)}
_SEG_SIDE = 192  # long side of the host view that is over-segmented
_CUTOUT_MAX_UP = 2.5  # largest upscaling of a photo cut-out
DIFFICULTIES = {"easy": 0.45, "medium": 0.35, "hard": 0.20}
# Wanted window of the smallest trace distance between a new source and the earlier ones, per
# difficulty (see _trace_distance): hard samples have subtle but present differences.
_DISTANCE_WINDOW = {"easy": (1.5, math.inf), "medium": (0.8, 2.5), "hard": (0.3, 1.0)}
_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
}


@dataclass
class Sample:
    """One generated sample.

    Attributes:
        image: ``H x W x 3`` uint8 RGB, the final pixels (any final JPEG is baked in).
        sources: ``H x W`` uint8 source index per pixel; 0 = largest source (the host).
        meta: JSON-serialisable record (see ``docs/dataset-format.md``).
    """

    image: np.ndarray
    sources: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_sources(self) -> int:
        return int(self.meta["num_sources"])

    @property
    def name(self) -> str:
        return str(self.meta["name"])


def sample_name(split: str, index: int) -> str:
    return f"syn_{split}_{index:06d}"


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    return np.random.default_rng(np.random.SeedSequence([_SALT, int(seed), int(index), stream]))


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


# ---------------------------------------------------------------------------------------------
# Pixel operations (float32 H x W x 3 arrays in 0..255; values may leave the range in between)
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Processing histories and the trace-distance heuristic
# ---------------------------------------------------------------------------------------------

def _op_noise(rng, lo: float, hi: float, mono: bool) -> Dict[str, Any]:
    return {"op": "noise", "sigma": _r(_loguniform(rng, lo, hi), 3),
            "poisson": _r(rng.uniform(0, 1), 3),
            "corr": _r(rng.uniform(0.4, 0.9), 3) if rng.random() < 0.5 else 0.0,
            "chroma": 0.0 if mono else _r(rng.uniform(0.1, 0.7), 3)}


def _op_jpeg(rng, lo: int, hi: int, aligned: bool) -> Dict[str, Any]:
    phase = [0, 0] if aligned else [int(rng.integers(0, 16)), int(rng.integers(0, 16))]
    return {"op": "jpeg", "quality": int(rng.integers(lo, hi + 1)), "phase": phase,
            "subsampling": int(rng.choice([0, 2], p=[0.35, 0.65]))}


def _op_gamma(rng, mono: bool, strength: float = 1.0) -> Dict[str, Any]:
    g = float(np.exp(rng.uniform(-0.2, 0.2) * strength))
    if mono:
        gains = [_r(rng.uniform(1 - 0.05 * strength, 1 + 0.05 * strength), 4)] * 3
    else:
        gains = [_r(rng.uniform(1 - 0.04 * strength, 1 + 0.04 * strength), 4) for _ in range(3)]
    return {"op": "gamma", "gamma": _r(g, 4), "gains": gains,
            "offset": _r(rng.uniform(-5, 5) * strength, 3)}


def _op_resample(rng) -> Dict[str, Any]:
    f = rng.uniform(0.45, 0.85) if rng.random() < 0.7 else rng.uniform(1.25, 1.9)
    filters = ["bilinear", "bicubic", "lanczos", "nearest"]
    return {"op": "resample", "factor": _r(f, 3),
            "filter": str(rng.choice(filters, p=[0.35, 0.35, 0.2, 0.1])),
            "filter_back": str(rng.choice(filters[:3]))}


def _camera_ops(rng: np.random.Generator, mono: bool, host: bool,
                ext: Optional[np.random.Generator] = None) -> List[Dict[str, Any]]:
    """A camera-like history: blur -> [PRNU] -> noise -> [CFA] -> tone -> [sharpen] -> JPEG ->
    resample -> JPEG. The bracketed steps (and the noise's per-channel gains) are drawn from
    ``ext`` (the v2 camera stream); without it the history is the v1 one."""
    ops: List[Dict[str, Any]] = []
    if rng.random() < 0.35:
        ops.append({"op": "blur", "sigma": _r(rng.uniform(0.3, 1.4), 3)})
    if rng.random() < 0.9:
        ops.append(_op_noise(rng, 0.7, 8.0, mono))
    if rng.random() < 0.4:
        ops.append(_op_gamma(rng, mono))
    has_jpeg = rng.random() < 0.7
    if has_jpeg:
        ops.append(_op_jpeg(rng, 50, 98, aligned=host and rng.random() < 0.7))
    if rng.random() < 0.25:
        ops.append(_op_resample(rng))
    if has_jpeg and rng.random() < 0.3:
        ops.append(_op_jpeg(rng, 50, 98, aligned=host and rng.random() < 0.5))
    return ops if ext is None else _camera_ext(ops, ext, mono)


def _camera_ext(ops: List[Dict[str, Any]], ext: np.random.Generator, mono: bool
                ) -> List[Dict[str, Any]]:
    """Insert the sensor and in-camera steps into a v1 camera history (hosts and donors alike,
    so none of them means "foreign")."""
    # sensor: PRNU before the noise, CFA after it (noise on the raw mosaic is demosaiced too)
    u_prnu, u_cfa, u_gain, u_sharp = ext.random(4)
    pre: List[Dict[str, Any]] = []
    if u_prnu < 0.4:
        pre.append({"op": "prnu", "strength": _r(_loguniform(ext, 0.004, 0.015), 4),
                    "seed": int(ext.integers(0, 2 ** 31))})
    post_noise: List[Dict[str, Any]] = []
    if u_cfa < 0.55:
        post_noise.append({"op": "cfa", "pattern": str(ext.choice(list(_CFA_PATTERNS))),
                           "method": str(ext.choice(["bilinear", "edge"]))})
    sharp: List[Dict[str, Any]] = []
    if u_sharp < 0.45:
        sharp.append({"op": "sharpen", "amount": _r(ext.uniform(0.3, 1.2), 3),
                      "radius": _r(ext.uniform(0.6, 1.4), 3)})
    out: List[Dict[str, Any]] = []
    i = 0
    if i < len(ops) and ops[i]["op"] == "blur":
        out.append(ops[i])
        i += 1
    out += pre
    if i < len(ops) and ops[i]["op"] == "noise":
        noise = dict(ops[i])
        if u_gain < 0.6 and not mono:
            noise["channel_gains"] = [_r(ext.uniform(0.85, 1.4), 3), 1.0,
                                      _r(ext.uniform(1.0, 1.7), 3)]
        out.append(noise)
        i += 1
    out += post_noise
    if i < len(ops) and ops[i]["op"] == "gamma":
        out.append(ops[i])
        i += 1
    out += sharp
    out += ops[i:]
    return out


def _global_ops(rng: np.random.Generator, difficulty: str) -> List[Dict[str, Any]]:
    """Final whole-image post-processing (also applied to authentic images)."""
    p_none = {"easy": 0.45, "medium": 0.35, "hard": 0.25}[difficulty]
    if rng.random() < p_none:
        return []
    n_ops = 2 if (difficulty == "hard" and rng.random() < 0.4) else 1
    kinds = rng.choice(["jpeg", "resample", "noise", "blur"], size=n_ops, replace=False,
                       p=[0.5, 0.2, 0.2, 0.1])
    ops: List[Dict[str, Any]] = []
    for k in ["noise", "blur", "resample", "jpeg"]:  # fixed, plausible order
        if k not in kinds:
            continue
        if k == "jpeg":
            lo = {"easy": 88, "medium": 75, "hard": 60}[difficulty]
            ops.append(_op_jpeg(rng, lo, 98, aligned=True))
        elif k == "resample":
            lo = {"easy": 0.85, "medium": 0.75, "hard": 0.6}[difficulty]
            ops.append({"op": "resample", "factor": _r(rng.uniform(lo, 0.95), 3),
                        "filter": str(rng.choice(["bilinear", "bicubic", "lanczos"])),
                        "filter_back": str(rng.choice(["bilinear", "bicubic", "lanczos"]))})
        elif k == "noise":
            hi = {"easy": 1.2, "medium": 2.0, "hard": 3.0}[difficulty]
            ops.append({"op": "noise", "sigma": _r(rng.uniform(0.3, hi), 3), "poisson": 0.5,
                        "corr": 0.0, "chroma": 0.5})
        elif k == "blur":
            hi = {"easy": 0.4, "medium": 0.55, "hard": 0.7}[difficulty]
            ops.append({"op": "blur", "sigma": _r(rng.uniform(0.25, hi), 3)})
    return ops


def _global_chain(rng: np.random.Generator, post_rng: np.random.Generator, difficulty: str,
                  H: int, W: int) -> Tuple[str, List[Dict[str, Any]]]:
    """The final whole-image chain: ("none" | "basic" | "social" | "double-jpeg", ops).

    The v1 choice is always drawn from ``rng`` (so the main stream keeps its order); ``post_rng``
    then decides whether a social-network or a double-JPEG chain replaces it."""
    basic = _global_ops(rng, difficulty)
    p_social, p_double = _CHAIN_P[difficulty]
    u = post_rng.random()
    if u < p_social:
        ops: List[Dict[str, Any]] = []
        if post_rng.random() < 0.6:  # it was a JPEG (camera or editor) before the upload
            ops.append(_op_jpeg(post_rng, 80, 98, aligned=post_rng.random() < 0.7))
        long_side = max(H, W)
        filt = str(post_rng.choice(["bicubic", "lanczos", "bilinear", "box"]))
        if long_side > SOCIAL_MAX_SIDE:
            f = SOCIAL_MAX_SIDE / long_side
            ops.append({"op": "resize", "size": [max(2, int(round(H * f))),
                                                 max(2, int(round(W * f)))], "filter": filt})
        if post_rng.random() < 0.35:
            ops.append({"op": "sharpen", "amount": _r(post_rng.uniform(0.15, 0.5), 3),
                        "radius": _r(post_rng.uniform(0.6, 1.2), 3)})
        ops.append({"op": "jpeg", "quality": int(post_rng.integers(70, 86)), "phase": [0, 0],
                    "subsampling": 2 if post_rng.random() < 0.85 else 0})
        return "social", ops
    if u < p_social + p_double:
        first = _op_jpeg(post_rng, 65, 95, aligned=post_rng.random() < 0.6)
        second = _op_jpeg(post_rng, 65, 95, aligned=True)
        return "double-jpeg", [first, second]
    return ("basic" if basic else "none"), basic


_BASE_TRACE = {"noise": 0.0, "blur": 0.0, "jpeg_q": 100.0, "jpeg_phase": None,
               "resample": 0.0, "periodic": 0.0, "cfa": 0.0, "cfa_phase": None}


def _trace(ops: Sequence[Dict[str, Any]], state: Optional[Dict[str, Any]] = None
           ) -> Dict[str, Any]:
    """Rough summary of the traces a history leaves (heuristic, for contrast control only).

    ``noise`` ~ residual noise std (grey levels), ``blur`` ~ extra blur sigma (px), ``jpeg_q`` /
    ``jpeg_phase`` = last JPEG whose block grid is still intact, ``resample`` = accumulated
    |log2 factor| of interpolations, ``periodic`` = amplitude of a periodic pattern, ``cfa`` /
    ``cfa_phase`` = strength (0..1) and (red row parity, red column parity, method) of an intact
    demosaicing trace.
    """
    st = dict(_BASE_TRACE if state is None else state)
    for op in ops:
        k = op["op"]
        if k == "blur":
            s = op["sigma"]
            st["blur"] = math.hypot(st["blur"], s)
            st["noise"] /= 1.0 + 1.5 * s
            st["cfa"] *= max(0.0, 1.0 - s)
            if s > 0.6:
                st["jpeg_q"], st["jpeg_phase"] = 100.0, None
        elif k == "noise":
            st["noise"] = math.hypot(st["noise"], op["sigma"])
            if op["sigma"] > 3 and st["jpeg_q"] > 80:
                st["jpeg_q"], st["jpeg_phase"] = 100.0, None
            if op["sigma"] > 3:
                st["cfa"] *= 0.6
        elif k == "cfa":
            st["noise"] *= 0.85
            ry, rx = _CFA_PATTERNS[op["pattern"]]
            st["cfa"], st["cfa_phase"] = 1.0, (ry, rx, op["method"])
        elif k == "prnu":
            st["noise"] = math.hypot(st["noise"], 128.0 * op["strength"])
        elif k == "jpeg":
            q = float(op["quality"])
            st["noise"] *= 0.5 + 0.5 * (q - 50) / 50
            st["jpeg_q"], st["jpeg_phase"] = q, tuple(p % 8 for p in op["phase"])
            st["periodic"] *= 0.5 + 0.5 * (q - 50) / 50
            st["cfa"] *= 0.4 + 0.6 * (q - 50) / 50
        elif k in ("resample", "resize"):
            f = op.get("factor", 0.7)
            st["resample"] += abs(math.log2(f)) + 0.3
            st["noise"] *= min(1.0, f)
            st["blur"] = math.hypot(st["blur"], max(0.0, 0.5 / f - 0.5) + 0.3)
            st["jpeg_q"], st["jpeg_phase"] = 100.0, None
            st["periodic"] = 0.0
            st["cfa"], st["cfa_phase"] = 0.0, None
        elif k == "sharpen":
            st["noise"] *= 1.0 + op["amount"]
            st["blur"] = max(0.0, st["blur"] - 0.5 * op["amount"])
            st["resample"] += 0.2
        elif k == "median":
            st["noise"] *= 0.45
            st["blur"] = math.hypot(st["blur"], 0.6)
            st["jpeg_q"], st["jpeg_phase"] = 100.0, None
            st["cfa"], st["cfa_phase"] = 0.0, None
        elif k == "tone":
            st["noise"] *= op["contrast"]
        elif k == "gamma":
            st["noise"] *= float(np.mean(op["gains"]))
        elif k == "recolour":  # channels mixed: the demosaicing pattern's colour relations break
            st["cfa"] *= 1.0 if op.get("mono") else 0.5
            if op.get("mono"):
                st["noise"] *= 1.1
        elif k == "periodic":
            st["periodic"] = math.hypot(st["periodic"], op["amplitude"])
        elif k == "geom":  # copy-move transform
            moved = op["scale"] != 1.0 or op["angle"] != 0.0
            if moved:
                st["resample"] += abs(math.log2(op["scale"])) + (0.4 if op["angle"] else 0.2)
                st["blur"] = math.hypot(st["blur"], 0.3)
                st["noise"] *= 0.85
                st["jpeg_q"], st["jpeg_phase"] = 100.0, None
                st["cfa"], st["cfa_phase"] = 0.0, None
            else:
                dy, dx = op["shift"]
                if st["jpeg_phase"] is not None:
                    st["jpeg_phase"] = ((st["jpeg_phase"][0] + dy) % 8,
                                        (st["jpeg_phase"][1] + dx) % 8)
                if st["cfa_phase"] is not None:
                    py, px, meth = st["cfa_phase"]
                    st["cfa_phase"] = ((py + dy) % 2, (px + dx + int(op.get("flip", False))) % 2,
                                       meth)
        elif k == "inpaint":
            st["noise"] = 0.0
            st["blur"] = math.hypot(st["blur"], 1.2 if op["texture"] > 0 else 2.5)
            st["jpeg_q"], st["jpeg_phase"] = 100.0, None
            st["resample"] += 0.3
            st["periodic"] = 0.0
            st["cfa"], st["cfa_phase"] = 0.0, None
        elif k == "resynth":
            s = op["strength"]
            st["noise"] = (1 - s) * st["noise"] + s * 2.0
            st["blur"] = math.hypot(st["blur"], 0.3 * op["factor"] * s)
            st["resample"] += 0.5 * s * math.log2(op["factor"])
            if s >= 0.4:
                st["jpeg_q"], st["jpeg_phase"] = 100.0, None
                st["cfa"], st["cfa_phase"] = 0.0, None
            st["periodic"] *= 1 - s
            st["cfa"] *= 1 - s
    if st["cfa"] < 0.05:
        st["cfa"], st["cfa_phase"] = 0.0, None
    return st


def _trace_distance(a: Dict[str, Any], b: Dict[str, Any]) -> float:
    """Heuristic distance between two trace summaries (~1 = a visible difference)."""
    d = abs(a["noise"] - b["noise"]) / 2.5
    d += abs(a["blur"] - b["blur"]) / 0.6
    d += abs(a["resample"] - b["resample"]) / 0.8
    d += abs(a["periodic"] - b["periodic"]) / 0.7
    qa, qb = a["jpeg_q"], b["jpeg_q"]
    d += abs(qa - qb) / 25.0
    if qa < 100 and qb < 100 and a["jpeg_phase"] != b["jpeg_phase"]:
        d += (100.0 - max(qa, qb)) / 40.0
    ca, cb = a.get("cfa", 0.0), b.get("cfa", 0.0)
    d += abs(ca - cb) / 1.25
    if ca > 0.3 and cb > 0.3 and a.get("cfa_phase") != b.get("cfa_phase"):
        d += 0.4 * min(ca, cb)
    return float(d)


def _json_trace(st: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else (None if v is None else _r(v, 3)))
            for k, v in st.items()}


# ---------------------------------------------------------------------------------------------
# Region shapes and layout
# ---------------------------------------------------------------------------------------------

def _shape_in_box(rng: np.random.Generator, kind: str, bh: int, bw: int
                  ) -> Tuple[np.ndarray, Dict[str, Any]]:
    """A boolean ``bh x bw`` mask of the given shape kind filling its box loosely."""
    m = np.zeros((bh, bw), dtype=bool)
    cy, cx = (bh - 1) / 2.0, (bw - 1) / 2.0
    info: Dict[str, Any] = {"kind": kind}
    if kind == "ellipse":
        rot = rng.uniform(-math.pi, math.pi) if rng.random() < 0.6 else 0.0
        ry, rx = bh / 2.0, bw / 2.0
        if rot:  # shrink so that the rotated ellipse stays mostly inside the box
            ry, rx = ry * 0.85, rx * 0.85
        rr, cc = draw.ellipse(cy, cx, max(ry, 2), max(rx, 2), shape=(bh, bw), rotation=rot)
        m[rr, cc] = True
        info["rotation"] = _r(rot, 3)
    elif kind == "polygon":
        n = int(rng.integers(5, 13))
        ang = np.sort(rng.uniform(0, 2 * math.pi, n))
        rad = rng.uniform(0.45, 1.0, n)
        ys = cy + (bh / 2.0) * rad * np.sin(ang)
        xs = cx + (bw / 2.0) * rad * np.cos(ang)
        rr, cc = draw.polygon(ys, xs, shape=(bh, bw))
        m[rr, cc] = True
        info["vertices"] = n
    elif kind == "rectangle":
        if rng.random() < 0.6:
            m[:, :] = True
            info["rotation"] = 0.0
        else:
            rot = rng.uniform(-math.pi / 4, math.pi / 4)
            hh, hw = bh / 2.0 / (1 + abs(math.sin(rot))), bw / 2.0 / (1 + abs(math.sin(rot)))
            c, s = math.cos(rot), math.sin(rot)
            corners = np.array([[-hh, -hw], [-hh, hw], [hh, hw], [hh, -hw]])
            ys = cy + corners[:, 0] * c - corners[:, 1] * s
            xs = cx + corners[:, 0] * s + corners[:, 1] * c
            rr, cc = draw.polygon(ys, xs, shape=(bh, bw))
            m[rr, cc] = True
            info["rotation"] = _r(rot, 3)
    elif kind == "blob":
        g = int(rng.integers(3, 7))
        low = rng.standard_normal((g, g)).astype(np.float32)
        fld = _float_resize(low, (bh, bw), Image.BICUBIC)
        yy = (np.arange(bh, dtype=np.float32)[:, None] - cy) / max(bh / 2.0, 1)
        xx = (np.arange(bw, dtype=np.float32)[None, :] - cx) / max(bw / 2.0, 1)
        fld = fld * 0.6 + 2.0 * (1.0 - (yy ** 2 + xx ** 2))
        fill = rng.uniform(0.45, 0.7)
        m = fld > np.quantile(fld, 1.0 - fill)
        if rng.random() < 0.7:
            lab, n = ndimage.label(m)
            if n > 1:
                sizes = np.bincount(lab.ravel())
                sizes[0] = 0
                m = lab == int(np.argmax(sizes))
        info["fill"] = _r(fill, 3)
    else:  # pragma: no cover
        raise ValueError(kind)
    return m, info


_FILL = {"ellipse": 0.72, "polygon": 0.5, "rectangle": 0.85, "blob": 0.55}


def _random_region(rng: np.random.Generator, H: int, W: int, area_frac: float,
                   kind: Optional[str] = None) -> Tuple[np.ndarray, Dict[str, Any]]:
    kind = kind or str(rng.choice(SHAPES, p=[0.3, 0.25, 0.3, 0.15]))
    box_area = area_frac * H * W / _FILL[kind]
    aspect = _loguniform(rng, 0.5, 2.0)
    bh = int(round(math.sqrt(box_area * aspect)))
    bw = int(round(box_area / max(bh, 1)))
    bh, bw = int(np.clip(bh, 8, H)), int(np.clip(bw, 8, W))
    y0 = int(rng.integers(0, H - bh + 1))
    x0 = int(rng.integers(0, W - bw + 1))
    sm, info = _shape_in_box(rng, kind, bh, bw)
    m = np.zeros((H, W), dtype=bool)
    m[y0:y0 + bh, x0:x0 + bw] = sm
    info.update({"box": [y0, x0, y0 + bh, x0 + bw], "target_area": _r(area_frac, 4)})
    return m, info


class _Segments:
    """An over-segmentation of the host view (low resolution) with segment areas, centroids and
    adjacency (shared border lengths)."""

    def __init__(self, host: np.ndarray, rng: np.random.Generator):
        H, W = host.shape[:2]
        f = min(1.0, _SEG_SIDE / max(H, W))
        h, w = max(8, int(round(H * f))), max(8, int(round(W * f)))
        small = _to_u8(_pil_resize(host, (h, w), "bilinear"))
        if rng.random() < 0.7:
            scale = _loguniform(rng, 60.0, 500.0)
            sigma = float(rng.uniform(0.5, 1.0))
            min_size = max(4, int(h * w * rng.uniform(0.001, 0.004)))
            lab = segmentation.felzenszwalb(small, scale=scale, sigma=sigma, min_size=min_size)
            self.params = {"method": "felzenszwalb", "scale": _r(scale, 1), "sigma": _r(sigma, 3),
                           "min_size": min_size}
        else:
            n_seg = int(rng.integers(30, 160))
            compact = _loguniform(rng, 4.0, 25.0)
            lab = segmentation.slic(small, n_segments=n_seg, compactness=compact, start_label=0)
            self.params = {"method": "slic", "n_segments": n_seg, "compactness": _r(compact, 2)}
        lab = lab.astype(np.int64)
        present = np.bincount(lab.ravel()) > 0
        lab = (np.cumsum(present) - 1)[lab]  # consecutive labels
        self.labels = lab.astype(np.int32)
        self.n = int(self.labels.max()) + 1
        self.params["segments_total"] = self.n
        self.areas = np.bincount(self.labels.ravel(), minlength=self.n).astype(np.float64)
        yy, xx = np.mgrid[0:h, 0:w]
        self.cy = np.bincount(self.labels.ravel(), yy.ravel(), self.n) / np.maximum(self.areas, 1)
        self.cx = np.bincount(self.labels.ravel(), xx.ravel(), self.n) / np.maximum(self.areas, 1)
        flat = small.reshape(-1, 3).astype(np.float64)
        self.colour = np.stack([np.bincount(self.labels.ravel(), flat[:, c], self.n)
                                for c in range(3)], axis=1) / np.maximum(self.areas, 1)[:, None]
        pairs = np.concatenate([
            np.stack([self.labels[:, :-1].ravel(), self.labels[:, 1:].ravel()], 1),
            np.stack([self.labels[:-1, :].ravel(), self.labels[1:, :].ravel()], 1)])
        pairs = pairs[pairs[:, 0] != pairs[:, 1]].astype(np.int64)
        keys = np.minimum(pairs[:, 0], pairs[:, 1]) * self.n + np.maximum(pairs[:, 0], pairs[:, 1])
        hist = np.bincount(keys, minlength=self.n * self.n)
        uniq = np.flatnonzero(hist)
        counts = hist[uniq]
        self.nbrs: List[Dict[int, int]] = [dict() for _ in range(self.n)]
        for key, c in zip(uniq.tolist(), counts.tolist()):
            a, b = divmod(key, self.n)
            self.nbrs[a][b] = c
            self.nbrs[b][a] = c
        self.factor = (h / H, w / W)

    def region(self, rng: np.random.Generator, H: int, W: int, box: Sequence[int],
               area_frac: float) -> Optional[Tuple[np.ndarray, Dict[str, Any]]]:
        """A connected union of neighbouring segments of about ``area_frac`` of the image near
        the centre of ``box`` (full-resolution mask), or ``None``. It grows by neighbours that
        share much border and have a similar mean colour, as an object's parts do."""
        h, w = self.labels.shape
        tgt = area_frac * h * w
        ok = np.flatnonzero(self.areas <= 1.5 * tgt)
        if len(ok) == 0:
            return None
        by = 0.5 * (box[0] + box[2]) * self.factor[0]
        bx = 0.5 * (box[1] + box[3]) * self.factor[1]
        d2 = ((self.cy[ok] - by) / h) ** 2 + ((self.cx[ok] - bx) / w) ** 2
        p = np.exp(-d2 / (2 * 0.15 ** 2)) + 1e-9
        first = int(ok[rng.choice(len(ok), p=p / p.sum())])
        union = {first}
        area = float(self.areas[first])
        goal = tgt * float(rng.uniform(0.7, 1.1))
        border: Dict[int, int] = dict(self.nbrs[first])
        colour = self.colour[first].copy()
        while area < goal and len(union) < 400:
            cand = [b for b in border if area + self.areas[b] <= 1.5 * tgt]
            if not cand:
                break
            dc = np.sum((self.colour[cand] - colour) ** 2, axis=1)
            wts = np.array([border[b] for b in cand], dtype=np.float64) ** 2
            wts = wts * np.exp(-dc / (2 * 20.0 ** 2)) + 1e-12
            b = cand[int(rng.choice(len(cand), p=wts / wts.sum()))]
            union.add(b)
            colour = (colour * area + self.colour[b] * self.areas[b]) / (area + self.areas[b])
            area += float(self.areas[b])
            del border[b]
            for c, n in self.nbrs[b].items():
                if c not in union:
                    border[c] = border.get(c, 0) + n
        sel = np.zeros(self.n, dtype=bool)
        sel[list(union)] = True
        low = ndimage.binary_fill_holes(sel[self.labels])
        opened = ndimage.binary_opening(low, iterations=1)  # no one-pixel tendrils
        lab, n = ndimage.label(opened)
        if n >= 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            low = lab == int(np.argmax(sizes))
        if low.sum() < 0.3 * tgt:
            return None
        m = _float_resize(low.astype(np.float32), (H, W), Image.BILINEAR) > 0.5
        if not m.any():
            return None
        return m, {"kind": "segment", **self.params, "segments": len(union)}


def _bbox(m: np.ndarray) -> List[int]:
    ys = np.flatnonzero(m.any(axis=1))
    xs = np.flatnonzero(m.any(axis=0))
    return [int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1]


def _move_coords(mv: Dict[str, Any], y0: int, x0: int, y1: int, x1: int
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Source coordinates of the destination pixels ``[y0:y1, x0:x1]`` of a moved object
    (rotation by ``angle`` degrees and scaling by ``scale`` about the centres, optional flip)."""
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - mv["to"][0], xx - mv["to"][1]
    a = math.radians(mv["angle"])
    c, s = math.cos(a), math.sin(a)
    uy = (c * dy + s * dx) / mv["scale"]
    ux = (-s * dy + c * dx) / mv["scale"]
    if mv["flip"]:
        ux = -ux
    return mv["from"][0] + uy, mv["from"][1] + ux


def _move_object(rng: np.random.Generator, src: np.ndarray
                 ) -> Optional[Tuple[np.ndarray, Dict[str, Any]]]:
    """Move the object mask ``src`` elsewhere in the image (copy-move of a real segment):
    returns the destination mask and the move (integer shift unless scaled or rotated)."""
    H, W = src.shape
    y0, x0, y1, x1 = _bbox(src)
    hs, ws = y1 - y0, x1 - x0
    cs = (0.5 * (y0 + y1 - 1), 0.5 * (x0 + x1 - 1))
    scale, angle = 1.0, 0.0
    if rng.random() < 0.5:
        scale = _r(_loguniform(rng, 0.75, 1.3), 3)
        if rng.random() < 0.35:
            angle = _r(rng.uniform(-20, 20), 2)
    flip = bool(rng.random() < 0.15)
    ca, sa = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    hd, wd = scale * (hs * ca + ws * sa), scale * (ws * ca + hs * sa)
    if hd > H - 2 or wd > W - 2:
        return None
    best = None
    for _ in range(12):
        cy = float(rng.uniform(hd / 2, H - hd / 2))
        cx = float(rng.uniform(wd / 2, W - wd / 2))
        dist = math.hypot((cy - cs[0]) / max(hs, 1), (cx - cs[1]) / max(ws, 1))
        if best is None or dist > best[0]:
            best = (dist, cy, cx)
        if dist > 0.8:
            break
    dist, cy, cx = best
    if dist < 0.5:
        return None
    if scale == 1.0 and angle == 0.0:  # a plain shift by whole pixels: an exact copy
        cy = cs[0] + round(cy - cs[0])
        cx = cs[1] + round(cx - cs[1])
    mv = {"from": [_r(cs[0], 2), _r(cs[1], 2)], "to": [_r(cy, 2), _r(cx, 2)], "scale": scale,
          "angle": angle, "flip": flip, "order": int(rng.choice([1, 3]))}
    dy0 = max(int(math.floor(cy - hd / 2)) - 2, 0)
    dx0 = max(int(math.floor(cx - wd / 2)) - 2, 0)
    dy1 = min(int(math.ceil(cy + hd / 2)) + 3, H)
    dx1 = min(int(math.ceil(cx + wd / 2)) + 3, W)
    ys, xs = _move_coords(mv, dy0, dx0, dy1, dx1)
    dst = np.zeros((H, W), dtype=bool)
    dst[dy0:dy1, dx0:dx1] = ndimage.map_coordinates(
        src.astype(np.float32), [ys, xs], order=1, mode="constant", cval=0.0) > 0.5
    if dst.sum() < 0.3 * src.sum():
        return None
    return dst, mv


def _cutout_region(rng: np.random.Generator, cut: Photo, H: int, W: int, box: Sequence[int],
                   area_frac: float) -> Optional[Tuple[np.ndarray, Dict[str, Any], Dict]]:
    """The alpha of a photo cut-out scaled to about ``area_frac`` of the image and centred on
    ``box``: (mask, shape info, private render data), or ``None``."""
    alpha = cut.alpha
    if alpha is None:
        return None
    obj = alpha >= 128
    if obj.sum() < 16:
        return None
    t, l, b, r = _bbox(alpha > 0)
    a_crop = alpha[t:b, l:r].astype(np.float32)
    n_obj = float((a_crop >= 128).sum())
    ch, cw = b - t, r - l
    s = math.sqrt(area_frac * H * W / n_obj)
    s = min(s, _CUTOUT_MAX_UP, 0.95 * H / ch, 0.95 * W / cw)
    hh, ww = int(round(ch * s)), int(round(cw * s))
    if hh < 8 or ww < 8:
        return None
    a_r = np.clip(_float_resize(a_crop, (hh, ww), Image.BILINEAR), 0, 255)
    flip = bool(rng.random() < 0.5)
    if flip:
        a_r = a_r[:, ::-1]
    small = a_r >= 128
    if small.sum() < 0.3 * area_frac * H * W:
        return None
    y0 = int(np.clip(round(0.5 * (box[0] + box[2]) - hh / 2), 0, H - hh))
    x0 = int(np.clip(round(0.5 * (box[1] + box[3]) - ww / 2), 0, W - ww))
    m = np.zeros((H, W), dtype=bool)
    m[y0:y0 + hh, x0:x0 + ww] = small
    info = {"kind": "cutout", "cutout": cut.name, "scale": _r(s, 3), "flip": flip}
    extra = {"photo": cut, "crop": (t, l, b, r), "alpha": np.ascontiguousarray(a_r / 255.0),
             "at": (y0, x0), "flip": flip}
    return m, info, extra


class _Shaper:
    """Replaces geometric regions by object-shaped ones (cut-out alphas, host segments)."""

    def __init__(self, rng: np.random.Generator, photos: PhotoPool, host: np.ndarray,
                 mono: bool):
        self.rng = rng
        self.photos = photos
        self.host = host
        self.mono = mono
        self.cutouts = list(getattr(photos, "cutouts", []) or [])
        self.share: Dict[str, Tuple[float, float]] = OBJECT_SHARE
        self._segments: Optional[_Segments] = None

    @property
    def segments(self) -> _Segments:
        if self._segments is None:
            self._segments = _Segments(self.host, self.rng)
        return self._segments

    def replace(self, kind: str, m: np.ndarray, info: Dict[str, Any], area_frac: float
                ) -> Tuple[np.ndarray, Dict[str, Any], Optional[Dict[str, Any]]]:
        p_cut, p_seg = self.share.get(kind, (0.0, 0.0))
        if not self.cutouts:
            p_cut = 0.0
        u = self.rng.random()
        H, W = m.shape
        box = info["box"]
        if u < p_cut:
            cut = self.photos.choose_cutout(self.rng, colour_only=not self.mono)
            res = _cutout_region(self.rng, cut, H, W, box, area_frac)
            if res is None:
                return m, info, None
            m2, shape, extra = res
        elif u < p_cut + p_seg:
            res2 = self.segments.region(self.rng, H, W, box, area_frac)
            if res2 is None:
                return m, info, None
            m2, shape = res2
            extra = None
            if kind == "copy-move":  # move the segment itself: a copy-move of a real object
                mv = _move_object(self.rng, m2)
                if mv is None:
                    return m, info, None
                shape["source_box"] = _bbox(m2)
                m2, shape["move"] = mv
                extra = {"move": shape["move"]}
        else:
            return m, info, None
        shape.update({"box": _bbox(m2), "target_area": info["target_area"]})
        return m2, shape, extra


def _layout(rng: np.random.Generator, H: int, W: int, n_foreign: int, min_area: float,
            kinds: Optional[Sequence[str]] = None, shaper: Optional[_Shaper] = None
            ) -> Tuple[List[np.ndarray], List[Dict[str, Any]], np.ndarray,
                       List[Optional[Dict[str, Any]]]]:
    """Masks of the foreign sources (paint order) such that, after overlaps, every source keeps
    at least ``min_area`` of the pixels and the host (label 0) stays the largest. With a
    ``shaper`` each geometric candidate (drawn from ``rng`` as in v1) may be replaced by an
    object-shaped region of the same size and place; returns (masks, shape infos, labels,
    private render data per region)."""
    min_px = max(1, int(math.ceil(min_area * H * W)))
    for _attempt in range(200):
        fr = np.array([_loguniform(rng, 0.03, 0.45) for _ in range(n_foreign)])
        budget = rng.uniform(0.35, 0.7)
        if fr.sum() > budget:
            fr = np.maximum(fr * budget / fr.sum(), 0.03)
        labels = np.zeros((H, W), dtype=np.uint8)
        masks: List[np.ndarray] = []
        infos: List[Dict[str, Any]] = []
        extras: List[Optional[Dict[str, Any]]] = []
        ok = True
        for j in range(n_foreign):
            for _try in range(25):
                m, info = _random_region(rng, H, W, float(fr[j]))
                extra = None
                if shaper is not None and kinds is not None:
                    m, info, extra = shaper.replace(kinds[j], m, info, float(fr[j]))
                trial = labels.copy()
                trial[m] = j + 1
                areas = np.bincount(trial.ravel(), minlength=j + 2)
                if areas[1:].min() >= min_px and areas[0] > areas[1:].max():
                    labels = trial
                    masks.append(m)
                    infos.append(info)
                    extras.append(extra)
                    break
            else:
                ok = False
                break
        if ok:
            return masks, infos, labels, extras
    raise RuntimeError(f"could not lay out {n_foreign} regions in {H}x{W}")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Content
# ---------------------------------------------------------------------------------------------

def _photo_view(photo: Photo, h: int, w: int, rng: np.random.Generator,
                scale_range: Tuple[float, float] = (0.6, 2.4), tries: int = 4
                ) -> Tuple[np.ndarray, Dict[str, Any]]:
    """A random ``h x w`` view of a photo (crop at a random scale, flip, resize filter)."""
    im = photo.pil
    PW, PH = im.size
    best = None
    for _ in range(tries):
        fmax = min(PW / w, PH / h)
        lo, hi = scale_range
        f = fmax if fmax <= lo else _loguniform(rng, lo, min(hi, fmax))
        cw, ch = w * f, h * f
        x0 = rng.uniform(0, max(PW - cw, 0))
        y0 = rng.uniform(0, max(PH - ch, 0))
        filt = str(rng.choice(["bilinear", "bicubic", "lanczos"] + (["box"] if f > 1.2 else [])))
        flip = bool(rng.random() < 0.5)
        arr = np.asarray(im.resize((w, h), _FILTERS[filt], box=(x0, y0, x0 + cw, y0 + ch)),
                         dtype=np.float32)
        texture = float(arr[::4, ::4].std())
        cand = (arr, {"photo": photo.name, "crop": [_r(y0, 1), _r(x0, 1), _r(y0 + ch, 1),
                                                    _r(x0 + cw, 1)],
                      "scale": _r(f, 3), "filter": filt, "flip": flip}, texture)
        if best is None or texture > best[2]:
            best = cand
        if texture >= 12.0:
            break
    arr, info, _ = best
    if info["flip"]:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr), info


def _jitter(a: np.ndarray, rng: np.random.Generator, mono: bool, strength: float = 1.0
            ) -> Tuple[np.ndarray, Dict[str, Any]]:
    c = float(rng.uniform(1 - 0.15 * strength, 1 + 0.15 * strength))
    b = float(rng.uniform(-12, 12) * strength)
    s = 1.0 if mono else float(rng.uniform(1 - 0.25 * strength, 1 + 0.25 * strength))
    lum = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if mono:
        a = np.repeat(lum[..., None], 3, axis=2)
    else:
        a = lum[..., None] + s * (a - lum[..., None])
    m = a.mean(axis=(0, 1), keepdims=True)
    a = (a - m) * c + m + b
    return a, {"contrast": _r(c, 3), "brightness": _r(b, 2), "saturation": _r(s, 3)}


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


# ---------------------------------------------------------------------------------------------
# Source plans (parameters chosen before rendering, so contrast can be enforced cheaply)
# ---------------------------------------------------------------------------------------------

def _plan_source(rng: np.random.Generator, kind: str, mono: bool, host_trace: Dict[str, Any],
                 ext: Optional[np.random.Generator] = None,
                 shape: Optional[Dict[str, Any]] = None
                 ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Parameters of one foreign source and its trace summary (``ext``: the v2 camera stream;
    ``shape``: the region's shape info, whose ``move`` fixes a segment copy-move's geometry)."""
    plan: Dict[str, Any] = {"manipulation": kind}
    if kind == "splicing":
        ops = _camera_ops(rng, mono, host=False, ext=ext)
        plan["ops"] = ops
        return plan, _trace(ops)
    if kind == "copy-move":
        scale = 1.0 if rng.random() < 0.45 else _r(_loguniform(rng, 0.7, 1.4), 3)
        angle = _r(rng.uniform(-25, 25), 2) if rng.random() < 0.3 else 0.0
        geom = {"op": "geom", "scale": scale, "angle": angle, "flip": bool(rng.random() < 0.2),
                "shift": [int(rng.integers(0, 8)), int(rng.integers(0, 8))]}
        mv = (shape or {}).get("move")
        if mv is not None:  # the move was fixed with the region
            plain = mv["scale"] == 1.0 and mv["angle"] == 0.0
            shift = [int(round(mv["from"][0] - mv["to"][0])) % 8,
                     int(round(mv["from"][1] - mv["to"][1])) % 8] if plain else [0, 0]
            geom.update({"scale": mv["scale"], "angle": mv["angle"], "flip": mv["flip"],
                         "shift": shift, "object": True})
        ops: List[Dict[str, Any]] = []
        if rng.random() < 0.35:
            ops.append({"op": "blur", "sigma": _r(rng.uniform(0.4, 1.3), 3)})
        if rng.random() < 0.45:
            ops.append(_op_noise(rng, 1.0, 7.0, mono))
        if rng.random() < 0.25:
            ops.append(_op_gamma(rng, mono, 0.5))
        if rng.random() < 0.35:
            ops.append(_op_jpeg(rng, 50, 95, aligned=False))
        plan.update({"geom": geom, "ops": ops})
        return plan, _trace([geom] + ops, host_trace)
    if kind == "removal":
        inp = {"op": "inpaint", "method": "pushpull",
               "texture": _r(rng.uniform(0.4, 1.0), 3) if rng.random() < 0.75 else 0.0}
        ops = []
        if rng.random() < 0.75:
            ops.append(_op_noise(rng, 0.5, 6.0, mono))
        if rng.random() < 0.3:
            ops.append(_op_jpeg(rng, 60, 95, aligned=False))
        plan.update({"inpaint": inp, "ops": ops})
        return plan, _trace([inp] + ops, host_trace)
    if kind == "generative":
        strength = float(rng.choice([0.2, 0.4, 0.6, 0.8, 0.95]))
        rs = {"op": "resynth", "factor": _r(rng.uniform(2.0, 6.0), 3), "strength": strength,
              "texture_corr": _r(rng.uniform(0.6, 1.5), 3),
              "texture_gain": _r(rng.uniform(0.6, 1.2), 3)}
        ops = [_op_gamma(rng, mono, 0.5)] if rng.random() < 0.6 else []
        if rng.random() < 0.6:
            ops.append({"op": "periodic", "period": int(rng.choice([2, 4, 8])),
                        "amplitude": _r(rng.uniform(0.3, 1.5) * max(strength, 0.4), 3),
                        "seed": int(rng.integers(0, 2 ** 31))})
        if rng.random() < 0.3:
            ops.append(_op_jpeg(rng, 60, 95, aligned=False))
        plan.update({"resynth": rs, "ops": ops})
        return plan, _trace([rs] + ops, host_trace)
    if kind == "exemplar-fill":
        fill, trace_ops = plan_fill(rng)
        ops = [_op_jpeg(rng, 70, 95, aligned=False)] if rng.random() < 0.2 else []
        plan.update({"fill": fill, "ops": ops})
        return plan, _trace(trace_ops + ops, host_trace)
    if kind == "recolour":
        edit, trace_ops = plan_recolour(rng, mono)
        ops = [_op_jpeg(rng, 70, 95, aligned=False)] if rng.random() < 0.15 else []
        plan.update({"recolour": edit, "ops": ops})
        return plan, _trace(trace_ops + ops, host_trace)
    if kind == "retouch":
        menu = ["blur", "sharpen", "median", "tone", "noise"]
        picks = rng.choice(menu, size=int(rng.integers(1, 3)), replace=False)
        ops = []
        for k in menu:
            if k not in picks:
                continue
            if k == "blur":
                ops.append({"op": "blur", "sigma": _r(rng.uniform(0.6, 2.0), 3)})
            elif k == "sharpen":
                ops.append({"op": "sharpen", "amount": _r(rng.uniform(0.5, 1.5), 3),
                            "radius": _r(rng.uniform(0.8, 2.0), 3)})
            elif k == "median":
                ops.append({"op": "median", "size": 3})
            elif k == "tone":
                ops.append({"op": "tone", "contrast": _r(rng.uniform(0.85, 1.2), 3),
                            "brightness": _r(rng.uniform(-8, 8), 2)})
            elif k == "noise":
                ops.append(_op_noise(rng, 1.5, 7.0, mono))
        plan["ops"] = ops
        return plan, _trace(ops, host_trace)
    raise ValueError(f"unknown manipulation {kind!r}")


# ---------------------------------------------------------------------------------------------
# Rendering of the foreign sources
# ---------------------------------------------------------------------------------------------

def _patch_rect(mask: np.ndarray, pad: int) -> Tuple[int, int, int, int]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    H, W = mask.shape
    return (max(int(ys[0]) - pad, 0), max(int(xs[0]) - pad, 0),
            min(int(ys[-1]) + 1 + pad, H), min(int(xs[-1]) + 1 + pad, W))


def _render_copy_move(comp: np.ndarray, rect, geom: Dict[str, Any], rng: np.random.Generator
                      ) -> Tuple[np.ndarray, Dict[str, Any]]:
    H, W = comp.shape[:2]
    y0, x0, y1, x1 = rect
    hr, wr = y1 - y0, x1 - x0
    scale, angle = geom["scale"], geom["angle"]
    grow = 1.45 if angle else 1.0
    hs, ws = int(math.ceil(hr / scale * grow)), int(math.ceil(wr / scale * grow))
    if hs > H or ws > W:  # source window does not fit: fall back to a pure shift
        scale, angle, grow = 1.0, 0.0, 1.0
        hs, ws = hr, wr
    best = None
    for _ in range(12):
        sy = int(rng.integers(0, H - hs + 1))
        sx = int(rng.integers(0, W - ws + 1))
        if scale == 1.0 and angle == 0.0:  # honour the planned sub-block shift phase
            sy = min(sy - (sy - y0) % 8 + geom["shift"][0], H - hs)
            sx = min(sx - (sx - x0) % 8 + geom["shift"][1], W - ws)
            sy, sx = max(sy, 0), max(sx, 0)
        cyd = (sy + hs / 2) - (y0 + hr / 2)
        cxd = (sx + ws / 2) - (x0 + wr / 2)
        dist = math.hypot(cyd / max(hr, 1), cxd / max(wr, 1))
        if best is None or dist > best[0]:
            best = (dist, sy, sx)
        if dist > 0.6:
            break
    _, sy, sx = best
    src = comp[sy:sy + hs, sx:sx + ws]
    if geom["flip"]:
        src = src[:, ::-1]
    if angle:
        im = Image.fromarray(_to_u8(src)).rotate(angle, resample=Image.BICUBIC)
        src = np.asarray(im, dtype=np.float32)
        cy, cx = (hs - hr / scale) / 2, (ws - wr / scale) / 2
        src = src[int(cy):int(cy) + int(math.ceil(hr / scale)),
                  int(cx):int(cx) + int(math.ceil(wr / scale))]
    if src.shape[:2] != (hr, wr):
        src = _pil_resize(src, (hr, wr), "bicubic")
    else:
        src = np.array(src, dtype=np.float32)
    return src, {"from": [sy, sx, sy + hs, sx + ws], "scale": scale, "angle": angle}


def _render_moved(comp: np.ndarray, rect, mv: Dict[str, Any]) -> Tuple[np.ndarray, Dict]:
    """Content of ``rect`` for a moved object (see :func:`_move_coords`)."""
    H, W = comp.shape[:2]
    y0, x0, y1, x1 = rect
    ys, xs = _move_coords(mv, y0, x0, y1, x1)
    ys = np.clip(ys, 0, H - 1)
    xs = np.clip(xs, 0, W - 1)
    ri, ci = np.rint(ys), np.rint(xs)
    if np.abs(ys - ri).max() < 1e-6 and np.abs(xs - ci).max() < 1e-6:  # whole-pixel copy
        out = comp[ri.astype(np.intp), ci.astype(np.intp)].astype(np.float32)
    else:
        sy0, sx0 = max(int(ys.min()) - 3, 0), max(int(xs.min()) - 3, 0)
        sy1, sx1 = min(int(ys.max()) + 4, H), min(int(xs.max()) + 4, W)
        crop = comp[sy0:sy1, sx0:sx1]
        coords = [ys - sy0, xs - sx0]
        out = np.stack([ndimage.map_coordinates(crop[..., c], coords, order=mv["order"],
                                                mode="nearest") for c in range(3)], axis=2)
    sb = [int(round(mv["from"][0])), int(round(mv["from"][1]))]
    return out.astype(np.float32), {"from_center": sb, "scale": mv["scale"],
                                    "angle": mv["angle"]}


def _render_cutout(extra: Dict[str, Any], rect, rng: np.random.Generator
                   ) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """A photo cut-out resized into ``rect``: (RGB content whose background is filled with the
    object's own colours, soft alpha 0..1 over ``rect``, view info)."""
    y0, x0, y1, x1 = rect
    t, l, b, r = extra["crop"]
    a_r = extra["alpha"]
    hh, ww = a_r.shape
    filt = str(rng.choice(["bilinear", "bicubic", "lanczos"]))
    rgb = np.asarray(Image.fromarray(np.ascontiguousarray(extra["photo"].image[t:b, l:r]))
                     .resize((ww, hh), _FILTERS[filt]), dtype=np.float32)
    if extra["flip"]:
        rgb = rgb[:, ::-1]
    ay, ax = extra["at"]
    content = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.float32)
    alpha = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    # intersection of the cut-out box with the rect, in both frames
    iy0, ix0 = max(ay, y0), max(ax, x0)
    iy1, ix1 = min(ay + hh, y1), min(ax + ww, x1)
    content[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = rgb[iy0 - ay:iy1 - ay, ix0 - ax:ix1 - ax]
    alpha[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = a_r[iy0 - ay:iy1 - ay, ix0 - ax:ix1 - ax]
    content = _pushpull_fill(content, alpha < 0.5)  # no dark halo when the history blurs
    return content, alpha, {"photo": extra["photo"].name, "filter": filt,
                            "crop": [int(t), int(l), int(b), int(r)]}


def _render_removal(comp: np.ndarray, rect, hole: np.ndarray, inp: Dict[str, Any],
                    rng: np.random.Generator) -> np.ndarray:
    y0, x0, y1, x1 = rect
    patch = comp[y0:y1, x0:x1]
    out = _pushpull_fill(patch, hole)
    t = inp["texture"]
    if t > 0:  # borrow high frequencies from a displaced window (a crude patch fill)
        H, W = comp.shape[:2]
        hr, wr = y1 - y0, x1 - x0
        sy = int(rng.integers(0, H - hr + 1))
        sx = int(rng.integers(0, W - wr + 1))
        donor = comp[sy:sy + hr, sx:sx + wr]
        hf = donor - _gauss(donor, 1.5)
        out[hole] += t * hf[hole]
    return out


def _render_generative(comp: np.ndarray, rect, rs: Dict[str, Any], rng: np.random.Generator,
                       mono: bool) -> np.ndarray:
    y0, x0, y1, x1 = rect
    patch = comp[y0:y1, x0:x1]
    hr, wr = patch.shape[:2]
    k = rs["factor"]
    small = (max(2, int(round(hr / k))), max(2, int(round(wr / k))))
    low = _pil_resize(_pil_resize(patch, small, "box"), (hr, wr), "bicubic")
    hf = patch - _gauss(patch, max(0.8, k / 2.5))
    s = rs["strength"]
    # synthetic detail with the local energy of the original detail (mostly luminance)
    tex = _noise_field(rng, (hr, wr), rs["texture_corr"], 0.0 if mono else 0.1)
    energy = ndimage.gaussian_filter(np.mean(hf * hf, axis=2), 4.0, truncate=2.0)
    tex *= (np.sqrt(energy) * rs["texture_gain"])[..., None]
    return low + (1.0 - s) * hf + s * tex


# ---------------------------------------------------------------------------------------------
# The sample generator
# ---------------------------------------------------------------------------------------------

def _choose_size(rng: np.random.Generator, size_range: Tuple[int, int]) -> Tuple[int, int]:
    lo, hi = int(size_range[0]), int(size_range[1])
    if lo < 32 or hi < lo:
        raise ValueError(f"bad size_range {size_range}")
    long_side = int(rng.integers(lo, hi + 1))
    aspect = 1.0 if rng.random() < 0.3 else rng.uniform(1.0, 1.6)
    short = int(np.clip(round(long_side / aspect), lo, hi))
    return (short, long_side) if rng.random() < 0.65 else (long_side, short)


def generate_sample(index: int, seed: int, num_sources: int, photos: PhotoPool,
                    size_range: Tuple[int, int] = (256, 512), *, split: Optional[str] = None,
                    difficulty: Optional[str] = None,
                    manipulations: Optional[Dict[str, float]] = None,
                    min_area: float = 0.01,
                    object_shapes: Optional[Dict[str, Tuple[float, float]]] = None) -> Sample:
    """Generate one synthetic sample.

    Args:
        index: sample index (with ``seed``, fully determines the sample).
        seed: non-negative base seed.
        num_sources: 1 (authentic) .. 4 (host + 3 foreign regions); at most 6.
        photos: the photo pool (use ``PhotoPool.load(split)``).
        size_range: both image sides lie in ``[min, max]`` pixels.
        split: recorded in meta and used in the name; defaults to ``photos.split``.
        difficulty: "easy" | "medium" | "hard" (default: random per sample, 45/35/20 %); sets
            the wanted trace contrast between sources (easy: clear, hard: subtle but present)
            and the strength of the global post-processing.
        manipulations: probabilities of the foreign manipulation kinds (default
            :data:`MANIPULATIONS`); a kind with weight 0 never appears.
        min_area: minimum pixel share of every source after overlaps.
        object_shapes: per manipulation, the share of (cut-out, segment) region shapes
            (default :data:`OBJECT_SHARE`; the rest is geometric); cut-outs only when
            ``photos.cutouts`` is not empty.

    Returns:
        A :class:`Sample`; ``sources`` has exactly ``num_sources`` distinct labels.
    """
    if not 1 <= num_sources <= 6:
        raise ValueError("num_sources must be in 1..6")
    split = split or photos.split
    rng = _rng(seed, index, _S_MAIN)
    if difficulty is None:
        difficulty = str(rng.choice(list(DIFFICULTIES), p=list(DIFFICULTIES.values())))
    elif difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {list(DIFFICULTIES)}")
    manip = dict(MANIPULATIONS if manipulations is None else manipulations)
    kinds = [k for k, v in manip.items() if v > 0]
    for k in kinds:
        if k not in MANIPULATIONS:
            raise ValueError(f"unknown manipulation {k!r}")
    probs = np.array([manip[k] for k in kinds], dtype=np.float64)

    H, W = _choose_size(rng, size_range)
    host_photo = photos.choose(rng)
    mono = host_photo.grey
    base, host_view = _photo_view(host_photo, H, W, rng)
    base, host_jit = _jitter(base, rng, mono)
    shape_rng = _rng(seed, index, _S_SHAPES)
    cam_rng = _rng(seed, index, _S_CAMERA)
    paste_rng = _rng(seed, index, _S_PASTE)
    host_ops = _camera_ops(rng, mono, host=True, ext=cam_rng)
    host_trace = _trace(host_ops)

    n_foreign = num_sources - 1
    kind_seq = [str(k) for k in shape_rng.choice(kinds, size=n_foreign, p=probs / probs.sum())
                ] if n_foreign else []
    masks: List[np.ndarray] = []
    shapes: List[Dict[str, Any]] = []
    extras: List[Optional[Dict[str, Any]]] = []
    if n_foreign:
        shaper = _Shaper(shape_rng, photos, base, mono)
        if object_shapes is not None:
            shaper.share = object_shapes
        masks, shapes, labels, extras = _layout(rng, H, W, n_foreign, min_area, kinds=kind_seq,
                                                shaper=shaper)
    else:
        labels = np.zeros((H, W), dtype=np.uint8)

    # plan the foreign sources, enforcing a minimum pairwise trace distance
    plans: List[Dict[str, Any]] = []
    traces: List[Dict[str, Any]] = [host_trace]
    lo, hi = _DISTANCE_WINDOW[difficulty]
    for j in range(n_foreign):
        kind = kind_seq[j]
        best = None
        for _try in range(40):
            plan, tr = _plan_source(rng, kind, mono, host_trace, ext=cam_rng, shape=shapes[j])
            dmin = min(_trace_distance(tr, t) for t in traces)
            miss = max(lo - dmin, 0.0) * 2.0 + max(dmin - hi, 0.0)  # too similar is worse
            if best is None or miss < best[2]:
                best = (plan, tr, miss)
            if miss == 0.0:
                break
        plans.append(best[0])
        traces.append(best[1])

    # render: host camera history on the full frame, then foreign sources in paint order
    comp = _apply_ops(base, host_ops, rng, (0, 0), mono)
    photos_used = [host_photo.name]
    src_meta: List[Dict[str, Any]] = [{
        "role": "host", "photo": host_photo.name, "view": host_view, "jitter": host_jit,
        "history": host_ops, "trace": _json_trace(host_trace), "paint_order": 0,
    }]
    for j, (m, shp, plan, extra) in enumerate(zip(masks, shapes, plans, extras), start=1):
        kind = plan["manipulation"]
        pad = 16
        if kind in ("removal", "exemplar-fill"):
            bb = shp["box"]
            pad = max(16, int(0.25 * max(bb[2] - bb[0], bb[3] - bb[1])))
        rect = _patch_rect(m, pad)
        y0, x0, y1, x1 = rect
        sub = m[y0:y1, x0:x1]
        alpha: Optional[np.ndarray] = None  # soft paste weights over rect (None: hard mask)
        info: Dict[str, Any] = {"role": kind, "manipulation": kind, "shape": shp,
                                "paint_order": j, "rect": [y0, x0, y1, x1]}
        if kind == "splicing":
            if shp["kind"] == "cutout":  # an object cut out of another photo, with its alpha
                content, alpha, view = _render_cutout(extra, rect, paste_rng)
                donor_name = view["photo"]
            else:
                donor = photos.choose(rng, colour_only=not mono, exclude=(host_photo.name,))
                content, view = _photo_view(donor, y1 - y0, x1 - x0, rng)
                donor_name = donor.name
            content, jit = _jitter(content, rng, mono)
            # a forger roughly matches brightness to the surroundings
            wmatch = float(rng.uniform(0.3, 0.9))
            target = comp[y0:y1, x0:x1][sub].mean(axis=0)
            content += wmatch * (target - content[sub].mean(axis=0))
            content = _apply_ops(content, plan["ops"], rng, (y0, x0), mono)
            info.update({"photo": donor_name, "view": view, "jitter": jit,
                         "brightness_match": _r(wmatch, 3), "history": plan["ops"]})
            photos_used.append(donor_name)
        elif kind == "copy-move":
            if extra is not None and "move" in extra:  # a segment of the host, moved
                content, cm = _render_moved(comp, rect, extra["move"])
            else:
                content, cm = _render_copy_move(comp, rect, plan["geom"], rng)
            content = _apply_ops(content, plan["ops"], rng, (y0, x0), mono)
            info.update({"photo": host_photo.name, "geom": dict(plan["geom"], **cm),
                         "history": plan["ops"]})
        elif kind == "removal":
            content = _render_removal(comp, rect, sub, plan["inpaint"], rng)
            content = _apply_ops(content, plan["ops"], rng, (y0, x0), mono)
            info.update({"photo": host_photo.name, "inpaint": plan["inpaint"],
                         "history": plan["ops"]})
        elif kind == "generative":
            content = _render_generative(comp, rect, plan["resynth"], rng, mono)
            content = _apply_ops(content, plan["ops"], rng, (y0, x0), mono)
            info.update({"photo": host_photo.name, "resynth": plan["resynth"],
                         "history": plan["ops"]})
        elif kind == "exemplar-fill":
            guide = _pushpull_fill(comp[y0:y1, x0:x1], sub)
            content = render_fill(comp, rect, sub, plan["fill"], guide)
            content = _apply_ops(content, plan["ops"], rng, (y0, x0), mono)
            info.update({"photo": host_photo.name, "fill": plan["fill"], "history": plan["ops"]})
        elif kind == "recolour":
            content = render_recolour(comp[y0:y1, x0:x1], plan["recolour"])
            content = _apply_ops(content, plan["ops"], rng, (y0, x0), mono)
            info.update({"photo": host_photo.name, "recolour": plan["recolour"], "history": plan["ops"]})
        else:  # retouch
            content = _apply_ops(comp[y0:y1, x0:x1].copy(), plan["ops"], rng, (y0, x0), mono)
            info.update({"photo": host_photo.name, "history": plan["ops"]})
        # a selection edge: cut-outs have their soft alpha; other splices and copy-moves are
        # sometimes feathered (the label still counts from weight 0.5)
        p_feather = {"splicing": 0.4, "copy-move": 0.3}.get(kind, 0.0)
        feather = 0.0
        if p_feather and paste_rng.random() < p_feather:
            feather = float(paste_rng.uniform(0.6, 2.0))
            alpha = _gauss((sub if alpha is None else alpha).astype(np.float32)[..., None],
                           feather)[..., 0]
        if alpha is not None:
            info["paste"] = {"alpha": "cutout" if shp["kind"] == "cutout" else "feathered",
                             "feather": _r(feather, 3)}
        info["trace"] = _json_trace(traces[j])
        region = comp[y0:y1, x0:x1]
        if alpha is None:
            region[sub] = content[sub]
        else:
            a3 = alpha[..., None]
            region[...] = a3 * content + (1.0 - a3) * region
            region[sub & (alpha < 0.5)] = content[sub & (alpha < 0.5)]  # labels stay exact
        src_meta.append(info)

    comp = _to_u8(comp).astype(np.float32)
    chain, post = _global_chain(rng, _rng(seed, index, _S_POST), difficulty, H, W)
    H0, W0 = H, W
    resize = [op for op in post if op["op"] == "resize"]
    if resize:
        size = tuple(resize[0]["size"])
        small = np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))
        ar = np.bincount(small.ravel(), minlength=num_sources)
        if ar.min() == 0 or (num_sources > 1 and ar[0] <= ar[1:].max()):
            post = [op for op in post if op["op"] != "resize"]  # would break the invariants
        else:
            labels = small
            H, W = size
    final = _to_u8(_apply_ops(comp, post, rng, (0, 0), mono)) if post else _to_u8(comp)
    if final.shape[:2] != labels.shape:  # pragma: no cover - programming error
        raise AssertionError("post-processing changed the size without the masks")

    # re-index by decreasing area (stable: ties keep paint order)
    areas = np.bincount(labels.ravel(), minlength=num_sources).astype(np.int64)
    order = np.argsort(-areas, kind="stable")
    if len(np.flatnonzero(areas)) != num_sources or order[0] != 0:  # pragma: no cover
        raise AssertionError("layout invariant violated")
    remap = np.empty(num_sources, dtype=np.uint8)
    remap[order] = np.arange(num_sources, dtype=np.uint8)
    sources = remap[labels]
    total = float(H * W)
    sources_meta = []
    for new_i, old_i in enumerate(order):
        sm = dict(src_meta[int(old_i)])
        sm = {"index": new_i, **sm, "area": _r(areas[old_i] / total, 6)}
        sources_meta.append(sm)

    dmins = [min(_trace_distance(traces[a], traces[b]) for b in range(len(traces)) if b != a)
             for a in range(len(traces))] if len(traces) > 1 else []
    meta: Dict[str, Any] = {
        "name": sample_name(split, index),
        "num_sources": num_sources,
        "authentic": num_sources == 1,
        "height": H,
        "width": W,
        "sources": sources_meta,
        "photo": host_photo.name,
        "photos": sorted(set(photos_used)),
        "mono": mono,
        "difficulty": difficulty,
        "min_trace_distance": _r(min(dmins), 3) if dmins else None,
        "global_chain": chain,
        "global_post": post,
        "seed": int(seed),
        "index": int(index),
        "split": split,
        "generator": f"training.synth v{SYNTH_VERSION}",
    }
    if (H, W) != (H0, W0):
        meta["size_before_post"] = [H0, W0]
    return Sample(image=final, sources=sources, meta=meta)


# ---------------------------------------------------------------------------------------------
# Dataset writer and CLI
# ---------------------------------------------------------------------------------------------

def choose_num_sources(seed: int, index: int, lo: int, hi: int,
                       authentic_fraction: Optional[float] = None) -> int:
    """Number of sources of sample ``index``: uniform over ``lo..hi``; with
    ``authentic_fraction`` set, authentic (1) with that probability and otherwise uniform over
    ``max(lo, 2)..hi``."""
    rng = _rng(seed, index, _S_COUNT)
    if authentic_fraction is None:
        return int(rng.integers(lo, hi + 1))
    if rng.random() < authentic_fraction or hi < 2:
        return 1
    return int(rng.integers(max(lo, 2), hi + 1))


def _save_png(arr: np.ndarray, path: str, level: int) -> None:
    tmp = path + ".tmp"
    Image.fromarray(arr).save(tmp, format="PNG", compress_level=level)
    os.replace(tmp, path)


def write_sample(sample: Sample, out: str, png_level: int = 1) -> Dict[str, Any]:
    """Write one sample into the dataset layout; returns a small summary record."""
    name = sample.name
    src = sample.sources
    _save_png(sample.image, os.path.join(out, "images", name + ".png"), png_level)
    _save_png(src, os.path.join(out, "sources", name + ".png"), 6)
    _save_png((np.minimum(src, 5) * 50).astype(np.uint8),
              os.path.join(out, "masks_safirems", name + ".png"), 6)
    _save_png(np.where(src >= 1, 255, 0).astype(np.uint8),
              os.path.join(out, "masks_binary", name + ".png"), 6)
    with open(os.path.join(out, "meta", name + ".json"), "w") as f:
        json.dump(sample.meta, f, indent=1)
    return {"name": name, "num_sources": sample.num_sources,
            "manipulations": [s["role"] for s in sample.meta["sources"][1:]]}


_WORKER: Dict[str, Any] = {}


def _worker_init(split: str) -> None:
    _WORKER["pool"] = PhotoPool.load(split)


def _job(args: Tuple[Any, ...]) -> Dict[str, Any]:
    index, seed, k, size_range, split, out, png_level, manipulations = args
    pool = _WORKER.get("pool")
    if pool is None or pool.split != split:
        pool = _WORKER["pool"] = PhotoPool.load(split)
    s = generate_sample(index, seed, k, pool, size_range, split=split, manipulations=manipulations)
    return write_sample(s, out, png_level)


_LAYOUT_DIRS = ("images", "sources", "masks_safirems", "masks_binary", "meta", "splits")


def write_dataset(out: str, n: int, *, seed: int = 0, sources: Tuple[int, int] = (1, 4),
                  authentic_fraction: Optional[float] = None, split: str = "train",
                  size_range: Tuple[int, int] = (256, 512), workers: int = 1,
                  start_index: int = 0, png_level: int = 1, overwrite: bool = False,
                  progress: bool = True, manipulations: Optional[Dict[str, float]] = None
                  ) -> Dict[str, Any]:
    """Generate ``n`` samples (indices ``start_index ..``) into ``out``; returns the manifest.

    ``manipulations``: probabilities of the foreign kinds (default :data:`MANIPULATIONS`, which
    never generates :data:`HELD_OUT_MANIPULATIONS`).
    """
    if manipulations is not None:
        unknown = sorted(set(manipulations) - set(MANIPULATIONS))
        if unknown or not any(v > 0 for v in manipulations.values()):
            raise ValueError(f"manipulations need known kinds ({', '.join(MANIPULATIONS)}) "
                             f"and one positive weight; got {manipulations}")
    lo, hi = sources
    if not 1 <= lo <= hi <= 5:
        raise ValueError("sources must satisfy 1 <= min <= max <= 5")
    if authentic_fraction is not None and not 0.0 <= authentic_fraction <= 1.0:
        raise ValueError("authentic_fraction must be in [0, 1]")
    if os.path.exists(os.path.join(out, "manifest.json")) and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset (manifest.json); use --overwrite")
    for d in _LAYOUT_DIRS:
        os.makedirs(os.path.join(out, d), exist_ok=True)
    if overwrite:  # drop stale synthetic files from an earlier run
        for d in _LAYOUT_DIRS[:-1]:
            for fn in os.listdir(os.path.join(out, d)):
                if fn.startswith("syn_"):
                    os.remove(os.path.join(out, d, fn))
    jobs = [(i, seed, choose_num_sources(seed, i, lo, hi, authentic_fraction),
             tuple(size_range), split, out, png_level, manipulations)
            for i in range(start_index, start_index + n)]
    t0 = time.time()
    records: List[Dict[str, Any]] = []

    def tick(done: int) -> None:
        if progress and (done == n or done % max(1, n // 100) == 0):
            el = time.time() - t0
            rate = done / el if el > 0 else 0.0
            eta = (n - done) / rate if rate > 0 else 0.0
            sys.stderr.write(f"\r[synth] {done}/{n} samples  {rate:.1f}/s  eta {eta:.0f}s ")
            sys.stderr.flush()

    if workers > 1 and n > 1:
        import multiprocessing as mp

        with mp.get_context().Pool(workers, initializer=_worker_init, initargs=(split,)) as p:
            for rec in p.imap(_job, jobs, chunksize=max(1, min(16, n // (4 * workers)))):
                records.append(rec)
                tick(len(records))
    else:
        _WORKER["pool"] = PhotoPool.load(split)
        for job in jobs:
            records.append(_job(job))
            tick(len(records))
    if progress:
        sys.stderr.write("\n")

    hist: Dict[str, int] = {}
    manip_hist: Dict[str, int] = {}
    list_lines, bin_lines, benco = [], [], []
    for r in records:
        hist[str(r["num_sources"])] = hist.get(str(r["num_sources"]), 0) + 1
        for m in r["manipulations"]:
            manip_hist[m] = manip_hist.get(m, 0) + 1
        img = f"images/{r['name']}.png"
        if r["num_sources"] == 1:
            list_lines.append(f"{img},None")
            bin_lines.append(f"{img},None")
            benco.append([img, "Negative"])
        else:
            list_lines.append(f"{img},masks_safirems/{r['name']}.png")
            bin_lines.append(f"{img},masks_binary/{r['name']}.png")
            benco.append([img, f"masks_binary/{r['name']}.png"])
    for fn, lines in (("list.txt", list_lines), ("list_binary.txt", bin_lines),
                      (os.path.join("splits", f"{split}.txt"), [r["name"] for r in records])):
        with open(os.path.join(out, fn), "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    with open(os.path.join(out, "imdl_benco.json"), "w") as f:
        json.dump(benco, f, indent=0)
    manifest = {
        "format": "safire-dataset",
        "version": 1,
        "count": len(records),
        "num_sources_histogram": dict(sorted(hist.items())),
        "labels": ["host"] + [k for k in MANIPULATIONS if k in manip_hist],
        "skipped": [],
        "source": "synthetic",
        "generator": {
            "name": "training.synth", "version": SYNTH_VERSION, "seed": seed,
            "split": split, "sources": [lo, hi], "authentic_fraction": authentic_fraction,
            "size_range": list(size_range), "start_index": start_index,
            "manipulations": dict(MANIPULATIONS if manipulations is None else manipulations),
            "photos": PhotoPool.load(split).names,
        },
        "manipulation_histogram": dict(sorted(manip_hist.items())),
        "splits": {split: len(records)},
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def parse_manipulations(text: str) -> Dict[str, float]:
    """``"exemplar-fill=1,splicing=0.5"`` -> ``{"exemplar-fill": 1.0, "splicing": 0.5}``."""
    out: Dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in MANIPULATIONS:
            raise argparse.ArgumentTypeError(f"unknown manipulation {name!r} (known: {', '.join(MANIPULATIONS)})")
        try:
            out[name] = float(value) if value.strip() else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {value!r}") from None
        if out[name] < 0:
            raise argparse.ArgumentTypeError(f"weight of {name!r} must be >= 0")
    if not any(v > 0 for v in out.values()):
        raise argparse.ArgumentTypeError("give at least one manipulation with a positive weight")
    return out


def _parse_sources(text: str) -> Tuple[int, int]:
    try:
        if "-" in text:
            a, b = text.split("-", 1)
            lo, hi = int(a), int(b)
        else:
            lo = hi = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sources expects N or MIN-MAX, got {text!r}")
    if not 1 <= lo <= hi <= 5:
        raise argparse.ArgumentTypeError("--sources must lie in 1..5 with MIN <= MAX")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="safire synth",
        description="Generate synthetic multi-source forgeries from bundled offline photos "
                    "(layout: docs/dataset-format.md).")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--n", type=int, default=100, help="number of samples (default 100)")
    p.add_argument("--sources", type=_parse_sources, default=(1, 4),
                   help="number of sources per image: N or MIN-MAX, uniform (default 1-4)")
    p.add_argument("--authentic-fraction", type=float, default=None,
                   help="share of authentic (single-source) images; the rest is uniform over "
                        "max(MIN,2)..MAX (default: not set, plain uniform over --sources)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--split", choices=["train", "val", "test", "heldout"], default="train",
                   help="photo split (docs/photos.md): val, test and heldout use only held-out photos, "
                        "never seen in training (default train)")
    p.add_argument("--size-min", type=int, default=256, help="min image side (default 256)")
    p.add_argument("--size-max", type=int, default=512, help="max image side (default 512)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--start-index", type=int, default=0,
                   help="first sample index (to extend a dataset reproducibly)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that already holds a dataset")
    p.add_argument("--manipulations", type=parse_manipulations, default=None,
                   help="foreign manipulation kinds and weights, e.g. 'exemplar-fill=1' (default: the "
                        "training mix, which never contains the held-out exemplar-fill and recolour)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 0 or args.size_min > args.size_max or args.seed < 0:
        build_parser().error("need --n >= 0, --seed >= 0 and --size-min <= --size-max")
    try:
        manifest = write_dataset(
            args.out, args.n, seed=args.seed, sources=args.sources,
            authentic_fraction=args.authentic_fraction, split=args.split,
            size_range=(args.size_min, args.size_max), workers=args.workers,
            start_index=args.start_index, overwrite=args.overwrite, progress=not args.quiet,
            manipulations=args.manipulations)
    except (FileExistsError, ValueError) as e:
        sys.stderr.write(f"safire synth: error: {e}\n")
        return 2
    if not args.quiet:
        sys.stderr.write(f"[synth] wrote {manifest['count']} samples to {args.out} "
                         f"(sources histogram {manifest['num_sources_histogram']})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
