"""The official SAFIRE partition procedure, re-implemented as a measured baseline.

As in the released ``safire_predictor_multi.py`` / ``_binary.py``: every grid prompt's logits are
upsampled to the full ``S x S`` model frame and kept (logits and sigmoid maps), the binary masks are
read at the top-left pixel of each embedding cell for the representative features, the clusters'
most confident masks are combined at ``S x S`` by softmax. The clustering is our seeded k-means
(the official one is unseeded), so both pipelines can be compared on the same weights and seed.
Only for benchmarks: it is slow and memory-hungry by design.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from safire.clustering import kmeans_cosine
from safire.modeling import Safire
from safire.transforms import grid_points


@torch.inference_mode()
def official_partition(model: Safire, embedding: torch.Tensor, k: int, seed: int = 0, grid_size: int = 16,
                       points_per_batch: int = 64) -> np.ndarray:
    """Returns SxS int labels (argmax over the winners, in grid order of the winners)."""
    S = model.config.img_size
    pts = grid_points(grid_size, S)
    full_logits, full_probs, scores = [], [], []
    for i in range(0, len(pts), points_per_batch):
        c = torch.from_numpy(pts[i : i + points_per_batch])[:, None, :]
        lo, sc = model.decode(embedding, c, torch.ones(c.shape[:2]))
        up = F.interpolate(lo[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
        full_logits.append(up.numpy().copy())
        full_probs.append(torch.sigmoid(up).numpy())
        scores.append(sc.numpy())
    logits = np.concatenate(full_logits)
    probs = np.concatenate(full_probs)  # kept, as the official code keeps its "pred_mask" maps
    scores = np.concatenate(scores)
    seg = logits > 0
    stride = S // embedding.shape[-1]
    cells = seg[:, ::stride, ::stride].reshape(len(seg), -1).astype(np.float64)
    emb = embedding[0].reshape(embedding.shape[1], -1).T.double().numpy()
    counts = cells.sum(1)
    valid = counts > 0
    feats = cells @ emb / np.maximum(counts, 1)[:, None]
    labels = np.full(len(seg), -1)
    labels[valid], _ = kmeans_cosine(feats[valid], k, seed=seed)
    winners = []
    for c in range(labels.max() + 1):
        members = np.flatnonzero(labels == c)
        winners.append(members[np.argmax(scores[members])])
    winners = sorted(winners)  # channel order = grid order, as official
    if len(winners) == 1:
        return np.zeros((S, S), np.int64)
    stack = torch.from_numpy(logits[winners])
    del probs
    return torch.softmax(stack, dim=0).argmax(0).numpy()
