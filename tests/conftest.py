"""Shared fixtures: tiny models and toy forged images (all CPU, all seeded)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ.get("SAFIRE_TEST_THREADS", "2")))
# The suite uses only the 16 bundled photos, never an installed photo pool (`make photos`), so its
# results do not depend on what is installed on the machine.
os.environ["SAFIRE_PHOTO_POOL"] = "bundled"

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@dataclass
class ToyItem:
    image: np.ndarray
    labels: np.ndarray
    name: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)


def toy_forgery(seed: int, size: int = 64, num_sources: int = 2) -> ToyItem:
    """A smooth random host with up to 3 rectangular foreign regions of different noise levels."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 190, size=3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = base[None, None, :] + 30 * np.sin(6 * xx + rng.uniform(0, 6))[..., None] * np.cos(4 * yy)[..., None]
    labels = np.zeros((size, size), np.uint8)
    noise_levels = [2.0, 25.0, 12.0, 40.0]
    img = img + rng.normal(0, noise_levels[0], img.shape)
    for s in range(1, num_sources):
        h, w = rng.integers(size // 4, size // 2, size=2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        labels[y0 : y0 + h, x0 : x0 + w] = s
        region = labels == s
        img[region] += rng.normal(0, noise_levels[s], (int(region.sum()), 3))
    areas = np.bincount(labels.ravel(), minlength=num_sources)
    order = np.argsort(-areas, kind="stable")
    remap = np.zeros(num_sources, np.uint8)
    remap[order] = np.arange(num_sources)
    labels = remap[labels]
    return ToyItem(np.clip(img, 0, 255).astype(np.uint8), labels, f"toy{seed}", {"num_sources": num_sources})


@pytest.fixture
def toy_items() -> List[ToyItem]:
    return [toy_forgery(i, 64, 1 + i % 3) for i in range(8)]


@pytest.fixture(scope="session")
def micro_model():
    from safire.build import build_safire

    torch.manual_seed(0)
    return build_safire("micro")
