"""Evaluation metrics for forgery localization, detection and multi-source partitioning.

The binary localization metrics follow the TruFor / SAFIRE evaluation protocol:

* a *don't-care band* around every ground-truth boundary is excluded from scoring
  (see :func:`boundary_regions`);
* F1 is *permuted*: the better of the map and its inverse is kept, because a
  localization map has no canonical "forged" polarity;
* F1 is reported at a fixed threshold (0.5, strict ``>``) and at the best threshold;
* pixel AUC / AP use every pixel, with neither band nor permutation;
* per-image values are averaged with ``nanmean`` (see :class:`MeanMeter`).

The multi-source metrics are the permuted mIoU (an exact, vectorised re-implementation of
SAFIRE's ``multisource_pmiou_trunc`` plus a Hungarian-assignment variant) and the adjusted Rand
index. Everything is plain numpy / scipy, works with numpy 1.26 and 2.x, and is independent of
torch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
from scipy.ndimage import maximum_filter, minimum_filter
from scipy.optimize import linear_sum_assignment

__all__ = [
    "boundary_regions",
    "f1_fixed",
    "f1_best",
    "mcc",
    "pixel_auc",
    "pixel_ap",
    "permuted_miou",
    "ari",
    "image_auc",
    "balanced_accuracy",
    "LocalizationMetrics",
    "MultiSourceMetrics",
    "localization_metrics",
    "multisource_metrics",
    "MeanMeter",
    "nanmean_metrics",
]

# Kernel sizes of the TruFor / SAFIRE don't-care band.
ERODE_KERNEL = 15
DILATE_KERNEL = 11
# Floor of the F1 / MCC denominators (as in the reference implementation).
_EPS = 1e-32
# Up to this many label slots, the "safire" p-mIoU enumerates permutations explicitly.
_MAX_PERMUTATION_SLOTS = 8

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


def _labels_from_pred(pred: ArrayLike) -> Tuple[np.ndarray, Optional[int]]:
    """Turns KxHxW scores into HxW labels (argmax); returns (labels, K or None)."""
    pred = np.asarray(pred)
    if pred.ndim == 3:
        return np.argmax(pred, axis=0), int(pred.shape[0])
    if pred.ndim != 2:
        raise ValueError(f"pred must be HxW labels or KxHxW scores, got shape {pred.shape}")
    if not np.issubdtype(pred.dtype, np.integer) and not np.issubdtype(pred.dtype, np.bool_):
        if not np.all(np.equal(np.mod(pred, 1), 0)):
            raise ValueError("HxW pred labels must be integers")
    return pred.astype(np.int64), None


def _valid_gt(gt_labels: ArrayLike, ignore_index: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt_labels)
    if gt.ndim != 2:
        raise ValueError(f"gt_labels must be an HxW array, got shape {gt.shape}")
    gt = gt.astype(np.int64)
    valid = np.ones(gt.shape, dtype=bool) if ignore_index is None else gt != ignore_index
    if np.any(gt[valid] < 0):
        raise ValueError("gt_labels must be non-negative (apart from ignore_index)")
    return gt, valid


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense contingency table of two 1-D integer label vectors (any label values)."""
    _, a_idx = np.unique(a, return_inverse=True)
    _, b_idx = np.unique(b, return_inverse=True)
    a_idx, b_idx = a_idx.ravel(), b_idx.ravel()
    n_b = int(b_idx.max()) + 1 if b_idx.size else 0
    n_a = int(a_idx.max()) + 1 if a_idx.size else 0
    return np.bincount(a_idx * n_b + b_idx, minlength=n_a * n_b).reshape(n_a, n_b)


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


# --------------------------------------------------------------------------------------------
# Multi-source partitioning
# --------------------------------------------------------------------------------------------


def _iou_matrix(gt: np.ndarray, pred: np.ndarray, num_gt: int, num_pred: int) -> np.ndarray:
    """IoU between gt classes 0..num_gt-1 (rows) and pred labels 0..num_pred-1 (columns).

    ``gt`` and ``pred`` are 1-D over the valid pixels; pred labels outside [0, num_pred) take
    part in the gt areas but match no column. IoU is 0 where the union is empty.
    """
    in_range = (pred >= 0) & (pred < num_pred)
    inter = np.bincount(
        gt[in_range] * num_pred + pred[in_range], minlength=num_gt * num_pred
    ).reshape(num_gt, num_pred)
    gt_area = np.bincount(gt, minlength=num_gt)[:num_gt]
    pred_area = np.bincount(pred[in_range], minlength=num_pred)[:num_pred]
    union = gt_area[:, None] + pred_area[None, :] - inter
    iou = np.zeros((num_gt, num_pred), dtype=np.float64)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def _max_over_permutations(square: np.ndarray) -> float:
    """max over permutations s of sum_l square[s(l), l] for an n x n matrix."""
    n = square.shape[0]
    if n == 0:
        return 0.0
    if n <= _MAX_PERMUTATION_SLOTS:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
        totals = square[perms, np.arange(n)[None, :]].sum(axis=1)
        return float(totals.max())
    # Larger problems: the maximum over all permutations is a linear assignment problem.
    rows, cols = linear_sum_assignment(square, maximize=True)
    return float(square[rows, cols].sum())


def permuted_miou(
    pred_labels: ArrayLike,
    gt_labels: ArrayLike,
    mode: str = "hungarian",
    ignore_index: Optional[int] = 255,
    num_pred_labels: Optional[int] = None,
) -> float:
    """Permuted mean IoU between a predicted partition and ground-truth sources.

    The number of gt classes is C = max(gt) + 1 over the non-ignored pixels; the result is a
    mean over all C classes (an empty gt class therefore contributes IoU 0). Pixels whose gt
    equals ``ignore_index`` are excluded from every count. Negative predicted labels (e.g.
    DBSCAN noise) match no gt class.

    Modes:

    * ``"hungarian"``: the gt-class / pred-label IoU matrix is built with ``np.bincount`` and
      ``scipy.optimize.linear_sum_assignment`` picks the one-to-one matching maximising total
      IoU over *all* predicted labels; unmatched gt classes count 0.
    * ``"safire"``: SAFIRE's ``multisource_pmiou_trunc``, reproduced exactly but vectorised.
      With K predicted labels: if K > C, only the C most frequent predicted labels are kept
      (ties: lower label first), relabelled 0..C−1 by decreasing frequency, and the rest
      never match; then the maximum over all permutations of 0..C−1 is taken. If K <= C the
      labels 0..K−1 are permuted among themselves, so (as in the reference code) they can
      only be assigned to gt classes 0..K−1. IoU := 0 when the union is empty.

    Arguments:
      pred_labels (np.ndarray): HxW integer labels, or KxHxW per-label scores / logits /
        probabilities (argmax over axis 0, K = number of channels).
      gt_labels (np.ndarray): HxW integer source labels 0..C−1 (plus ``ignore_index``).
      mode (str): ``"hungarian"`` or ``"safire"``.
      ignore_index (int or None): gt value to ignore; None disables ignoring.
      num_pred_labels (int or None): K for HxW label input in ``"safire"`` mode; defaults to
        max(pred_labels) + 1 (for KxHxW input it is always the channel count).

    Returns:
      (float): p-mIoU in [0, 1]; nan when every pixel is ignored.
    """
    if mode not in ("hungarian", "safire"):
        raise ValueError(f"mode must be 'hungarian' or 'safire', got {mode!r}")
    pred_map, num_channels = _labels_from_pred(pred_labels)
    gt, valid = _valid_gt(gt_labels, ignore_index)
    _check_pair(pred_map, gt)
    if not np.any(valid):
        return float("nan")
    g = gt[valid]
    p = pred_map[valid]
    num_gt = int(g.max()) + 1

    if mode == "hungarian":
        present = np.unique(p[p >= 0])
        if present.size == 0:
            return 0.0
        p_idx = np.searchsorted(present, p)
        p_idx[p < 0] = -1
        iou = _iou_matrix(g, p_idx, num_gt, present.size)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        return float(iou[rows, cols].sum() / num_gt)

    # "safire" mode.
    if num_channels is not None:
        k = num_channels
    elif num_pred_labels is not None:
        k = int(num_pred_labels)
        if pred_map.size and int(pred_map.max()) >= k:
            raise ValueError("pred_labels contains a label >= num_pred_labels")
    else:
        k = int(pred_map.max()) + 1 if pred_map.size else 0
        k = max(k, 0)

    if k > num_gt:
        counts = np.bincount(p[p >= 0], minlength=k)
        labels = np.nonzero(counts)[0]
        # Decreasing count, ties broken by the lower label.
        order = labels[np.lexsort((labels, -counts[labels]))][:num_gt]
        relabel = np.full(k, -1, dtype=np.int64)
        relabel[order] = np.arange(order.size)
        p = np.where(p >= 0, relabel[np.clip(p, 0, k - 1)], -1)
        slots = num_gt
    else:
        slots = k
    iou = _iou_matrix(g, p, num_gt, slots)
    # Slot l may go to gt classes 0..slots-1 only (slots == C when K > C).
    return _max_over_permutations(iou[:slots, :slots]) / num_gt


def ari(pred_labels: ArrayLike, gt_labels: ArrayLike, ignore_index: Optional[int] = 255) -> float:
    """Adjusted Rand index between a predicted partition and the ground truth.

    Computed from the contingency table (``np.bincount``) through the pair-confusion form,
    with exact integer arithmetic; equals scikit-learn's ``adjusted_rand_score`` (including
    its special case: 1.0 when there is no pair disagreement). Invariant to label
    permutation, so no matching is needed.

    Arguments:
      pred_labels (np.ndarray): HxW integer labels, or KxHxW scores (argmax over axis 0).
      gt_labels (np.ndarray): HxW integer labels; pixels equal to ``ignore_index`` are
        excluded.
      ignore_index (int or None): gt value to ignore; None disables ignoring.

    Returns:
      (float): ARI in [-0.5, 1]; nan when every pixel is ignored.
    """
    pred_map, _ = _labels_from_pred(pred_labels)
    gt = np.asarray(gt_labels)
    if gt.ndim != 2:
        raise ValueError(f"gt_labels must be an HxW array, got shape {gt.shape}")
    _check_pair(pred_map, gt)
    gt = gt.astype(np.int64)
    valid = np.ones(gt.shape, dtype=bool) if ignore_index is None else gt != ignore_index
    if not np.any(valid):
        return float("nan")
    table = _contingency(gt[valid], pred_map[valid])
    n = int(table.sum())
    sum_sq = int(np.sum(table.astype(np.int64) ** 2))
    sum_sq_gt = int(np.sum(table.sum(axis=1).astype(np.int64) ** 2))
    sum_sq_pred = int(np.sum(table.sum(axis=0).astype(np.int64) ** 2))
    # Ordered pairs of distinct pixels (the factor 2 cancels in the ratio).
    both = sum_sq - n
    only_gt = sum_sq_gt - sum_sq
    only_pred = sum_sq_pred - sum_sq
    neither = n * n - sum_sq_gt - sum_sq_pred + sum_sq
    if only_gt == 0 and only_pred == 0:
        return 1.0
    num = 2 * (both * neither - only_gt * only_pred)
    den = (both + only_gt) * (only_gt + neither) + (both + only_pred) * (only_pred + neither)
    return float(num / den)


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


# --------------------------------------------------------------------------------------------
# Per-image bundles and aggregation
# --------------------------------------------------------------------------------------------


class _MetricRecord:
    """Mixin giving dataclass results read-only dict behaviour (``dict(result)`` works)."""

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)  # type: ignore[call-overload]

    def keys(self) -> List[str]:
        return [f.name for f in fields(self)]  # type: ignore[arg-type]

    def items(self) -> List[Tuple[str, float]]:
        return list(self.as_dict().items())

    def __getitem__(self, key: str) -> float:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True)
class LocalizationMetrics(_MetricRecord):
    """Binary localization metrics of one image (TruFor / SAFIRE protocol).

    Attributes:
      f1_fixed (float): permuted, banded F1 at ``> 0.5``.
      f1_best (float): permuted, banded F1 at the best threshold.
      mcc (float): banded |MCC| at ``> 0.5``.
      auc (float): pixel ROC AUC over all pixels (nan if gt has one class).
      ap (float): pixel average precision over all pixels (nan if gt has one class).
    """

    f1_fixed: float
    f1_best: float
    mcc: float
    auc: float
    ap: float


@dataclass(frozen=True)
class MultiSourceMetrics(_MetricRecord):
    """Multi-source partition metrics of one image.

    Attributes:
      miou_hungarian (float): p-mIoU with Hungarian matching over all predicted labels.
      miou_safire (float): p-mIoU as in SAFIRE's ``multisource_pmiou_trunc``.
      ari (float): adjusted Rand index.
    """

    miou_hungarian: float
    miou_safire: float
    ari: float


def localization_metrics(
    heatmap: ArrayLike, gt_binary: ArrayLike, threshold: float = 0.5
) -> LocalizationMetrics:
    """Computes all binary localization metrics of one image.

    Arguments:
      heatmap (np.ndarray): HxW float localization map in [0, 1].
      gt_binary (np.ndarray): HxW ground truth, nonzero / True = forged.
      threshold (float): threshold of ``f1_fixed`` and ``mcc``.

    Returns:
      (LocalizationMetrics): f1_fixed, f1_best, mcc, auc, ap.
    """
    heatmap = np.asarray(heatmap)
    gt = _as_bool_mask(gt_binary, "gt_binary")
    _check_pair(heatmap, gt)
    return LocalizationMetrics(
        f1_fixed=f1_fixed(heatmap, gt, threshold=threshold),
        f1_best=f1_best(heatmap, gt),
        mcc=mcc(heatmap, gt, threshold=threshold),
        auc=pixel_auc(heatmap, gt),
        ap=pixel_ap(heatmap, gt),
    )


def multisource_metrics(
    pred_labels: ArrayLike,
    gt_labels: ArrayLike,
    ignore_index: Optional[int] = 255,
    num_pred_labels: Optional[int] = None,
) -> MultiSourceMetrics:
    """Computes the multi-source partition metrics of one image.

    Arguments:
      pred_labels (np.ndarray): HxW integer labels or KxHxW per-label scores.
      gt_labels (np.ndarray): HxW integer source labels (plus ``ignore_index``).
      ignore_index (int or None): gt value to ignore.
      num_pred_labels (int or None): K for HxW label input (see :func:`permuted_miou`).

    Returns:
      (MultiSourceMetrics): miou_hungarian, miou_safire, ari.
    """
    labels, _ = _labels_from_pred(pred_labels)
    if np.asarray(pred_labels).ndim == 3 and num_pred_labels is None:
        num_pred_labels = int(np.asarray(pred_labels).shape[0])
    return MultiSourceMetrics(
        miou_hungarian=permuted_miou(labels, gt_labels, "hungarian", ignore_index),
        miou_safire=permuted_miou(
            labels, gt_labels, "safire", ignore_index, num_pred_labels=num_pred_labels
        ),
        ari=ari(labels, gt_labels, ignore_index),
    )


MetricsLike = Union[Mapping[str, float], _MetricRecord]


def _nanmean(values: List[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    return float(finite.mean()) if finite.size else float("nan")


class MeanMeter:
    """Averages per-image metrics with ``nanmean`` (equal weight per image).

    Example::

        meter = MeanMeter()
        for heatmap, gt in dataset:
            meter.update(localization_metrics(heatmap, gt))
        summary = meter.mean()  # {"f1_fixed": ..., "f1_best": ..., ...}
    """

    def __init__(self) -> None:
        self._values: Dict[str, List[float]] = {}
        self._updates = 0

    def update(self, metrics: MetricsLike) -> None:
        """Adds one image's metrics (a mapping or a metrics dataclass)."""
        items = metrics.items()
        for key, value in items:
            self._values.setdefault(key, []).append(float(value))
        self._updates += 1

    def mean(self) -> Dict[str, float]:
        """Returns the nanmean of every metric (nan when all its values are nan)."""
        return {key: _nanmean(values) for key, values in self._values.items()}

    def counts(self) -> Dict[str, int]:
        """Returns, per metric, how many non-nan values were averaged."""
        return {
            key: int(np.count_nonzero(~np.isnan(np.asarray(values, dtype=np.float64))))
            for key, values in self._values.items()
        }

    def values(self) -> Dict[str, List[float]]:
        """Returns a copy of the per-image values, per metric."""
        return {key: list(values) for key, values in self._values.items()}

    def reset(self) -> None:
        self._values.clear()
        self._updates = 0

    def __len__(self) -> int:
        return self._updates

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)


def nanmean_metrics(records: Iterable[MetricsLike]) -> Dict[str, float]:
    """Averages a sequence of per-image metrics with ``nanmean`` (see :class:`MeanMeter`)."""
    meter = MeanMeter()
    for record in records:
        meter.update(record)
    return meter.mean()
