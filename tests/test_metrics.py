"""Tests of safire.metrics against brute-force references and scikit-learn."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.ndimage import maximum_filter, minimum_filter
from sklearn.metrics import (
    adjusted_rand_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    matthews_corrcoef,
    roc_auc_score,
)

from safire import metrics as M

# --------------------------------------------------------------------------------------------
# Fixtures / data generators
# --------------------------------------------------------------------------------------------


def _blob_gt(rng: np.random.Generator, h: int = 48, w: int = 48) -> np.ndarray:
    """A binary gt with one or two random rectangles."""
    gt = np.zeros((h, w), dtype=bool)
    for _ in range(rng.integers(1, 3)):
        y0, x0 = rng.integers(0, h - 16), rng.integers(0, w - 16)
        gt[y0 : y0 + rng.integers(12, 24), x0 : x0 + rng.integers(12, 24)] = True
    return gt


def _noisy_map(rng: np.random.Generator, gt: np.ndarray, levels: int | None = None) -> np.ndarray:
    """A [0, 1] map correlated with gt; quantised to `levels` values to create ties."""
    pred = np.clip(0.55 * gt + 0.6 * rng.random(gt.shape) - 0.05, 0.0, 1.0)
    if levels is not None:
        pred = np.round(pred * (levels - 1)) / (levels - 1)
    return pred


def _scored(gt: np.ndarray, band: bool):
    if band:
        gt0 = ~maximum_filter(gt, 11)
        gt1 = minimum_filter(gt, 15)
    else:
        gt0, gt1 = ~gt, gt
    keep = gt0 | gt1
    return keep, gt1[keep]


# --------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------


def _f1_pair(y: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    tp = np.sum(b & y)
    fp = np.sum(b & ~y)
    fn = np.sum(~b & y)
    tn = np.sum(~b & ~y)
    f1 = 2 * tp / max(2 * tp + fn + fp, 1e-32)
    f1_inverted_map = 2 * fn / max(2 * fn + tp + tn, 1e-32)
    return f1, f1_inverted_map


def ref_f1_best(pred, gt, band, permuted, include_all_positive=True):
    keep, y = _scored(gt, band)
    v = pred[keep].astype(np.float32)
    thresholds = list(np.unique(v))
    if include_all_positive:
        thresholds = [-np.inf] + thresholds
    best = 0.0
    for t in thresholds:
        f1, f1i = _f1_pair(y, v > t)
        best = max(best, max(f1, f1i) if permuted else f1)
    return best


def _iou_masks(a: np.ndarray, b: np.ndarray) -> float:
    union = np.sum(a | b)
    return np.sum(a & b) / union if union else 0.0


def ref_pmiou_safire(pred_map, gt, num_pred, ignore_index=255):
    """Literal transcription of SAFIRE's multisource_pmiou_trunc semantics (per pixel)."""
    valid = gt != ignore_index
    g, p = gt[valid], pred_map[valid]
    C = int(g.max()) + 1
    if num_pred > C:
        nonneg = p[p >= 0]
        uniq, cnt = np.unique(nonneg, return_counts=True)
        # Python's sort is stable: equal counts keep the ascending label order.
        ranked = [lbl for lbl, _ in sorted(zip(uniq, cnt), key=lambda x: x[1], reverse=True)]
        init = np.full_like(p, -1)
        for idx, lbl in enumerate(ranked[:C]):
            init[p == lbl] = idx
        perms = itertools.permutations(range(C))
    else:
        init = p.copy()
        perms = itertools.permutations(range(num_pred))
    best = -1.0
    for perm in perms:
        lab = np.full_like(init, -1)
        for idx, target in enumerate(perm):
            lab[init == idx] = target
        best = max(best, float(np.mean([_iou_masks(lab == c, g == c) for c in range(C)])))
    return best


def ref_pmiou_hungarian(pred_map, gt, ignore_index=255):
    """Max over all partial one-to-one matchings gt class -> predicted label."""
    valid = gt != ignore_index
    g, p = gt[valid], pred_map[valid]
    C = int(g.max()) + 1
    labels = sorted(set(p[p >= 0].tolist()))
    iou = {(c, l): _iou_masks(g == c, p == l) for c in range(C) for l in labels}
    options = labels + [None] * C  # None = leave the gt class unmatched
    best = 0.0
    for choice in itertools.permutations(range(len(options)), C):
        total = sum(iou[(c, options[o])] for c, o in enumerate(choice) if options[o] is not None)
        best = max(best, total / C)
    return best


# --------------------------------------------------------------------------------------------
# Boundary band
# --------------------------------------------------------------------------------------------


def test_boundary_regions_matches_filters_and_excludes_band():
    gt = np.zeros((40, 40), dtype=np.uint8)
    gt[10:30, 12:32] = 255
    gt0, gt1 = M.boundary_regions(gt)
    assert gt0.dtype == bool and gt1.dtype == bool
    np.testing.assert_array_equal(gt1, minimum_filter(gt > 0, 15))
    np.testing.assert_array_equal(gt0, ~maximum_filter(gt > 0, 11))
    assert not np.any(gt0 & gt1)
    # The eroded core is 20-14 = 6 px wide; authentic pixels start 6 px outside the square.
    assert gt1.sum() == 6 * 6
    assert gt1[17:23, 19:25].all()
    assert not gt0[10 - 5 : 30 + 5, 12 - 5 : 32 + 5].any()
    assert gt0[10 - 6, :].all() and gt0[30 + 5, :].all()
    # Boundary pixels (both sides) are in neither set.
    assert not gt0[10, 12] and not gt1[10, 12] and not gt0[9, 12] and not gt1[9, 12]


def test_band_excludes_boundary_errors():
    gt = np.zeros((64, 64), dtype=bool)
    gt[16:48, 16:48] = True
    pred = gt.astype(np.float64)
    # Mistakes only in a 3-px ring on each side of the boundary.
    ring = maximum_filter(gt, 7) & ~minimum_filter(gt, 7)
    pred[ring] = 1.0 - pred[ring]
    assert M.f1_fixed(pred, gt) == 1.0
    assert M.f1_best(pred, gt) == 1.0
    assert M.mcc(pred, gt) == pytest.approx(1.0)
    assert M.f1_fixed(pred, gt, band=False) < 0.95
    assert M.f1_best(pred, gt, band=False) < 0.95


# --------------------------------------------------------------------------------------------
# F1 / MCC
# --------------------------------------------------------------------------------------------


def test_perfect_and_inverted_prediction():
    gt = np.zeros((50, 60), dtype=bool)
    gt[10:35, 20:50] = True
    perfect = gt.astype(np.float32)
    inverted = 1.0 - perfect
    for band in (True, False):
        assert M.f1_fixed(perfect, gt, band=band) == 1.0
        assert M.f1_best(perfect, gt, band=band) == 1.0
        assert M.f1_fixed(inverted, gt, band=band) == 1.0
        assert M.f1_best(inverted, gt, band=band) == 1.0
        assert M.f1_fixed(inverted, gt, band=band, permuted=False) == 0.0
        assert M.mcc(perfect, gt, band=band) == pytest.approx(1.0)
        assert M.mcc(inverted, gt, band=band) == pytest.approx(1.0)
    assert M.pixel_auc(perfect, gt) == 1.0 and M.pixel_auc(inverted, gt) == 0.0
    assert M.pixel_ap(perfect, gt) == 1.0


def test_threshold_is_strict():
    gt = np.zeros((40, 40), dtype=bool)
    gt[:, :20] = True
    pred = np.where(gt, 0.5, 0.2)  # forged pixels exactly at the threshold -> negative
    assert M.f1_fixed(pred, gt, permuted=False) == 0.0
    assert M.f1_fixed(pred, gt, threshold=0.49, permuted=False) == 1.0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("band", [True, False])
def test_f1_fixed_and_mcc_match_sklearn(seed, band):
    rng = np.random.default_rng(seed)
    gt = _blob_gt(rng)
    pred = _noisy_map(rng, gt, levels=None if seed % 2 else 11)
    keep, y = _scored(gt, band)
    b = pred[keep] > 0.5
    f1 = f1_score(y, b, zero_division=0)
    f1_inv = f1_score(y, ~b, zero_division=0)
    assert M.f1_fixed(pred, gt, band=band, permuted=False) == pytest.approx(f1, abs=1e-12)
    assert M.f1_fixed(pred, gt, band=band) == pytest.approx(max(f1, f1_inv), abs=1e-12)
    assert M.mcc(pred, gt, band=band) == pytest.approx(abs(matthews_corrcoef(y, b)), abs=1e-12)
    inverted = 1.0 - pred
    assert M.mcc(inverted, gt, band=band, threshold=0.5) == pytest.approx(
        abs(matthews_corrcoef(y, inverted[keep] > 0.5)), abs=1e-12
    )


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("band", [True, False])
@pytest.mark.parametrize("permuted", [True, False])
def test_f1_best_matches_threshold_loop(seed, band, permuted):
    rng = np.random.default_rng(100 + seed)
    gt = _blob_gt(rng, 40, 44)
    levels = [None, 5, 17, 256][seed % 4]
    pred = _noisy_map(rng, gt, levels)
    if seed % 3 == 0:
        pred = 1.0 - pred  # anti-correlated map: the inverted F1 matters
    got = M.f1_best(pred, gt, band=band, permuted=permuted)
    assert got == pytest.approx(ref_f1_best(pred, gt, band, permuted), abs=1e-12)
    assert got >= M.f1_fixed(pred, gt, band=band, permuted=permuted) - 1e-12
    if permuted:
        # Same value as the official sort+cumsum enumeration (no explicit all-positive case).
        ref_official = ref_f1_best(pred, gt, band, True, include_all_positive=False)
        assert got == pytest.approx(ref_official, abs=1e-12)


def test_f1_best_constant_map_and_empty_scoring():
    gt = np.zeros((40, 40), dtype=bool)
    gt[5:35, 5:25] = True
    keep, y = _scored(gt, True)
    n1, n0 = y.sum(), (~y).sum()
    # A constant map can only be all-positive or all-negative.
    assert M.f1_best(np.full(gt.shape, 0.3), gt) == pytest.approx(2 * n1 / (2 * n1 + n0))
    # No pixel scored (everything inside the band) -> nan; fixed F1 follows the reference (0).
    tiny = np.zeros((12, 12), dtype=bool)
    tiny[4:8, 4:8] = True
    assert math.isnan(M.f1_best(np.zeros((12, 12)), tiny))
    assert M.f1_fixed(np.zeros((12, 12)), tiny) == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        M.f1_fixed(np.zeros((4, 5)), np.zeros((5, 4), dtype=bool))
    with pytest.raises(ValueError):
        M.permuted_miou(np.zeros((4, 5), int), np.zeros((5, 4), int))


# --------------------------------------------------------------------------------------------
# AUC / AP
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_pixel_auc_ap_match_sklearn(seed):
    rng = np.random.default_rng(200 + seed)
    gt = _blob_gt(rng)
    pred = _noisy_map(rng, gt, levels=[None, 3, 9][seed % 3])
    y, s = gt.ravel(), pred.ravel()
    assert M.pixel_auc(pred, gt) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.pixel_ap(pred, gt) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_pixel_auc_ap_single_class_is_nan():
    pred = np.random.default_rng(0).random((8, 8))
    for gt in (np.zeros((8, 8), bool), np.ones((8, 8), bool)):
        assert math.isnan(M.pixel_auc(pred, gt))
        assert math.isnan(M.pixel_ap(pred, gt))


# --------------------------------------------------------------------------------------------
# Permuted mIoU
# --------------------------------------------------------------------------------------------


# (num gt classes C, num predicted labels K, height, width)
_PMIOU_CASES = [
    (2, 2, 10, 12),
    (3, 3, 9, 11),
    (2, 4, 10, 10),
    (3, 5, 8, 12),
    (4, 2, 10, 10),
    (3, 2, 9, 9),
    (4, 4, 8, 8),
    (2, 3, 6, 7),
]


def _random_partition(rng, C, K, h, w):
    gt = rng.integers(0, C, size=(h, w))
    # Predictions partially agree with gt through a random label map, plus noise.
    mapping = rng.integers(0, K, size=C)
    pred = np.where(rng.random((h, w)) < 0.6, mapping[gt], rng.integers(0, K, size=(h, w)))
    return pred, gt


@pytest.mark.parametrize("case", _PMIOU_CASES)
@pytest.mark.parametrize("seed", range(3))
def test_pmiou_matches_brute_force(case, seed):
    C, K, h, w = case
    rng = np.random.default_rng(300 + seed * 17 + C * 5 + K)
    pred, gt = _random_partition(rng, C, K, h, w)
    if seed == 1:
        gt[gt == C - 2] = 0  # an empty gt class below the maximum
    if seed == 2:
        gt[rng.random((h, w)) < 0.1] = 255  # ignored pixels
        pred[pred == K - 1] = 0  # a predicted label that never occurs
    assert M.permuted_miou(pred, gt, "safire", num_pred_labels=K) == pytest.approx(
        ref_pmiou_safire(pred, gt, K), abs=1e-12
    )
    hung = M.permuted_miou(pred, gt, "hungarian")
    assert hung == pytest.approx(ref_pmiou_hungarian(pred, gt), abs=1e-12)
    # Hungarian searches a superset of SAFIRE's matchings.
    assert hung >= M.permuted_miou(pred, gt, "safire", num_pred_labels=K) - 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_pmiou_probability_input_equals_label_input(seed):
    rng = np.random.default_rng(400 + seed)
    K, C = [(3, 3), (5, 3), (2, 4), (4, 2)][seed]
    gt = rng.integers(0, C, size=(9, 10))
    logits = rng.normal(size=(K, 9, 10))
    logits[0] += 0.8  # uneven cluster sizes
    labels = logits.argmax(0)
    for mode in ("safire", "hungarian"):
        got = M.permuted_miou(logits, gt, mode)
        assert got == pytest.approx(M.permuted_miou(labels, gt, mode, num_pred_labels=K))
    assert M.permuted_miou(logits, gt, "safire") == pytest.approx(
        ref_pmiou_safire(labels, gt, K), abs=1e-12
    )


def test_pmiou_perfect_and_permuted_prediction():
    gt = np.repeat(np.arange(4), 6).reshape(4, 6)
    pred = (gt + 1) % 4
    for mode in ("safire", "hungarian"):
        assert M.permuted_miou(gt, gt, mode) == 1.0
        assert M.permuted_miou(pred, gt, mode) == 1.0


def test_pmiou_hungarian_and_safire_differ():
    # Two sources: a large background and a small spliced square.
    gt = np.zeros((20, 20), dtype=np.int64)
    gt[2:6, 2:6] = 1
    # The prediction splits the background into two large clusters (labels 0 and 1) and finds
    # the small square exactly (label 2), which is the least frequent predicted label.
    pred = np.zeros((20, 20), dtype=np.int64)
    pred[10:, :] = 1
    pred[2:6, 2:6] = 2
    n0 = 400 - 16
    hung = M.permuted_miou(pred, gt, "hungarian")
    safire = M.permuted_miou(pred, gt, "safire")
    # Hungarian: background <-> label 1 (200 px) or 0 (184 px); square <-> label 2 (IoU 1).
    assert hung == pytest.approx((200 / n0 + 1.0) / 2)
    # SAFIRE keeps labels 1 (200 px) and 0 (184 px) only; the square can never be matched.
    assert safire == pytest.approx(200 / n0 / 2)
    assert safire == pytest.approx(ref_pmiou_safire(pred, gt, 3))
    assert hung > safire + 0.4


def test_pmiou_safire_tie_break_prefers_lower_label():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[0:2, 0:5] = 1  # 10 px
    pred = np.zeros((10, 10), dtype=np.int64)
    pred[8:10, 0:5] = 1  # 10 px, wrong place
    pred[0:2, 0:5] = 2  # 10 px, exactly the spliced region: tie with label 1
    got = M.permuted_miou(pred, gt, "safire")
    # Labels 0 (80 px) and 1 (tie winner) are kept; label 2 becomes -1.
    expected = max((80 / 90 + 0.0) / 2, (0.0 + 0.0) / 2)
    assert got == pytest.approx(expected)
    assert got == pytest.approx(ref_pmiou_safire(pred, gt, 3))
    # Swapping the roles of labels 1 and 2 keeps the matching cluster.
    swapped = np.where(pred == 1, 2, np.where(pred == 2, 1, pred))
    assert M.permuted_miou(swapped, gt, "safire") == pytest.approx((80 / 90 + 1.0) / 2)


def test_pmiou_safire_fewer_labels_only_permute_among_themselves():
    # K=2 < C=3: as in the reference code, labels 0/1 can only map to gt classes 0/1.
    gt = np.array([[0, 0, 1, 1, 2, 2]] * 3)
    pred = np.array([[0, 0, 0, 0, 1, 1]] * 3)
    assert M.permuted_miou(pred, gt, "safire") == pytest.approx(0.5 / 3)
    assert M.permuted_miou(pred, gt, "safire") == pytest.approx(ref_pmiou_safire(pred, gt, 2))
    # Hungarian is free to send label 1 to gt class 2.
    assert M.permuted_miou(pred, gt, "hungarian") == pytest.approx((0.5 + 0 + 1.0) / 3)
    # Declaring more channels than gt classes switches SAFIRE to the truncation branch.
    assert M.permuted_miou(pred, gt, "safire", num_pred_labels=4) == pytest.approx(
        ref_pmiou_safire(pred, gt, 4)
    )
    assert M.permuted_miou(pred, gt, "safire", num_pred_labels=4) == pytest.approx(0.5)


def test_pmiou_edge_cases():
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:, 2:] = 1
    # Negative predicted labels never match.
    assert M.permuted_miou(np.full((4, 4), -1), gt, "hungarian") == 0.0
    assert M.permuted_miou(np.full((4, 4), -1), gt, "safire") == 0.0
    # Everything ignored -> nan.
    assert math.isnan(M.permuted_miou(np.zeros((4, 4), int), np.full((4, 4), 255)))
    with pytest.raises(ValueError):
        M.permuted_miou(gt, gt, mode="greedy")
    with pytest.raises(ValueError):
        M.permuted_miou(gt + 3, gt, "safire", num_pred_labels=2)


def test_pmiou_safire_many_classes_uses_assignment():
    # C = K = 10 exceeds the permutation limit; with every label present the SAFIRE value is
    # a full bijection, i.e. the Hungarian value.
    rng = np.random.default_rng(7)
    gt = np.repeat(np.arange(10), 10).reshape(10, 10)
    pred = np.where(rng.random((10, 10)) < 0.7, (gt * 3) % 10, rng.integers(0, 10, (10, 10)))
    pred.flat[:10] = np.arange(10)
    assert M.permuted_miou(pred, gt, "safire") == pytest.approx(
        M.permuted_miou(pred, gt, "hungarian")
    )


# --------------------------------------------------------------------------------------------
# ARI
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_ari_matches_sklearn(seed):
    rng = np.random.default_rng(500 + seed)
    C, K = rng.integers(1, 5), rng.integers(1, 6)
    pred, gt = _random_partition(rng, C, K, 30, 31)
    pred = pred * 7 - 3  # arbitrary label values, including negatives
    assert M.ari(pred, gt) == pytest.approx(
        adjusted_rand_score(gt.ravel(), pred.ravel()), abs=1e-12
    )
    gt_ign = gt.copy()
    gt_ign[rng.random(gt.shape) < 0.2] = 255
    keep = gt_ign != 255
    assert M.ari(pred, gt_ign) == pytest.approx(
        adjusted_rand_score(gt_ign[keep], pred[keep]), abs=1e-12
    )


def test_ari_special_cases():
    gt = np.array([[0, 0, 1, 1]])
    assert M.ari(gt, gt) == 1.0
    assert M.ari(1 - gt, gt) == 1.0
    assert M.ari(np.zeros((1, 4), int), np.zeros((1, 4), int)) == 1.0
    ones = np.zeros((1, 4), int)
    assert M.ari(ones, gt) == pytest.approx(adjusted_rand_score(gt.ravel(), ones.ravel()))
    logits = np.stack([gt == 0, gt == 1]).astype(float)
    assert M.ari(logits, gt) == 1.0


def test_ari_large_image_no_overflow():
    rng = np.random.default_rng(11)
    gt = rng.integers(0, 3, size=(512, 512))
    pred = np.where(rng.random(gt.shape) < 0.8, gt, rng.integers(0, 3, size=gt.shape))
    assert M.ari(pred, gt) == pytest.approx(
        adjusted_rand_score(gt.ravel(), pred.ravel()), abs=1e-12
    )


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_detection_metrics_match_sklearn(seed):
    rng = np.random.default_rng(600 + seed)
    labels = rng.random(60) < 0.4
    scores = np.clip(0.3 * labels + rng.random(60) * 0.7, 0, 1)
    if seed % 2:
        scores = np.round(scores * 4) / 4  # ties, some exactly at 0.5
    assert M.image_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert M.balanced_accuracy(scores, labels) == pytest.approx(
        balanced_accuracy_score(labels, scores > 0.5), abs=1e-12
    )


def test_detection_edge_cases():
    scores = np.array([0.9, np.nan, 0.2, np.inf, 0.6])
    labels = np.array([1, 1, 0, 1, 0], dtype=bool)
    keep = ~np.isnan(scores)
    finite = np.where(np.isinf(scores), 10.0, scores)
    assert M.image_auc(scores, labels) == pytest.approx(roc_auc_score(labels[keep], finite[keep]))
    assert M.balanced_accuracy(scores, labels) == pytest.approx(
        balanced_accuracy_score(labels[keep], finite[keep] > 0.5)
    )
    assert math.isnan(M.image_auc([0.1, 0.7], [True, True]))
    assert M.balanced_accuracy([0.1, 0.7], [True, True]) == 0.5
    assert math.isnan(M.balanced_accuracy([], []))


# --------------------------------------------------------------------------------------------
# Bundles and aggregation
# --------------------------------------------------------------------------------------------


def test_localization_metrics_bundle():
    rng = np.random.default_rng(700)
    gt = _blob_gt(rng)
    pred = _noisy_map(rng, gt, levels=50)
    res = M.localization_metrics(pred, gt)
    assert isinstance(res, M.LocalizationMetrics)
    assert res.f1_fixed == M.f1_fixed(pred, gt)
    assert res.f1_best == M.f1_best(pred, gt)
    assert res.mcc == M.mcc(pred, gt)
    assert res.auc == M.pixel_auc(pred, gt)
    assert res.ap == M.pixel_ap(pred, gt)
    d = dict(res)
    assert list(d) == ["f1_fixed", "f1_best", "mcc", "auc", "ap"]
    assert d == res.as_dict() and res["auc"] == res.auc
    with pytest.raises(KeyError):
        res["nope"]


def test_multisource_metrics_bundle():
    rng = np.random.default_rng(701)
    pred, gt = _random_partition(rng, 3, 4, 12, 12)
    res = M.multisource_metrics(pred, gt, num_pred_labels=4)
    assert res.miou_hungarian == M.permuted_miou(pred, gt, "hungarian")
    assert res.miou_safire == M.permuted_miou(pred, gt, "safire", num_pred_labels=4)
    assert res.ari == M.ari(pred, gt)
    logits = np.eye(4)[pred].transpose(2, 0, 1)
    assert M.multisource_metrics(logits, gt) == res


def test_mean_meter_nanmean():
    meter = M.MeanMeter()
    meter.update(M.LocalizationMetrics(1.0, 1.0, 0.5, float("nan"), float("nan")))
    meter.update(M.LocalizationMetrics(0.0, 0.5, 0.5, 0.8, float("nan")))
    meter.update({"f1_fixed": 0.5, "f1_best": 0.0, "mcc": 0.2, "auc": 0.6, "ap": float("nan")})
    mean = meter.mean()
    assert len(meter) == 3
    assert mean["f1_fixed"] == pytest.approx(0.5)
    assert mean["f1_best"] == pytest.approx(0.5)
    assert mean["mcc"] == pytest.approx(0.4)
    assert mean["auc"] == pytest.approx(0.7)
    assert math.isnan(mean["ap"])
    assert meter.counts() == {"f1_fixed": 3, "f1_best": 3, "mcc": 3, "auc": 2, "ap": 0}
    assert M.nanmean_metrics([{"a": 1.0}, {"a": float("nan")}, {"a": 3.0}]) == {"a": 2.0}
    meter.reset()
    assert len(meter) == 0 and meter.mean() == {}
