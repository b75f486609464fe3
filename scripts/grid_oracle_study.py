"""What limits the partition with K given: the clustering of the grid prompts, the choice of one
winner per source, or the masks themselves? (README model card, "what limits it").

    python scripts/grid_oracle_study.py --data data/val-mix data/val-score --threads 2 [--out rows.json]

For every forged image (K = its true number of sources) the 16x16 grid is decoded once and every
prompt is decoded again on the full embedding (what the partition does for its winners only). Then
the pmIoU (Hungarian, at a quarter of the resolution) of:

* ``shipped``: the partition as served (seeded k-means on the representative features, the most
  confident prompt of each cluster, softmax of the winners);
* ``kmeans_mean``: the same clusters, each source the mean of its members' logits instead of its
  winner's (an inference change, no oracle);
* ``oracle_clusters``: each prompt put in the true source under its point (a perfect clustering),
  then the model's own winner rule;
* ``oracle_clusters_mean``: perfect clustering, mean of the members' logits;
* ``oracle_best_mask``: not a partition: per true source, the best IoU of any single prompt's mask
  (threshold 0), averaged over sources: the ceiling of any winner choice.

If the oracle clusters score far above ``shipped``, the clustering is what fails; if even the best
single masks are poor, the masks (the encoder and decoder) are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safire import metrics as M  # noqa: E402
from safire.build import build_safire  # noqa: E402
from safire.partition import _winners as winners_of  # noqa: E402  (the partition's own winner rule)
from safire.partition import combine_winners, decode_grid, partition_from_grid  # noqa: E402
from safire.predictor import SafirePredictor  # noqa: E402
from training.datasets import open_dataset  # noqa: E402

IGNORE = 255
VARIANTS = ("shipped", "kmeans_mean", "oracle_clusters", "oracle_clusters_mean", "oracle_best_mask")


def mean_labels(full: torch.Tensor, cluster_of: np.ndarray) -> np.ndarray:
    """Labels from the mean logits of each cluster's members (full: N x h x w logits at the output size)."""
    means = [full[torch.from_numpy(np.flatnonzero(cluster_of == c))].mean(0)
             for c in range(int(cluster_of.max()) + 1) if (cluster_of == c).any()]
    if len(means) < 2:
        return np.zeros(full.shape[-2:], np.uint8)
    return torch.stack(means).argmax(0).to(torch.uint8).numpy()


def study_image(predictor: SafirePredictor, image: np.ndarray, gt: np.ndarray, k: int, seed: int = 0) -> dict:
    model = predictor.model
    H, W = gt.shape
    out_hw = (max(1, H // 4), max(1, W // 4))
    g = gt[::4, ::4][: out_hw[0], : out_hw[1]]
    emb, _ = predictor.embed(image)
    grid = decode_grid(model, emb.embedding, 16, context=emb.context, orig_hw=emb.orig_hw)
    res = partition_from_grid(grid, emb.embedding[0], predictor.img_size, out_hw, k, seed=seed)
    scores = grid.scores.cpu().numpy().astype(np.float64)
    n = len(scores)
    full = grid.native.to_image(grid.native.refine(np.arange(n)), out_hw).float()  # N x h x w logits
    row = {"k": k, "shipped": M.permuted_miou(res.labels, g)}
    # the shipped clusters (grid_labels: output source order, -1 = empty mask or dropped)
    cl = np.asarray(res.grid_labels)
    row["kmeans_mean"] = M.permuted_miou(mean_labels(full, cl), g) if (cl >= 0).any() else row["shipped"]
    # perfect clustering: the true source under each prompt's point
    pts = grid.points
    ys = np.clip(pts[:, 1].astype(int), 0, H - 1)
    xs = np.clip(pts[:, 0].astype(int), 0, W - 1)
    truth = gt[ys, xs].astype(np.int64)
    truth[truth == IGNORE] = -1
    valid = (full > 0).flatten(1).any(1).numpy()
    truth[~valid] = -1
    w = winners_of(truth, scores)
    if len(w) >= 2:
        comb = combine_winners(full, w, scores, out_hw, winner_logits=full[torch.from_numpy(w)],
                               to_image=lambda lo, hw: lo)
        row["oracle_clusters"] = M.permuted_miou(comb["labels"], g)
        row["oracle_clusters_mean"] = M.permuted_miou(mean_labels(full, truth), g)
    else:
        row["oracle_clusters"] = row["oracle_clusters_mean"] = M.permuted_miou(np.zeros_like(g), g)
    # the best single mask per true source
    masks = (full > 0).numpy()
    best = []
    for s in range(k):
        t = g == s
        if not t.any():
            continue
        inter = (masks & t).sum((1, 2))
        union = (masks | t).sum((1, 2))
        best.append(float((inter / np.maximum(union, 1)).max()))
    row["oracle_best_mask"] = float(np.mean(best)) if best else 0.0
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["data/val-mix"], help="dataset folders")
    ap.add_argument("--checkpoint", default=None, help="default: the embedded default model")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each dataset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the per-image rows as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_safire(checkpoint=args.checkpoint, use_default=args.checkpoint is None)
    if not model.native:
        raise SystemExit("this study needs a native-resolution model")
    predictor = SafirePredictor(model, cache_bytes=0)
    rows, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for d in args.data:
            ds = open_dataset(d)
            for j in range(len(ds) if args.limit is None else min(args.limit, len(ds))):
                item = ds[j]
                if item.num_sources < 2:
                    continue
                row = study_image(predictor, item.image, np.asarray(item.labels), item.num_sources)
                row["name"] = item.name
                rows.append(row)
    print(f"{len(rows)} forged images, {time.perf_counter() - t0:.0f} s, model "
          f"{model.meta.get('model_version', '?')}")
    print("| sources | images | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for k in sorted({r["k"] for r in rows}) + ["all"]:
        sel = [r for r in rows if k == "all" or r["k"] == k]
        print(f"| {k} | {len(sel)} | " + " | ".join(f"{np.mean([r[v] for r in sel]):.3f}" for v in VARIANTS) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
