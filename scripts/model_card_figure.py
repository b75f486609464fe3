"""The model card's figure: held-out examples side by side (image, truth, predicted sources, heat map).

    python scripts/model_card_figure.py [--checkpoint PATH] [--data DIR ...] [--n 6] [--out docs/figures/heldout.png]

Without ``--data`` the examples are generated here (seeded) from held-out photos only (split
``test`` of the installed pool, ``make photos``; the bundled ``val`` photos otherwise), with 1 to 4
sources. Each row: the image, the true sources, the predicted sources (automatic number, the
calibrated settings of the weights) and the binary heat map, with the image's pmIoU and the
predicted / true number of sources.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def examples(n: int, seed: int):
    from training.photos import PhotoPool
    from training.synth import generate_sample

    try:
        pool, split = PhotoPool.load("test"), "test"
    except (ValueError, FileNotFoundError):
        pool, split = PhotoPool.load("val"), "val"
    for i in range(n):
        k = [1, 2, 2, 3, 3, 4, 4, 2][i % 8]
        s = generate_sample(i, seed, k, pool, (384, 768), split=split)
        yield s.name, s.image, s.sources


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="weights (default: the embedded default model)")
    p.add_argument("--data", nargs="*", default=None, help="dataset folders (default: generated held-out examples)")
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--seed", type=int, default=77)
    p.add_argument("--out", default="docs/figures/heldout.png")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from safire import SafirePredictor, build_safire, partition
    from safire.metrics import permuted_miou
    from safire.visualize import colorize_partition

    model = build_safire(checkpoint=args.checkpoint) if args.checkpoint else build_safire()
    predictor = SafirePredictor(model)
    if args.data:
        from training.datasets import open_dataset

        items = [(it.name, it.image, it.labels) for d in args.data for it in open_dataset(d)][: args.n]
    else:
        items = list(examples(args.n, args.seed))
    fig, axes = plt.subplots(len(items), 4, figsize=(13, 3.1 * len(items)))
    axes = np.atleast_2d(axes)
    for row, (name, image, truth) in zip(axes, items):
        res = partition(predictor, image, "auto")
        k_true = int(len(np.unique(truth[truth != 255])))
        score = permuted_miou(res.labels, truth)
        panels = [(image, name), (colorize_partition(np.where(truth == 255, 0, truth)), f"truth: {k_true} source(s)"),
                  (colorize_partition(res.labels), f"predicted: {res.num_sources} (pmIoU {score:.2f})"),
                  (res.heatmap, f"heat map (image score {res.score:.2f})")]
        for ax, (img, title) in zip(row, panels):
            ax.imshow(img, cmap="inferno" if img.ndim == 2 else None, vmin=0, vmax=1 if img.ndim == 2 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle(f"{model.meta.get('model_version')} on held-out photos (never seen in training)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
