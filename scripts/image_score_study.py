"""Which image-level forgery score separates authentic from forged images best? (docs/image-score.md)

    python scripts/image_score_study.py dump --data data/val-mix --out VAL.npz [--limit N]
    python scripts/image_score_study.py compare VAL.npz [TEST.npz ...]

``dump`` decodes every image's grid once with the checkpoint (default: the embedded model) and
stores what an image score may use: the grid prompts' low-resolution mask logits (cropped to the
image, resized to 32x32), their confidences, representative features, and the truth (number of
sources). ``compare`` computes every candidate score of :data:`CANDIDATES` from those dumps, and the
shipped logistic score of ``safire.image_score`` cross-validated, and prints each AUC (authentic vs
forged) per file: choose on validation dumps, report on test dumps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safire import metrics as M  # noqa: E402
from safire.clustering import kmeans_cosine  # noqa: E402
from safire.image_score import STATISTICS, complementarity, fit_logistic, grid_statistics, logistic_score  # noqa: E402

SIDE = 32


def dump(args) -> int:
    from safire.build import build_safire
    from safire.partition import decode_grid, native_features
    from safire.predictor import SafirePredictor
    from training.datasets import open_dataset

    torch.set_num_threads(args.threads)
    model = build_safire(checkpoint=args.checkpoint, use_default=args.checkpoint is None)
    pred = SafirePredictor(model, cache_bytes=0)
    out: Dict[str, list] = {"masks": [], "conf": [], "feats": [], "valid": [], "k": [], "area": []}
    t0 = time.perf_counter()
    items = [(ds, i) for ds in (open_dataset(d) for d in args.data)
             for i in range(len(ds) if args.limit is None else min(args.limit, len(ds)))]
    with torch.inference_mode():
        for n, (ds, i) in enumerate(items):
            item = ds[i]
            gt = np.asarray(item.labels)
            emb, _ = pred.embed(item.image)
            grid = decode_grid(model, emb.embedding, args.grid, context=emb.context, orig_hw=emb.orig_hw)
            logits = grid.logits
            if grid.native is not None:
                rows, cols = grid.native.cells
                logits = logits[:, : 4 * rows, : 4 * cols]
                feats, valid = native_features(grid.logits, grid.native)
            else:
                from safire.partition import representative_features
                feats, valid = representative_features(grid.logits, emb.embedding[0], model.config.img_size)
            small = F.interpolate(logits[:, None].float(), size=(SIDE, SIDE), mode="bilinear",
                                  align_corners=False)[:, 0]
            present, counts = np.unique(gt[gt != 255], return_counts=True)
            out["masks"].append(small.half().numpy())
            out["conf"].append(grid.scores.float().numpy())
            out["feats"].append(feats.astype(np.float32))
            out["valid"].append(valid)
            out["k"].append(len(present))
            out["area"].append(float(1.0 - counts.max() / counts.sum()))
            print(f"{n + 1}/{len(items)} k={len(present)} {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    np.savez_compressed(args.out, masks=np.stack(out["masks"]), conf=np.stack(out["conf"]),
                        feats=np.stack(out["feats"]), valid=np.stack(out["valid"]), k=np.array(out["k"]),
                        area=np.array(out["area"]))
    return 0


# --- candidate scores: (masks Nx32x32 logits, conf N, feats NxC, valid N) -> float -----------------

def _comp(a: np.ndarray, b: np.ndarray) -> float:
    return complementarity(torch.from_numpy(a), torch.from_numpy(b))


def _stats(masks, conf, valid) -> Dict[str, float]:
    """The library's grid statistics (the dumped masks are already SIDE x SIDE)."""
    return grid_statistics(torch.from_numpy(masks), torch.from_numpy(conf), valid, side=SIDE)


def _winner_comp(masks, conf, feats, valid, k: int) -> float:
    idx = np.flatnonzero(valid)
    if len(idx) < k:
        return 0.0
    lab, _ = kmeans_cosine(feats[idx].astype(np.float64), k, seed=0, n_init=4)
    win = [idx[lab == c][np.argmax(conf[idx[lab == c]])] for c in range(k) if (lab == c).any()]
    return max((_comp(masks[a], masks[b]) for i, a in enumerate(win) for b in win[i + 1:]), default=0.0)


def _binary(masks, valid):
    return (masks[valid] > 0).reshape(int(valid.sum()), -1)


def pairwise_disagreement(masks, conf, feats, valid) -> float:
    """1 - mean IoU over all pairs of binarised prompt masks (``safire.image_score``)."""
    return _stats(masks, conf, valid)["pairwise_disagreement"]


def confidence_mean(masks, conf, feats, valid) -> float:
    """Mean decoder confidence over all prompts (``safire.image_score``)."""
    return _stats(masks, conf, valid)["confidence_mean"]


def abs_logit(masks, conf, feats, valid) -> float:
    """Mean |mask logit| of the prompts with a mask (how decided the masks are)."""
    m = masks[valid] if valid.any() else masks
    return float(np.abs(m).mean())


def partial_share(masks, conf, feats, valid) -> float:
    """Share of prompts whose mask misses more than 10 % of the image."""
    b = _binary(masks, valid)
    return float((b.mean(1) < 0.9).mean()) if len(b) else 0.0


def vote_minority(masks, conf, feats, valid) -> float:
    """Mean over pixels of min(v, 1 - v), v = share of prompts whose mask holds the pixel (x2)."""
    b = _binary(masks, valid)
    if not len(b):
        return 0.0
    v = b.mean(0)
    return float(2 * np.minimum(v, 1 - v).mean())


def soft_pairwise(masks, conf, feats, valid) -> float:
    """Mean complementarity over all pairs of prompts (sigmoid masks)."""
    p = 1 / (1 + np.exp(-masks[valid].reshape(int(valid.sum()), -1).astype(np.float32)))
    if len(p) < 2:
        return 0.0
    m = p.shape[1]
    inter = p @ p.T
    s = p.sum(1)
    comp = (s[:, None] + s[None] - 2 * inter) / m
    return float(comp[np.triu_indices(len(p), 1)].mean())


def max_comp_prompt(masks, conf, feats, valid) -> float:
    """Largest complementarity of any prompt with the most confident prompt."""
    idx = np.flatnonzero(valid)
    if len(idx) < 2:
        return 0.0
    top = idx[np.argmax(conf[idx])]
    return max(_comp(masks[top], masks[j]) for j in idx if j != top)


def feature_spread(masks, conf, feats, valid) -> float:
    """Largest cosine distance between two prompts' representative features."""
    f = feats[valid].astype(np.float64)
    if len(f) < 2:
        return 0.0
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-9)
    return float(1 - (f @ f.T).min())


CANDIDATES: Dict[str, Callable] = {
    "comp2 (current)": lambda *a: _winner_comp(*a, 2),
    "comp3 max pair": lambda *a: _winner_comp(*a, 3),
    "comp4 max pair": lambda *a: _winner_comp(*a, 4),
    "pairwise disagreement": pairwise_disagreement,
    "confidence mean": confidence_mean,
    "mean |logit|": abs_logit,
    "soft pairwise": soft_pairwise,
    "partial share": partial_share,
    "vote minority": vote_minority,
    "max comp prompt": max_comp_prompt,
    "feature spread": feature_spread,
    "invalid share": lambda m, c, f, v: float(1 - v.mean()),
}


def compare(args) -> int:
    for path in args.dumps:
        d = np.load(path)
        forged = d["k"] > 1
        print(f"\n{path}: {len(d['k'])} images, {int((~forged).sum())} authentic")
        print("| score | AUC | AUC (forged area >= 5 %) |\n|---|---|---|")
        big = ~forged | (d["area"] >= 0.05)
        for name, fn in CANDIDATES.items():
            s = np.array([fn(d["masks"][i].astype(np.float32), d["conf"][i], d["feats"][i], d["valid"][i])
                          for i in range(len(forged))])
            print(f"| {name} | {M.image_auc(s.tolist(), forged.tolist()):.3f} | "
                  f"{M.image_auc(s[big].tolist(), forged[big].tolist()):.3f} |")
        # the shipped score: a logistic model of the two statistics, 5-fold cross-validated here
        rows = [_stats(d["masks"][i].astype(np.float32), d["conf"][i], d["valid"][i]) for i in range(len(forged))]
        fold = np.random.default_rng(0).permutation(len(forged)) % 5
        cv = np.zeros(len(forged))
        for f in range(5):
            model = fit_logistic([rows[i] for i in np.flatnonzero(fold != f)], forged[fold != f], STATISTICS)
            for i in np.flatnonzero(fold == f):
                cv[i] = logistic_score(rows[i], model)
        print(f"| logistic of {' + '.join(STATISTICS)} (5-fold CV) | {M.image_auc(cv.tolist(), forged.tolist()):.3f} | "
              f"{M.image_auc(cv[big].tolist(), forged[big].tolist()):.3f} |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--data", nargs="+", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--checkpoint", default=None)
    d.add_argument("--grid", type=int, default=16)
    d.add_argument("--limit", type=int, default=None)
    d.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("compare")
    c.add_argument("dumps", nargs="+")
    args = ap.parse_args()
    return dump(args) if args.cmd == "dump" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
