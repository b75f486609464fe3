"""Global post-processing chains of the synthetic-forgery generator (``training.synth``).

Every sample, authentic ones included, ends with a whole-image chain so that "processed" never
means "forged": none, basic (light JPEG / down-up resampling / noise / blur), ``social`` (an
earlier JPEG, a downscale to :data:`SOCIAL_MAX_SIDE`, mild sharpening, JPEG q 70-85 4:2:0) or
``double-jpeg``. The chain's probabilities per difficulty are :data:`_CHAIN_P`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from training.synth_camera import _op_jpeg
from training.synth_common import _r

#: "social" chain: images whose long side exceeds this are downscaled to it (masks follow).
SOCIAL_MAX_SIDE = 1600
#: Probabilities of the "social" and "double-jpeg" global chains per difficulty.
_CHAIN_P = {"easy": (0.12, 0.08), "medium": (0.18, 0.10), "hard": (0.25, 0.12)}


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
