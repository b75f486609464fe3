"""Binary localization metrics of one image (TruFor / SAFIRE protocol).

Inputs: ``pred``, an HxW float localization map (scores in [0, 1]; ``> threshold`` is forged) and
``gt``, an HxW binary ground truth (nonzero / True = forged). F1 and MCC exclude a don't-care band
around every ground-truth boundary (:func:`boundary_regions`: ``ERODE_KERNEL`` / ``DILATE_KERNEL``
px) and F1 is permuted (the better of the map and its inverse); pixel AUC / AP use every pixel.
Every function returns a float in [0, 1] (nan where a class is missing, see each docstring).
Also the shared helpers of :mod:`safire.metrics`: mask checks and the tie-aware ROC AUC.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Tuple, Union

import numpy as np
from scipy.ndimage import maximum_filter, minimum_filter

__all__ = ["boundary_regions", "f1_fixed", "f1_best", "mcc", "pixel_auc", "pixel_ap"]

# Kernel sizes of the TruFor / SAFIRE don't-care band.
ERODE_KERNEL = 15
DILATE_KERNEL = 11
# Floor of the F1 / MCC denominators (as in the reference implementation).
_EPS = 1e-32

ArrayLike = Union[np.ndarray, Iterable]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _as_bool_mask(gt: ArrayLike, name: str = "gt") -> np.ndarray:
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"{name} must be an HxW array, got shape {gt.shape}")
    return gt.astype(bool) if gt.dtype != bool else gt


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} does not match gt shape {gt.shape}")


def _scored_regions(gt: np.ndarray, band: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (gt0, gt1): the authentic and forged pixels that are scored."""
    if band:
        return boundary_regions(gt)
    return ~gt, gt


def _f1(tp: Any, fn: Any, fp: Any) -> Any:
    return 2.0 * tp / np.maximum(2.0 * tp + fn + fp, _EPS)


def _grouped_counts(
    scores: np.ndarray, positive: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts positives / negatives per distinct score.

    Returns (values, pos, neg): the distinct scores in ascending order and, for each, the
    number of positive and negative samples with exactly that score (float64).
    """
    values, inverse = np.unique(scores, return_inverse=True)
    inverse = inverse.ravel()
    pos = np.bincount(inverse, weights=positive.astype(np.float64), minlength=values.size)
    total = np.bincount(inverse, minlength=values.size).astype(np.float64)
    return values, pos, total - pos


def _auc_from_scores(scores: np.ndarray, positive: np.ndarray) -> float:
    """Tie-aware ROC AUC (Mann-Whitney U); nan if only one class is present."""
    _, pos, neg = _grouped_counts(scores, positive)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # For every score level: positives strictly above it, plus half of the tied positives.
    pos_above = n_pos - np.cumsum(pos)
    u = np.sum(neg * (pos_above + 0.5 * pos))
    return float(u / (n_pos * n_neg))


# --------------------------------------------------------------------------------------------
# Binary localization
# --------------------------------------------------------------------------------------------


def boundary_regions(
    gt: ArrayLike, erode: int = ERODE_KERNEL, dilate: int = DILATE_KERNEL
) -> Tuple[np.ndarray, np.ndarray]:
    """Splits a binary ground truth into scored authentic / forged regions (TruFor style).

    Pixels within roughly ``erode // 2`` px inside or ``dilate // 2`` px outside a forged
    region belong to neither output and are ignored by the banded metrics.

    Arguments:
      gt (np.ndarray): HxW ground truth; any nonzero / True value marks a forged pixel.
      erode (int): window size of the minimum filter giving the forged core.
      dilate (int): window size of the maximum filter whose complement is the authentic part.

    Returns:
      (np.ndarray): gt0, HxW bool, authentic pixels far from any forgery
        (``~maximum_filter(gt, dilate)``).
      (np.ndarray): gt1, HxW bool, the eroded forged core (``minimum_filter(gt, erode)``).
    """
    gt = _as_bool_mask(gt)
    gt1 = minimum_filter(gt, size=erode)
    gt0 = ~maximum_filter(gt, size=dilate)
    return gt0, gt1


def _confusion_at_threshold(
    pred: ArrayLike, gt: ArrayLike, threshold: float, band: bool
) -> Tuple[float, float, float, float]:
    """Returns (TP, FN, FP, TN) of ``pred > threshold`` on the scored pixels, as floats."""
    gt = _as_bool_mask(gt)
    pred = np.asarray(pred)
    _check_pair(pred, gt)
    gt0, gt1 = _scored_regions(gt, band)
    positive = pred > threshold
    tp = np.count_nonzero(positive & gt1)
    fn = np.count_nonzero(gt1) - tp
    fp = np.count_nonzero(positive & gt0)
    tn = np.count_nonzero(gt0) - fp
    return float(tp), float(fn), float(fp), float(tn)


def f1_fixed(
    pred: ArrayLike,
    gt: ArrayLike,
    threshold: float = 0.5,
    band: bool = True,
    permuted: bool = True,
) -> float:
    """F1 score of a localization map binarised at a fixed threshold.

    A pixel is predicted forged iff ``pred > threshold`` (strict). On the scored pixels
    (``gt0 | gt1`` of :func:`boundary_regions` when ``band``, else all pixels),
    F1 = 2TP / max(2TP + FN + FP, 1e-32). With ``permuted``, the result is the maximum of F1
    and the F1 of the inverted binary map, 2FN / max(2FN + TP + TN, 1e-32), exactly as in
    TruFor's / SAFIRE's ``computeF1(TN, FN, TP, FP)``.

    Arguments:
      pred (np.ndarray): HxW float localization map, normally in [0, 1].
      gt (np.ndarray): HxW ground truth, nonzero / True = forged.
      threshold (float): binarisation threshold.
      band (bool): exclude the boundary don't-care band.
      permuted (bool): also consider the inverted map and keep the better F1.

    Returns:
      (float): F1 in [0, 1]; 0.0 when no pixel is scored (as in the reference code).
    """
    tp, fn, fp, tn = _confusion_at_threshold(pred, gt, threshold, band)
    score = _f1(tp, fn, fp)
    if permuted:
        score = max(score, _f1(fn, tp, tn))
    return float(score)


def f1_best(pred: ArrayLike, gt: ArrayLike, band: bool = True, permuted: bool = True) -> float:
    """Best F1 over all thresholds of a localization map (TruFor / SAFIRE "F1 best").

    Scores are cast to float32 (as in the reference code). For every distinct score value t
    the map is binarised as ``pred > t``; the "all pixels positive" binarisation is included
    too. With ``permuted`` each binarisation is scored by max(F1, F1 of the inverted map).
    Because the inverse of the all-negative map (t = max score) is the all-positive map, the
    permuted result equals the reference ``computeMetricsContinue`` + ``computeF1`` value.
    Vectorised with sort + cumulative sums: O(N log N) for N scored pixels.

    Arguments:
      pred (np.ndarray): HxW float localization map, normally in [0, 1], finite.
      gt (np.ndarray): HxW ground truth, nonzero / True = forged.
      band (bool): exclude the boundary don't-care band.
      permuted (bool): also consider the inverted map at every threshold.

    Returns:
      (float): best F1 in [0, 1]; nan when no pixel is scored.
    """
    gt = _as_bool_mask(gt)
    pred = np.asarray(pred)
    _check_pair(pred, gt)
    gt0, gt1 = _scored_regions(gt, band)
    scored = gt0 | gt1
    if not np.any(scored):
        return float("nan")
    values = pred[scored].astype(np.float32)
    _, pos, neg = _grouped_counts(values, gt1[scored])
    n_pos, n_neg = pos.sum(), neg.sum()
    # Threshold at the j-th distinct value: everything <= value is negative. Index 0 of the
    # padded cumulative sums is the "all positive" case (threshold below the minimum).
    fn = np.concatenate(([0.0], np.cumsum(pos)))
    tn = np.concatenate(([0.0], np.cumsum(neg)))
    tp = n_pos - fn
    fp = n_neg - tn
    best = float(np.max(_f1(tp, fn, fp)))
    if permuted:
        best = max(best, float(np.max(_f1(fn, tp, tn))))
    return best


def mcc(pred: ArrayLike, gt: ArrayLike, threshold: float = 0.5, band: bool = True) -> float:
    """Absolute Matthews correlation coefficient of ``pred > threshold``.

    |TP·TN − FP·FN| / max(sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), 1e-32) on the scored pixels.
    The absolute value makes it invariant to inverting the map.

    Arguments:
      pred (np.ndarray): HxW float localization map, normally in [0, 1].
      gt (np.ndarray): HxW ground truth, nonzero / True = forged.
      threshold (float): binarisation threshold (strict ``>``).
      band (bool): exclude the boundary don't-care band.

    Returns:
      (float): |MCC| in [0, 1]; 0.0 when the denominator vanishes.
    """
    tp, fn, fp, tn = _confusion_at_threshold(pred, gt, threshold, band)
    denom = math.sqrt(tp + fp) * math.sqrt(tp + fn) * math.sqrt(tn + fp) * math.sqrt(tn + fn)
    return float(abs(tp * tn - fp * fn) / max(denom, _EPS))


def pixel_auc(pred: ArrayLike, gt: ArrayLike) -> float:
    """Pixel-level ROC AUC over all pixels (no band, not permuted).

    Rank-based (Mann-Whitney U) with ties counted as 1/2, which equals scikit-learn's
    ``roc_auc_score``.

    Arguments:
      pred (np.ndarray): HxW float scores (higher = more likely forged).
      gt (np.ndarray): HxW ground truth, nonzero / True = forged.

    Returns:
      (float): AUC in [0, 1]; nan when gt holds a single class.
    """
    gt = _as_bool_mask(gt)
    pred = np.asarray(pred, dtype=np.float64)
    _check_pair(pred, gt)
    return _auc_from_scores(pred.ravel(), gt.ravel())


def pixel_ap(pred: ArrayLike, gt: ArrayLike) -> float:
    """Pixel-level average precision over all pixels (no band, not permuted).

    AP = sum_n (R_n − R_{n−1}) P_n over the distinct score thresholds in decreasing order,
    with tied scores forming one threshold, which equals scikit-learn's
    ``average_precision_score``.

    Arguments:
      pred (np.ndarray): HxW float scores (higher = more likely forged).
      gt (np.ndarray): HxW ground truth, nonzero / True = forged.

    Returns:
      (float): AP in [0, 1]; nan when gt holds a single class.
    """
    gt = _as_bool_mask(gt)
    pred = np.asarray(pred, dtype=np.float64)
    _check_pair(pred, gt)
    _, pos, neg = _grouped_counts(pred.ravel(), gt.ravel())
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Descending thresholds: predicted positive = score >= threshold.
    tps = np.cumsum(pos[::-1])
    fps = np.cumsum(neg[::-1])
    precision = tps / (tps + fps)
    recall_gain = pos[::-1] / n_pos
    return float(np.sum(recall_gain * precision))

