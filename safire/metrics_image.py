"""Image-level detection metrics: ROC AUC and balanced accuracy of per-image scores.

Inputs: ``scores``, N float detection scores (higher = more likely forged; NaN scores are dropped
with their labels) and ``labels``, N bools (True = forged). Both return a float in [0, 1] and equal
scikit-learn's ``roc_auc_score`` / ``balanced_accuracy_score``.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .metrics_binary import ArrayLike, _auc_from_scores

__all__ = ["image_auc", "balanced_accuracy"]


# --------------------------------------------------------------------------------------------
# Image-level detection
# --------------------------------------------------------------------------------------------


def _detection_inputs(scores: ArrayLike, labels: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    keep = ~np.isnan(scores)
    return scores[keep], labels[keep]


def image_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Image-level detection ROC AUC (equals scikit-learn's ``roc_auc_score``).

    NaN scores are dropped with their labels; ±inf scores are kept (only the order matters).

    Arguments:
      scores (np.ndarray): N float detection scores (higher = more likely forged).
      labels (np.ndarray): N bool ground-truth labels (True = forged).

    Returns:
      (float): AUC in [0, 1]; nan when only one class remains.
    """
    scores, labels = _detection_inputs(scores, labels)
    return _auc_from_scores(scores, labels)


def balanced_accuracy(scores: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> float:
    """Image-level balanced accuracy of ``scores > threshold``.

    The mean of the per-class recalls over the classes present in ``labels`` (equals
    scikit-learn's ``balanced_accuracy_score``). NaN scores are dropped with their labels.

    Arguments:
      scores (np.ndarray): N float detection scores.
      labels (np.ndarray): N bool ground-truth labels (True = forged).
      threshold (float): decision threshold (strict ``>``).

    Returns:
      (float): balanced accuracy in [0, 1]; nan when no image remains.
    """
    scores, labels = _detection_inputs(scores, labels)
    if labels.size == 0:
        return float("nan")
    decided = scores > threshold
    recalls = [
        np.mean(decided[labels == cls] == cls) for cls in (False, True) if np.any(labels == cls)
    ]
    return float(np.mean(recalls))

