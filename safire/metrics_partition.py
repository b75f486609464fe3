"""Multi-source partition metrics of one image: permuted mIoU and the adjusted Rand index.

Inputs: ``pred_labels``, HxW integer labels (or KxHxW per-label scores, turned into labels by argmax)
and ``gt_labels``, HxW integer source labels (plus ``ignore_index``, 255 by default, not scored).
:func:`permuted_miou` is an exact, vectorised re-implementation of SAFIRE's
``multisource_pmiou_trunc`` (``"safire"``) plus a Hungarian-assignment variant (``"hungarian"``);
:func:`ari` is the adjusted Rand index. Both return a float (mIoU in [0, 1], ARI in [-1, 1]).
"""

from __future__ import annotations

import itertools
from typing import Optional, Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from .metrics_binary import ArrayLike, _check_pair

__all__ = ["permuted_miou", "ari"]

# Up to this many label slots, the "safire" p-mIoU enumerates permutations explicitly.
_MAX_PERMUTATION_SLOTS = 8


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

