"""The dataset writer of ``training.synth``: :func:`write_dataset`.

Draws the number of sources per sample (:func:`choose_num_sources`), generates samples (in
worker processes when asked) and writes the layout of ``docs/dataset-format.md``: images,
source index masks, SafireMS and binary masks, per-sample metadata, lists and the manifest.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from training.photos import PhotoPool
from training.synth_common import _S_COUNT, MANIPULATIONS, SYNTH_VERSION, Sample, _rng
from training.synth_generate import generate_sample

def choose_num_sources(seed: int, index: int, lo: int, hi: int,
                       authentic_fraction: Optional[float] = None) -> int:
    """Number of sources of sample ``index``: uniform over ``lo..hi``; with
    ``authentic_fraction`` set, authentic (1) with that probability and otherwise uniform over
    ``max(lo, 2)..hi``."""
    rng = _rng(seed, index, _S_COUNT)
    if authentic_fraction is None:
        return int(rng.integers(lo, hi + 1))
    if rng.random() < authentic_fraction or hi < 2:
        return 1
    return int(rng.integers(max(lo, 2), hi + 1))


def _save_png(arr: np.ndarray, path: str, level: int) -> None:
    tmp = path + ".tmp"
    Image.fromarray(arr).save(tmp, format="PNG", compress_level=level)
    os.replace(tmp, path)


def write_sample(sample: Sample, out: str, png_level: int = 1) -> Dict[str, Any]:
    """Write one sample into the dataset layout; returns a small summary record."""
    name = sample.name
    src = sample.sources
    _save_png(sample.image, os.path.join(out, "images", name + ".png"), png_level)
    _save_png(src, os.path.join(out, "sources", name + ".png"), 6)
    _save_png((np.minimum(src, 5) * 50).astype(np.uint8),
              os.path.join(out, "masks_safirems", name + ".png"), 6)
    _save_png(np.where(src >= 1, 255, 0).astype(np.uint8),
              os.path.join(out, "masks_binary", name + ".png"), 6)
    with open(os.path.join(out, "meta", name + ".json"), "w") as f:
        json.dump(sample.meta, f, indent=1)
    return {"name": name, "num_sources": sample.num_sources,
            "manipulations": [s["role"] for s in sample.meta["sources"][1:]]}


_WORKER: Dict[str, Any] = {}


def _worker_init(split: str) -> None:
    _WORKER["pool"] = PhotoPool.load(split)


def _job(args: Tuple[Any, ...]) -> Dict[str, Any]:
    index, seed, k, size_range, split, out, png_level, manipulations = args
    pool = _WORKER.get("pool")
    if pool is None or pool.split != split:
        pool = _WORKER["pool"] = PhotoPool.load(split)
    s = generate_sample(index, seed, k, pool, size_range, split=split, manipulations=manipulations)
    return write_sample(s, out, png_level)


_LAYOUT_DIRS = ("images", "sources", "masks_safirems", "masks_binary", "meta", "splits")


def write_dataset(out: str, n: int, *, seed: int = 0, sources: Tuple[int, int] = (1, 4),
                  authentic_fraction: Optional[float] = None, split: str = "train",
                  size_range: Tuple[int, int] = (256, 512), workers: int = 1,
                  start_index: int = 0, png_level: int = 1, overwrite: bool = False,
                  progress: bool = True, manipulations: Optional[Dict[str, float]] = None
                  ) -> Dict[str, Any]:
    """Generate ``n`` samples (indices ``start_index ..``) into ``out``; returns the manifest.

    ``manipulations``: probabilities of the foreign kinds (default :data:`MANIPULATIONS`, which
    never generates :data:`HELD_OUT_MANIPULATIONS`).
    """
    if manipulations is not None:
        unknown = sorted(set(manipulations) - set(MANIPULATIONS))
        if unknown or not any(v > 0 for v in manipulations.values()):
            raise ValueError(f"manipulations need known kinds ({', '.join(MANIPULATIONS)}) "
                             f"and one positive weight; got {manipulations}")
    lo, hi = sources
    if not 1 <= lo <= hi <= 5:
        raise ValueError("sources must satisfy 1 <= min <= max <= 5")
    if authentic_fraction is not None and not 0.0 <= authentic_fraction <= 1.0:
        raise ValueError("authentic_fraction must be in [0, 1]")
    if os.path.exists(os.path.join(out, "manifest.json")) and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset (manifest.json); use --overwrite")
    for d in _LAYOUT_DIRS:
        os.makedirs(os.path.join(out, d), exist_ok=True)
    if overwrite:  # drop stale synthetic files from an earlier run
        for d in _LAYOUT_DIRS[:-1]:
            for fn in os.listdir(os.path.join(out, d)):
                if fn.startswith("syn_"):
                    os.remove(os.path.join(out, d, fn))
    jobs = [(i, seed, choose_num_sources(seed, i, lo, hi, authentic_fraction),
             tuple(size_range), split, out, png_level, manipulations)
            for i in range(start_index, start_index + n)]
    t0 = time.time()
    records: List[Dict[str, Any]] = []

    def tick(done: int) -> None:
        if progress and (done == n or done % max(1, n // 100) == 0):
            el = time.time() - t0
            rate = done / el if el > 0 else 0.0
            eta = (n - done) / rate if rate > 0 else 0.0
            sys.stderr.write(f"\r[synth] {done}/{n} samples  {rate:.1f}/s  eta {eta:.0f}s ")
            sys.stderr.flush()

    if workers > 1 and n > 1:
        import multiprocessing as mp

        with mp.get_context().Pool(workers, initializer=_worker_init, initargs=(split,)) as p:
            for rec in p.imap(_job, jobs, chunksize=max(1, min(16, n // (4 * workers)))):
                records.append(rec)
                tick(len(records))
    else:
        _WORKER["pool"] = PhotoPool.load(split)
        for job in jobs:
            records.append(_job(job))
            tick(len(records))
    if progress:
        sys.stderr.write("\n")

    hist: Dict[str, int] = {}
    manip_hist: Dict[str, int] = {}
    list_lines, bin_lines, benco = [], [], []
    for r in records:
        hist[str(r["num_sources"])] = hist.get(str(r["num_sources"]), 0) + 1
        for m in r["manipulations"]:
            manip_hist[m] = manip_hist.get(m, 0) + 1
        img = f"images/{r['name']}.png"
        if r["num_sources"] == 1:
            list_lines.append(f"{img},None")
            bin_lines.append(f"{img},None")
            benco.append([img, "Negative"])
        else:
            list_lines.append(f"{img},masks_safirems/{r['name']}.png")
            bin_lines.append(f"{img},masks_binary/{r['name']}.png")
            benco.append([img, f"masks_binary/{r['name']}.png"])
    for fn, lines in (("list.txt", list_lines), ("list_binary.txt", bin_lines),
                      (os.path.join("splits", f"{split}.txt"), [r["name"] for r in records])):
        with open(os.path.join(out, fn), "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    with open(os.path.join(out, "imdl_benco.json"), "w") as f:
        json.dump(benco, f, indent=0)
    manifest = {
        "format": "safire-dataset",
        "version": 1,
        "count": len(records),
        "num_sources_histogram": dict(sorted(hist.items())),
        "labels": ["host"] + [k for k in MANIPULATIONS if k in manip_hist],
        "skipped": [],
        "source": "synthetic",
        "generator": {
            "name": "training.synth", "version": SYNTH_VERSION, "seed": seed,
            "split": split, "sources": [lo, hi], "authentic_fraction": authentic_fraction,
            "size_range": list(size_range), "start_index": start_index,
            "manipulations": dict(MANIPULATIONS if manipulations is None else manipulations),
            "photos": PhotoPool.load(split).names,
        },
        "manipulation_histogram": dict(sorted(manip_hist.items())),
        "splits": {split: len(records)},
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
