"""The sample generator of ``training.synth``: :func:`generate_sample`.

Chooses the size, the host view and its camera history, the foreign kinds and their regions,
plans every foreign source within the difficulty's trace-distance window, renders them in paint
order, applies the global post-processing chain and re-indexes the sources by decreasing area.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from training.photos import PhotoPool
from training.synth_camera import _camera_ops, _json_trace, _trace, _trace_distance
from training.synth_common import (
    _S_CAMERA,
    _S_MAIN,
    _S_PASTE,
    _S_POST,
    _S_SHAPES,
    DIFFICULTIES,
    MANIPULATIONS,
    SYNTH_VERSION,
    Sample,
    _r,
    _rng,
    sample_name,
)
from training.synth_fill import render_fill
from training.synth_ops import _apply_ops, _gauss, _pushpull_fill, _to_u8
from training.synth_plan import _plan_source
from training.synth_post import _global_chain
from training.synth_recolour import render_recolour
from training.synth_render import (
    _jitter,
    _patch_rect,
    _photo_view,
    _render_copy_move,
    _render_cutout,
    _render_generative,
    _render_moved,
    _render_removal,
)
from training.synth_shapes import _layout, _Shaper

# Wanted window of the smallest trace distance between a new source and the earlier ones, per
# difficulty (see _trace_distance): hard samples have subtle but present differences.
_DISTANCE_WINDOW = {"easy": (1.5, math.inf), "medium": (0.8, 2.5), "hard": (0.3, 1.0)}


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
