"""Shared definitions of the synthetic-forgery generator (``training.synth``).

The format version, the random streams of a sample (:func:`_rng`), the manipulation kinds and
their default weights, the difficulty levels, the :class:`Sample` record and small numeric
helpers used by every ``synth_*`` module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np

SYNTH_VERSION = 2
_SALT = 0x5AF1E  # mixed into every seed sequence so other generators seeded alike differ
# Random streams of a sample, ``_rng(seed, index, stream)``. 0 and 1 are the v1 streams (0: size,
# photos, layout geometry, histories, rendering; 1: number of sources); the v2 additions draw from
# their own streams so that the v1 draws keep their order where they still exist.
_S_MAIN = 0
_S_COUNT = 1
_S_SHAPES = 2  # manipulation kinds, object-shaped regions (cut-outs, host segments, moves)
_S_CAMERA = 3  # camera-history extensions (CFA, PRNU, sharpening, noise colour)
_S_POST = 4  # choice of the global post-processing chain
_S_PASTE = 5  # paste details (feathering, cut-out resize filter)

#: Manipulation kinds of the foreign sources and their default probabilities.
MANIPULATIONS: Dict[str, float] = {
    "splicing": 0.34,
    "copy-move": 0.18,
    "removal": 0.16,
    "generative": 0.20,
    "retouch": 0.12,
    # held out of every default recipe on purpose (probability 0): the families that
    # benchmarks/bench_retrain.py teaches by retraining (training/synth_fill.py,
    # training/synth_recolour.py)
    "exemplar-fill": 0.0,
    "recolour": 0.0,
}
#: Kinds no default recipe generates (weight 0 above); ask for them with ``manipulations``.
HELD_OUT_MANIPULATIONS = ("exemplar-fill", "recolour")
DIFFICULTIES = {"easy": 0.45, "medium": 0.35, "hard": 0.20}


@dataclass
class Sample:
    """One generated sample.

    Attributes:
        image: ``H x W x 3`` uint8 RGB, the final pixels (any final JPEG is baked in).
        sources: ``H x W`` uint8 source index per pixel; 0 = largest source (the host).
        meta: JSON-serialisable record (see ``docs/dataset-format.md``).
    """

    image: np.ndarray
    sources: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_sources(self) -> int:
        return int(self.meta["num_sources"])

    @property
    def name(self) -> str:
        return str(self.meta["name"])


def sample_name(split: str, index: int) -> str:
    return f"syn_{split}_{index:06d}"


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    return np.random.default_rng(np.random.SeedSequence([_SALT, int(seed), int(index), stream]))


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
