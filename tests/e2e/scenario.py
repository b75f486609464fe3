"""Data and checks of the end-to-end suite: synthetic images with known sources, label configs as
Label Studio sees them, decoding of brush regions, permuted mIoU against the truth and the floor.

Everything about masks is decoded with the project's own ``ml_backend.rle`` and scored with
``safire.metrics`` so the suite checks the real pipeline, not a copy of it.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

from ml_backend.rle import decode_rle, encode_rle
from safire.metrics import permuted_miou

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "label_config"


# ------------------------------------------------------------------------------------------------
# synthetic samples
# ------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """A synthetic image with its true sources (HxW uint8, 0 = host = largest)."""

    name: str
    image_path: Path
    sources: np.ndarray
    num_sources: int
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.sources.shape[0])

    @property
    def width(self) -> int:
        return int(self.sources.shape[1])

    @property
    def forged(self) -> bool:
        return self.num_sources > 1


def make_samples(out_dir: Path, num_sources: Sequence[int], *, seed: int = 2026, start: int = 0,
                 size_range: Tuple[int, int] = (256, 352), difficulty: str = "easy") -> List[Sample]:
    """Generate samples with ``training.synth`` from the held-out ("val") photos, as PNG files."""
    from training.photos import PhotoPool
    from training.synth import generate_sample

    out_dir.mkdir(parents=True, exist_ok=True)
    pool = PhotoPool.load("val")
    samples = []
    for i, k in enumerate(num_sources):
        s = generate_sample(start + i, seed, int(k), pool, size_range, split="val", difficulty=difficulty)
        name = f"e2e_{start + i:02d}_k{k}"
        path = out_dir / f"{name}.png"
        Image.fromarray(s.image).save(path, format="PNG", compress_level=1)
        samples.append(Sample(name, path, s.sources.copy(), int(k), s.meta))
    return samples


def interior_point(mask: np.ndarray) -> Tuple[int, int]:
    """(x, y) of the pixel of ``mask`` farthest from its boundary."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


# ------------------------------------------------------------------------------------------------
# label configs (read independently of ml_backend.label_config)
# ------------------------------------------------------------------------------------------------


@dataclass
class ConfigView:
    xml: str
    image_name: str
    brush_name: str
    brush_labels: List[str]
    keypoint_name: Optional[str]
    keypoint_labels: List[str]
    rectangle_name: Optional[str] = None

    @property
    def binary(self) -> bool:
        return len(self.brush_labels) <= 2 and any("forged" in x.lower() for x in self.brush_labels)

    @property
    def host_label(self) -> str:
        return next((x for x in self.brush_labels if "host" in x.lower()), self.brush_labels[0])


def read_config(name: str, sources: Optional[str] = None) -> ConfigView:
    """``label_config/<name>`` as shipped; ``sources`` replaces the BrushLabels ``safire_sources`` value."""
    xml = (CONFIG_DIR / name).read_text()
    if sources is not None:
        new = re.sub(r'safire_sources="[^"]*"', f'safire_sources="{sources}"', xml, count=1)
        if new == xml:
            raise AssertionError(f"{name} has no safire_sources attribute to replace")
        xml = new
    root = ET.fromstring(xml)
    image = root.find(".//Image")
    brush = root.find(".//BrushLabels")
    kp = root.find(".//KeyPointLabels")
    rect = root.find(".//RectangleLabels")
    assert image is not None and brush is not None, f"{name}: no Image/BrushLabels tag"
    return ConfigView(
        xml=xml, image_name=image.get("name"), brush_name=brush.get("name"),
        brush_labels=[el.get("value") for el in brush.findall("Label")],
        keypoint_name=kp.get("name") if kp is not None else None,
        keypoint_labels=[el.get("value") for el in kp.findall("Label")] if kp is not None else [],
        rectangle_name=rect.get("name") if rect is not None else None)


# ------------------------------------------------------------------------------------------------
# regions <-> masks
# ------------------------------------------------------------------------------------------------


_INTERFACES: Dict[str, Any] = {}


def ls_validation_errors(prediction: Mapping[str, Any], xml: str) -> List[str]:
    """Label Studio's own check of a prediction against the config (label-studio-sdk's LabelInterface).

    LS 1.23.2 does not validate what an ML backend returns ("Skipping prediction validation" in its
    log): a region with a wrong from_name or label is stored and then silently not shown."""
    from label_studio_sdk.label_interface import LabelInterface

    li = _INTERFACES.get(xml)
    if li is None:
        li = _INTERFACES[xml] = LabelInterface(xml)
    errors = li.validate_prediction(dict(prediction), return_errors=True)
    return [e[:300] for e in (errors or [])]


def region_masks(result: Sequence[Mapping[str, Any]], height: int, width: int) -> List[Tuple[str, np.ndarray]]:
    """(label, HxW bool) of every brushlabels region, decoded with ml_backend.rle at the given size."""
    out = []
    for r in result:
        if r.get("type") != "brushlabels":
            continue
        labels = r["value"]["brushlabels"]
        out.append((labels[0], decode_rle(r["value"]["rle"], height, width) > 0))
    return out


def label_map(result: Sequence[Mapping[str, Any]], cfg: ConfigView, height: int, width: int) -> np.ndarray:
    """HxW source index map of a prediction: unpainted pixels are the host (index 0); multi mode: the
    index of a label is its position among the BrushLabels labels (host first); binary mode: 1 = forged."""
    out = np.zeros((height, width), np.int64)
    if cfg.binary:
        for label, m in region_masks(result, height, width):
            if "forged" in label.lower():
                out[m] = 1
        return out
    order = [cfg.host_label] + [x for x in cfg.brush_labels if x != cfg.host_label]
    for label, m in region_masks(result, height, width):
        out[m] = order.index(label)
    return out


def truth_for(cfg: ConfigView, sample: Sample) -> np.ndarray:
    return (sample.sources >= 1).astype(np.int64) if cfg.binary else sample.sources.astype(np.int64)


def annotation_result(cfg: ConfigView, sample: Sample, paint_host: bool = False) -> List[Dict[str, Any]]:
    """The true sources as an annotation ``result``: one brush region per foreign source (the host too
    with ``paint_host``), encoded with ml_backend.rle; an authentic image gets the "authentic" verdict."""
    h, w = sample.height, sample.width

    def brush(mask: np.ndarray, label: str, rid: str) -> Dict[str, Any]:
        return {"id": rid, "from_name": cfg.brush_name, "to_name": cfg.image_name, "type": "brushlabels",
                "original_width": w, "original_height": h, "image_rotation": 0,
                "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": [label]}}

    if not sample.forged:
        return [{"id": "verdict1", "from_name": "verdict", "to_name": cfg.image_name, "type": "choices",
                 "value": {"choices": ["authentic"]}}]
    if cfg.binary:
        forged = next(x for x in cfg.brush_labels if "forged" in x.lower())
        return [brush(sample.sources >= 1, forged, "forged1")]
    order = [cfg.host_label] + [x for x in cfg.brush_labels if x != cfg.host_label]
    regions = []
    for k in range(0 if paint_host else 1, sample.num_sources):
        regions.append(brush(sample.sources == k, order[k], f"src{k}"))
    return regions


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label maps are the same partition (equal up to renaming the labels)."""
    if a.shape != b.shape:
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# ------------------------------------------------------------------------------------------------
# scores
# ------------------------------------------------------------------------------------------------


def pmiou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Permuted mIoU (Hungarian matching, mean over the true sources) of ``safire.metrics``."""
    return float(permuted_miou(pred, truth, mode="hungarian", ignore_index=None))


def baseline_pmiou(truth: np.ndarray) -> float:
    """The trivial answer "the whole image is one source" (what an empty prediction means)."""
    return pmiou(np.zeros_like(truth), truth)


FLOOR_ENV = "SAFIRE_E2E_MIOU_FLOOR"
DEFAULT_FLOOR = "baseline-0.05"
_FLOOR = re.compile(r"^\s*baseline\s*(?:([+-])\s*([0-9]*\.?[0-9]+))?\s*$", re.IGNORECASE)


def parse_floor(text: Optional[str], baseline: float) -> Tuple[float, str]:
    """The mIoU floor from ``SAFIRE_E2E_MIOU_FLOOR``: a number (absolute) or ``baseline[+-x]``.

    Returns (floor, how it was derived)."""
    raw = (text if text is not None and text.strip() else DEFAULT_FLOOR).strip()
    m = _FLOOR.match(raw)
    if m:
        delta = float(m.group(2) or 0.0) * (-1 if m.group(1) == "-" else 1)
        return baseline + delta, f"{raw} (baseline {baseline:.3f})"
    try:
        return float(raw), raw
    except ValueError:
        raise ValueError(f"{FLOOR_ENV}={raw!r}: expected a number or baseline[+-x], e.g. baseline+0.05") from None


def floor_from_env(baseline: float) -> Tuple[float, str]:
    return parse_floor(os.environ.get(FLOOR_ENV), baseline)
