"""Recolouring ("replace colour"): a second manipulation family held out of the default model.

A forger changes the colour of an object (a car, a shirt, a flag, a sign) with a photo editor's
hue/saturation or replace-colour adjustment applied to a selection. The edit keeps the luminance
and therefore the host's noise level, sharpness, JPEG grid and geometry: every cue that the default
model relies on (noise level, blur, resampling, grid phase) stays the host's. What changes is the
relation *between* the colour channels: hue rotation mixes R, G and B with a 3x3 matrix, so the
chroma residuals that demosaicing left correlated with the green channel are rotated and rescaled,
and chroma noise changes its level with the saturation gain. A greyscale host gets a tone-curve
("levels") edit instead, the only colour edit a grey photo allows.

:data:`training.synth.MANIPULATIONS` lists it with probability 0, so no default recipe generates
it; ``benchmarks/bench_retrain.py --family recolour`` measures whether retraining on a user's
annotations teaches it. Generate it with ``safire synth --manipulations recolour=1``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np

KIND = "recolour"

# BT.601 luma and the scale of the two colour differences (YCbCr without offsets)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CB, _CR = 0.564, 0.713


def plan_recolour(rng: np.random.Generator, mono: bool) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Parameters of one recolouring and the ops that summarise its trace (for contrast control).

    Returns ``(edit, trace_ops)``. Colour host: ``edit`` = hue rotation (degrees, |angle| in
    30..180), saturation gain (0.6..1.6), lightness shift (grey levels, -6..6). Greyscale host: a
    tone curve (``gamma`` 0.7..1.4, ``gain`` 0.85..1.15). ``trace_ops`` holds one ``recolour``
    op: :func:`training.synth_camera._trace` weakens the demosaicing trace for it.
    """
    if mono:
        edit = {"op": "recolour", "mono": True, "gamma": round(float(rng.uniform(0.7, 1.4)), 3),
                "gain": round(float(rng.uniform(0.85, 1.15)), 3)}
    else:
        angle = float(rng.uniform(30.0, 180.0)) * (1.0 if rng.random() < 0.5 else -1.0)
        edit = {"op": "recolour", "mono": False, "angle": round(angle, 2),
                "saturation": round(float(rng.uniform(0.6, 1.6)), 3),
                "lightness": round(float(rng.uniform(-6.0, 6.0)), 2)}
    return edit, [{"op": "recolour", "mono": bool(mono)}]


def render_recolour(patch: np.ndarray, edit: Dict[str, Any]) -> np.ndarray:
    """The recoloured patch (HxWx3 float32, grey levels 0..255, unclipped like other renders).

    Colour: RGB -> (Y, Cb, Cr), (Cb, Cr) rotated by ``angle`` and scaled by ``saturation``, Y
    shifted by ``lightness``, back to RGB (a linear map of the three channels, as an editor's
    hue/saturation adjustment). Grey: ``255 * gain * (x / 255) ** gamma`` on every channel.
    """
    x = patch.astype(np.float32)
    if edit.get("mono"):
        return (255.0 * float(edit["gain"]) * (np.clip(x, 0.0, 255.0) / 255.0) ** float(edit["gamma"])
                ).astype(np.float32)
    y = x @ _LUMA
    cb = (x[..., 2] - y) * _CB
    cr = (x[..., 0] - y) * _CR
    t = math.radians(float(edit["angle"]))
    s = float(edit["saturation"])
    cb2 = s * (math.cos(t) * cb - math.sin(t) * cr)
    cr2 = s * (math.sin(t) * cb + math.cos(t) * cr)
    y2 = y + float(edit["lightness"])
    r = y2 + cr2 / _CR
    b = y2 + cb2 / _CB
    g = (y2 - _LUMA[0] * r - _LUMA[2] * b) / _LUMA[1]
    return np.stack([r, g, b], axis=-1).astype(np.float32)
