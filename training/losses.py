"""SAFIRE training losses (torch).

* :func:`r2r_contrastive_loss` -- region-to-region contrastive loss used to
  pretrain the image encoder (paper Eq. 1-2, official ``R2R_ContrastiveLoss_TwoSource``).
* :func:`aass_loss` -- area-adaptive source segmentation loss (paper Eq. 4,
  official ``ILW_BCEWithLogitsLoss``).
* :func:`confidence_loss` -- confidence (pixel-accuracy regression) loss (paper Eq. 5).
* :func:`safire_loss` -- total main-training loss ``AASS + lambda_conf * conf`` (paper Eq. 6).

Target convention for point masks: ``1`` = the point's region, ``0`` = other
source, ``-1`` = ignored (see :mod:`training.point_masks`).

All functions are pure (no module state); the only randomness (region
subsampling in the R2R loss) is drawn from an optional ``torch.Generator``.
"""

from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["r2r_contrastive_loss", "aass_loss", "confidence_loss", "safire_loss"]


# --------------------------------------------------------------------------- #
# R2R contrastive loss (pretraining)
# --------------------------------------------------------------------------- #
def _subsample(idx: torch.Tensor, max_samples: Optional[int], generator: Optional[torch.Generator]) -> torch.Tensor:
    """Random subset of at most ``max_samples`` entries of the 1-D index tensor ``idx``."""
    n = idx.numel()
    if max_samples is None or n <= max_samples:
        return idx
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(n, generator=generator, device=gen_device)[:max_samples]
    return idx[perm.to(idx.device)]


def r2r_contrastive_loss(
    features: torch.Tensor,
    source_labels: torch.Tensor,
    tau: float = 0.1,
    max_samples: Optional[int] = 1000,
    generator: Optional[torch.Generator] = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Region-to-region contrastive loss (official variant, generalised to K sources).

    Args:
        features: ``B x C x h x w`` float encoder embeddings (e.g. ``B x 256 x 64 x 64``).
        source_labels: ``B x h x w`` integer source id per embedding position
            (the ground truth downsampled to the feature grid with nearest
            neighbour).  Negative values and ``ignore_index`` (255) are ignored.
        tau: temperature (paper: 0.1).
        max_samples: each region is randomly subsampled to at most this many
            vectors (official: 1000); ``None`` keeps all.
        generator: optional ``torch.Generator`` for the subsampling (global
            RNG when ``None``).  Its device is used for ``torch.randperm``.
        ignore_index: extra "ignore" label value.

    Returns:
        Scalar tensor: mean over *valid* images of the per-image loss.

    Per image, with regions ``r = 1..K`` (distinct valid labels), ``Z_r`` the
    L2-normalised (subsampled) vectors of region ``r``:

    * for each ``z`` in ``Z_r`` the logits are
      ``[mean_{z' in Z_r, z' != z} cos(z, z'),  cos(z, n) for every n in Z_s, s != r] / tau``
      and the per-vector loss is the cross-entropy with target index 0;
    * ``L_r`` is the mean of that over ``Z_r``;
    * the image loss is ``sum_r L_r``.

    For ``K = 2`` this is exactly the official two-source formula
    ``loss_P + loss_N`` (the "positive" logit is the mean similarity to the
    rest of the own region, negatives are the individual vectors of the other
    region).  The generalisation to ``K > 2`` lets every vector of every other
    region act as a negative and keeps the official "sum of per-region means"
    reduction, so each region weighs equally regardless of its area (the loss
    scale therefore grows with ``K``, as the two-source loss is already a sum
    of two terms).  The paper's Eq. 2 instead averages over all embeddings.

    A region needs at least 2 (sampled) vectors to define its positive logit;
    smaller regions are dropped completely (neither anchors nor negatives).
    An image contributes only if at least 2 regions remain -- images with a
    single source contribute nothing, and for ``K = 2`` a one-vector region
    drops the image, which is what the official code does (it discards the
    resulting NaN).  If no image is valid the result is ``features.sum() * 0``
    (a zero that keeps the autograd graph).
    """
    if features.dim() != 4:
        raise ValueError(f"features must be BxCxhxw, got shape {tuple(features.shape)}")
    b, c, h, w = features.shape
    if source_labels.shape != (b, h, w):
        raise ValueError(
            f"source_labels must be Bxhxw = {(b, h, w)} (downsample the mask to the "
            f"feature grid with nearest neighbour first), got {tuple(source_labels.shape)}"
        )
    labels = source_labels.to(features.device).long()
    per_image = []
    for i in range(b):
        vecs = features[i].reshape(c, h * w).t()  # (hw, C)
        lab = labels[i].reshape(-1)
        valid = (lab >= 0) & (lab != ignore_index)
        groups = []
        for r in torch.unique(lab[valid]).tolist():
            idx = torch.nonzero(lab == r, as_tuple=False).squeeze(1)
            idx = _subsample(idx, max_samples, generator)
            if idx.numel() >= 2:
                groups.append(idx)
        if len(groups) < 2:
            continue
        z = F.normalize(vecs[torch.cat(groups)], dim=-1)  # (M, C)
        gid = torch.cat(
            [torch.full((g.numel(),), k, dtype=torch.long, device=z.device) for k, g in enumerate(groups)]
        )
        loss_img = z.new_zeros(())
        for k in range(len(groups)):
            own = gid == k
            zk = z[own]  # (n_k, C)
            n_k = zk.shape[0]
            sim_own = zk @ zk.t()  # (n_k, n_k)
            pos = (sim_own.sum(dim=1) - sim_own.diagonal()) / (n_k - 1)  # mean over the rest of the region
            neg = zk @ z[~own].t()  # (n_k, M - n_k)
            logits = torch.cat([pos.unsqueeze(1), neg], dim=1) / tau
            target = torch.zeros(n_k, dtype=torch.long, device=z.device)
            loss_img = loss_img + F.cross_entropy(logits, target)
        per_image.append(loss_img)
    if not per_image:
        return features.sum() * 0
    return torch.stack(per_image).mean()


# --------------------------------------------------------------------------- #
# AASS loss (main training)
# --------------------------------------------------------------------------- #
def aass_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    c_max: float = 10.0,
    variant: Literal["official", "paper"] = "official",
    w_min: float = 0.1,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Area-adaptive source segmentation loss (class-balanced BCE per point mask).

    Args:
        logits: ``N x h x w`` (or ``N x 1 x h x w``; any ``N x ...``) raw mask
            logits, one sample per (image, point).
        targets: same shape, values ``1`` (point's region), ``0`` (other
            source) and ``ignore_index`` (-1, ignored).  Any numeric dtype.
        c_max: upper weight limit ``C_AASS`` (paper and code: 10).
        variant: weighting scheme, per sample with ``n0 = #(target == 0)``,
            ``n1 = #(target == 1)`` (each clamped to >= 1):

            * ``"official"`` (default): ``w_n = clamp(0.5 * (n0 + n1) / n_n, w_min, c_max)``
              -- the released ``ILW_BCEWithLogitsLoss``;
            * ``"paper"``: ``w_n = min((n0 + n1) / n_n, c_max)`` -- Eq. 4 as printed.

            The default is ``"official"`` because the released weights were
            trained with it, and its 0.5 factor keeps a balanced mask
            (``n0 == n1``) at weight 1 for both classes (the paper's formula
            would give 2), so the loss stays on the scale of a plain BCE.
        w_min: lower weight clamp of the official variant (0.1); unused by ``"paper"``.
        ignore_index: target value to ignore (weight 0).

    Returns:
        Scalar ``sum(w * BCEWithLogits(logits, targets)) / #(targets != ignore)``
        over the whole batch (both variants use this reduction, so only the
        weights differ).  If every pixel is ignored the result is ``0`` (still
        attached to ``logits``) instead of the official ``0/0 = NaN``.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if variant not in ("official", "paper"):
        raise ValueError(f"unknown variant {variant!r}")
    n = logits.shape[0]
    x = logits.reshape(n, -1)
    t = targets.to(logits.device).reshape(n, -1)
    valid = t != ignore_index
    is0 = (t == 0) & valid
    is1 = (t == 1) & valid
    n0 = is0.sum(dim=1).clamp(min=1).to(x.dtype)
    n1 = is1.sum(dim=1).clamp(min=1).to(x.dtype)
    total = n0 + n1
    if variant == "official":
        w0 = torch.clamp(0.5 * total / n0, min=w_min, max=c_max)
        w1 = torch.clamp(0.5 * total / n1, min=w_min, max=c_max)
    else:
        w0 = torch.clamp(total / n0, max=c_max)
        w1 = torch.clamp(total / n1, max=c_max)
    weights = torch.where(is0, w0[:, None], torch.where(is1, w1[:, None], torch.zeros_like(x)))
    bce = F.binary_cross_entropy_with_logits(x, t.clamp(min=0).to(x.dtype), reduction="none")
    denom = valid.sum().clamp(min=1).to(x.dtype)
    return (weights.detach() * bce).sum() / denom


# --------------------------------------------------------------------------- #
# Confidence loss
# --------------------------------------------------------------------------- #
def confidence_loss(
    scores: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -1,
) -> torch.Tensor:
    """MSE between the predicted confidence and the achieved pixel accuracy.

    Args:
        scores: ``N`` (or ``N x 1``) predicted confidence per sample (SAM's
            IoU head, index 0, regresses pixel accuracy in [0, 1]).
        logits: ``N x h x w`` (any ``N x ...``) mask logits.
        targets: same shape as ``logits``; ``1`` / ``0`` / ``ignore_index``.
        ignore_index: ignored target value (-1).

    Returns:
        Scalar ``mean_i (scores_i - acc_i)^2`` where ``acc_i`` is the
        accuracy of ``logits >= 0`` against the target over the non-ignored
        pixels of sample ``i`` (the official code thresholds with ``>= 0``;
        the paper text says ``> 0``).  ``acc`` is detached: only the score
        receives gradient.  Samples without any non-ignored pixel are left
        out (the official code would produce NaN); if there is none the
        result is ``scores.sum() * 0``.
    """
    n = logits.shape[0]
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    s = scores.reshape(n)
    with torch.no_grad():
        x = logits.reshape(n, -1)
        t = targets.to(logits.device).reshape(n, -1)
        valid = t != ignore_index
        correct = ((x >= 0) == (t == 1)) & valid
        n_valid = valid.sum(dim=1)
        keep = n_valid > 0
        acc = correct.sum(dim=1).to(s.dtype) / n_valid.clamp(min=1).to(s.dtype)
    if not bool(keep.any()):
        return scores.sum() * 0
    return F.mse_loss(s[keep], acc[keep].to(s.device))


# --------------------------------------------------------------------------- #
# Total loss
# --------------------------------------------------------------------------- #
def safire_loss(
    logits: torch.Tensor,
    scores: torch.Tensor,
    targets: torch.Tensor,
    lambda_conf: float = 0.1,
    c_max: float = 10.0,
    variant: Literal["official", "paper"] = "official",
    ignore_index: int = -1,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Main-training loss ``L = L_AASS + lambda_conf * L_conf`` (paper Eq. 6).

    Args:
        logits: either ``B x P x h x w`` (P point prompts per image, e.g. 6 =
            3 pairs) or ``N x h x w`` (flattened samples).
        scores: ``B x P`` (or ``B x P x 1``) resp. ``N`` confidence scores.
        targets: same shape as ``logits``, values ``1`` / ``0`` / ``ignore_index``.
        lambda_conf: confidence-loss weight (paper and code: 0.1).
        c_max, variant: forwarded to :func:`aass_loss`.
        ignore_index: ignored target value (-1).

    With 4-D input the official reduction is reproduced: for every point index
    ``p`` both losses are computed over the batch ``logits[:, p]``, and the
    ``P`` results are averaged.  3-D input is a single group.

    Returns:
        ``(total, parts)`` with ``parts = {"aass", "conf", "total"}``
        (detached scalars, for logging).
    """
    if logits.dim() == 4:
        n_points = logits.shape[1]
        sc = scores.reshape(logits.shape[0], n_points)
        aass_terms, conf_terms = [], []
        for p in range(n_points):
            aass_terms.append(
                aass_loss(logits[:, p], targets[:, p], c_max=c_max, variant=variant, ignore_index=ignore_index)
            )
            conf_terms.append(confidence_loss(sc[:, p], logits[:, p], targets[:, p], ignore_index=ignore_index))
        l_aass = torch.stack(aass_terms).mean()
        l_conf = torch.stack(conf_terms).mean()
    elif logits.dim() == 3:
        l_aass = aass_loss(logits, targets, c_max=c_max, variant=variant, ignore_index=ignore_index)
        l_conf = confidence_loss(scores, logits, targets, ignore_index=ignore_index)
    else:
        raise ValueError(f"logits must be BxPxhxw or Nxhxw, got shape {tuple(logits.shape)}")
    total = l_aass + lambda_conf * l_conf
    parts = {"aass": l_aass.detach(), "conf": l_conf.detach(), "total": total.detach()}
    return total, parts
