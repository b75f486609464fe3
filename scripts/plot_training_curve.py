"""Training curve of a staged run from its logs: loss (AASS, contrastive) against image-samples seen,
with the validation points, one colour band per stage.

    python scripts/plot_training_curve.py --stage a:LOG_A:8 --stage b:LOG_B:8 ... --out docs/figures/training_curve.png

Each ``--stage NAME:LOG:BATCH`` is a ``safire train`` log (lines ``step N/M ... aass=.. r2r=..`` and
``val @ N: miou_k=..``); stages are laid end to end in the given order. A resumed run's log repeats
no step (the resume line resets nothing), so a log may hold several processes of one stage.
"""

from __future__ import annotations

import argparse
import re

STEP = re.compile(r"^step (\d+)/\d+ .*?aass=([0-9.]+).*?r2r=([0-9.]+)")
VAL = re.compile(r"^val @ (\d+): (.*)$")


def parse(path: str):
    steps, vals = {}, {}
    for line in open(path, errors="replace"):
        m = STEP.match(line)
        if m:
            steps[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
            continue
        m = VAL.match(line)
        if m:
            vals[int(m.group(1))] = {k: float(v) for k, v in (kv.split("=") for kv in m.group(2).split())}
    return sorted(steps.items()), sorted(vals.items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", action="append", required=True, help="NAME:LOG:BATCH")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    offset = 0
    for i, spec in enumerate(args.stage):
        name, log, batch = spec.rsplit(":", 2)
        steps, vals = parse(log)
        if not steps:
            continue
        b = int(batch)
        x = [offset + s * b for s, _ in steps]
        ax1.plot(x, [a for _, (a, _) in steps], color=f"C{i}", label=f"stage {name}: AASS loss")
        ax1.plot(x, [r / 20 for _, (_, r) in steps], color=f"C{i}", linestyle=":", label=f"stage {name}: contrastive / 20")
        for key, mk in (("miou_k", "o"), ("ari_k", "s"), ("image_auc", "^")):
            vx = [offset + s * b for s, v in vals if key in v]
            vy = [v[key] for s, v in vals if key in v]
            if vx:
                ax2.plot(vx, vy, mk + "-", color=f"C{i}", label=f"stage {name}: val {key}")
        ax1.axvspan(offset, x[-1], color=f"C{i}", alpha=0.06)
        offset = x[-1]
    ax1.set_ylabel("training loss")
    ax1.legend(fontsize=7, ncol=2)
    ax2.set_ylabel("validation (held-out photos)")
    ax2.set_xlabel("image-samples seen")
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
