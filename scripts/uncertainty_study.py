"""Does the partition's uncertainty rank images by how wrong the model is? (README, "Tasks worth
labelling next").

    python scripts/uncertainty_study.py --data data/val-mix --threads 1 [--out rows.json]
    python scripts/uncertainty_study.py --data data/test-k1 data/test-k2 data/test-k3 data/test-k4 --limit 16

For every image: the automatic partition with the checkpoint's calibration (what pre-annotation
answers in automatic mode), its per-image error ``1 - pmIoU`` (Hungarian permuted mIoU against the
truth; authentic images too: one predicted source = no error), the forgery score, the uncertainty
and its two parts. Prints the Spearman correlation of each value with the error, and the mean error
of the images each value ranks first (the quarter an annotator would label first).
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
from safire.partition import (calibrated_defaults, decode_grid, margin_uncertainty,  # noqa: E402
                              partition_from_grid)
from safire.predictor import SafirePredictor  # noqa: E402
from training.datasets import open_dataset  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["data/val-mix"], help="dataset folders")
    ap.add_argument("--checkpoint", default=None, help="default: the embedded default model")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="first N images of each dataset")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the per-image rows as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from scipy.stats import spearmanr

    model = build_safire(checkpoint=args.checkpoint, use_default=args.checkpoint is None)
    kw = calibrated_defaults(model)
    thr = float(kw.get("single_source_threshold", 0.5))
    sets = [open_dataset(d) for d in args.data]
    items = [(ds, i) for ds in sets for i in range(len(ds) if args.limit is None else min(args.limit, len(ds)))]
    n = len(items)
    predictor = SafirePredictor(model, cache_bytes=0)
    rows, t0, t_unc = [], time.perf_counter(), 0.0
    with torch.inference_mode():
        for i in range(n):
            ds, j = items[i]
            item = ds[j]
            gt = np.asarray(item.labels)
            emb, _ = predictor.embed(item.image)
            grid = decode_grid(model, emb.embedding, args.grid, context=emb.context, orig_hw=emb.orig_hw)
            auto = partition_from_grid(grid, emb.embedding[0], model.config.img_size, emb.orig_hw, "auto", **kw)
            t_unc += auto.timings.get("uncertainty", 0.0)
            present = np.unique(gt[gt != 255])
            rows.append({"name": getattr(item, "name", str(i)), "k_true": int(len(present)),
                         "k_auto": int(auto.num_sources), "error": 1.0 - M.permuted_miou(auto.labels, gt),
                         "score": float(auto.score), "uncertainty": float(auto.uncertainty),
                         "disagreement": float(auto.disagreement),
                         "margin": margin_uncertainty(auto.score, thr), "grid_prompts": int(len(grid.scores))})
            print(f"{i + 1}/{n} {rows[-1]}", file=sys.stderr, flush=True)
    err = np.array([r["error"] for r in rows])
    q = max(1, len(rows) // 4)
    print(f"model {model.meta.get('model_version')}, {len(rows)} images of {' '.join(args.data)}, grid {args.grid}, "
          f"single_source_threshold {thr}; mean error {err.mean():.3f}; "
          f"{(time.perf_counter() - t0) / max(1, len(rows)):.2f} s/image, uncertainty "
          f"{1000 * t_unc / max(1, len(rows)):.2f} ms/image")
    print("| value | Spearman with 1 - pmIoU (p) | mean error of the top quarter |\n|---|---|---|")
    for key in ("uncertainty", "disagreement", "margin", "score"):
        v = np.array([r[key] for r in rows])
        rho, p = spearmanr(v, err)
        top = np.argsort(-v, kind="stable")[:q]
        print(f"| {key} | {rho:+.3f} ({p:.3g}) | {err[top].mean():.3f} |")
    print(f"| (random order) | 0 | {err.mean():.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
