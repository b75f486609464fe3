"""Calibrate the automatic number of sources for a checkpoint on held-out data.

    safire calibrate --checkpoint CK.pt --data VAL_DIR [VAL_DIR ...] --out CK_CALIBRATED.pt

The automatic mode of :func:`safire.partition.partition_from_grid` has two decisions whose best
setting depends on the weights: ``single_source_threshold`` (an image whose forgery score is below
it is one source: authentic) and ``iou_threshold`` (grid prompts whose masks overlap more than
this belong to one source). This tool decodes every image's grid once, tries every pair of values
on a grid, and keeps the pair with the best mean permuted mIoU over all images (authentic images
included: splitting one counts against it). The chosen values are written into the checkpoint's
metadata (``meta["partition"]``), so the backend, ``safire predict`` and ``safire evaluate`` use
them with these weights. Use data the model was not trained on, and report test metrics on yet
other data.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from safire import metrics as M
from safire.build import build_safire
from safire.checkpoint import read_checkpoint, save_checkpoint
from safire.partition import decode_grid, partition_from_grid
from safire.predictor import SafirePredictor

THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
IOUS = (0.3, 0.4, 0.5, 0.6, 0.7)


def calibrate(model, data: Sequence[Any], *, thresholds: Sequence[float] = THRESHOLDS,
              ious: Sequence[float] = IOUS, grid_size: int = 16, seed: int = 0,
              limit: Optional[int] = None) -> Dict[str, Any]:
    """Grid search of (single_source_threshold, iou_threshold); returns the best pair, its score
    and the whole table (mean permuted mIoU over the images)."""
    pred = SafirePredictor(model, cache_bytes=0)
    n = len(data) if limit is None else min(limit, len(data))
    scores: Dict[tuple, List[float]] = {pair: [] for pair in itertools.product(thresholds, ious)}
    with torch.inference_mode():
        for i in range(n):
            item = data[i]
            gt = np.asarray(item.labels)
            emb, _ = pred.embed(item.image)
            grid = decode_grid(model, emb.embedding, grid_size, context=emb.context, orig_hw=emb.orig_hw)
            for t, iou in scores:
                res = partition_from_grid(grid, emb.embedding[0], model.config.img_size, emb.orig_hw, "auto",
                                          seed=seed, single_source_threshold=t, iou_threshold=iou)
                scores[(t, iou)].append(M.permuted_miou(res.labels, gt))
    table = {f"{t}/{iou}": float(np.mean(v)) for (t, iou), v in scores.items()}
    best = max(scores, key=lambda k: (np.mean(scores[k]), -abs(k[0] - 0.5), -abs(k[1] - 0.5)))
    return {"single_source_threshold": best[0], "iou_threshold": best[1],
            "miou": float(np.mean(scores[best])), "images": n, "table": table}


def main(argv: Optional[List[str]] = None) -> int:
    from .datasets import open_dataset
    from .prompt_data import ConcatReader

    p = argparse.ArgumentParser(prog="safire calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", nargs="+", required=True, help="held-out dataset folder(s) or list file(s)")
    p.add_argument("--out", required=True, help="where to write the calibrated checkpoint (may equal --checkpoint)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--half", action="store_true", help="store float16 weights (as the embedded model)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ck = read_checkpoint(args.checkpoint)
    model = build_safire(checkpoint=ck)
    res = calibrate(model, ConcatReader([open_dataset(d) for d in args.data]), grid_size=args.grid,
                    limit=args.limit)
    chosen = {"single_source_threshold": res["single_source_threshold"], "iou_threshold": res["iou_threshold"],
              "calibrated_on": [str(d) for d in args.data], "calibration_miou": round(res["miou"], 4),
              "calibration_images": res["images"]}
    meta = model.meta
    save_checkpoint(model, args.out, variant=meta["variant"], config=model.config,
                    model_version=str(meta.get("model_version")), provenance=meta.get("provenance"),
                    metrics=meta.get("metrics"), half=args.half, partition=chosen)
    print(json.dumps({k: v for k, v in res.items() if k != "table"}))
    print(json.dumps(res["table"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
