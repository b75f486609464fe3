"""Label Studio annotations -> source masks: which annotation of a task is exported, how its
result is parsed, and how brush regions become a multi-source or binary source map.

The rules are documented in ``docs/dataset-format.md`` ("Label Studio export rules") and in
:class:`ml_backend.export_rules.ExportRules`; :mod:`ml_backend.export` writes the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ml_backend.label_config import LabelConfigSpec
from ml_backend.label_words import infer_mode, is_authentic_label, is_forged_label
from ml_backend.lsclient import LabelStudioError
from ml_backend.rle import RLEError, decode_rle

if TYPE_CHECKING:
    from ml_backend.export_rules import ExportRules

__all__ = ["ExportError", "IGNORE", "UNLABELLED", "select_annotation"]

IGNORE = 255
UNLABELLED = "(unlabelled)"

# the export's errors and its Label Studio client's are one class (``ml_backend.export.ExportError``)
ExportError = LabelStudioError


class _Skip(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


# ----------------------------------------------------------------------------------------
# annotation selection and parsing
# ----------------------------------------------------------------------------------------


def _ts(a: Dict[str, Any]) -> Tuple[str, str, int]:
    # ISO-8601 strings from LS compare correctly as strings
    aid = a.get("id")
    return (str(a.get("updated_at") or ""), str(a.get("created_at") or ""),
            aid if isinstance(aid, int) else 0)


def select_annotation(task: Dict[str, Any], prefer_ground_truth: bool = True
                      ) -> Tuple[Dict[str, Any], str]:
    """Pick the annotation to export: ``(annotation, why)``; raises ``_Skip``.

    Cancelled (skipped) annotations never count. Among the rest a ``ground_truth`` one wins
    (if ``prefer_ground_truth``), else the most recently updated (``updated_at``, then
    ``created_at``, then ``id``).
    """
    anns = [a for a in (task.get("annotations") or []) if isinstance(a, dict)]
    if not anns:
        raise _Skip("no_annotations", "task has no annotations")
    live = [a for a in anns if not a.get("was_cancelled")]
    if not live:
        raise _Skip("cancelled", f"all {len(anns)} annotation(s) cancelled (task skipped in Label Studio)")
    if prefer_ground_truth:
        gt = [a for a in live if a.get("ground_truth")]
        if gt:
            return max(gt, key=_ts), "ground_truth"
    return max(live, key=_ts), ("most_recent" if len(live) > 1 else "only")


@dataclass
class _Region:
    id: Optional[str]
    label: Optional[str]
    rle: List[int]
    width: Optional[int]
    height: Optional[int]
    rotation: float


@dataclass
class _Parsed:
    regions: List[_Region]
    verdicts: List[str]  # image-level choice values
    region_choices: Dict[str, List[str]]  # region id -> per-region choice values
    ignored: Dict[str, int]  # result types not used (keypoints, rectangles, ...)
    warnings: List[str]


def _parse_result(result: Sequence[Dict[str, Any]], spec: Optional[LabelConfigSpec]) -> _Parsed:
    regions: List[_Region] = []
    ignored: Dict[str, int] = {}
    warnings: List[str] = []
    choices_items = []
    for r in result or []:
        if not isinstance(r, dict):
            continue
        rtype = str(r.get("type") or "").lower()
        value = r.get("value") or {}
        if rtype == "brushlabels" and (spec is None or r.get("from_name") in (None, spec.brush_name)):
            fmt = value.get("format")
            if fmt not in (None, "rle") or "rle" not in value:
                warnings.append(f"region {r.get('id')}: unsupported brush format {fmt!r}, ignored")
                continue
            labels = value.get("brushlabels") or value.get("labels") or []
            if len(labels) > 1:
                warnings.append(f"region {r.get('id')}: several labels {labels}, using {labels[0]!r}")
            regions.append(_Region(
                id=r.get("id"),
                label=labels[0] if labels else None,
                rle=value["rle"],
                width=r.get("original_width"),
                height=r.get("original_height"),
                rotation=float(r.get("image_rotation") or 0),
            ))
        elif rtype == "choices":
            choices_items.append(r)
        else:
            key = rtype or "unknown"
            if rtype == "brushlabels":
                key = f"brushlabels:{r.get('from_name')}"
            ignored[key] = ignored.get(key, 0) + 1

    region_ids = {reg.id for reg in regions if reg.id}
    per_region_tags = {c.name for c in spec.region_choices} if spec else set()
    image_tags = {c.name for c in spec.image_choices} if spec else set()
    verdicts: List[str] = []
    region_choices: Dict[str, List[str]] = {}
    for r in choices_items:
        vals = [str(v) for v in ((r.get("value") or {}).get("choices") or [])]
        name = r.get("from_name")
        per_region = name in per_region_tags if spec else r.get("id") in region_ids
        if spec and name not in per_region_tags and name not in image_tags:
            per_region = r.get("id") in region_ids
        if per_region:
            if r.get("id") in region_ids:
                region_choices.setdefault(r["id"], []).extend(vals)
        else:
            verdicts.extend(vals)
    return _Parsed(regions, verdicts, region_choices, ignored, warnings)


# ----------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------


def _region_masks(parsed: _Parsed, h: int, w: int) -> List[Tuple[_Region, np.ndarray]]:
    out = []
    for reg in parsed.regions:
        rh, rw = reg.height or h, reg.width or w
        if (rh, rw) != (h, w):
            raise _Skip("size_mismatch", f"brush region {reg.id} is {rw}x{rh} but the image is {w}x{h}")
        try:
            m = decode_rle(reg.rle, h, w) > 0
        except (RLEError, ValueError, TypeError) as exc:
            raise _Skip("bad_rle", f"brush region {reg.id}: cannot decode RLE ({exc})") from None
        out.append((reg, m))
    return out


def _manipulation(values: List[str]) -> Union[None, str, List[str]]:
    vals = list(dict.fromkeys(values))
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else vals


def _build_multi(masks, parsed: _Parsed, labels: List[str], host_label: str,
                 rules: ExportRules, h: int, w: int):
    raw = np.full((h, w), -1, dtype=np.int16)
    n_regions: Dict[int, int] = {}
    manips: Dict[int, List[str]] = {}
    for reg, m in masks:
        if reg.label is None:
            parsed.warnings.append(f"region {reg.id}: brush region without a label, ignored")
            continue
        if reg.label not in labels:
            parsed.warnings.append(f"region {reg.id}: label {reg.label!r} is not in the config, ignored")
            continue
        i = labels.index(reg.label)
        if rules.overlap == "last":
            raw[m] = i
        else:
            raw[m] = np.maximum(raw[m], i)
        n_regions[i] = n_regions.get(i, 0) + 1
        manips.setdefault(i, []).extend(parsed.region_choices.get(reg.id or "", []))
    painted = raw >= 0
    host_i = labels.index(host_label)
    if not painted.any():
        return None
    unlabelled_px = int((~painted).sum())
    if rules.unlabelled == "host":
        raw[~painted] = host_i
    total = float(h * w)
    present = [i for i in range(len(labels)) if (raw == i).any()]
    areas = {i: int((raw == i).sum()) for i in present}
    if rules.reindex_by_area:
        order = sorted(present, key=lambda i: (-areas[i], i))
    else:
        order = sorted(present)
    lut = np.full(len(labels) + 1, IGNORE, dtype=np.uint8)  # raw -1 -> last entry -> 255
    for new_i, old_i in enumerate(order):
        lut[old_i] = new_i
    sources = lut[raw]  # -1 indexes the last element (255)
    src_meta = []
    for new_i, old_i in enumerate(order):
        entry: Dict[str, Any] = {
            "index": new_i,
            "role": "host" if new_i == 0 else "source",
            "label": labels[old_i],
            "area": round(areas[old_i] / total, 6),
            "regions": n_regions.get(old_i, 0),
        }
        if old_i == host_i and rules.unlabelled == "host" and unlabelled_px:
            entry["unlabelled_area"] = round(unlabelled_px / total, 6)
        man = _manipulation(manips.get(old_i, []))
        if man is not None:
            entry["manipulation"] = man
        src_meta.append(entry)
    extra = {}
    if rules.unlabelled == "ignore" and unlabelled_px:
        extra["ignored_area"] = round(unlabelled_px / total, 6)
    return sources, src_meta, extra


def _build_binary(masks, parsed: _Parsed, forged_label: str, authentic_label: Optional[str],
                  h: int, w: int):
    forged = np.zeros((h, w), dtype=bool)
    n_forged = 0
    manips: List[str] = []
    for reg, m in masks:
        label = reg.label
        if label is None or label == forged_label or (label != authentic_label and is_forged_label(label)):
            forged |= m
            n_forged += 1
            manips.extend(parsed.region_choices.get(reg.id or "", []))
        elif label == authentic_label or is_authentic_label(label):
            continue  # explicit authentic paint: unpainted is authentic anyway, forged wins
        else:
            parsed.warnings.append(f"region {reg.id}: label {label!r} is not in the config, ignored")
    total = float(h * w)
    fa = int(forged.sum())
    if fa == 0 and not any(m.any() for _, m in masks):
        return None  # nothing painted at all
    if fa == h * w:
        raise _Skip("all_forged", "the whole image is painted forged (no authentic host left)")
    sources = forged.astype(np.uint8)
    src_meta = [{"index": 0, "role": "host", "label": authentic_label or UNLABELLED,
                 "area": round((h * w - fa) / total, 6)}]
    if fa:
        entry = {"index": 1, "role": "forged", "label": forged_label, "area": round(fa / total, 6),
                 "regions": n_forged}
        man = _manipulation(manips)
        if man is not None:
            entry["manipulation"] = man
        src_meta.append(entry)
    return sources, src_meta, {}


def _resolve_labels(tasks: Sequence[Dict[str, Any]], spec: Optional[LabelConfigSpec],
                    labels: Optional[Sequence[str]]) -> Tuple[str, List[str], Optional[str], Optional[str], Optional[str]]:
    """(mode, label order, host label, forged label, authentic label)."""
    if spec is not None:
        order = list(spec.brush_labels)
        if spec.mode == "binary":
            return "binary", order, None, spec.forged_label, spec.authentic_label
        return "multi", order, spec.host_label, None, None
    if labels:
        order = list(labels)
    else:  # infer from the data, in order of first appearance
        seen: Dict[str, None] = {}
        for t in tasks:
            for a in t.get("annotations") or []:
                for r in a.get("result") or []:
                    if str(r.get("type", "")).lower() == "brushlabels":
                        for lab in (r.get("value") or {}).get("brushlabels") or []:
                            seen.setdefault(lab, None)
        order = list(seen)
    mode = infer_mode(order) if order else "binary"
    if mode == "binary":
        forged = next((x for x in order if is_forged_label(x)), None)
        if forged is None:
            forged = next((x for x in order if not is_authentic_label(x)), order[0] if order else "Forged")
        auth = next((x for x in order if x != forged and is_authentic_label(x)), None)
        return "binary", order or [forged], None, forged, auth
    host = next((x for x in order if "host" in x.lower()), order[0])
    return "multi", order, host, None, None
