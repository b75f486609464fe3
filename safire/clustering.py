"""Clustering of grid prompts (pure numpy/scipy; deterministic for a seed).

- :func:`kmeans_cosine`: k-means with cosine distance and arithmetic-mean centres, as the official
  SAFIRE code (vendored kmeans_pytorch), but seeded and with several restarts (best inertia wins).
- :func:`cluster_masks`: automatic number of clusters from the prompts' masks themselves: two
  prompts that segment the same region belong to the same source. Average-linkage agglomerative
  clustering on ``1 - IoU`` cut at ``1 - iou_threshold``.
- :func:`dbscan_features`: the official multi-source DBSCAN option (Euclidean on raw features).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber labels >= 0 to 0..M-1 in order of first appearance; keep -1."""
    out = np.full_like(labels, -1)
    mapping = {}
    for i, lab in enumerate(labels):
        if lab < 0:
            continue
        if lab not in mapping:
            mapping[lab] = len(mapping)
        out[i] = mapping[lab]
    return out


def kmeans_cosine(x: np.ndarray, k: int, seed: int = 0, n_init: int = 4, max_iter: int = 300,
                  tol: float = 1e-4) -> Tuple[np.ndarray, float]:
    """Cluster N vectors into k groups by cosine distance.

    Args:
        x: NxD float features (not normalised; centres are arithmetic means of members).
        k: number of clusters (clipped to N).
        seed: seeds the initial-centre choice (rows drawn without replacement).
        n_init: restarts; the lowest total cosine distance wins.
    Returns:
        (labels N int64 compacted to 0..M-1 in first-appearance order, inertia).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0.0
    k = max(1, min(int(k), n))
    if k == 1:
        return np.zeros(n, dtype=np.int64), float((1 - _normalize(x) @ _normalize(x.mean(0, keepdims=True)).T).sum())
    rng = np.random.default_rng(seed)
    xn = _normalize(x)
    best_labels, best_inertia = None, np.inf
    for _ in range(max(1, n_init)):
        centres = x[rng.choice(n, size=k, replace=False)].copy()
        for _it in range(max_iter):
            dist = 1.0 - xn @ _normalize(centres).T
            labels = dist.argmin(axis=1)
            new = centres.copy()
            for j in range(k):
                members = labels == j
                if members.any():
                    new[j] = x[members].mean(axis=0)
            shift = float(np.linalg.norm(new - centres, axis=1).sum() ** 2)
            centres = new
            if shift < tol:
                break
        inertia = float(dist[np.arange(n), labels].sum())
        if inertia < best_inertia - 1e-12:
            best_inertia, best_labels = inertia, labels
    return compact_labels(best_labels), best_inertia


def mask_iou_matrix(masks: np.ndarray) -> np.ndarray:
    """NxP bool masks -> NxN IoU (two empty masks have IoU 1)."""
    a = masks.reshape(len(masks), -1).astype(np.float32)
    inter = a @ a.T
    area = np.diag(inter)
    union = area[:, None] + area[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 1.0)


def cluster_masks(masks: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """Group prompts whose masks overlap (average-linkage on 1 - IoU).

    Args:
        masks: NxP bool (flattened low-resolution binary masks of N prompts).
        iou_threshold: prompts whose clusters have mean IoU above this are merged.
    Returns:
        N int64 labels compacted to 0..M-1 (first-appearance order).
    """
    n = len(masks)
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    dist = 1.0 - mask_iou_matrix(masks)
    np.fill_diagonal(dist, 0.0)
    dist = np.clip((dist + dist.T) / 2, 0.0, 1.0)
    z = linkage(squareform(dist, checks=False), method="average")
    labels = fcluster(z, t=1.0 - iou_threshold, criterion="distance") - 1
    return compact_labels(labels.astype(np.int64))


def dbscan_features(x: np.ndarray, eps: float = 0.2, min_samples: int = 1) -> np.ndarray:
    """Official multi-source option: DBSCAN (Euclidean) on raw mean features; noise -> -1."""
    from sklearn.cluster import DBSCAN

    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(np.asarray(x, dtype=np.float64))
    return compact_labels(labels.astype(np.int64))
