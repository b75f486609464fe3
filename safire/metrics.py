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

The metric families live in sibling modules: binary localization in :mod:`safire.metrics_binary`,
multi-source partitioning in :mod:`safire.metrics_partition`, image-level detection in
:mod:`safire.metrics_image`. This module holds the per-image bundles and their averaging, and
re-exports every public name, so ``from safire import metrics as M; M.f1_best(...)`` keeps working.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from .metrics_binary import (  # noqa: F401 - re-exported (the binary localization metrics)
    ArrayLike,
    _as_bool_mask,
    _check_pair,
    boundary_regions,
    f1_best,
    f1_fixed,
    mcc,
    pixel_ap,
    pixel_auc,
)
from .metrics_image import balanced_accuracy, image_auc  # noqa: F401 - re-exported
from .metrics_partition import _labels_from_pred, ari, permuted_miou  # noqa: F401 - re-exported

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
