"""Does "Start Training" help? Parent vs fine-tuned child on a manipulation the default never saw.

    python benchmarks/bench_retrain.py [--family recolour|exemplar-fill] [--sizes 10,25,50,100]
        [--family-test 100] [--general-test 100]

Two manipulation families have probability 0 in every default training recipe
(``training.synth.HELD_OUT_MANIPULATIONS``), so the embedded model has never seen them:

* **exemplar-fill** (content-aware fill: an object removed and the hole filled with blocks copied
  from the same photo, ``training/synth_fill.py``; the default ``--family``), and
* **recolour** (an object's colour changed by a hue/saturation edit that keeps the luminance,
  ``training/synth_recolour.py``).

For every project size N the benchmark

1. builds an annotated Label Studio project of N tasks of the family: synthetic composites of
   **validation** photos (never in the default's training), 2-3 sources each, exported in Label
   Studio's JSON export format (brush RLE per source, ``label_config/multi_source.xml`` labels) and
   served with the images by a local stand-in of Label Studio's API on 127.0.0.1
   (``tests/fake_label_studio.py``: project, export and upload endpoints);
2. runs the backend's own retraining job on it: ``JobManager.submit`` starts
   ``python -m ml_backend.retrain`` exactly as "Start Training" does, with the server's settings
   (``SAFIRE_TRAIN_*`` from the environment or ``--steps/--lr/--trainable``), on the CPU;
3. evaluates parent and child (published or candidate) with ``training.evaluate`` on
   ``--family-test`` composites of the family made from **test** photos, and on ``--general-test``
   images of the general held-out test set (``data/test-k1..4``, the model card's set, first
   images of each).

It prints one table (tasks, job time, outcome, pmIoU / ARI / F1-best before -> after on both sets)
and writes JSON (``--json``) and the learning curve as a PNG (``--plot``). Data are generated once
into ``--data-dir`` (default ``~/.cache/safire-studio/bench-retrain``) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

FAMILIES = ("exemplar-fill", "recolour")  # training.synth.HELD_OUT_MANIPULATIONS
LABELS = ["Source 1 (host)", "Source 2", "Source 3", "Source 4"]
KEYS = ("miou_k", "ari_k", "miou_auto", "f1_best")


def synth(out: Path, n: int, split: str, seed: int, sources: str, extra: List[str]) -> Path:
    """Generate a dataset once (``safire synth``), reuse it when it holds ``n`` samples already."""
    man = out / "manifest.json"
    if man.is_file() and json.loads(man.read_text()).get("count", 0) >= n:
        return out
    cmd = [sys.executable, "-m", "training.synth", "--out", str(out), "--n", str(n), "--split", split,
           "--seed", str(seed), "--sources", sources, "--workers", str(os.cpu_count() or 1), "--quiet",
           "--overwrite", *extra]
    subprocess.run(cmd, cwd=str(ROOT), check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return out


def ls_task(i: int, sources, url: str) -> Dict[str, Any]:
    """One task of a Label Studio JSON export: the image URL and one annotation, a brush per source."""
    import numpy as np

    from ml_backend.rle import encode_rle

    h, w = sources.shape
    result = []
    for s in range(0, int(sources.max()) + 1):
        mask = (sources == s).astype(np.uint8) * 255
        if not mask.any():
            continue
        result.append({"id": f"t{i}s{s}", "from_name": "source", "to_name": "image", "type": "brushlabels",
                       "original_width": w, "original_height": h, "image_rotation": 0,
                       "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": [LABELS[s]]}})
    return {"id": i + 1, "data": {"image": url},
            "annotations": [{"id": 1000 + i, "result": result, "was_cancelled": False, "ground_truth": False,
                             "updated_at": "2026-12-04T12:00:00Z", "completed_by": 1}]}


def evaluate(model, data, grid: int) -> Dict[str, float]:
    from training.evaluate import evaluate_partition

    summary = evaluate_partition(model.eval(), data, grid_size=grid).summary
    return {k: round(float(summary[k]), 4) for k in KEYS if k in summary}


def run_size(n: int, project_dir: Path, model_dir: Path, args) -> Dict[str, Any]:
    """Build an n-task project, run the real retraining job on it; the job record."""
    import numpy as np
    from PIL import Image

    from fake_label_studio import FakeLabelStudio
    from ml_backend.jobs import JobManager
    from ml_backend.models import ModelRegistry

    names = (project_dir / "splits" / "val.txt").read_text().split()[:n]
    with FakeLabelStudio() as ls:
        ls.projects[1] = {"id": 1, "label_config": (ROOT / "label_config" / "multi_source.xml").read_text()}
        tasks = []
        for i, name in enumerate(names):
            url = f"/data/upload/1/{name}.png"
            ls.files[url] = (project_dir / "images" / f"{name}.png").read_bytes()
            sources = np.asarray(Image.open(project_dir / "sources" / f"{name}.png"))
            tasks.append(ls_task(i, sources, url))
        ls.exports[1] = tasks
        env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "SAFIRE_ALLOWED_HOSTS": "127.0.0.1",
               "SAFIRE_TRAIN_THREADS": str(args.threads)}
        if args.steps:
            env["SAFIRE_TRAIN_STEPS"] = str(args.steps)
        if args.lr:
            env["SAFIRE_TRAIN_LR"] = str(args.lr)
        if args.trainable:
            env["SAFIRE_TRAIN_TRAINABLE"] = args.trainable
        if args.replay is not None:
            env["SAFIRE_TRAIN_REPLAY"] = str(args.replay)
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            registry = ModelRegistry(model_dir, args.checkpoint)
            jobs = JobManager(registry)
            t0 = time.perf_counter()
            jobs.submit("1", "START_TRAINING")
            rec = jobs.wait("1", timeout=args.job_timeout)
            rec["job_seconds"] = round(time.perf_counter() - t0, 1)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    if rec.get("state") != "succeeded":
        log = Path(rec.get("log", "")).read_text()[-3000:] if rec.get("log") else ""
        raise RuntimeError(f"retraining job for {n} tasks failed: {rec.get('error')}\n{log}")
    return rec


def plot(rows: List[Dict[str, Any]], parent: Dict[str, Dict[str, float]], path: Path, family: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["tasks"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for key, style, name in (("family", "-o", f"held-out family ({family})"), ("general", "-s", "general test set")):
        ax.plot(xs, [r[key]["miou_k"] for r in rows], style, label=f"child, {name}")
        ax.axhline(parent[key]["miou_k"], ls="--", lw=1, color=ax.lines[-1].get_color(),
                   label=f"parent, {name}")
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("annotated tasks in the project (80 % train, 20 % validation)")
    ax.set_ylabel("pmIoU, K given (held-out test photos)")
    ax.set_title("Retraining from Label Studio annotations (one CPU job per point)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="exemplar-fill", choices=FAMILIES,
                   help="held-out manipulation family the projects are made of")
    p.add_argument("--sizes", default="10,25,50,100", help="project sizes (annotated tasks)")
    p.add_argument("--family-test", type=int, default=100, help="held-out family test images")
    p.add_argument("--general-test", type=int, default=100, help="general test images (split over K=1..4)")
    p.add_argument("--checkpoint", default=None, help="parent weights (default: the embedded model)")
    p.add_argument("--steps", type=int, default=0, help="SAFIRE_TRAIN_STEPS for the job (0: the setting)")
    p.add_argument("--lr", type=float, default=0.0, help="SAFIRE_TRAIN_LR (0: the setting)")
    p.add_argument("--trainable", default="", help="SAFIRE_TRAIN_TRAINABLE ('': the setting)")
    p.add_argument("--replay", type=float, default=None, help="SAFIRE_TRAIN_REPLAY (default: the setting)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (job and evaluation)")
    p.add_argument("--grid", type=int, default=16, help="evaluation grid")
    p.add_argument("--job-timeout", type=float, default=3600.0)
    p.add_argument("--data-dir", default=os.path.expanduser("~/.cache/safire-studio/bench-retrain"))
    p.add_argument("--general-dir", default=str(ROOT / "data"), help="folder with test-k1..4 (make test data)")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--plot", default=None, help="learning curve PNG")
    args = p.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    import logging

    import torch

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the stand-in server's request log
    torch.set_num_threads(args.threads)
    from safire.build import build_safire
    from training.datasets import SafireDataset

    data = Path(args.data_dir)
    t0 = time.perf_counter()
    fam = ["--manipulations", f"{args.family}=1", "--size-min", "384", "--size-max", "768"]
    tag = "" if args.family == "exemplar-fill" else f"-{args.family}"  # exemplar-fill: the first sets
    project_dir = synth(data / f"project-val{tag}", max(sizes), "val", 7101, "2-3", fam)
    family_dir = synth(data / f"family-test{tag}", args.family_test, "test", 7102, "2-3", fam)
    general = []
    per_k = max(1, args.general_test // 4)
    for k in (1, 2, 3, 4):
        d = Path(args.general_dir) / f"test-k{k}"
        if not (d / "manifest.json").is_file():  # the Makefile's recipe for the model card's test set
            d = synth(data / f"test-k{k}", per_k, "test", int(f"50{k}"), str(k),
                      ["--size-min", "384", "--size-max", "896"])
        ds = SafireDataset(str(d))
        general.extend(ds[i] for i in range(min(per_k, len(ds))))
    family = SafireDataset(str(family_dir))
    family = [family[i] for i in range(min(args.family_test, len(family)))]
    print(f"data ready in {time.perf_counter() - t0:.0f} s: {len(family)} family test, {len(general)} general test",
          flush=True)

    parent_model = build_safire(checkpoint=args.checkpoint) if args.checkpoint else build_safire(use_default=True)
    parent_version = str(parent_model.meta.get("model_version"))
    import hashlib

    digest = hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in parent_model.state_dict().values()))
    # the calibration (image score, thresholds) changes the automatic-mode numbers of the same weights
    digest.update(json.dumps(parent_model.meta.get("partition") or {}, sort_keys=True, default=str).encode())
    parent = {}
    for key, part, n_img in (("family", tag, len(family)), ("general", "-general", len(general))):
        # the parent's numbers on these very sets, from an earlier run (the general set is shared)
        cache = data / f"parent-{digest.hexdigest()[:16]}{part}-{n_img}-{args.grid}.json"
        old = data / f"parent-{digest.hexdigest()[:16]}-{len(family)}-{len(general)}-{args.grid}.json"
        if cache.is_file():
            parent[key] = json.loads(cache.read_text())
        elif (key == "general" or not tag) and old.is_file():  # the first runs' format (both sets in one)
            parent[key] = json.loads(old.read_text())[key]
        else:
            parent[key] = evaluate(parent_model, family if key == "family" else general, args.grid)
            cache.write_text(json.dumps(parent[key]))
    print(f"parent {parent_version}: {parent}", flush=True)

    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="safire-bench-retrain-") as tmp:
        for n in sizes:
            rec = run_size(n, project_dir, Path(tmp) / f"models-{n}", args)
            child_path = Path(tmp) / f"models-{n}" / "1" / str(rec["version"]) / "model.pt" if rec.get("version") else None
            row: Dict[str, Any] = {"tasks": n, "outcome": rec.get("outcome"), "job_seconds": rec["job_seconds"],
                                   "train_seconds": rec.get("train_seconds"), "decision": rec.get("decision"),
                                   "data": rec.get("data")}
            if child_path is not None:
                child = build_safire(checkpoint=child_path)
                row["family"] = evaluate(child, family, args.grid)
                row["general"] = evaluate(child, general, args.grid)
            else:
                row["family"], row["general"] = dict(parent["family"]), dict(parent["general"])
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\nparent: {parent_version}; family: {args.family} (never in the default's training); "
          f"{len(family)} family test images, {len(general)} general test images, grid {args.grid}")
    print("| tasks | job s | outcome | family pmIoU (K) | family ARI (K) | family F1-best | "
          "general pmIoU (K) | general F1-best |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, g, pf, pg = r["family"], r["general"], parent["family"], parent["general"]
        print(f"| {r['tasks']} | {r['job_seconds']:.0f} | {r['outcome']} | {pf['miou_k']:.3f} -> {f['miou_k']:.3f} "
              f"({f['miou_k'] - pf['miou_k']:+.3f}) | {pf['ari_k']:.3f} -> {f['ari_k']:.3f} | "
              f"{pf['f1_best']:.3f} -> {f['f1_best']:.3f} | {pg['miou_k']:.3f} -> {g['miou_k']:.3f} "
              f"({g['miou_k'] - pg['miou_k']:+.3f}) | {pg['f1_best']:.3f} -> {g['f1_best']:.3f} |")
    out = {"parent_version": parent_version, "family": args.family, "parent": parent, "rows": rows,
           "family_test": len(family), "general_test": len(general), "grid": args.grid,
           "settings": {"steps": args.steps, "lr": args.lr, "trainable": args.trainable, "replay": args.replay,
                        "threads": args.threads,
                        "env": {k: v for k, v in os.environ.items() if k.startswith("SAFIRE_TRAIN_")}},
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.plot:
        plot(rows, parent, Path(args.plot), args.family)
    return 0


if __name__ == "__main__":
    sys.exit(main())
