"""Source plans of the synthetic-forgery generator (``training.synth``).

:func:`_plan_source` draws the parameters of one foreign source (its manipulation's geometry,
inpainting, re-synthesis, fill or recolouring parameters and its processing history) before any
rendering, with the trace summary that lets the generator enforce the wanted contrast cheaply.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from training.synth_camera import _camera_ops, _op_gamma, _op_jpeg, _op_noise, _trace
from training.synth_common import _loguniform, _r
from training.synth_fill import plan_fill
from training.synth_recolour import plan_recolour

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
