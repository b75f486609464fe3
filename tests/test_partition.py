import numpy as np
import pytest
import torch

from safire import metrics as M
from safire.clustering import cluster_masks, kmeans_cosine
from safire.partition import GridOutput, partition, partition_from_grid
from safire.predictor import SafirePredictor
from safire.transforms import grid_points

S, MASK, EMB = 64, 32, 8  # micro geometry: model frame, low-res logits, embedding grid


def _nearest(labels, size):
    h, w = labels.shape
    ys = ((np.arange(size) + 0.5) * h / size).astype(int)
    xs = ((np.arange(size) + 0.5) * w / size).astype(int)
    return labels[ys[:, None], xs[None, :]]


def oracle_grid(gt, seed=0, noise=0.5, empty=()):
    """Decoder that answers every grid prompt with the mask of the source under it, and an
    embedding whose cells carry a per-source vector: the separable case of the paper."""
    rng = np.random.default_rng(seed)
    k = gt.max() + 1
    pts = grid_points(16, S)
    lab_s = _nearest(gt, S)
    lab_m = _nearest(gt, MASK)
    logits, scores = [], []
    for i, (x, y) in enumerate(pts):
        src = lab_s[int(y), int(x)]
        lo = np.where(lab_m == src, 6.0, -6.0) + rng.normal(0, noise, (MASK, MASK))
        if i in empty:
            lo = np.full((MASK, MASK), -6.0)
        logits.append(lo)
        scores.append(rng.uniform(0.6, 1.0))
    protos = rng.normal(0, 1, (k, 16))
    emb = protos[_nearest(gt, EMB)] + rng.normal(0, 0.05, (EMB, EMB, 16))
    grid = GridOutput(torch.tensor(np.array(logits), dtype=torch.float32),
                      torch.tensor(scores, dtype=torch.float32), pts)
    return grid, torch.tensor(emb.transpose(2, 0, 1), dtype=torch.float32)


def make_gt(num_sources, h=96, w=128):
    gt = np.zeros((h, w), np.uint8)
    if num_sources >= 2:
        gt[10:60, 20:80] = 1
    if num_sources >= 3:
        gt[65:90, 90:125] = 2
    if num_sources >= 4:
        gt[5:30, 95:125] = 3
    return gt


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("mode", ["fixed", "auto"])
def test_partition_recovers_sources(k, mode):
    gt = make_gt(k)
    grid, emb = oracle_grid(gt, seed=k)
    res = partition_from_grid(grid, emb, S, gt.shape, k if mode == "fixed" else "auto", seed=0)
    assert res.num_sources == k
    assert res.labels.shape == gt.shape and res.probs.shape == (k, *gt.shape)
    # The oracle's masks are quantised to 32x32, so boundaries cost a few percent.
    assert M.permuted_miou(res.labels, gt) > 0.9
    assert M.ari(res.labels, gt) > 0.85
    # Label 0 is the largest source; areas are descending and sum to 1.
    assert np.all(np.diff(res.areas) <= 1e-6) and abs(res.areas.sum() - 1) < 1e-5
    assert np.argmax(np.bincount(res.labels.ravel())) == 0
    assert res.score > 0.75  # complementary winners: clearly forged
    # Binary heat map is high on the forged part.
    forged = gt > 0
    assert res.heatmap[forged].mean() > 0.8 and res.heatmap[~forged].mean() < 0.2


def test_authentic_image_is_a_single_source():
    gt = np.zeros((80, 80), np.uint8)
    grid, emb = oracle_grid(gt)
    res = partition_from_grid(grid, emb, S, gt.shape, "auto")
    assert res.num_sources == 1 and (res.labels == 0).all() and (res.heatmap == 0).all()
    assert res.score < 0.05


def test_fixed_two_sources_with_the_authentic_gate():
    """The binary path: two sources, unless the image score says authentic."""
    authentic = np.zeros((80, 80), np.uint8)
    grid, emb = oracle_grid(authentic)
    gated = partition_from_grid(grid, emb, S, authentic.shape, 2, gate_authentic=True)
    assert gated.num_sources == 1 and (gated.heatmap == 0).all()
    forged = make_gt(2)
    grid, emb = oracle_grid(forged)
    res = partition_from_grid(grid, emb, S, forged.shape, 2, gate_authentic=True)
    assert res.num_sources == 2 and M.permuted_miou(res.labels, forged) > 0.9
    # the gate is the score test: above the image's score it makes one source, without it k-means splits
    strict = dict(single_source_threshold=min(1.0, res.score + 0.01))
    assert partition_from_grid(grid, emb, S, forged.shape, 2, gate_authentic=True, **strict).num_sources == 1
    assert partition_from_grid(grid, emb, S, forged.shape, 2, **strict).num_sources == 2


def test_empty_masks_are_excluded_not_nan():
    gt = make_gt(2)
    grid, emb = oracle_grid(gt, empty=(0, 5, 17, 200))
    res = partition_from_grid(grid, emb, S, gt.shape, 2)
    assert res.num_sources == 2 and M.permuted_miou(res.labels, gt) > 0.95
    assert all(res.grid_labels[i] == -1 for i in (0, 5, 17, 200))
    assert np.isfinite(res.probs).all()


def test_partition_is_deterministic_for_a_seed():
    gt = make_gt(3)
    grid, emb = oracle_grid(gt, noise=3.0)
    a = partition_from_grid(grid, emb, S, gt.shape, 3, seed=7)
    b = partition_from_grid(grid, emb, S, gt.shape, 3, seed=7)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.winners, b.winners)


def test_most_confident_prompt_wins():
    gt = make_gt(2)
    grid, emb = oracle_grid(gt)
    scores = grid.scores.clone()
    scores[:] = 0.5
    scores[3] = 0.99  # a host prompt (top-left area is host)
    res = partition_from_grid(GridOutput(grid.logits, scores, grid.points), emb, S, gt.shape, 2)
    assert 3 in res.winners.tolist()


def test_kmeans_cosine_seeded_and_separates():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal([5, 0, 0], 0.1, (20, 3)), rng.normal([0, 5, 0], 0.1, (30, 3))])
    lab, _ = kmeans_cosine(x, 2, seed=3)
    assert len(set(lab[:20])) == 1 and len(set(lab[20:])) == 1 and lab[0] != lab[-1]
    assert np.array_equal(lab, kmeans_cosine(x, 2, seed=3)[0])


def test_cluster_masks_groups_by_overlap():
    a = np.zeros((6, 100), bool)
    a[:3, :50] = True
    a[3:, 50:] = True
    a[5, 49] = True
    assert cluster_masks(a).tolist() == [0, 0, 0, 1, 1, 1]


def test_partition_with_micro_model_end_to_end(micro_model):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)
    pred = SafirePredictor(micro_model)
    r1 = partition(pred, img, 2, seed=1)
    r2 = partition(pred, img, 2, seed=1)
    assert r1.labels.shape == (90, 130) and r1.heatmap.shape == (90, 130)
    assert r1.heatmap.min() >= 0 and r1.heatmap.max() <= 1 and 0 <= r1.score <= 1
    assert np.array_equal(r1.labels, r2.labels)
    assert {"encode", "decode", "features", "cluster", "combine", "total"} <= set(r1.timings)
    r3 = partition(pred, img, "auto", out_hw=(45, 65))
    assert r3.labels.shape == (45, 65)
