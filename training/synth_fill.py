"""Exemplar-based removal ("content-aware fill"): the manipulation family held out of the default model.

A forger removes an object and an editor fills the hole with **blocks of real texture copied from
elsewhere in the same photo**, each chosen to continue what surrounds it (the idea of exemplar
inpainting and PatchMatch-style fills in photo editors). Unlike the ``removal`` family of
:mod:`training.synth` (smooth push-pull diffusion plus borrowed high frequencies), the filled region
keeps the host's own noise level, colour and texture, so the noise-level cues that the default model
relies on barely change. What gives it away is subtler: blocks copied from positions that are not a
multiple of 8 pixels (JPEG grid) or 2 pixels (demosaicing pattern) away break those periodic traces,
block seams, and repeated texture.

:data:`training.synth.MANIPULATIONS` lists it with probability 0, so no default recipe generates it:
``benchmarks/bench_retrain.py`` uses it to measure whether retraining on a user's annotations
teaches the model a family it has never seen. Generate it with
``safire synth --manipulations exemplar-fill=1``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

KIND = "exemplar-fill"
_CANDIDATES = 160  # source positions tried per block


def plan_fill(rng: np.random.Generator) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Parameters of one fill and the ``geom`` op that summarises its trace (for contrast control).

    Returns ``(fill, trace_ops)``: ``fill`` = block side (px), grid phase, candidate spread (a
    multiple of the hole size); ``trace_ops`` = one copy-move-like shift op (the copied blocks carry
    the host history at a shifted phase).
    """
    block = int(rng.choice([12, 16, 24, 32]))
    fill = {"op": "exemplar", "block": block,
            "phase": [int(rng.integers(0, block)), int(rng.integers(0, block))],
            "spread": round(float(rng.uniform(0.5, 1.5)), 3), "seed": int(rng.integers(0, 2 ** 31))}
    shift = {"op": "geom", "scale": 1.0, "angle": 0.0, "flip": False,
             "shift": [int(rng.integers(1, 8)), int(rng.integers(1, 8))]}
    return fill, [shift]


def _box_sums(ii: np.ndarray, ys: np.ndarray, xs: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sums of an integral image ``ii`` ((H+1)x(W+1)) over the h x w boxes at (ys, xs)."""
    return ii[ys + h, xs + w] - ii[ys, xs + w] - ii[ys + h, xs] + ii[ys, xs]


def render_fill(comp: np.ndarray, rect: Tuple[int, int, int, int], hole: np.ndarray,
                fill: Dict[str, Any], guide: np.ndarray) -> np.ndarray:
    """Fill ``hole`` of ``comp[rect]`` block by block with the best-matching block of the photo.

    Args:
        comp: HxWx3 float32 composite (grey levels 0..255), not modified.
        rect: (y0, x0, y1, x1) of the patch that holds the hole.
        hole: boolean (y1-y0)x(x1-x0) mask of the pixels to replace.
        fill: parameters from :func:`plan_fill`.
        guide: the patch with the hole filled smoothly (push-pull): what each block should look like.

    Returns:
        The patch (float32, (y1-y0)x(x1-x0)x3) with the hole pixels replaced by copied pixels; the
        blocks are visited in raster order and each is matched against the guide where the hole is
        still open and against the pixels already in place (real context or earlier blocks), so the
        texture continues across block seams. Candidate sources never overlap the hole.
    """
    y0, x0, y1, x1 = rect
    H, W = comp.shape[:2]
    hr, wr = y1 - y0, x1 - x0
    rng = np.random.default_rng(int(fill["seed"]))
    full = np.zeros((H, W), dtype=np.int32)
    full[y0:y1, x0:x1] = hole
    ii = np.pad(full.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    out = guide.astype(np.float32).copy()
    known = ~hole  # real context, then every block already filled
    b = int(fill["block"])
    o = max(2, b // 4)  # overlap margin matched around each block (texture continues across seams)
    py, px = (int(v) % b for v in fill["phase"])
    spread = float(fill["spread"]) * max(hr, wr)
    for by in range(-py, hr, b):
        for bx in range(-px, wr, b):
            ty0, tx0, ty1, tx1 = max(by, 0), max(bx, 0), min(by + b, hr), min(bx + b, wr)
            if ty1 <= ty0 or tx1 <= tx0 or not hole[ty0:ty1, tx0:tx1].any():
                continue
            # matching window: the block and a margin, inside the patch and the image
            wy0, wx0 = max(ty0 - o, 0, -y0), max(tx0 - o, 0, -x0)
            wy1, wx1 = min(ty1 + o, hr, H - y0), min(tx1 + o, wr, W - x0)
            h, w = wy1 - wy0, wx1 - wx0
            if h > H or w > W:
                continue
            sy = np.clip(np.round(y0 + wy0 + rng.normal(0.0, spread, _CANDIDATES)), 0, H - h).astype(np.int64)
            sx = np.clip(np.round(x0 + wx0 + rng.normal(0.0, spread, _CANDIDATES)), 0, W - w).astype(np.int64)
            ok = _box_sums(ii, sy, sx, h, w) == 0
            if not ok.any():
                continue  # no clean source nearby: the smooth guide stays (rare)
            sy, sx = sy[ok], sx[ok]
            cand = comp[sy[:, None, None] + np.arange(h)[None, :, None],
                        sx[:, None, None] + np.arange(w)[None, None, :]]  # K x h x w x 3
            target = out[wy0:wy1, wx0:wx1]
            # real or already-copied pixels count 4x the smooth guide (which only sets the colour)
            wgt = np.where(known[wy0:wy1, wx0:wx1], 4.0, 1.0).astype(np.float32)
            ssd = (((cand - target[None]) ** 2).sum(axis=3) * wgt[None]).sum(axis=(1, 2))
            best = cand[int(np.argmin(ssd))]
            cy0, cx0 = ty0 - wy0, tx0 - wx0
            core = best[cy0:cy0 + ty1 - ty0, cx0:cx0 + tx1 - tx0]
            m = hole[ty0:ty1, tx0:tx1]
            blk = out[ty0:ty1, tx0:tx1]
            blk[m] = core[m]
            known[ty0:ty1, tx0:tx1] |= m
    return out
