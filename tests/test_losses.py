"""Tests for training.losses against hand-computed values and explicit loops."""

import math

import pytest
import torch

from training.losses import aass_loss, confidence_loss, r2r_contrastive_loss, safire_loss


# ----------------------------------------------------------------------------
# R2R contrastive loss
# ----------------------------------------------------------------------------
def _official_two_source_loop(pos_vecs, neg_vecs, tau):
    """Explicit per-vector loop of the official R2R_ContrastiveLoss_TwoSource formula."""

    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    P = [unit(v) for v in pos_vecs]
    N = [unit(v) for v in neg_vecs]

    def side(A, B):
        total = 0.0
        for i, a in enumerate(A):
            pos = sum(dot(a, A[j]) for j in range(len(A)) if j != i) / (len(A) - 1)
            logits = [pos / tau] + [dot(a, b) / tau for b in B]
            m = max(logits)
            lse = m + math.log(sum(math.exp(l - m) for l in logits))
            total += lse - logits[0]
        return total / len(A)

    return side(P, N) + side(N, P)


def _general_loop(groups, tau):
    """Explicit loop of the documented K-source generalisation (sum of per-region means)."""

    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    G = [[unit(v) for v in g] for g in groups]
    total = 0.0
    for r, A in enumerate(G):
        others = [v for s, B in enumerate(G) if s != r for v in B]
        acc = 0.0
        for i, a in enumerate(A):
            pos = sum(dot(a, A[j]) for j in range(len(A)) if j != i) / (len(A) - 1)
            logits = [pos / tau] + [dot(a, b) / tau for b in others]
            m = max(logits)
            acc += m + math.log(sum(math.exp(l - m) for l in logits)) - logits[0]
        total += acc / len(A)
    return total


def _vectors_of(features, labels, b, value):
    f = features[b].permute(1, 2, 0)  # h, w, C
    return f[labels[b] == value].tolist()


def test_r2r_hand_value():
    # Region 0: two copies of e1, region 1: two copies of e2 (orthogonal).
    # For every vector: logits = [1, 0, 0] / 0.1 -> CE = log(1 + 2 e^-10); two regions.
    feats = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    feats[0, 0, 0, :] = 1.0  # row 0 -> e1
    feats[0, 1, 1, :] = 3.0  # row 1 -> e2 (norm does not matter)
    labels = torch.tensor([[[0, 0], [1, 1]]])
    loss = r2r_contrastive_loss(feats, labels, tau=0.1)
    expected = 2 * math.log(1 + 2 * math.exp(-10))
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_r2r_two_source_equals_official_loop():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 5, 4, 4, generator=g, dtype=torch.float64)
    labels = torch.zeros(3, 4, 4, dtype=torch.long)
    labels[0, :, 2:] = 1
    labels[1, 1:3, 1:3] = 1
    labels[1, 0, 0] = 255  # ignored position
    labels[2] = 1  # single region -> no contribution
    loss = r2r_contrastive_loss(feats, labels, tau=0.1)
    expected = [
        _official_two_source_loop(_vectors_of(feats, labels, b, 0), _vectors_of(feats, labels, b, 1), 0.1)
        for b in (0, 1)
    ]
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-10)


def test_r2r_k_sources_equals_loop_and_reduces_to_k2():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 4, 3, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1], [-1, 2, 2, 1]]])
    loss = r2r_contrastive_loss(feats, labels, tau=0.2)
    groups = [_vectors_of(feats, labels, 0, v) for v in (0, 1, 2)]
    assert loss.item() == pytest.approx(_general_loop(groups, 0.2), rel=1e-10)
    # K = 2 special case of the general loop equals the official loop
    assert _general_loop(groups[:2], 0.2) == pytest.approx(
        _official_two_source_loop(groups[0], groups[1], 0.2), rel=1e-12
    )


def test_r2r_region_with_single_vector_is_dropped():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(1, 3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[[0, 0, 0], [0, 0, 1]]])  # region 1 has one vector -> image invalid
    loss = r2r_contrastive_loss(feats, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))
    # with a third region, the one-vector region is dropped and the rest is K=2
    labels3 = torch.tensor([[[0, 0, 2], [0, 2, 1]]])
    loss3 = r2r_contrastive_loss(feats.detach(), labels3)
    expected = _official_two_source_loop(
        _vectors_of(feats.detach(), labels3, 0, 0), _vectors_of(feats.detach(), labels3, 0, 2), 0.1
    )
    assert loss3.item() == pytest.approx(expected, rel=1e-10)


def test_r2r_no_valid_image_is_zero_with_grad():
    feats = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[1] = 255
    loss = r2r_contrastive_loss(feats, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(feats.grad).all()


def test_r2r_gradients_and_subsampling():
    torch.manual_seed(0)
    feats = torch.randn(2, 8, 8, 8, requires_grad=True)
    labels = (torch.rand(2, 8, 8) > 0.5).long()
    full = r2r_contrastive_loss(feats, labels, max_samples=None)
    full.backward()
    assert torch.isfinite(full) and feats.grad.abs().sum() > 0
    # max_samples >= region size -> identical to no subsampling
    same = r2r_contrastive_loss(feats, labels, max_samples=64)
    assert same.item() == pytest.approx(full.item(), rel=1e-6)
    # subsampling is deterministic given the generator
    a = r2r_contrastive_loss(feats, labels, max_samples=5, generator=torch.Generator().manual_seed(3))
    b = r2r_contrastive_loss(feats, labels, max_samples=5, generator=torch.Generator().manual_seed(3))
    assert a.item() == b.item()
    with pytest.raises(ValueError):
        r2r_contrastive_loss(feats, labels[:, :4])


# ----------------------------------------------------------------------------
# AASS loss
# ----------------------------------------------------------------------------
def _softplus(x):
    return math.log1p(math.exp(x))


LOGITS_2x2 = [[0.0, 2.0], [-1.0, 3.0]]
TARGET_2x2 = [[1, 0], [-1, 1]]
# BCE with logits: softplus(x) - x * t
BCE = {(0, 0): math.log(2.0), (0, 1): _softplus(2.0), (1, 1): _softplus(3.0) - 3.0}


def test_aass_official_hand_value():
    x = torch.tensor([LOGITS_2x2], dtype=torch.float64)
    t = torch.tensor([TARGET_2x2])
    # n1 = 2, n0 = 1, 3 valid pixels: w0 = 0.5 * 3 / 1 = 1.5, w1 = 0.5 * 3 / 2 = 0.75
    expected = (0.75 * BCE[0, 0] + 1.5 * BCE[0, 1] + 0.75 * BCE[1, 1]) / 3
    assert aass_loss(x, t).item() == pytest.approx(expected, rel=1e-12)


def test_aass_paper_hand_value():
    x = torch.tensor([LOGITS_2x2], dtype=torch.float64)
    t = torch.tensor([TARGET_2x2])
    # w0 = min(3 / 1, 10) = 3, w1 = min(3 / 2, 10) = 1.5
    expected = (1.5 * BCE[0, 0] + 3.0 * BCE[0, 1] + 1.5 * BCE[1, 1]) / 3
    assert aass_loss(x, t, variant="paper").item() == pytest.approx(expected, rel=1e-12)


def test_aass_clamp_and_batch_reduction():
    # sample 0: 1 one / 99 zeros (w1 clamps at 10); sample 1: the 2x2 case padded with ignore
    x = torch.zeros(2, 10, 10, dtype=torch.float64)
    x[1, :2, :2] = torch.tensor(LOGITS_2x2, dtype=torch.float64)
    t = torch.full((2, 10, 10), -1)
    t[0] = 0
    t[0, 4, 4] = 1
    t[1, :2, :2] = torch.tensor(TARGET_2x2)
    w0_a = 0.5 * 100 / 99
    w1_a = 10.0  # 0.5 * 100 / 1 = 50 -> clamped
    s0 = 99 * w0_a * math.log(2.0) + w1_a * math.log(2.0)
    s1 = 0.75 * BCE[0, 0] + 1.5 * BCE[0, 1] + 0.75 * BCE[1, 1]
    expected = (s0 + s1) / (100 + 3)
    assert aass_loss(x, t).item() == pytest.approx(expected, rel=1e-12)
    # paper variant: w1 = min(100, 10) = 10, w0 = 100 / 99; sample 1: 3, 1.5
    s0p = 99 * (100 / 99) * math.log(2.0) + 10 * math.log(2.0)
    s1p = 1.5 * BCE[0, 0] + 3.0 * BCE[0, 1] + 1.5 * BCE[1, 1]
    assert aass_loss(x, t, variant="paper").item() == pytest.approx((s0p + s1p) / 103, rel=1e-12)
    # accepts N x 1 x h x w
    assert aass_loss(x[:, None], t[:, None]).item() == pytest.approx(expected, rel=1e-12)


def test_aass_balanced_mask_weights_are_one():
    x = torch.randn(1, 4, 4, dtype=torch.float64)
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    t[0, :2] = 1
    plain = torch.nn.functional.binary_cross_entropy_with_logits(x, t.double())
    assert aass_loss(x, t).item() == pytest.approx(plain.item(), rel=1e-12)


def test_aass_all_ignored_no_nan_and_grad():
    x = torch.randn(3, 4, 4, requires_grad=True)
    t = torch.full((3, 4, 4), -1)
    loss = aass_loss(x, t)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() == 0


def test_aass_gradient_only_on_valid_pixels():
    x = torch.zeros(1, 2, 2, requires_grad=True)
    t = torch.tensor([TARGET_2x2])
    aass_loss(x, t).backward()
    assert x.grad[0, 1, 0] == 0  # ignored pixel
    assert x.grad[0, 0, 0] < 0 and x.grad[0, 0, 1] > 0  # push towards 1 / towards 0


# ----------------------------------------------------------------------------
# Confidence loss
# ----------------------------------------------------------------------------
def test_confidence_hand_value():
    # sample 0: predictions (>= 0) = [[1, 0], [1, 0]]; targets [[1, 1], [0, -1]]
    #   -> correct, wrong, wrong, (ignored): acc = 1/3
    # sample 1: every pixel correct -> acc = 1
    # sample 2: all ignored -> left out
    logits = torch.tensor(
        [[[0.0, -1.0], [2.0, -3.0]], [[5.0, -5.0], [1.0, -1.0]], [[1.0, 1.0], [1.0, 1.0]]]
    )
    targets = torch.tensor([[[1, 1], [0, -1]], [[1, 0], [1, 0]], [[-1, -1], [-1, -1]]])
    scores = torch.tensor([0.5, 0.75, 0.2], requires_grad=True)
    loss = confidence_loss(scores, logits, targets)
    expected = ((0.5 - 1 / 3) ** 2 + (0.75 - 1.0) ** 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert scores.grad[2] == 0
    assert scores.grad[0].item() == pytest.approx((0.5 - 1 / 3), rel=1e-5)  # 2*(s-acc)/2


def test_confidence_accuracy_is_detached_and_all_ignored_is_zero():
    logits = torch.randn(2, 3, 3, requires_grad=True)
    scores = torch.rand(2, 1, requires_grad=True)
    targets = torch.randint(0, 2, (2, 3, 3))
    loss = confidence_loss(scores, logits, targets)
    (g,) = torch.autograd.grad(loss, logits, allow_unused=True)
    assert g is None
    loss0 = confidence_loss(scores, logits, torch.full((2, 3, 3), -1))
    assert loss0.item() == 0.0 and not torch.isnan(loss0)
    loss0.backward()
    assert torch.isfinite(scores.grad).all()


# ----------------------------------------------------------------------------
# Total loss
# ----------------------------------------------------------------------------
def test_safire_loss_per_point_reduction_and_grads():
    torch.manual_seed(0)
    B, P, h, w = 2, 3, 4, 4
    logits = torch.randn(B, P, h, w, requires_grad=True)
    scores = torch.rand(B, P, requires_grad=True)
    targets = torch.randint(-1, 2, (B, P, h, w))
    total, parts = safire_loss(logits, scores, targets, lambda_conf=0.1)
    aass_ref = sum(aass_loss(logits[:, p], targets[:, p]) for p in range(P)) / P
    conf_ref = sum(confidence_loss(scores[:, p], logits[:, p], targets[:, p]) for p in range(P)) / P
    assert parts["aass"].item() == pytest.approx(aass_ref.item(), rel=1e-6)
    assert parts["conf"].item() == pytest.approx(conf_ref.item(), rel=1e-6)
    assert total.item() == pytest.approx(aass_ref.item() + 0.1 * conf_ref.item(), rel=1e-6)
    assert parts["total"].item() == pytest.approx(total.item())
    total.backward()
    assert logits.grad.abs().sum() > 0 and scores.grad.abs().sum() > 0
    # 3-D (flattened) input
    total3, parts3 = safire_loss(logits.detach()[0], scores.detach()[0], targets[0])
    assert torch.isfinite(total3)
    assert parts3["aass"].item() == pytest.approx(aass_loss(logits.detach()[0], targets[0]).item())


def test_safire_loss_all_ignored_finite():
    logits = torch.randn(2, 2, 3, 3, requires_grad=True)
    scores = torch.rand(2, 2, requires_grad=True)
    total, parts = safire_loss(logits, scores, torch.full((2, 2, 3, 3), -1))
    assert total.item() == 0.0
    total.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(scores.grad).all()
