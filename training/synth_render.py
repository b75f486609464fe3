"""Content and rendering of the synthetic-forgery generator (``training.synth``).

Random views of pool photos (:func:`_photo_view`) and their colour jitter, and the renderers of
the foreign sources over a patch rectangle: copy-move (a window or a moved host segment), photo
cut-outs with their soft alpha, removal (push-pull inpainting with borrowed texture) and
generative re-synthesis.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

from training.photos import Photo
from training.synth_common import _loguniform, _r
from training.synth_ops import _FILTERS, _gauss, _noise_field, _pil_resize, _pushpull_fill, _to_u8
from training.synth_segments import _move_coords

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
