"""Pure functions between SAFIRE outputs and Label Studio JSON (no I/O, no model).

Pre-annotation (:func:`partition_to_prediction`), from a :class:`safire.partition.PartitionResult`:

* **multi mode** (one BrushLabels label per source): source 0, the largest (the host), gets the
  spec's host label (the label containing "host", else the first); sources 1, 2, ... get the other
  labels in config order. When the image has more sources than labels, the extra (smallest)
  sources are **merged into the last label**. One ``brushlabels`` region per label used, host
  first. An image partitioned into a single source is authentic: its one region is the whole
  image with the host label, so a multi-source task never comes back empty and the annotator
  sees the model's answer ("one source") rather than nothing.
* **binary mode**: one region, the union of sources >= 1, labelled with the spec's forged label;
  an authentic image (one source) gives an empty result list.

Masks are cleaned (:func:`ml_backend.rle.clean_mask`: specks below the config's ``safire_min_area``
fraction removed, small holes filled) and encoded as Label Studio brush RLE with values 0/255 at the
original image size. A partition computed at a lower working resolution (the backend bounds the
memory of per-source maps that way for large images or many sources) is cleaned there and each
region's mask is scaled to the original size by nearest neighbour only when it is encoded
(``out_hw``), one region at a time. A region's ``score`` is the **mean probability of its label over its
pixels** (for a merged label, the summed probability of its sources; in binary mode
``1 - p(host)``). The prediction's ``score`` is the image-level forgery score of the partition
(0 = authentic, 1 = forged), so Label Studio can sort tasks by it; with
``prediction_score="uncertainty"`` (``SAFIRE_PREDICTION_SCORE``) it is the partition's
uncertainty instead (:func:`safire.partition.partition_uncertainty`; 1 = the model is unsure), so
the Data Manager's Prediction score column puts the tasks worth labelling next first. Every
pre-annotation also carries the uncertainty as an extra top-level ``uncertainty`` key (Label
Studio ignores it; API callers and the bulk pre-annotation's offline output see it).

Provenance (:func:`attach_provenance`, :func:`find_provenance`; ``docs/provenance.md``): a
prediction carries its :mod:`safire.provenance` record three ways, because Label Studio keeps only
``result``, ``score`` and ``model_version`` of what a backend returns: the top-level
``provenance`` (for direct API callers; Label Studio drops it), ``meta.safire_provenance`` (plus a
one-line ``meta.text``) on every brush region (kept: Label Studio stores ``result`` as sent), and,
when the label config has ``<TextArea name="safire_provenance">``, a ``textarea`` result holding
the summary line and the record as JSON (kept, and copied into the annotation made from the
prediction; it also exists when an authentic image has no region).

Interactive clicks (:func:`parse_context` then :func:`click_to_prediction`): smart keypoints and
rectangles from ``params.context.result`` (percent coordinates; polarity from the item's top-level
``is_positive``, else ``value.positive``, default positive; Alt+click gives a negative keypoint).
All keypoints become the point prompt; the last positive rectangle becomes the box (rotated
rectangles use their bounding box; negative rectangles are ignored). The answer is one
``brushlabels`` region labelled like the clicked keypoint/rectangle, thresholded at the config's
``safire_threshold``; mask components under a positive click are kept even when smaller than the
speck limit. Its region score is the mean probability over the mask; the prediction score is the
decoder's confidence, clipped to [0, 1].
"""

from __future__ import annotations

import json
import math
import secrets
import string
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .label_config import LabelConfigSpec
from .rle import clean_mask, encode_rle
from .settings_parsers import PREDICTION_SCORES

__all__ = [
    "PROVENANCE_KEY",
    "attach_provenance",
    "find_provenance",
    "ClickPrompt",
    "ContextError",
    "brush_region",
    "click_to_prediction",
    "empty_prediction",
    "new_region_id",
    "parse_context",
    "partition_to_prediction",
    "source_labels",
    "upsample_nearest",
]

_ID_CHARS = string.ascii_letters + string.digits
PROVENANCE_KEY = "safire_provenance"  # key under a region's "meta"; also the TextArea's name


class ContextError(ValueError):
    """``params.context`` holds no usable keypoint or rectangle."""


def new_region_id() -> str:
    """A 10-character alphanumeric region id, like the ids the Label Studio frontend creates."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(10))


def empty_prediction(model_version: str, score: float = 0.0, **extra: Any) -> Dict[str, Any]:
    """``{"result": [], "score": score, "model_version": ...}`` (extra keys are ignored by Label Studio)."""
    return {"result": [], "score": float(score), "model_version": str(model_version), **extra}


def brush_region(mask: np.ndarray, label: str, spec: LabelConfigSpec, score: Optional[float] = None,
                 region_id: Optional[str] = None) -> Dict[str, Any]:
    """One ``brushlabels`` region for an HxW mask (encoded as 0/255 RLE at the mask's size)."""
    h, w = mask.shape
    region: Dict[str, Any] = {
        "id": region_id or new_region_id(),
        "from_name": spec.brush_name,
        "to_name": spec.image_name,
        "type": "brushlabels",
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": [label]},
        "readonly": False,
    }
    if score is not None:
        region["score"] = round(float(np.clip(score, 0.0, 1.0)), 4)
    return region


# ------------------------------------------------------------------------------------------------
# pre-annotation
# ------------------------------------------------------------------------------------------------


def source_labels(spec: LabelConfigSpec, num_sources: int) -> List[str]:
    """Label of each source 0..K-1 in multi mode (host first, extras merged into the last label)."""
    host = spec.host_label or spec.brush_labels[0]
    ordered = [host] + [lab for lab in spec.brush_labels if lab != host]
    return [ordered[min(k, len(ordered) - 1)] for k in range(num_sources)]


def _min_area(spec: LabelConfigSpec, min_area: Optional[float]) -> float:
    return float(spec.min_area if min_area is None else min_area)


def upsample_nearest(mask: np.ndarray, out_hw: Tuple[int, int]) -> np.ndarray:
    """An hxw mask at ``out_hw`` = (H, W) by nearest neighbour with half-pixel centres."""
    h, w = mask.shape
    H, W = int(out_hw[0]), int(out_hw[1])
    if (h, w) == (H, W):
        return mask
    rows = np.minimum((2 * np.arange(H, dtype=np.int64) + 1) * h // (2 * H), h - 1)
    cols = np.minimum((2 * np.arange(W, dtype=np.int64) + 1) * w // (2 * W), w - 1)
    return mask[rows][:, cols]


def partition_to_prediction(result: Any, spec: LabelConfigSpec, model_version: str, *,
                            min_area: Optional[float] = None, include_host: bool = True,
                            out_hw: Optional[Tuple[int, int]] = None,
                            prediction_score: str = "forgery") -> Dict[str, Any]:
    """Label Studio prediction for a partition (see the module docstring for the rules).

    Args:
        result: a :class:`safire.partition.PartitionResult` (labels hxw uint8, probs Kxhxw,
            num_sources, score), at the original image size or at a working resolution.
        spec: the project's parsed label config.
        model_version: the version serving the project.
        min_area: speck limit as a fraction of the image (default: the config's ``safire_min_area``).
        include_host: multi mode, emit the host's region too (default True).
        out_hw: the original image size (H, W) when ``result`` is at a working resolution; masks
            are cleaned at the result's resolution and scaled up (nearest) for encoding.
        prediction_score: what the prediction's ``score`` holds: ``"forgery"`` (``result.score``)
            or ``"uncertainty"`` (``result.uncertainty``). The prediction has an ``uncertainty``
            key whenever ``result`` has one.
    """
    if prediction_score not in PREDICTION_SCORES:
        raise ValueError(f"prediction_score must be one of {', '.join(PREDICTION_SCORES)}, got {prediction_score!r}")
    labels = np.asarray(result.labels)
    probs = np.asarray(result.probs, dtype=np.float32)
    k = int(result.num_sources)
    u = getattr(result, "uncertainty", None)
    if u is None and prediction_score == "uncertainty":
        raise ValueError("prediction_score='uncertainty' needs a partition with an uncertainty")
    extra: Dict[str, Any] = {} if u is None else {"uncertainty": round(float(np.clip(u, 0.0, 1.0)), 6)}
    score = float(np.clip(result.score if prediction_score == "forgery" else u, 0.0, 1.0))
    if labels.ndim != 2:
        raise ValueError(f"partition labels must be HxW, got shape {labels.shape}")
    if k <= 1 and (spec.mode == "binary" or not include_host):
        return empty_prediction(model_version, score, **extra)
    area = _min_area(spec, min_area)
    regions: List[Dict[str, Any]] = []
    if spec.mode == "binary":
        raw = labels >= 1
        mask = clean_mask(raw, min_area_fraction=area)
        if mask.any():
            p_forged = 1.0 - probs[0] if probs.shape[0] == k else raw.astype(np.float32)
            score_ = float(p_forged[mask].mean())
            del p_forged, raw
            regions.append(brush_region(upsample_nearest(mask, out_hw) if out_hw else mask,
                                        spec.forged_label or spec.brush_labels[0], spec, score_))
        return {"result": regions, "score": score, "model_version": str(model_version), **extra}

    names = source_labels(spec, k)
    for label in dict.fromkeys(names):  # host first, then config order
        members = [s for s in range(k) if names[s] == label]
        if not include_host and members == [0]:
            continue
        raw = np.isin(labels, members)
        mask = clean_mask(raw, min_area_fraction=area)
        if not mask.any():
            continue
        p = probs[members].sum(axis=0) if probs.shape[0] == k else raw.astype(np.float32)
        score_ = float(p[mask].mean())
        del p, raw
        regions.append(brush_region(upsample_nearest(mask, out_hw) if out_hw else mask, label, spec, score_))
    return {"result": regions, "score": score, "model_version": str(model_version), **extra}


# ------------------------------------------------------------------------------------------------
# provenance
# ------------------------------------------------------------------------------------------------


def attach_provenance(prediction: Dict[str, Any], record: Mapping[str, Any],
                      spec: Optional[LabelConfigSpec] = None, *, summary: Optional[str] = None) -> Dict[str, Any]:
    """Add a :mod:`safire.provenance` record to a Label Studio prediction (in place; returned).

    - ``prediction["provenance"]``: the record (seen by API callers; Label Studio does not store it);
    - every ``brushlabels`` region: ``meta = {"text": [summary], "safire_provenance": record}``
      (stored with the prediction's ``result``);
    - with ``spec.provenance_name`` (``<TextArea name="safire_provenance">``): one ``textarea``
      result with ``[summary, json(record)]``, also for an empty (authentic) prediction.

    The bulk pre-annotation and the backend both call this, so every path writes the same fields.
    """
    from safire.provenance import provenance_summary

    rec = dict(record)
    line = summary or provenance_summary(rec)
    prediction["provenance"] = rec
    result = prediction.setdefault("result", [])
    for region in result:
        if isinstance(region, dict) and region.get("type") == "brushlabels":
            meta = dict(region.get("meta") or {})
            meta["text"] = [line]
            meta[PROVENANCE_KEY] = rec
            region["meta"] = meta
    if spec is not None and spec.provenance_name:
        result.append({
            "id": new_region_id(),
            "from_name": spec.provenance_name,
            "to_name": spec.image_name,
            "type": "textarea",
            "value": {"text": [line, json.dumps(rec, separators=(",", ":"), sort_keys=True)]},
            "readonly": True,
        })
    return prediction


def _record_from(obj: Any) -> Optional[Dict[str, Any]]:
    if isinstance(obj, Mapping) and str(obj.get("schema", "")).startswith("safire-provenance/"):
        return dict(obj)
    return None


def find_provenance(item: Any) -> Optional[Dict[str, Any]]:
    """The provenance record held by a prediction or annotation (as stored or exported by Label
    Studio), by ``safire predict``'s ``NAME.json``, or a bare record; None if it holds none.

    Looks at the top-level ``provenance``, then the regions' ``meta.safire_provenance``, then a
    ``textarea`` result whose texts contain the record as JSON.
    """
    if not isinstance(item, Mapping):
        return None
    rec = _record_from(item) or _record_from(item.get("provenance"))
    if rec:
        return rec
    result = item.get("result")
    if isinstance(result, str):  # some exports keep result as a JSON string
        try:
            result = json.loads(result)
        except ValueError:
            result = None
    for region in result if isinstance(result, list) else []:
        if not isinstance(region, Mapping):
            continue
        rec = _record_from((region.get("meta") or {}).get(PROVENANCE_KEY) if isinstance(region.get("meta"), Mapping)
                           else None)
        if rec:
            return rec
        if str(region.get("type", "")).lower() == "textarea":
            for text in (region.get("value") or {}).get("text") or []:
                if isinstance(text, str) and text.startswith("{") and "safire-provenance/" in text:
                    try:
                        rec = _record_from(json.loads(text))
                    except ValueError:
                        rec = None
                    if rec:
                        return rec
    return None


# ------------------------------------------------------------------------------------------------
# interactive
# ------------------------------------------------------------------------------------------------


@dataclass
class ClickPrompt:
    """Prompts parsed from a smart-tool context, in original-image pixels.

    points: Nx2 float32 (x, y); labels: N int (1 positive, 0 negative); box: (x0, y0, x1, y1) or
    None; label: the brush label the answer gets; kind: type of the context items used.
    """

    points: np.ndarray
    labels: np.ndarray
    box: Optional[Tuple[float, float, float, float]]
    label: str
    width: int
    height: int
    kind: str = "keypointlabels"

    @property
    def positive_points(self) -> np.ndarray:
        return self.points[self.labels == 1]


def _truth(v: Any, default: bool = True) -> bool:
    if v is None:
        return default
    if isinstance(v, str):
        return v.strip().lower() not in ("false", "0", "no", "off", "")
    return bool(v)


def _num(v: Any, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ContextError(f"context item has a non-numeric {what}: {v!r}") from None
    if not math.isfinite(f):
        raise ContextError(f"context item has a non-finite {what}")
    return f


def _item_label(item: Mapping[str, Any]) -> Optional[str]:
    value = item.get("value") or {}
    for key in (str(item.get("type") or "").lower(), "keypointlabels", "rectanglelabels", "labels"):
        labs = value.get(key)
        if isinstance(labs, list) and labs:
            return str(labs[0])
    return None


def _choose_label(found: Optional[str], spec: LabelConfigSpec) -> str:
    if found is not None and found in spec.brush_labels:
        return found
    if spec.mode == "binary":
        return spec.forged_label or spec.brush_labels[0]
    # a label the brush tag does not know (setup rejects such configs): the first foreign source
    return spec.brush_labels[1] if len(spec.brush_labels) > 1 else spec.brush_labels[0]


def parse_context(context: Any, spec: LabelConfigSpec, width: Optional[int] = None,
                  height: Optional[int] = None) -> ClickPrompt:
    """Points, box and label from ``params.context`` (a dict with ``result`` or the list itself).

    ``width``/``height`` are the image's real size (default: the items' ``original_width/height``).
    Raises :class:`ContextError` when there is no keypoint or rectangle for the spec's image.
    """
    items = context.get("result") if isinstance(context, Mapping) else context
    if not isinstance(items, list) or not items:
        raise ContextError("the context has no result items (no smart keypoint or rectangle)")
    points: List[Tuple[float, float]] = []
    plabels: List[int] = []
    box: Optional[Tuple[float, float, float, float]] = None
    label: Optional[str] = None
    first_label: Optional[str] = None
    kinds: List[str] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        kind = str(item.get("type") or "").lower()
        if kind not in ("keypointlabels", "keypoint", "rectanglelabels", "rectangle"):
            continue
        to_name = item.get("to_name")
        if to_name is not None and to_name != spec.image_name:
            continue
        value = item.get("value")
        if not isinstance(value, Mapping):
            continue
        W = int(width or _num(item.get("original_width"), "original_width"))
        H = int(height or _num(item.get("original_height"), "original_height"))
        if W <= 0 or H <= 0:
            raise ContextError("context item has no usable original_width/original_height")
        positive = _truth(item.get("is_positive"), _truth(value.get("positive"), True))
        lab = _item_label(item)
        if lab is not None and first_label is None:
            first_label = lab
        if kind.startswith("keypoint"):
            x = _num(value.get("x"), "x") * W / 100.0
            y = _num(value.get("y"), "y") * H / 100.0
            points.append((min(max(x, 0.0), W - 1.0), min(max(y, 0.0), H - 1.0)))
            plabels.append(1 if positive else 0)
        else:
            if not positive:
                continue
            x = _num(value.get("x"), "x") * W / 100.0
            y = _num(value.get("y"), "y") * H / 100.0
            w = _num(value.get("width"), "width") * W / 100.0
            h = _num(value.get("height"), "height") * H / 100.0
            rot = math.radians(_num(value.get("rotation") or 0.0, "rotation"))
            c, s = math.cos(rot), math.sin(rot)
            corners = [(x + dx * c - dy * s, y + dx * s + dy * c) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
            xs = [min(max(px, 0.0), W - 1.0) for px, _ in corners]
            ys = [min(max(py, 0.0), H - 1.0) for _, py in corners]
            box = (min(xs), min(ys), max(xs), max(ys))
        kinds.append(kind)
        if positive and lab is not None and label is None:
            label = lab
        width, height = W, H
    if not points and box is None:
        raise ContextError("the context has no keypoint or rectangle for image "
                           f"{spec.image_name!r} (brush strokes never trigger predictions)")
    return ClickPrompt(
        points=np.asarray(points, dtype=np.float32).reshape(-1, 2),
        labels=np.asarray(plabels, dtype=np.int64),
        box=box,
        label=_choose_label(label or first_label, spec),
        width=int(width),
        height=int(height),
        kind="rectanglelabels" if (box is not None and not points) else "keypointlabels",
    )


def _keep_clicked(raw: np.ndarray, cleaned: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Add back the raw components under positive clicks that cleaning removed."""
    if not len(points):
        return cleaned
    h, w = raw.shape
    xs = np.clip(np.round(points[:, 0]).astype(int), 0, w - 1)
    ys = np.clip(np.round(points[:, 1]).astype(int), 0, h - 1)
    hit = raw[ys, xs] & ~cleaned[ys, xs]
    if not hit.any():
        return cleaned
    from scipy import ndimage

    comp, _ = ndimage.label(raw, structure=np.ones((3, 3), dtype=bool))
    ids = np.unique(comp[ys[hit], xs[hit]])
    return cleaned | np.isin(comp, ids[ids > 0])


def click_to_prediction(pred: Any, prompt: ClickPrompt, spec: LabelConfigSpec, model_version: str, *,
                        threshold: Optional[float] = None, min_area: Optional[float] = None) -> Dict[str, Any]:
    """The interactive answer: one brushlabels region labelled like the clicked keypoint/rectangle.

    ``pred`` is a :class:`safire.predictor.MaskPrediction` (prob HxW at the original size, score).
    An empty mask gives an empty result list.
    """
    prob = np.asarray(pred.prob, dtype=np.float32)
    thr = float(spec.threshold if threshold is None else threshold)
    raw = prob > thr
    mask = clean_mask(raw, min_area_fraction=_min_area(spec, min_area))
    mask = _keep_clicked(raw, mask, prompt.positive_points)
    confidence = float(np.clip(getattr(pred, "score", 0.0), 0.0, 1.0))
    if not mask.any():
        return empty_prediction(model_version, confidence)
    region = brush_region(mask, prompt.label, spec, float(prob[mask].mean()))
    return {"result": [region], "score": confidence, "model_version": str(model_version)}


def task_image_url(task: Mapping[str, Any], spec: LabelConfigSpec) -> str:
    """The image URL of a task (``task["data"][<Image value key>]``), with a clear error."""
    data = task.get("data") if isinstance(task, Mapping) else None
    if not isinstance(data, Mapping):
        raise ValueError("task has no 'data' object")
    url = data.get(spec.image_value)
    if not isinstance(url, str) or not url.strip():
        keys = ", ".join(sorted(map(str, data.keys()))) or "none"
        raise ValueError(f"task data has no {spec.image_value!r} image URL (the <Image value=\"${spec.image_value}\"> "
                         f"of the label config); task data keys: {keys}")
    return url.strip()


def validate_regions(prediction: Mapping[str, Any], spec: LabelConfigSpec) -> List[str]:
    """Cheap structural checks of a prediction against the spec (used by tests and debug logs)."""
    problems: List[str] = []
    for i, r in enumerate(prediction.get("result", [])):
        if r.get("from_name") != spec.brush_name or r.get("to_name") != spec.image_name:
            problems.append(f"region {i}: from_name/to_name {r.get('from_name')}/{r.get('to_name')} do not match")
        labs: Sequence[str] = (r.get("value") or {}).get("brushlabels") or []
        if not labs or any(lab not in spec.brush_labels for lab in labs):
            problems.append(f"region {i}: labels {labs} are not BrushLabels labels")
    return problems
