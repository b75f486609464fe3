"""Inference benchmark: encoder, one click, full grid partition, peak memory; our partition against
the official procedure (every grid mask upsampled to S x S and kept) in the same run.

    python benchmarks/bench_inference.py [--variants native vit_b] [--threads 2] [--repeats 5]
                                         [--native-sizes 640x480 1024x768 2048x1536]

Native variants (the embedded default) are measured at native resolution, one subprocess per image
size: encoder, one click on the cached embedding, the full partition (auto and K given), end to end,
and the peak resident memory of the whole process; the baseline in the same run is the same
partition with the grid decoded on the full token grid instead of the pooled one (time ratio, and
the ARI between the two partitions). Square variants: each variant runs in its own subprocess (clean
peak-memory readings) against the official procedure. Each variant runs in its own subprocess (clean peak-memory readings). Weights: the embedded default
for ``tiny`` when present, otherwise random; random for ``vit_b`` (timings do not depend on the
weights) unless ``--vit-b-checkpoint`` is given. Images: held-out synthetic forgeries generated on the
fly. Prints a markdown table; ratios are against the official procedure measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms."""

    def __enter__(self):
        self.base = rss_mb()
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())

    @property
    def delta(self) -> float:
        return self.peak - self.base


def _sized_image(w: int, h: int, seed: int):
    """A held-out synthetic forgery of exactly w x h (generated at the long side, then cropped or
    reflect-padded: never resampled)."""
    import numpy as np

    from training.photos import PhotoPool
    from training.synth import generate_sample

    try:
        pool, split = PhotoPool.load("test"), "test"
    except (ValueError, FileNotFoundError):
        pool, split = PhotoPool.load("val"), "val"
    s = generate_sample(seed, 11, 3, pool, (max(w, h), max(w, h)), split=split)
    img, lab = s.image, s.sources
    ph, pw = max(h - img.shape[0], 0), max(w - img.shape[1], 0)
    img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")[:h, :w]
    lab = np.pad(lab, ((0, ph), (0, pw)), mode="reflect")[:h, :w]
    return np.ascontiguousarray(img), lab


def run_native(size: str, threads: int, repeats: int, checkpoint: str | None) -> dict:
    import resource

    import numpy as np
    import torch

    from safire import metrics as M
    from safire.build import build_safire
    from safire.partition import partition
    from safire.predictor import SafirePredictor

    torch.set_num_threads(threads)
    w, h = (int(v) for v in size.split("x"))
    model = build_safire(checkpoint=checkpoint) if checkpoint else build_safire()
    img, _ = _sized_image(w, h, 3)
    pred = SafirePredictor(model, cache_bytes=0)
    base_mb = rss_mb()
    enc_t, click_t, auto_t, k_t, full_t, aris = [], [], [], [], [], []
    with PeakRSS() as mem:
        for _ in range(repeats):
            t = time.perf_counter()
            emb, _ = pred.embed(img)
            enc_t.append(time.perf_counter() - t)
        for _ in range(30):
            t = time.perf_counter()
            pred.predict(np.array([[w * 0.4, h * 0.6]]), np.array([1]), embedding=emb)
            click_t.append(time.perf_counter() - t)
        for _ in range(repeats):
            t = time.perf_counter()
            res = partition(pred, emb, "auto", seed=0)
            auto_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            res3 = partition(pred, emb, 3, seed=0)
            k_t.append(time.perf_counter() - t)
    # baseline: the grid decoded on the full token grid (no pooling)
    import dataclasses

    cfg = model.config
    model.config = dataclasses.replace(cfg, grid_tokens=10**6)
    t = time.perf_counter()
    full3 = partition(pred, emb, 3, seed=0)
    full_t.append(time.perf_counter() - t)
    model.config = cfg
    aris.append(M.ari(res3.labels.astype(np.int64), full3.labels.astype(np.int64)))
    return {
        "size": size, "weights": model.meta.get("model_version"), "threads": threads,
        "tokens": list(emb.embedding.shape[-2:]),
        "encoder_s": statistics.median(enc_t), "click_ms": 1000 * statistics.median(click_t),
        "click_p95_ms": 1000 * sorted(click_t)[int(0.95 * (len(click_t) - 1))],
        "auto_s": statistics.median(auto_t), "k3_s": statistics.median(k_t), "full_grid_k3_s": full_t[0],
        "pool_speedup": full_t[0] / statistics.median(k_t), "ari_pooled_vs_full": aris[0],
        "end_to_end_s": statistics.median(enc_t) + statistics.median(auto_t),
        "peak_rss_mb": max(mem.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_above_model_mb": mem.peak - base_mb, "sources_auto": int(res.num_sources),
    }


def run_variant(variant: str, threads: int, repeats: int, checkpoint: str | None, n_images: int) -> dict:
    import numpy as np
    import torch

    from official_way import official_partition
    from safire import metrics as M
    from safire.build import DEFAULT_CHECKPOINT, build_safire
    from safire.partition import partition
    from safire.predictor import SafirePredictor
    from training.photos import PhotoPool
    from training.synth import generate_sample

    torch.set_num_threads(threads)
    if checkpoint:
        model = build_safire(checkpoint=checkpoint)
    elif variant == "tiny" and DEFAULT_CHECKPOINT.is_file() and "tiny" in DEFAULT_CHECKPOINT.name:
        model = build_safire(use_default=True)
    else:
        torch.manual_seed(0)
        model = build_safire(variant)
    weights = model.meta.get("model_version")
    pool = PhotoPool.load("val")
    samples = [generate_sample(i, 7, 2 + i % 2, pool, split="val") for i in range(n_images)]
    pred = SafirePredictor(model, cache_bytes=0)
    S = model.config.img_size

    enc_t, click_t, part_t, off_t, aris, ksrc = [], [], [], [], [], []
    mem_part, mem_off = 0.0, 0.0
    for si, s in enumerate(samples):
        img = s.image
        for _ in range(max(1, repeats if si == 0 else 1)):
            t = time.perf_counter()
            emb, _ = pred.embed(img)
            enc_t.append(time.perf_counter() - t)
        h, w = img.shape[:2]
        for _ in range(20 if si == 0 else 5):
            t = time.perf_counter()
            pred.predict(np.array([[w * 0.4, h * 0.6]]), np.array([1]), embedding=emb)
            click_t.append(time.perf_counter() - t)
        k = s.num_sources
        with PeakRSS() as m1:
            t = time.perf_counter()
            res = partition(pred, emb, k, seed=0, out_hw=(S, S))
            part_t.append(time.perf_counter() - t)
        mem_part = max(mem_part, m1.delta)
        if si < (1 if variant == "vit_b" else n_images):
            with PeakRSS() as m2:
                t = time.perf_counter()
                off = official_partition(model, emb.embedding, k, seed=0)
                off_t.append(time.perf_counter() - t)
            mem_off = max(mem_off, m2.delta)
            aris.append(M.ari(res.labels.astype(np.int64), off))
            ksrc.append((int(res.num_sources), int(len(np.unique(off)))))
    return {
        "variant": variant, "weights": weights, "threads": threads, "img_size": S,
        "encoder_s": statistics.median(enc_t), "click_ms": 1000 * statistics.median(click_t),
        "click_p95_ms": 1000 * sorted(click_t)[int(0.95 * (len(click_t) - 1))],
        "partition_s": statistics.median(part_t), "partition_peak_mb": mem_part,
        "official_s": statistics.median(off_t), "official_peak_mb": mem_off,
        "speedup": statistics.median(off_t) / statistics.median(part_t),
        "ari_vs_official_min": min(aris), "ari_vs_official_mean": float(np.mean(aris)),
        "end_to_end_s": statistics.median(enc_t) + statistics.median(part_t), "images": len(samples),
        "official_images": len(off_t), "sources_ours_official": ksrc,
        "sources_asked": [s.num_sources for s in samples[: len(ksrc)]],
    }


def _child(args: list, what: str) -> dict | None:
    """Run this script as a child with ``args``; its RESULT line as a dict (None on failure)."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not line:
        print(f"{what} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    print(f"done {what}", file=sys.stderr)
    return json.loads(line[0][7:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["native", "vit_b"])
    p.add_argument("--native-sizes", nargs="+", default=["640x480", "1024x768", "2048x1536"])
    p.add_argument("--checkpoint", default=None, help="native weights (default: the embedded default model)")
    p.add_argument("--threads", nargs="+", type=int, default=[2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--vit-b-checkpoint", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child and args.child.startswith("native@"):
        size, t = args.child[len("native@"):].split(":")
        print("RESULT " + json.dumps(run_native(size, int(t), args.repeats, args.checkpoint)))
        return 0
    if args.child:
        v, t = args.child.split(":")
        ck = args.vit_b_checkpoint if v == "vit_b" else None
        print("RESULT " + json.dumps(run_variant(v, int(t), args.repeats, ck, args.images)))
        return 0
    rows, native_rows = [], []
    if "native" in args.variants:
        for size in args.native_sizes:
            for t in args.threads:
                cmd = ["--child", f"native@{size}:{t}", "--repeats", str(args.repeats)]
                if args.checkpoint:
                    cmd += ["--checkpoint", args.checkpoint]
                r = _child(cmd, f"native {size} threads={t}")
                if r:
                    native_rows.append(r)
        hdr = ("| image | weights | threads | tokens | encoder s | click ms (p50 / p95) | partition auto s | "
               "partition K=3 s | K=3 on the full grid s (baseline) | speed-up | ARI pooled vs full | "
               "end to end s (encoder + auto) | peak RSS MB (process) |")
        print(hdr)
        print("|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|")
        for r in native_rows:
            print(f"| {r['size']} | {r['weights']} | {r['threads']} | {r['tokens'][1]}x{r['tokens'][0]} | "
                  f"{r['encoder_s']:.3f} | {r['click_ms']:.1f} / {r['click_p95_ms']:.1f} | {r['auto_s']:.3f} | "
                  f"{r['k3_s']:.3f} | {r['full_grid_k3_s']:.3f} | {r['pool_speedup']:.1f}x | "
                  f"{r['ari_pooled_vs_full']:.3f} | {r['end_to_end_s']:.2f} | {r['peak_rss_mb']:.0f} |")
        print()
    for v in [v for v in args.variants if v != "native"]:
        for t in args.threads:
            cmd = ["--child", f"{v}:{t}", "--repeats", str(args.repeats),
                   "--images", str(args.images if v != "vit_b" else min(args.images, 2))]
            if args.vit_b_checkpoint:
                cmd += ["--vit-b-checkpoint", args.vit_b_checkpoint]
            r = _child(cmd, f"{v} threads={t}")
            if r:
                rows.append(r)
    if not rows:
        return 0
    hdr = ("| variant | weights | threads | encoder s | click ms (p50 / p95) | partition s (encoder excl.) | "
           "partition peak MB | official way s | official peak MB | speed-up | ARI vs official (min / mean) | "
           "sources found, ours / official (asked) | end to end s |")
    print(hdr)
    print("|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|")
    for r in rows:
        print(f"| {r['variant']} | {r['weights']} | {r['threads']} | {r['encoder_s']:.3f} | "
              f"{r['click_ms']:.1f} / {r['click_p95_ms']:.1f} | {r['partition_s']:.3f} | {r['partition_peak_mb']:.0f} | "
              f"{r['official_s']:.2f} | {r['official_peak_mb']:.0f} | {r['speedup']:.1f}x | "
              f"{r['ari_vs_official_min']:.4f} / {r['ari_vs_official_mean']:.4f} | "
              f"{', '.join(f'{a}/{b} ({k})' for (a, b), k in zip(r['sources_ours_official'], r['sources_asked']))} | "
              f"{r['end_to_end_s']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
