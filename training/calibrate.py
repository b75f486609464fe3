"""Calibrate the automatic number of sources for a checkpoint on held-out data.

    safire calibrate --checkpoint CK.pt --data VAL_DIR [VAL_DIR ...] --out CK_CALIBRATED.pt

First it fits the image-level forgery score for these weights (``--score logistic``, default): a
logistic model of two grid statistics (:mod:`safire.image_score`), fitted on the calibration images
(authentic vs forged) and stored with the weights; ``--score complementarity`` keeps the model-free
score. Then the automatic mode of :func:`safire.partition.partition_from_grid` has two decisions
whose best setting depends on the weights: ``single_source_threshold`` (an image whose forgery score is below
it is one source: authentic) and ``iou_threshold`` (grid prompts whose masks overlap more than
this belong to one source). This tool decodes every image's grid once, tries every pair of values
on a grid, and keeps the pair with the best mean permuted mIoU over all images (authentic images
included: splitting one counts against it) among the pairs that split at most
``--max-auth-split`` of the authentic images (default 10 %; if none does, the pair that splits
fewest). ``--curve PNG`` draws the trade-off: share of authentic images split against mean pmIoU of
the forged ones, one point per threshold. The chosen values are written into the checkpoint's
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
from safire.image_score import fit_logistic, logistic_score
from safire.partition import decode_grid, partition_from_grid
from safire.predictor import SafirePredictor

#: Candidate single-source thresholds (the score is in [0, 1]) and mask-IoU thresholds.
THRESHOLDS = tuple(round(0.1 + 0.05 * i, 2) for i in range(18))  # 0.1 .. 0.95
IOUS = (0.3, 0.4, 0.5, 0.6, 0.7)


def image_records(model, data: Sequence[Any], *, ious: Sequence[float] = IOUS, grid_size: int = 16,
                  seed: int = 0, limit: Optional[int] = None) -> List[Dict[str, Any]]:
    """Decode every image's grid once; per image what the threshold search needs.

    Each record: ``k`` (true number of sources), ``statistics`` (grid statistics for a score
    model), ``complementarity`` (the default score), ``one`` (pmIoU of answering one source) and
    ``split`` (per iou_threshold: pmIoU and number of sources of the automatic answer when the
    image passes the single-source test). For a threshold t the automatic answer is ``split`` when
    the image's score is >= t and one source otherwise, so no image is decoded twice.
    """
    pred = SafirePredictor(model, cache_bytes=0)
    n = len(data) if limit is None else min(limit, len(data))
    out: List[Dict[str, Any]] = []
    with torch.inference_mode():
        for i in range(n):
            item = data[i]
            gt = np.asarray(item.labels)
            emb, _ = pred.embed(item.image)
            grid = decode_grid(model, emb.embedding, grid_size, context=emb.context, orig_hw=emb.orig_hw)
            rec: Dict[str, Any] = {"k": int(len(np.unique(gt[gt != 255]))),
                                   "one": M.permuted_miou(np.zeros(gt.shape, np.uint8), gt), "split": {}}
            for iou in ious:
                res = partition_from_grid(grid, emb.embedding[0], model.config.img_size, emb.orig_hw, "auto",
                                          seed=seed, single_source_threshold=-1.0, iou_threshold=iou)
                rec["split"][iou] = (M.permuted_miou(res.labels, gt), int(res.num_sources))
            # score inputs do not depend on iou_threshold: the last partition's
            rec["statistics"], rec["complementarity"] = res.statistics, float(res.score)
            out.append(rec)
    return out


def search(records: Sequence[Dict[str, Any]], scores: Sequence[float], *,
           thresholds: Sequence[float] = THRESHOLDS, ious: Sequence[float] = IOUS,
           max_auth_split: float = 0.10) -> Dict[str, Any]:
    """Choose (single_source_threshold, iou_threshold) from :func:`image_records` and image scores.

    Keeps the pair with the best mean pmIoU over all images (authentic ones included) among the
    pairs that split at most ``max_auth_split`` of the authentic images (if none does, the pair
    that splits fewest). ``table``, per pair: mean pmIoU over all images, over forged images, the
    share of authentic images split and the share of forged images returned as one source.
    """
    k = np.asarray([r["k"] for r in records])
    sc = np.asarray(scores, dtype=np.float64)
    one = np.asarray([r["one"] for r in records])
    auth, forged = k == 1, k > 1
    table: Dict[str, Dict[str, float]] = {}
    pairs = list(itertools.product(thresholds, ious))
    for t, iou in pairs:
        split_m = np.asarray([r["split"][iou][0] for r in records])
        split_k = np.asarray([r["split"][iou][1] for r in records])
        passed = sc >= t
        m = np.where(passed, split_m, one)
        f = np.where(passed, split_k, 1)
        table[f"{t}/{iou}"] = {
            "miou": float(m.mean()),
            "miou_forged": float(m[forged].mean()) if forged.any() else float("nan"),
            "auth_split": float((f[auth] > 1).mean()) if auth.any() else 0.0,
            "forged_empty": float((f[forged] == 1).mean()) if forged.any() else 0.0}
    ok = [p for p in pairs if table[f"{p[0]}/{p[1]}"]["auth_split"] <= max_auth_split]
    key = (lambda p: (table[f"{p[0]}/{p[1]}"]["miou"], -abs(p[0] - 0.5), -abs(p[1] - 0.5)))
    best = max(ok, key=key) if ok else min(pairs, key=lambda p: (table[f"{p[0]}/{p[1]}"]["auth_split"],
                                                                 -table[f"{p[0]}/{p[1]}"]["miou"]))
    b = table[f"{best[0]}/{best[1]}"]
    return {"single_source_threshold": best[0], "iou_threshold": best[1], "miou": b["miou"],
            "miou_forged": b["miou_forged"], "auth_split": b["auth_split"], "forged_empty": b["forged_empty"],
            "constraint_met": bool(ok), "max_auth_split": max_auth_split, "images": len(records),
            "authentic_images": int(auth.sum()), "table": table}


def calibrate(model, data: Sequence[Any], *, thresholds: Sequence[float] = THRESHOLDS,
              ious: Sequence[float] = IOUS, grid_size: int = 16, seed: int = 0,
              limit: Optional[int] = None, max_auth_split: float = 0.10,
              score: str = "logistic") -> Dict[str, Any]:
    """Fit the image score and grid-search (single_source_threshold, iou_threshold).

    ``score``: "logistic" fits a score model (:func:`safire.image_score.fit_logistic`) on these
    images' grid statistics when they hold authentic and forged images (``image_score`` in the
    result, with its AUC on them; the complementarity's AUC is reported next to it);
    "complementarity" keeps the default score. Returns :func:`search`'s result plus ``image_score``
    (None for the complementarity), ``auc`` and ``auc_complementarity``.
    """
    if score not in ("logistic", "complementarity"):
        raise ValueError(f"score must be 'logistic' or 'complementarity', got {score!r}")
    records = image_records(model, data, ious=ious, grid_size=grid_size, seed=seed, limit=limit)
    forged = [r["k"] > 1 for r in records]
    comp = [r["complementarity"] for r in records]
    score_model = None
    scores = comp
    if score == "logistic" and any(forged) and not all(forged) and len(records) >= 4:
        score_model = fit_logistic([r["statistics"] for r in records], forged)
        scores = [logistic_score(r["statistics"], score_model) for r in records]
    res = search(records, scores, thresholds=thresholds, ious=ious, max_auth_split=max_auth_split)
    both = any(forged) and not all(forged)
    res.update(image_score=score_model,
               auc=M.image_auc(scores, forged) if both else float("nan"),
               auc_complementarity=M.image_auc(comp, forged) if both else float("nan"))
    return res


def plot_curve(res: Dict[str, Any], path: str, title: str = "") -> str:
    """PNG of the trade-off at the chosen iou_threshold: x = share of authentic images split,
    y = mean pmIoU of forged images, one point per single_source_threshold (annotated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iou = res["iou_threshold"]
    pts = sorted((float(key.split("/")[0]), v) for key, v in res["table"].items() if float(key.split("/")[1]) == iou)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    xs = [100 * v["auth_split"] for _, v in pts]
    ys = [v["miou_forged"] for _, v in pts]
    ax.plot(xs, ys, "o-")
    for (t, _), x, y in zip(pts, xs, ys):
        ax.annotate(f"{t:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    chosen = res["table"][f"{res['single_source_threshold']}/{iou}"]
    ax.plot([100 * chosen["auth_split"]], [chosen["miou_forged"]], "r*", markersize=14, label="chosen")
    ax.axvline(100 * res["max_auth_split"], color="grey", linestyle=":", label="authentic split limit")
    ax.set_xlabel("authentic images split into several sources (%)")
    ax.set_ylabel("mean pmIoU, forged images (auto)")
    ax.set_title(title or f"automatic number of sources (iou_threshold {iou})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def meta_version(model) -> str:
    return str((getattr(model, "meta", None) or {}).get("model_version", "model"))


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
    p.add_argument("--max-auth-split", type=float, default=0.10,
                   help="largest share of authentic images the chosen setting may split (default 0.10)")
    p.add_argument("--score", choices=("logistic", "complementarity"), default="logistic",
                   help="image score: fit a logistic score model on the data (default) or keep the "
                        "complementarity of two winners")
    p.add_argument("--curve", default=None, help="write the trade-off curve (PNG) here")
    p.add_argument("--json", default=None, help="write the whole result (JSON) here")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    ck = read_checkpoint(args.checkpoint)
    model = build_safire(checkpoint=ck)
    res = calibrate(model, ConcatReader([open_dataset(d) for d in args.data]), grid_size=args.grid,
                    limit=args.limit, max_auth_split=args.max_auth_split, score=args.score)
    chosen = {"single_source_threshold": res["single_source_threshold"], "iou_threshold": res["iou_threshold"],
              **({"image_score": res["image_score"]} if res["image_score"] else {}),
              "calibration_auc": round(res["auc"], 4) if np.isfinite(res["auc"]) else None,
              "calibrated_on": [str(d) for d in args.data], "calibration_miou": round(res["miou"], 4),
              "calibration_images": res["images"], "calibration_auth_split": round(res["auth_split"], 4),
              "calibration_forged_empty": round(res["forged_empty"], 4)}
    if args.curve:
        plot_curve(res, args.curve, f"{meta_version(model)}: automatic number of sources")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    meta = model.meta
    save_checkpoint(model, args.out, variant=meta["variant"], config=model.config,
                    model_version=str(meta.get("model_version")), provenance=meta.get("provenance"),
                    metrics=meta.get("metrics"), half=args.half, partition=chosen)
    print(json.dumps({k: v for k, v in res.items() if k != "table"}))
    print(json.dumps(res["table"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
