"""How unsure a partition is, from the grid decode it already holds (no extra model pass).

``PartitionResult.uncertainty`` = :func:`partition_uncertainty`: ``1 - (1 - D) (1 - M)`` with D the
prompt disagreement (:func:`prompt_disagreement`: the grid prompts' masks against the winners of
their sources) and M the decision margin (:func:`margin_uncertainty`: how close the image score is
to the single-source threshold). High means "label this image next" (README, "Tasks worth
labelling next").
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DISAGREEMENT_SIZE", "prompt_disagreement", "margin_uncertainty", "partition_uncertainty"]

#: Side (pixels) the grid masks are binarised at for :func:`prompt_disagreement`, at most.
DISAGREEMENT_SIZE = 64


def prompt_disagreement(logits: torch.Tensor, cluster_of: np.ndarray, winners: np.ndarray,
                        crop: Optional[Tuple[int, int]] = None, size: int = DISAGREEMENT_SIZE) -> float:
    """How much the grid prompts disagree with the winners of their sources, in [0, 1].

    Args:
        logits: Nxmxm' low-res grid logits (the decoder's masks of the N prompts).
        cluster_of: N int, source of each prompt (index into ``winners``; -1: empty mask, or a
            source the answer dropped).
        winners: K int, grid index of each source's winning prompt.
        crop: (rows, cols) of the logits that cover the image (native grids are padded); None: all.
        size: masks are binarised (logit > 0) after a bilinear resize to at most ``size`` pixels
            per side (the resolution automatic clustering compares masks at).
    Returns:
        ``1 - mean_i IoU(mask_i, mask_winner(i))`` over the prompts with a non-empty mask, where
        winner(i) is the winner of i's source, or, for a prompt whose source was dropped, the
        winner its mask overlaps most. The mean over prompts weights each source by its number of
        prompts. 0 when every prompt returns exactly its winner's mask; 1 when no prompt has a
        mask or none overlaps a winner. One O(N K m^2 / s^2) matrix product; no model pass.
    """
    cluster_of = np.asarray(cluster_of, dtype=np.int64)
    winners = np.asarray(winners, dtype=np.int64)
    lo = logits if crop is None else logits[:, : crop[0], : crop[1]]
    if lo.shape[0] == 0 or len(winners) == 0:
        return 1.0
    h, w = lo.shape[-2:]
    f = min(1.0, size / max(h, w))
    out = (max(1, round(h * f)), max(1, round(w * f)))
    if out != (h, w):
        lo = F.interpolate(lo[:, None].float(), size=out, mode="bilinear", align_corners=False)[:, 0]
    masks = (lo > 0).reshape(lo.shape[0], -1).float()  # N x P
    area = masks.sum(1)
    members = np.flatnonzero(area.cpu().numpy() > 0)
    if len(members) == 0:
        return 1.0
    win = masks[torch.from_numpy(winners)]  # K x P
    inter = masks[torch.from_numpy(members)] @ win.T  # n x K
    union = area[torch.from_numpy(members)][:, None] + win.sum(1)[None, :] - inter
    iou = (inter / union.clamp(min=1)).cpu().numpy().astype(np.float64)
    # the source of each prompt -> its winner's position in ``winners`` (robust to empty clusters)
    pos = {int(cluster_of[wi]): j for j, wi in enumerate(winners) if cluster_of[wi] >= 0}
    own = np.array([pos.get(int(c), -1) for c in cluster_of[members]], dtype=np.int64)
    agree = np.where(own >= 0, iou[np.arange(len(members)), np.maximum(own, 0)], iou.max(1))
    return float(np.clip(1.0 - agree.mean(), 0.0, 1.0))


def margin_uncertainty(score: float, threshold: float) -> float:
    """``1 -`` the image score's distance from the single-source threshold, scaled to [0, 1].

    ``1 - (s - t) / (1 - t)`` above the threshold, ``1 - (t - s) / t`` below it: 1 at ``s = t``,
    0 at ``s = 0`` or ``s = 1`` (the threshold is clipped to [0.01, 0.99]).
    """
    s = float(np.clip(score, 0.0, 1.0))
    t = float(np.clip(threshold, 0.01, 0.99))
    room = (1.0 - t) if s >= t else t
    return float(np.clip(1.0 - abs(s - t) / room, 0.0, 1.0))


def partition_uncertainty(disagreement: float, score: float, threshold: float) -> float:
    """``1 - (1 - D) (1 - M)``: D = :func:`prompt_disagreement`, M = :func:`margin_uncertainty`.

    In [0, 1]; low only when the prompts agree with the answer *and* the score is far from the
    threshold (either signal alone makes it high).
    """
    d = float(np.clip(disagreement, 0.0, 1.0))
    return float(1.0 - (1.0 - d) * (1.0 - margin_uncertainty(score, threshold)))
