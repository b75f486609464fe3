"""The shipped weights (``safire/weights/*.pt``) work: each loads and scores above a golden floor on a
fixed, seeded set of toy forgeries, so a corrupt, truncated or random checkpoint fails the fast suite.

The set: 8 images of 128x128 from ``conftest.toy_forgery`` (seeds 1000-1007, two sources: a smooth
host and one rectangle with different noise), pure numpy, identical on every machine. Two scores:
the IoU of the mask of one click at the foreign region's median pixel, and the mIoU of the
two-source partition (grid 8). Measured when the floors were set (2026-12-04):

=====================================  ==============  ===============
weights                                click IoU       partition mIoU
=====================================  ==============  ===============
safire-tiny-default.pt (retired)       0.83            0.89
random ``tiny`` (seeds 0-2)            0.10-0.13       0.35-0.43
safire-native-default.pt               0.37            0.63
(safire-native-synth-v2, retired)
safire-native-default.pt               0.67            0.80
(safire-native-synth-v3, v3.1)
random ``native`` (seeds 0-1)          0.12-0.13       0.41-0.43
=====================================  ==============  ===============

The native model clicks worse than the retired tiny one on these 128x128 toys (its 16-pixel tokens
see an 8x8 grid of them) but it partitions far above random; v3 raised both scores. Files listed in
:data:`KNOWN_UNTRAINED` (by SHA-256) are reported as an expected failure, visibly; any other file
without a floor, or below its floor, fails.

A new file in ``safire/weights/`` needs its own floor in :data:`FLOORS` (measure it with this test's
``evaluate``; set the floor clearly above random weights and below the measured value).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch

from conftest import toy_forgery

WEIGHTS = sorted((Path(__file__).resolve().parents[1] / "safire" / "weights").glob("*.pt"))

# file name -> (click IoU floor, partition mIoU floor)
FLOORS: Dict[str, Tuple[float, float]] = {
    "safire-tiny-default.pt": (0.65, 0.75),
    "safire-native-default.pt": (0.50, 0.70),
}
# SHA-256 of shipped files known to be untrained placeholders (an expected failure, shown as such)
KNOWN_UNTRAINED: Dict[str, str] = {}


def evaluate(model, n: int = 8, size: int = 128) -> Tuple[float, float]:
    from safire.predictor import SafirePredictor

    partition = importlib.import_module("safire.partition").partition
    predictor = SafirePredictor(model)
    ious, mious = [], []
    for seed in range(n):
        item = toy_forgery(1000 + seed, size, 2)
        fg = item.labels == 1
        ys, xs = np.nonzero(fg)
        emb = predictor.set_image(item.image)
        mask = predictor.predict(np.array([[int(np.median(xs)), int(np.median(ys))]], np.float32), np.array([1])).mask
        ious.append((mask & fg).sum() / max((mask | fg).sum(), 1))
        labels = partition(predictor, emb, 2, grid_size=8).labels
        best = 0.0
        for host in (0, 1):  # source order is the model's; score the better matching
            a = ((labels == host) & ~fg).sum() / max(((labels == host) | ~fg).sum(), 1)
            b = ((labels == 1 - host) & fg).sum() / max(((labels == 1 - host) | fg).sum(), 1)
            best = max(best, (a + b) / 2)
        mious.append(best)
    return float(np.mean(ious)), float(np.mean(mious))


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_weights_are_shipped():
    assert WEIGHTS, "safire/weights/ holds no .pt file: the embedded default model is missing"


@pytest.mark.parametrize("path", WEIGHTS, ids=lambda p: p.name)
def test_shipped_weights_score_above_their_golden_floor(path):
    from safire.build import build_safire

    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest in KNOWN_UNTRAINED and path.name not in FLOORS:
        pytest.xfail(KNOWN_UNTRAINED[digest])
    assert path.name in FLOORS, f"no golden floor for {path.name}: measure it and add it to FLOORS"
    floor_click, floor_partition = FLOORS[path.name]
    torch.manual_seed(0)
    model = build_safire(checkpoint=str(path), device="cpu")
    click, part = evaluate(model)
    assert click >= floor_click, f"{path.name}: click IoU {click:.3f} below its floor {floor_click}"
    assert part >= floor_partition, f"{path.name}: partition mIoU {part:.3f} below its floor {floor_partition}"


def test_random_weights_fail_the_floor():
    """The floors separate trained from random weights (the test above can fail)."""
    from safire.build import build_safire

    floor_click, floor_partition = min(FLOORS.values())
    for variant in ("tiny", "native"):
        torch.manual_seed(0)
        click, part = evaluate(build_safire(variant, use_default=False))
        assert click < floor_click and part < floor_partition, (variant, click, part)


def test_a_truncated_checkpoint_does_not_load(tmp_path):
    from safire.build import build_safire

    src = WEIGHTS[0]
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(Exception):
        build_safire(checkpoint=str(bad), device="cpu")
