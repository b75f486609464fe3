"""The official SAFIRE partition procedure, re-implemented as a measured baseline.

As the released ``infer_multi.py`` / ``safire_predictor_multi.py`` drive SAM's automatic mask
generator (reference note, section 4), using segment-anything's own AMG utilities:

1. all ``grid_size**2`` single positive prompts are decoded in **one batch** (``points_per_batch``
   = 256) with SAM's decoder as is (no shared-image shortcut), and every mask's logits are
   upsampled bilinearly to the full ``S x S`` model frame;
2. per mask, as the AMG's ``_process_batch``: the stability score is computed (its filter is off),
   the logits are thresholded, boxes computed, the crop-edge filter evaluated, masks compressed to
   RLE; SAFIRE's modified AMG also keeps each mask's sigmoid map and raw logits;
3. ``generate`` decodes every RLE back to a binary mask;
4. SAFIRE's predictor reads each binary mask at the top-left pixel of each embedding cell
   (OpenCV nearest resize) for the representative features, clusters them, and combines the
   clusters' most confident masks at ``S x S`` by softmax.

The clustering is our seeded k-means (the official one is unseeded), so both pipelines can be
compared on the same weights and seed. Only for benchmarks: slow and memory-hungry by design.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import (
    batched_mask_to_box,
    calculate_stability_score,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    rle_to_mask,
)

from safire.clustering import kmeans_cosine
from safire.modeling import Safire
from safire.transforms import grid_points


@torch.inference_mode()
def official_partition(model: Safire, embedding: torch.Tensor, k: int, seed: int = 0, grid_size: int = 16,
                       points_per_batch: int = 256) -> np.ndarray:
    """Returns SxS int labels (argmax over the winners, in grid order of the winners)."""
    S = model.config.img_size
    pts = grid_points(grid_size, S)
    records = []
    for i in range(0, len(pts), points_per_batch):
        c = torch.from_numpy(pts[i : i + points_per_batch])[:, None, :]
        lo, sc = model.decode(embedding, c, torch.ones(c.shape[:2]), fast=False)
        logits = F.interpolate(lo[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
        pred_mask = torch.sigmoid(logits)  # kept by SAFIRE's AMG ("pred_mask")
        stability = calculate_stability_score(logits, 0.0, 1.0)  # computed; its filter is off
        masks = logits > 0.0
        boxes = batched_mask_to_box(masks)
        is_box_near_crop_edge(boxes, [0, 0, S, S], [0, 0, S, S])  # never fires: the crop is the image
        rles = mask_to_rle_pytorch(masks)
        for j, rle in enumerate(rles):
            records.append({"rle": rle, "predicted_iou": float(sc[j]), "stability_score": float(stability[j]),
                            "pred_mask": pred_mask[j].numpy(), "logit": logits[j].numpy()})
    segs = np.stack([rle_to_mask(r["rle"]) for r in records])  # generate(): binary masks from RLE
    scores = np.array([r["predicted_iou"] for r in records])
    stride = S // embedding.shape[-1]
    cells = segs[:, ::stride, ::stride].reshape(len(segs), -1).astype(np.float64)
    emb = embedding[0].reshape(embedding.shape[1], -1).T.double().numpy()
    counts = cells.sum(1)
    valid = counts > 0
    feats = cells @ emb / np.maximum(counts, 1)[:, None]
    labels = np.full(len(segs), -1)
    labels[valid], _ = kmeans_cosine(feats[valid], k, seed=seed)
    winners = []
    for c in range(labels.max() + 1):
        members = np.flatnonzero(labels == c)
        winners.append(members[np.argmax(scores[members])])
    winners = sorted(winners)  # channel order = grid order, as official
    if len(winners) == 1:
        return np.zeros((S, S), np.int64)
    stack = torch.from_numpy(np.stack([records[w]["logit"] for w in winners]))
    return torch.softmax(stack, dim=0).argmax(0).numpy()
