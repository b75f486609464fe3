"""Image-level forgery score from the decoded grid (docs/image-score.md).

Two scores, both in [0, 1], both computed from the grid decode the partition already holds (no
extra model pass):

* **complementarity** (:func:`complementarity`, the default for checkpoints without a stored score
  model, e.g. the official ``safire.pth``): the two winners of a seeded 2-means split of the
  prompts disagree everywhere on a forged image and coincide on an authentic one.
* **calibrated logistic score** (:func:`logistic_score`), used when the checkpoint's
  ``meta["partition"]["image_score"]`` holds one (written by ``safire calibrate``, fitted on held-out
  data for those weights): ``sigmoid(bias + sum_i w_i * statistic_i)`` over grid statistics of
  :func:`grid_statistics`:

  - ``pairwise_disagreement``: ``1 -`` the mean IoU over all pairs of the prompts' binarised masks
    (on an authentic image every prompt returns about the same mask; on a forged one prompts inside
    a foreign region return that region, the others its complement), and
  - ``confidence_mean``: the mean of the decoder's confidence (predicted IoU) over all prompts (the
    model is less sure of its masks on an authentic image, where no prompt has a source to find).

  On the embedded default it separates authentic from forged held-out images much better than the
  complementarity (AUC in the README's model card).
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

#: Statistics :func:`grid_statistics` returns (the names a stored score model may use).
STATISTICS = ("pairwise_disagreement", "confidence_mean")
#: Side (pixels) the prompt masks are resized to before they are binarised and compared.
MASK_SIDE = 32


def complementarity(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """``mean(p_a (1 - p_b) + p_b (1 - p_a))`` of two mask-logit maps, in [0, 1]."""
    pa, pb = torch.sigmoid(logits_a.float()), torch.sigmoid(logits_b.float())
    return float((pa * (1 - pb) + pb * (1 - pa)).mean())


def grid_statistics(logits: torch.Tensor, confidences: torch.Tensor, valid: np.ndarray,
                    crop: Optional[Tuple[int, int]] = None, side: int = MASK_SIDE) -> Dict[str, float]:
    """Statistics of one image's decoded grid for :func:`logistic_score`.

    Args:
        logits: Nxmxm' low-resolution mask logits of the N grid prompts.
        confidences: N decoder confidences (predicted IoU) of the prompts.
        valid: N bool, prompts with a non-empty mask (the partition's representative features).
        crop: (rows, cols) of the logits that cover the image (native grids are padded); None: all.
        side: masks are resized (bilinear) to ``side x side`` and binarised at logit 0.
    Returns:
        ``{"pairwise_disagreement": float in [0, 1], "confidence_mean": float}``.
    """
    conf = float(confidences.float().mean()) if len(confidences) else 0.0
    idx = np.flatnonzero(np.asarray(valid, dtype=bool))
    if len(idx) < 2:
        return {"pairwise_disagreement": 0.0, "confidence_mean": conf}
    m = logits[torch.as_tensor(idx)]
    if crop is not None:
        m = m[:, : crop[0], : crop[1]]
    small = F.interpolate(m[:, None].float(), size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    b = (small > 0).reshape(len(idx), -1).float()
    inter = b @ b.T
    s = b.sum(1)
    iou = inter / (s[:, None] + s[None] - inter).clamp(min=1.0)
    iu = torch.triu_indices(len(idx), len(idx), 1)
    return {"pairwise_disagreement": float(1.0 - iou[iu[0], iu[1]].mean()), "confidence_mean": conf}


def check_score_model(model: Mapping) -> None:
    """Raise ``ValueError`` unless ``model`` is a usable stored score model."""
    if model.get("kind") != "logistic":
        raise ValueError(f"image_score kind must be 'logistic', got {model.get('kind')!r}")
    feats, weights = list(model.get("features", ())), list(model.get("weights", ()))
    unknown = [f for f in feats if f not in STATISTICS]
    if unknown or not feats or len(feats) != len(weights):
        raise ValueError(f"image_score needs features from {STATISTICS} and one weight each, got {model}")
    if not all(math.isfinite(float(v)) for v in weights + [model.get("bias", 0.0)]):
        raise ValueError("image_score weights must be finite")


def logistic_score(stats: Mapping[str, float], model: Mapping) -> float:
    """``sigmoid(bias + sum_i weights[i] * stats[features[i]])`` in [0, 1]."""
    z = float(model.get("bias", 0.0))
    for name, w in zip(model["features"], model["weights"]):
        z += float(w) * float(stats[name])
    return 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))


def fit_logistic(rows: Sequence[Mapping[str, float]], forged: Sequence[bool],
                 features: Sequence[str] = STATISTICS, l2: float = 1e-3, iters: int = 50) -> Dict[str, object]:
    """Fit a score model on held-out images: L2-regularised logistic regression (Newton steps).

    Args:
        rows: per image, :func:`grid_statistics`. forged: per image, True when it has 2+ sources.
        l2: ridge on the weights of the standardised statistics (not the bias), relative to the
            number of images.
    Returns:
        ``{"kind": "logistic", "features", "weights", "bias", "fitted_on"}`` (JSON-ready).
    """
    y = np.asarray(forged, dtype=np.float64)
    if len(y) < 4 or y.min() == y.max():
        raise ValueError("fitting an image score needs authentic and forged images (at least 4 in all)")
    X = np.array([[float(r[f]) for f in features] for r in rows], dtype=np.float64)
    # standardised statistics (their spreads differ by an order of magnitude), back to raw below
    mu, sd = X.mean(0), X.std(0)
    sd[sd < 1e-9] = 1.0
    A = np.hstack([np.ones((len(X), 1)), (X - mu) / sd])
    w = np.zeros(A.shape[1])
    reg = np.full(A.shape[1], l2 * len(X))
    reg[0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ w, -60, 60)))
        g = A.T @ (p - y) + reg * w
        H = (A * (p * (1 - p))[:, None]).T @ A + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    weights = w[1:] / sd
    bias = w[0] - float((weights * mu).sum())
    return {"kind": "logistic", "features": list(features), "weights": [round(float(v), 6) for v in weights],
            "bias": round(float(bias), 6), "fitted_on": int(len(y))}
