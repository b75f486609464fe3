"""Training curve of a staged run from its logs: loss (AASS, contrastive) against image-samples seen,
with the validation points, one colour band per stage.

    python scripts/plot_training_curve.py --stage a:LOG_A:8 --stage b:LOG_B:8 ... [--branch d:LOG_D:8 ...] \
        --out docs/figures/training_curve.png

Each ``--stage NAME:LOG:BATCH`` is a ``safire train`` log (lines ``step N/M ... aass=.. r2r=..`` and
``val @ N: miou_k=..``); BATCH is the samples per logged step (batch size x accumulation steps).
Stages are laid end to end in the given order. Each ``--branch`` starts where the last stage ended
(a continuation of the shipped model that was not kept), dashed. ``--test NAME:JSON`` marks the
held-out test pmIoU (K given) of a ``safire evaluate --json`` file at the end of stage/branch NAME
(NAME ``start``: at the first stage's start, e.g. the model a continued run started from).
``--baseline LABEL:JSON`` draws the validation numbers of a ``safire evaluate --json`` file on the
same validation images (e.g. the starting model's) as horizontal lines. A resumed run's log repeats no step
(the resume line resets nothing), so a log may hold several processes of one stage.
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--test", action="append", default=[], help="NAME:EVALUATE_JSON")
    p.add_argument("--branch", action="append", default=[], help="NAME:LOG:BATCH, from the last stage's end")
    p.add_argument("--baseline", action="append", default=[], help="LABEL:EVALUATE_JSON, validation lines")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    offset = 0
    specs = [(s, False) for s in args.stage] + [(s, True) for s in args.branch]
    start, ends = 0, {"start": (0, "k")}
    for spec in args.baseline:
        label, path = spec.split(":", 1)
        summary = json.load(open(path))["summary"]
        for key, colour in (("miou_k", "0.2"), ("ari_k", "0.45"), ("image_auc", "0.7")):
            if key in summary:
                ax2.axhline(summary[key], color=colour, linestyle=":", linewidth=1,
                            label=f"{label}: val {key} {summary[key]:.3f}")
    for i, (spec, branch) in enumerate(specs):
        name, log, batch = spec.rsplit(":", 2)
        steps, vals = parse(log)
        if not steps:
            continue
        b = int(batch)
        x0 = start if branch else offset
        x = [x0 + s * b for s, _ in steps]
        kind = "branch" if branch else "stage"
        ls = "--" if branch else "-"
        ax1.plot(x, [a for _, (a, _) in steps], ls, color=f"C{i}", label=f"{kind} {name}: AASS loss")
        ax1.plot(x, [r / 20 for _, (_, r) in steps], color=f"C{i}", linestyle=":",
                 label=f"{kind} {name}: contrastive / 20")
        for key, mk in (("miou_k", "o"), ("ari_k", "s"), ("image_auc", "^")):
            vx = [x0 + s * b for s, v in vals if key in v]
            vy = [v[key] for s, v in vals if key in v]
            if vx:
                ax2.plot(vx, vy, mk + ls, color=f"C{i}", label=f"{kind} {name}: val {key}")
        ends[name] = (x[-1], f"C{i}")
        if not branch:
            ax1.axvspan(offset, x[-1], color=f"C{i}", alpha=0.06)
            offset = start = x[-1]
    for spec in args.test:
        name, path = spec.split(":", 1)
        if name in ends:
            x, colour = ends[name]
            y = json.load(open(path))["summary"]["miou_k"]
            ax2.plot([x], [y], "*", markersize=14, color=colour, markeredgecolor="k",
                     label=f"{name}: test miou_k {y:.3f}")
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
