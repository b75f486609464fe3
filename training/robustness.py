"""``safire robustness``: the same images degraded step by step, evaluated at every step.

    safire robustness --data DIR [DIR ...] --out OUT [--checkpoint CK] [--limit N]
                      [--jpeg 100,90,80,70,60,50] [--resize 0.5,0.75,1.25,1.5] [--blur 0.5,1,2]
                      [--noise 2,5,10] [--no-social]

Degradations (each applied to the clean image alone, never chained with another family):

- ``clean``: the images as stored;
- ``jpeg Q``: one JPEG compression at quality Q (Pillow/libjpeg, standard IJG tables scaled by Q,
  4:2:0 chroma subsampling, as most cameras and web pipelines), decoded again;
- ``resize F``: both sides scaled by F (bicubic; the truth masks by nearest neighbour), so
  the metrics are computed at the degraded size;
- ``blur S``: Gaussian blur with standard deviation S pixels (each channel);
- ``noise S``: additive Gaussian noise with standard deviation S (0-255 scale), seeded per image,
  rounded and clipped;
- ``social``: "shared on a social network": downscaled (bicubic) so the long side is at most
  1600 px, then JPEG quality 75 (4:2:0). Images whose long side is already <= 1600 px are only
  recompressed.

At each level the full pipeline runs (:func:`training.evaluate.evaluate_partition`: grid decoded
once, automatic mode, the true K, two sources): pmIoU and ARI with the true number of sources
(the paper's protocol) and in automatic mode, permuted binary F1 of the two-source heat map at 0.5
and at the best threshold, and the AUC of the image-level score (needs authentic and forged images
among the data, e.g. ``--data test-k1 test-k2``). ``OUT/`` receives ``robustness.md`` (the table),
``robustness.png`` (one panel per family, metric against level, the clean value dashed),
``robustness.json`` (every summary) and ``examples/`` (the first image at every level, so the
degradations can be checked by eye; ``--no-examples`` leaves them out).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

SOCIAL_LONG_SIDE = 1600
SOCIAL_QUALITY = 75
DEFAULT_LEVELS: Dict[str, List[float]] = {
    "jpeg": [100, 90, 80, 70, 60, 50],
    "resize": [0.5, 0.75, 1.25, 1.5],
    "blur": [0.5, 1.0, 2.0],
    "noise": [2.0, 5.0, 10.0],
}
# (summary key, column title, plotted)
METRICS: List[Tuple[str, str, bool]] = [
    ("miou_k", "pmIoU, K given", True),
    ("ari_k", "ARI, K given", True),
    ("miou_auto", "pmIoU, K estimated", False),
    ("f1_fixed", "binary F1 @0.5", False),
    ("f1_best", "binary F1 best", True),
    ("image_auc", "image AUC", True),
]


# ------------------------------------------------------------------------------------------------
# degradations
# ------------------------------------------------------------------------------------------------


def jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    """``image`` (HxWx3 uint8) as JPEG bytes at ``quality`` (libjpeg's IJG tables, 4:2:0)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    return buf.getvalue()


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """One JPEG round trip at ``quality``."""
    return np.asarray(Image.open(io.BytesIO(jpeg_bytes(image, quality))).convert("RGB"))


_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)


def ijg_luma_table(quality: int) -> np.ndarray:
    """The 64 luminance quantisation steps libjpeg uses at ``quality`` (natural order)."""
    q = max(1, min(100, int(quality)))
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255)


def jpeg_quality(data: bytes) -> Optional[int]:
    """The IJG quality whose luminance table a JPEG file carries (None if no quality matches)."""
    im = Image.open(io.BytesIO(data))
    tables = getattr(im, "quantization", None) or {}
    if 0 not in tables:
        return None
    luma = np.asarray(list(tables[0]), dtype=np.int64)
    for q in range(100, 0, -1):
        if np.array_equal(luma, ijg_luma_table(q)):
            return q
    return None


def resize(image: np.ndarray, factor: float, nearest: bool = False) -> np.ndarray:
    """Both sides scaled by ``factor`` (bicubic, or nearest for label maps); at least 1 pixel."""
    h, w = image.shape[:2]
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    return np.asarray(Image.fromarray(image).resize(size, Image.NEAREST if nearest else Image.BICUBIC))


def social_size(h: int, w: int, long_side: int = SOCIAL_LONG_SIDE) -> Tuple[int, int]:
    """(H, W) after the social chain's downscale (unchanged when the long side is short enough)."""
    f = min(1.0, long_side / max(h, w))
    return (max(1, int(round(h * f))), max(1, int(round(w * f)))) if f < 1 else (h, w)


def social_bytes(image: np.ndarray) -> bytes:
    """The social-network chain as a file: downscale to a long side of at most 1600 px, JPEG 75."""
    h, w = image.shape[:2]
    sh, sw = social_size(h, w)
    if (sh, sw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BICUBIC))
    return jpeg_bytes(image, SOCIAL_QUALITY)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    out = ndimage.gaussian_filter(image.astype(np.float32), sigma=(float(sigma), float(sigma), 0), mode="reflect")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = image.astype(np.float32) + rng.normal(0.0, float(sigma), image.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Level:
    family: str  # clean | jpeg | resize | blur | noise | social
    value: Optional[float] = None

    @property
    def name(self) -> str:
        if self.value is None:
            return self.family
        v = int(self.value) if float(self.value).is_integer() and self.family == "jpeg" else self.value
        return f"{self.family} {v:g}" if isinstance(v, float) else f"{self.family} {v}"

    def apply(self, image: np.ndarray, labels: np.ndarray, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """The degraded image and its truth (resized like the image when the size changes)."""
        f, v = self.family, self.value
        if f == "clean":
            return image, labels
        if f == "jpeg":
            return jpeg(image, int(v)), labels
        if f == "resize":
            return resize(image, float(v)), resize(labels, float(v), nearest=True)
        if f == "blur":
            return blur(image, float(v)), labels
        if f == "noise":
            return noise(image, float(v), seed), labels
        if f == "social":
            h, w = image.shape[:2]
            sh, sw = social_size(h, w)
            if (sh, sw) != (h, w):
                labels = np.asarray(Image.fromarray(labels).resize((sw, sh), Image.NEAREST))
            return np.asarray(Image.open(io.BytesIO(social_bytes(image))).convert("RGB")), labels
        raise ValueError(f"unknown degradation {f!r}")


def levels_from(jpeg_q: Sequence[float], resize_f: Sequence[float], blur_s: Sequence[float],
                noise_s: Sequence[float], social: bool = True) -> List[Level]:
    out = [Level("clean")]
    out += [Level("jpeg", float(q)) for q in jpeg_q]
    out += [Level("resize", float(f)) for f in resize_f]
    out += [Level("blur", float(s)) for s in blur_s]
    out += [Level("noise", float(s)) for s in noise_s]
    if social:
        out.append(Level("social"))
    return out


@dataclass
class _Item:
    name: str
    image: np.ndarray
    labels: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)


class DegradedReader:
    """``data`` (items with ``image``, ``labels``, ``name``) seen through one degradation level."""

    def __init__(self, data: Sequence[Any], level: Level, seed: int = 0) -> None:
        self.data, self.level, self.seed = data, level, seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> _Item:
        item = self.data[i]
        image, labels = self.level.apply(np.asarray(item.image), np.asarray(item.labels), seed=self.seed * 100003 + i)
        return _Item(str(getattr(item, "name", i)), image, labels)


class Subset:
    """The first ``limit`` items of each reader, as one sequence."""

    def __init__(self, readers: Sequence[Any], limit: Optional[int]) -> None:
        self.index = [(r, i) for r in readers for i in range(len(r) if limit is None else min(limit, len(r)))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        r, j = self.index[i]
        return r[j]


# ------------------------------------------------------------------------------------------------
# run and outputs
# ------------------------------------------------------------------------------------------------


def run_robustness(model: Any, data: Sequence[Any], levels: Sequence[Level], *, grid_size: int = 16, seed: int = 0,
                   examples_dir: Optional[str] = None,
                   log: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """Evaluate ``model`` on ``data`` at every level; one row per level (name, family, value, summary)."""
    from .evaluate import evaluate_partition

    rows = []
    for lv in levels:
        reader = DegradedReader(data, lv, seed)
        if examples_dir:
            os.makedirs(examples_dir, exist_ok=True)
            ex = reader[0]
            fn = f"{lv.name.replace(' ', '_')}.png"
            Image.fromarray(ex.image).save(os.path.join(examples_dir, fn))
        t0 = time.perf_counter()
        res = evaluate_partition(model, reader, grid_size=grid_size, seed=seed)
        dt = time.perf_counter() - t0
        row = {"level": lv.name, "family": lv.family, "value": lv.value, "seconds": dt, "summary": res.summary}
        rows.append(row)
        if log:
            s = res.summary
            log(f"{lv.name:<12} {len(reader)} images {dt:6.1f} s  " + "  ".join(
                f"{k} {s.get(k, float('nan')):.3f}" for k, _, _ in METRICS))
    return rows


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    head = "| degradation | images | " + " | ".join(t for _, t, _ in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for r in rows:
        s = r["summary"]
        cells = []
        for k, _, _ in METRICS:
            v = s.get(k)
            cells.append(f"{v:.3f}" if isinstance(v, float) and v == v else "-")
        lines.append(f"| {r['level']} | {int(s.get('count', 0))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[Dict[str, Any]], path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = next((r["summary"] for r in rows if r["family"] == "clean"), {})
    social = next((r["summary"] for r in rows if r["family"] == "social"), None)
    families = [f for f in ("jpeg", "resize", "blur", "noise") if any(r["family"] == f for r in rows)]
    xlabels = {"jpeg": "JPEG quality", "resize": "scale factor", "blur": "Gaussian blur sigma (px)",
               "noise": "Gaussian noise sigma (0-255)"}
    colours = {"miou_k": "#1f77b4", "ari_k": "#ff7f0e", "f1_best": "#2ca02c", "image_auc": "#d62728"}
    plotted = [(k, t) for k, t, p in METRICS if p]
    n = len(families) + (1 if social is not None else 0)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(3.3 * max(n, 1), 3.4), dpi=110, sharey=True, squeeze=False)
    axes = axes[0]
    for ax, fam in zip(axes, families):
        sel = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["value"])
        xs = [r["value"] for r in sel]
        if fam == "resize" and clean:
            xs, sel = sorted(xs + [1.0]), sorted(sel + [{"value": 1.0, "summary": clean}], key=lambda r: r["value"])
        for k, t in plotted:
            ys = [r["summary"].get(k, float("nan")) for r in sel]
            ax.plot(xs, ys, marker="o", ms=3, lw=1.5, color=colours.get(k), label=t)
            if k in clean and clean[k] == clean[k]:
                ax.axhline(clean[k], color=colours.get(k), lw=0.8, ls="--", alpha=0.6)
        if fam == "jpeg":
            ax.invert_xaxis()
        ax.set(xlabel=xlabels[fam], ylim=(0, 1))
        ax.grid(alpha=0.3)
    if social is not None:
        ax = axes[len(families)]
        vals = [social.get(k, float("nan")) for k, _ in plotted]
        base = [clean.get(k, float("nan")) for k, _ in plotted]
        x = np.arange(len(plotted))
        ax.bar(x - 0.18, base, 0.36, color="#bbb", label="clean")
        ax.bar(x + 0.18, vals, 0.36, color=[colours.get(k) for k, _ in plotted], label="social")
        ax.set_xticks(x, [t.replace(", K given", "").replace("binary ", "") for _, t in plotted], rotation=30,
                      fontsize=7)
        ax.set(xlabel=f"social (<= {SOCIAL_LONG_SIDE} px, JPEG {SOCIAL_QUALITY})", ylim=(0, 1))
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("metric (dashed: clean images)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(plotted), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, y=0.005, va="bottom", fontsize=8, color="#555")
    fig.tight_layout(rect=(0, 0.04, 1, 0.9))
    fig.savefig(path)
    plt.close(fig)


def _floats(text: str) -> List[float]:
    text = (text or "").strip()
    if not text or text.lower() == "none":
        return []
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safire robustness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="dataset folder(s) or list file(s)")
    p.add_argument("--out", required=True, help="output folder (robustness.md, .png, .json, examples/)")
    p.add_argument("--checkpoint", default=None, help="weights (default: the embedded model)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images of each --data folder")
    p.add_argument("--jpeg", type=_floats, default=DEFAULT_LEVELS["jpeg"], help="JPEG qualities, e.g. 100,90,70,50")
    p.add_argument("--resize", type=_floats, default=DEFAULT_LEVELS["resize"], help="scale factors, e.g. 0.5,1.5")
    p.add_argument("--blur", type=_floats, default=DEFAULT_LEVELS["blur"], help="blur sigmas in pixels")
    p.add_argument("--noise", type=_floats, default=DEFAULT_LEVELS["noise"], help="noise sigmas (0-255 scale)")
    p.add_argument("--no-social", action="store_true", help="leave out the social-network chain")
    p.add_argument("--no-examples", action="store_true", help="do not write OUT/examples/ (one PNG per level)")
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    import torch

    from safire.build import build_safire
    from safire.provenance import weights_info

    from .datasets import open_dataset

    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for q in args.jpeg:
        if not 1 <= q <= 100:
            print("safire robustness: JPEG qualities are 1..100", file=sys.stderr)
            return 2
    model = build_safire(checkpoint=args.checkpoint, device=args.device, use_default=args.checkpoint is None)
    data = Subset([open_dataset(d) for d in args.data], args.limit)
    if len(data) == 0:
        print("safire robustness: no images", file=sys.stderr)
        return 2
    levels = levels_from(args.jpeg, args.resize, args.blur, args.noise, social=not args.no_social)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    rows = run_robustness(model, data, levels, grid_size=args.grid, seed=args.seed,
                          examples_dir=None if args.no_examples else os.path.join(args.out, "examples"), log=lambda m: print(m, file=sys.stderr))
    elapsed = time.perf_counter() - t0
    meta = model.meta or {}
    w = weights_info(model)
    header = (f"model {meta.get('model_version')} (weights {w['weights_file']}, sha256 "
              f"{str(w['weights_sha256'])[:16]}...), {len(data)} images of {', '.join(args.data)}"
              f"{f' (first {args.limit} of each)' if args.limit else ''}, grid {args.grid}, seed {args.seed}")
    table = format_table(rows)
    with open(os.path.join(args.out, "robustness.md"), "w") as f:
        f.write(f"{header}\n\n{table}\n")
    with open(os.path.join(args.out, "robustness.json"), "w") as f:
        json.dump({"model_version": meta.get("model_version"), **w, "data": args.data, "limit": args.limit,
                   "images": len(data), "grid": args.grid, "seed": args.seed, "seconds": elapsed,
                   "command": ["safire", "robustness", *(argv if argv is not None else sys.argv[1:])],
                   "levels": rows}, f, indent=1, default=float)
    plot(rows, os.path.join(args.out, "robustness.png"),
         title=f"{meta.get('model_version')}, {len(data)} images, grid {args.grid}")
    print(header)
    print(table)
    print(f"({elapsed:.0f} s; {args.out}/robustness.md, robustness.png, robustness.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
