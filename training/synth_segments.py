"""Host over-segmentation and object moves of the synthetic-forgery generator.

:class:`_Segments` over-segments a low-resolution host view (Felzenszwalb or SLIC) and grows
object-like regions from neighbouring segments; :func:`_move_object` moves such a region
elsewhere (a copy-move of a real object) and :func:`_move_coords` maps its destination pixels
back to the source. Used by ``training.synth_shapes`` and ``training.synth_render``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import segmentation

from training.synth_common import _loguniform, _r
from training.synth_ops import _float_resize, _pil_resize, _to_u8

_SEG_SIDE = 192  # long side of the host view that is over-segmented


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

