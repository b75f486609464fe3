"""Processing histories of the synthetic-forgery generator (``training.synth``).

Random draws of single history steps (noise, JPEG, tone, resampling), camera-like histories of
hosts and donors with their sensor and in-camera extensions (PRNU, CFA, channel gains,
sharpening), and the trace-distance heuristic (:func:`_trace`, :func:`_trace_distance`) that
keeps the sources of a sample apart by the wanted contrast.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from training.synth_common import _loguniform, _r
from training.synth_ops import _CFA_PATTERNS

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
