"""Static HTML evaluation report (``safire evaluate --data DIR --report OUT``).

``OUT/`` is one self-contained folder that opens from disk (no server, no scripts, no external
files):

- ``index.html``: what was evaluated (model version, SHA-256 of the weights, data, settings), the
  model-card tables, the two curves and the gallery;
- ``roc.png``: ROC curve of the image-level forgery score (forged vs authentic images);
- ``f1_threshold.png``: mean permuted binary F1 of the two-source heat map per threshold, per
  number of sources (the dashed line is the fixed threshold 0.5 of "F1 @0.5");
- ``gallery/NNNN.jpg``: one panel per image: the image, the ground-truth sources, the predicted
  sources (automatic number) and the heat map (two-source map for forged images, the automatic
  one for authentic images), sorted worst first: forged images by their automatic-mode pmIoU
  (lowest first), authentic images by their forgery score (highest first, i.e. false alarms),
  both on one "failure" scale (1 - pmIoU, or the score);
- ``results.json``: the summary and every per-image row.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

THRESHOLDS = [round(float(t), 2) for t in np.arange(0.05, 0.951, 0.05)]


def roc_points(scores: Sequence[float], positive: Sequence[bool]) -> Tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of ``score > t`` for every distinct score, from (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tps, fps = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], int)
    P, N = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fps[last] / N], np.r_[0.0, tps[last] / P]


def failure(row: Dict[str, Any]) -> float:
    """How badly an image went, in [0, 1]: 1 - automatic pmIoU (forged) or the score (authentic)."""
    if row.get("k_true", 1) >= 2:
        v = row.get("miou_auto", float("nan"))
        return 1.0 - v if v == v else 1.0
    return float(row.get("score", 0.0))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(header: List[str], rows: List[List[Any]]) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _plots(out_dir: str, rows: List[Dict[str, Any]], summary: Dict[str, float]) -> Dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: Dict[str, str] = {}
    # ROC of the image score
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    forged = [r["k_true"] >= 2 for r in rows]
    if any(forged) and not all(forged):
        fpr, tpr = roc_points([r["score"] for r in rows], forged)
        ax.plot(fpr, tpr, color="#c0392b", lw=2, label=f"image score, AUC {summary.get('image_auc', float('nan')):.3f}")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "needs forged and authentic images", ha="center", va="center", fontsize=9)
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls=":")
    ax.set(xlabel="false positive rate (authentic called forged)", ylabel="true positive rate",
           xlim=(0, 1), ylim=(0, 1.01), title="Image-level detection ROC")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "roc.png"))
    plt.close(fig)
    files["roc"] = "roc.png"

    # binary F1 per threshold
    fig, ax = plt.subplots(figsize=(5.2, 4.2), dpi=110)
    curves = [r for r in rows if "f1_curve" in r]
    if curves:
        for k in sorted({r["k_true"] for r in curves}):
            sel = np.array([r["f1_curve"] for r in curves if r["k_true"] == k], dtype=np.float64)
            ax.plot(THRESHOLDS, np.nanmean(sel, axis=0), lw=1.3, label=f"{k} sources ({len(sel)} images)")
        all_ = np.nanmean(np.array([r["f1_curve"] for r in curves], dtype=np.float64), axis=0)
        ax.plot(THRESHOLDS, all_, color="black", lw=2.2, label="all forged images")
        best = int(np.nanargmax(all_))
        ax.scatter([THRESHOLDS[best]], [all_[best]], color="black", zorder=3)
        ax.annotate(f"{all_[best]:.3f} @ {THRESHOLDS[best]:.2f}", (THRESHOLDS[best], all_[best]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.axvline(0.5, color="#999", ls="--", lw=1)
        ax.legend(fontsize=8, loc="lower center")
    else:
        ax.text(0.5, 0.5, "no forged images", ha="center", va="center", fontsize=9)
    ax.set(xlabel="threshold on the heat map", ylabel="mean permuted F1", xlim=(0, 1), ylim=(0, 1),
           title="Binary F1 per threshold (two-source map)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "f1_threshold.png"))
    plt.close(fig)
    files["f1"] = "f1_threshold.png"
    return files


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;
color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:13px}
dt{color:#666}dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
.plots img{max-width:48%;border:1px solid #ddd;margin-right:1%}
.card{border:1px solid #ddd;margin:10px 0;padding:6px;background:#fafafa}
.card img{max-width:100%;display:block}
.card .m{font-size:12px;font-family:ui-monospace,monospace;margin-top:4px}
.bad{color:#b03a2e;font-weight:600}
"""


def _html(meta: Dict[str, Any], summary: Dict[str, float], rows: List[Dict[str, Any]],
          plots: Dict[str, str], order: List[int], panels: Dict[int, str], gallery: int) -> str:
    ks = sorted({int(k.split("@")[1]) for k in summary if "@" in k} - {1})
    per_k = [[k, int(summary.get(f"count@{k}", 0)), summary.get(f"miou_k@{k}"), summary.get(f"ari_k@{k}"),
              summary.get(f"miou_auto@{k}"), summary.get(f"ari_auto@{k}"), summary.get(f"f1_fixed@{k}"),
              summary.get(f"f1_best@{k}")] for k in ks]
    if len(ks) > 1:
        per_k.append(["all forged", sum(int(summary.get(f"count@{k}", 0)) for k in ks), summary.get("miou_k"),
                      summary.get("ari_k"), summary.get("miou_auto"), summary.get("ari_auto"),
                      summary.get("f1_fixed"), summary.get("f1_best")])
    t1 = _table(["sources", "images", "pmIoU, K given", "ARI, K given", "pmIoU, K estimated", "ARI, K estimated",
                 "binary F1 @0.5", "binary F1 best"], per_k)
    t2 = _table(["image-level AUC", "balanced accuracy @0.5", "authentic images split", "authentic images",
                 "forged images", "seconds per image"],
                [[summary.get("image_auc"), summary.get("image_bacc"), summary.get("auth_split_rate"),
                  int(summary.get("count@1", 0)), int(sum(summary.get(f"count@{k}", 0) for k in ks)),
                  summary.get("seconds_per_image")]])
    info = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in meta.items())
    cards = []
    for rank, i in enumerate(order[:gallery], 1):
        r = rows[i]
        forged = r["k_true"] >= 2
        bits = [f"#{rank}", html.escape(str(r["name"])), f"failure {failure(r):.3f}",
                f"sources true {r['k_true']} / found {r['k_auto']}", f"score {r['score']:.3f}"]
        if forged:
            bits += [f"pmIoU auto {_fmt(r.get('miou_auto'))}", f"pmIoU K {_fmt(r.get('miou_k'))}",
                     f"ARI auto {_fmt(r.get('ari_auto'))}", f"F1@0.5 {_fmt(r.get('f1_fixed'))}",
                     f"F1 best {_fmt(r.get('f1_best'))}"]
        else:
            bits.append("authentic" + (" <span class='bad'>split into several sources</span>"
                                       if r["k_auto"] > 1 else ""))
        img = panels.get(i)
        pic = f"<img loading='lazy' src='{html.escape(img)}' alt='{html.escape(str(r['name']))}'>" if img else ""
        cards.append(f"<div class='card'>{pic}<div class='m'>{' | '.join(bits)}</div></div>")
    more = len(order) - min(len(order), gallery)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>SAFIRE evaluation: {html.escape(str(meta.get('model')))}</title>
<style>{_CSS}</style></head><body>
<h1>SAFIRE evaluation report</h1>
<div class="sub">{html.escape(str(meta.get('images')))} images, model {html.escape(str(meta.get('model')))},
written {html.escape(str(meta.get('written')))}</div>
<h2>What was evaluated</h2><dl>{info}</dl>
<h2>Multi-source and binary localisation</h2>
<p class="sub">pmIoU: mean IoU of the sources under the best matching of predicted to true sources (Hungarian);
ARI: adjusted Rand index of the pixel partition; "K given": k-means with the true number of sources (the paper's
protocol); "K estimated": automatic mode (what the backend and <code>safire predict</code> give by default);
binary F1: permuted F1 of the two-source heat map with the boundary don't-care band, at 0.5 and at the best
threshold per image.</p>
{t1}
<h2>Image-level detection</h2>
{t2}
<h2>Curves</h2>
<div class="plots"><img src="{plots['roc']}" alt="ROC curve"><img src="{plots['f1']}" alt="F1 per threshold"></div>
<h2>Gallery, worst first</h2>
<p class="sub">Each panel: the image | ground-truth sources (grey = unlabelled) | predicted sources, automatic
number (official SAFIRE palette, 0 = largest) | heat map (bright = forged; two-source map for forged images,
automatic-mode map for authentic ones). Order: "failure" = 1 - automatic pmIoU for forged images, the
forgery score for authentic ones.</p>
{''.join(cards)}
{f"<p class='sub'>{more} more images are in results.json (raise --gallery to show them).</p>" if more else ""}
</body></html>
"""


def write_evaluation_report(model: Any, data: Sequence[Any], out_dir: str, *, limit: Optional[int] = None,
                            grid_size: int = 16, seed: int = 0, gallery: int = 200,
                            data_names: Optional[Sequence[str]] = None, command: Optional[Sequence[str]] = None,
                            tile_height: int = 200) -> Tuple[Any, str]:
    """Evaluate ``model`` on ``data`` and write the report folder; returns (EvalResult, index path)."""
    from PIL import Image

    from safire.provenance import library_versions, weights_info
    from safire.visualize import colorize_partition, heatmap_colour, tile_row, truth_colour

    from .evaluate import evaluate_partition

    os.makedirs(os.path.join(out_dir, "gallery"), exist_ok=True)
    panels: Dict[int, str] = {}

    def on_image(i: int, item: Any, row: Dict[str, Any], auto: Any, two: Any) -> None:
        gt = np.asarray(item.labels)
        heat = (two if two is not None else auto).heatmap
        which = "two-source" if two is not None else "automatic"
        tile = tile_row([np.asarray(item.image), truth_colour(gt), colorize_partition(auto.labels), heatmap_colour(heat)],
                        ["image", f"truth ({row['k_true']})", f"predicted ({row['k_auto']})", f"heat map ({which})"],
                        tile_height=tile_height, nearest=[False, True, True, False])
        rel = f"gallery/{i:04d}.jpg"
        Image.fromarray(tile).save(os.path.join(out_dir, rel), quality=88)
        panels[i] = rel

    t0 = time.perf_counter()
    res = evaluate_partition(model, data, limit=limit, grid_size=grid_size, seed=seed, f1_thresholds=THRESHOLDS,
                             on_image=on_image)
    elapsed = time.perf_counter() - t0
    rows, summary = res.per_image, res.summary
    plots = _plots(out_dir, rows, summary)
    order = sorted(range(len(rows)), key=lambda i: -failure(rows[i]))
    meta_ = getattr(model, "meta", {}) or {}
    winfo = weights_info(model)
    meta: Dict[str, Any] = {
        "model": meta_.get("model_version"),
        "variant": meta_.get("variant"),
        "weights": f"{winfo['weights_file']} (sha256 {winfo['weights_sha256']})" if winfo["weights_file"] else "random",
        "data": ", ".join(map(str, data_names or [])) or "-",
        "images": len(rows),
        "grid, seed": f"{grid_size}, {seed}",
        "software": ", ".join(f"{k} {v}" for k, v in library_versions().items()),
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "evaluation time": f"{elapsed:.0f} s ({elapsed / max(len(rows), 1):.2f} s per image)",
    }
    if command:
        meta["command"] = " ".join(map(str, command))
    page = os.path.join(out_dir, "index.html")
    with open(page, "w", encoding="utf-8") as f:
        f.write(_html(meta, summary, rows, plots, order, panels, gallery))
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "thresholds": THRESHOLDS,
                   "per_image": [{**r, "failure": failure(r), "panel": panels.get(i)} for i, r in enumerate(rows)]},
                  f, indent=1, default=float)
    return res, page
