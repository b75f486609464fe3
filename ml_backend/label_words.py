"""The label vocabulary: which label names read as forged or authentic, and the mode they imply.

A label is forged-like when one of its words (lower-cased runs of letters) is in
:data:`FORGED_WORDS` and none negates it ("Tampered", "Spliced region"); authentic-like when one is
in :data:`AUTHENTIC_WORDS` or a forged word is negated ("Pristine", "Source 1 (host)", "not
forged"). :func:`infer_mode` turns a BrushLabels tag's labels into ``"binary"`` or ``"multi"``.
Used by :mod:`ml_backend.label_config` (mode inference, binary labels, authentic choices) and by the
export (:mod:`ml_backend.annotations`).
"""

from __future__ import annotations

import re
from typing import List, Sequence

__all__ = ["AUTHENTIC_WORDS", "FORGED_WORDS", "infer_mode", "is_authentic_label", "is_forged_label"]

FORGED_WORDS = (
    "forged", "forgery", "tampered", "tampering", "manipulated", "manipulation", "fake",
    "edited", "spliced", "splicing", "altered", "modified", "synthetic", "generated",
)
AUTHENTIC_WORDS = (
    "authentic", "pristine", "real", "original", "genuine", "untampered", "unmodified",
    "background", "clean", "host",
)

def _words(label: str) -> List[str]:
    return re.findall(r"[a-z]+", label.lower())


def is_forged_label(label: str) -> bool:
    w = _words(label)
    if any(x in ("not", "non", "un", "no") for x in w):
        return False
    return any(x in FORGED_WORDS for x in w)


def is_authentic_label(label: str) -> bool:
    w = _words(label)
    if any(x in AUTHENTIC_WORDS for x in w):
        return True
    # "not forged", "non-manipulated", "untampered"
    return any(x in ("not", "non", "no") for x in w) and any(x in FORGED_WORDS for x in w)


def infer_mode(labels: Sequence[str]) -> str:
    """``binary`` for a single label or only forged-/authentic-like labels, else ``multi``."""
    labels = list(labels)
    if len(labels) <= 1:
        return "binary"
    forged = [lab for lab in labels if is_forged_label(lab)]
    authentic = [lab for lab in labels if is_authentic_label(lab) and lab not in forged]
    if len(forged) == 1 and len(forged) + len(authentic) == len(labels) and len(authentic) <= 1:
        # "Source 1 (host)" is authentic-like, so require a forged-like partner too
        return "binary"
    return "multi"
