"""Held-out evaluation of the full partition pipeline (what users get), per image and summarised.

For each image the grid is decoded once and clustered three ways: automatic number of sources,
the true number of sources (k-means, as in the paper's Table 3) and two sources (the binary heat
map of the paper's Table 1). Metrics:

- multi-source: permuted mIoU (Hungarian) and ARI, with auto and with the true K, per K;
- binary (forged images): permuted F1 at 0.5 and at the best threshold, with the don't-care band;
- image level: AUC of the forgery score (authentic vs forged), balanced accuracy at 0.5, and the
  share of authentic images that automatic mode splits into several sources.

``--report DIR`` also writes a static HTML report (``training/report.py``): the tables, the ROC
curve of the image score and the binary F1 per threshold as PNGs, and a gallery of per-image
panels, worst cases first. ``training/robustness.py`` (``safire robustness``) runs this evaluation
on degraded copies of the images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from safire import metrics as M
from safire.modeling import Safire
from safire.partition import calibrated_defaults, decode_grid, partition_from_grid
from safire.predictor import SafirePredictor


@dataclass
class EvalResult:
    summary: Dict[str, float]
    per_image: List[Dict[str, Any]] = field(default_factory=list)


def _num_sources(labels: np.ndarray) -> int:
    present = np.unique(labels[labels != 255])
    return int(len(present))


def evaluate_partition(
    model: Safire,
    data: Sequence[Any],
    *,
    limit: Optional[int] = None,
    grid_size: int = 16,
    seed: int = 0,
    auto_settings: Optional[Dict[str, Any]] = None,
    f1_thresholds: Optional[Sequence[float]] = None,
    on_image: Optional[Callable[..., None]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> EvalResult:
    """Evaluate ``model`` on items with ``image`` (HxWx3 uint8) and ``labels`` (HxW, 255 ignore).

    ``auto_settings`` overrides the automatic-mode settings (default: the checkpoint's calibration).
    ``f1_thresholds``: forged images also get ``row["f1_curve"]``, the permuted binary F1 of the
    two-source heat map at each threshold. ``on_image(index, item, row, auto, binary)`` is called
    after each image with its automatic partition and its two-source partition (None for an
    authentic image). ``progress(done, total)`` after each image.
    """
    auto_kw = {**calibrated_defaults(model), **(auto_settings or {})}
    predictor = SafirePredictor(model, cache_bytes=0)
    n = len(data) if limit is None else min(limit, len(data))
    rows: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(n):
            item = data[i]
            image, gt = item.image, np.asarray(item.labels)
            k_true = max(1, _num_sources(gt))
            emb, _ = predictor.embed(image)
            grid = decode_grid(model, emb.embedding, grid_size, context=emb.context, orig_hw=emb.orig_hw)
            hw = emb.orig_hw
            e = emb.embedding[0]
            S = model.config.img_size
            auto = partition_from_grid(grid, e, S, hw, "auto", seed=seed, **auto_kw)
            row: Dict[str, Any] = {"name": getattr(item, "name", str(i)), "k_true": k_true,
                                   "k_auto": auto.num_sources, "score": auto.score}
            if k_true >= 2:
                fixed = partition_from_grid(grid, e, S, hw, k_true, seed=seed)
                two = fixed if k_true == 2 else partition_from_grid(grid, e, S, hw, 2, seed=seed)
                row["miou_auto"] = M.permuted_miou(auto.labels, gt)
                row["ari_auto"] = M.ari(auto.labels, gt)
                row["miou_k"] = M.permuted_miou(fixed.labels, gt)
                row["ari_k"] = M.ari(fixed.labels, gt)
                binary = (gt > 0) & (gt != 255)
                row["f1_fixed"] = M.f1_fixed(two.heatmap, binary)
                row["f1_best"] = M.f1_best(two.heatmap, binary)
                if f1_thresholds is not None:
                    row["f1_curve"] = [M.f1_fixed(two.heatmap, binary, threshold=float(t)) for t in f1_thresholds]
            else:
                two = None
            rows.append(row)
            if on_image is not None:
                on_image(i, item, row, auto, two)
            if progress is not None:
                progress(i + 1, n)
    summary: Dict[str, float] = {}

    def mean(key: str, sel=lambda r: True) -> float:
        vals = [r[key] for r in rows if key in r and sel(r) and r[key] == r[key]]
        return float(np.mean(vals)) if vals else float("nan")

    forged = [r for r in rows if r["k_true"] >= 2]
    authentic = [r for r in rows if r["k_true"] == 1]
    for key in ("miou_auto", "ari_auto", "miou_k", "ari_k", "f1_fixed", "f1_best"):
        if forged:
            summary[key] = mean(key)
    for k in sorted({r["k_true"] for r in forged}):
        for key in ("miou_auto", "ari_auto", "miou_k", "ari_k", "f1_fixed", "f1_best"):
            summary[f"{key}@{k}"] = mean(key, lambda r, k=k: r["k_true"] == k)
    if forged and authentic:
        scores = [r["score"] for r in rows]
        labels = [r["k_true"] >= 2 for r in rows]
        summary["image_auc"] = M.image_auc(scores, labels)
        summary["image_bacc"] = M.balanced_accuracy(scores, labels)
    if authentic:
        summary["auth_split_rate"] = float(np.mean([r["k_auto"] > 1 for r in authentic]))
    for k in sorted({r["k_true"] for r in rows}):
        summary[f"count@{k}"] = float(sum(r["k_true"] == k for r in rows))
    summary["count"] = float(len(rows))
    summary["seconds_per_image"] = (time.perf_counter() - t0) / max(len(rows), 1)
    return EvalResult(summary, rows)


def format_table(summary: Dict[str, float]) -> str:
    """The model-card table: one row per number of sources, then the image-level metrics."""
    ks = sorted({int(k.split("@")[1]) for k in summary if "@" in k} - {1})
    f = lambda key: f"{summary[key]:.3f}" if key in summary and summary[key] == summary[key] else "-"  # noqa: E731
    lines = ["| sources | images | mIoU, K given | ARI, K given | mIoU, K estimated | ARI, K estimated | "
             "binary F1 @0.5 | binary F1 best |", "|---|---|---|---|---|---|---|---|"]
    for k in ks:
        n = int(summary.get(f"count@{k}", 0))
        lines.append(f"| {k} | {n} | {f(f'miou_k@{k}')} | {f(f'ari_k@{k}')} | {f(f'miou_auto@{k}')} | "
                     f"{f(f'ari_auto@{k}')} | {f(f'f1_fixed@{k}')} | {f(f'f1_best@{k}')} |")
    lines.append("")
    lines.append("| image-level AUC (forged vs authentic) | balanced accuracy @0.5 | authentic images split "
                 "into several sources | authentic images | seconds per image |")
    lines.append("|---|---|---|---|---|")
    lines.append(f"| {f('image_auc')} | {f('image_bacc')} | {f('auth_split_rate')} | "
                 f"{int(summary.get('count@1', 0))} | {f('seconds_per_image')} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m training.evaluate --checkpoint CK --data DIR [DIR ...]``: held-out metrics table."""
    from safire.build import build_safire

    from .datasets import open_dataset
    from .prompt_data import ConcatReader

    p = argparse.ArgumentParser(prog="safire evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="weights (default: the embedded model)")
    p.add_argument("--data", nargs="+", required=True, help="dataset folder(s) or list file(s)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    p.add_argument("--limit-each", type=int, default=None, metavar="N",
                   help="evaluate the first N images of each --data folder (a mix of every set)")
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write summary and per-image rows to this file")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write a static HTML report to DIR/index.html: tables, ROC and per-threshold F1 "
                        "curves (PNG), per-image panels worst first")
    p.add_argument("--gallery", type=int, default=200,
                   help="with --report: at most this many per-image panels in the gallery (default 200)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = build_safire(checkpoint=args.checkpoint, device=args.device, use_default=args.checkpoint is None)
    data = ConcatReader([open_dataset(d) for d in args.data])
    if args.limit_each is not None:
        from .robustness import Subset

        data = Subset(data.readers, args.limit_each)
    if args.report:
        from .report import write_evaluation_report

        t0 = time.perf_counter()
        res, page = write_evaluation_report(model, data, args.report, limit=args.limit, grid_size=args.grid,
                                            seed=args.seed, gallery=args.gallery, data_names=args.data,
                                            command=["safire", "evaluate", *(argv if argv is not None else sys.argv[1:])])
        print(f"report: {page} ({time.perf_counter() - t0:.0f} s)")
    else:
        res = evaluate_partition(model, data, limit=args.limit, grid_size=args.grid, seed=args.seed)
    print(f"model {model.meta.get('model_version')}, {int(res.summary['count'])} images, grid {args.grid}, "
          f"seed {args.seed}")
    print(format_table(res.summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model_version": model.meta.get("model_version"), "summary": res.summary,
                       "per_image": res.per_image}, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
