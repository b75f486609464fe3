"""Region shapes and layout of the synthetic-forgery generator (``training.synth``).

Geometric shapes (polygon, ellipse, blob, rectangle), photo cut-out alphas, the :class:`_Shaper`
that replaces geometric regions by object-shaped ones (cut-outs, host segments, moved segments;
shares per manipulation in :data:`OBJECT_SHARE`) and :func:`_layout`, which places the foreign
regions so that every source keeps its minimum area and the host stays the largest.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import draw

from training.photos import Photo, PhotoPool
from training.synth_common import _loguniform, _r
from training.synth_ops import _float_resize
from training.synth_segments import _bbox, _move_object, _Segments

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
_CUTOUT_MAX_UP = 2.5  # largest upscaling of a photo cut-out


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

