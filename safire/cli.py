"""``safire predict``: partition images and write the documented outputs.

For an input ``NAME.ext`` it writes, all at the input's resolution:

- ``NAME.heatmap.png``   8-bit greyscale binary forgery heat map (255 = forged / not the host);
- ``NAME.sources.png``   8-bit, pixel value = source index, 0 = the largest source;
- ``NAME.partition.png`` RGB colour map of the sources (official SAFIRE palette);
- ``NAME.overlay.png``   the image with every non-host source tinted and all boundaries outlined;
- ``NAME.json``          number of sources, image-level score, per-source areas and confidences,
                         model version, timings, and ``provenance`` (SHA-256 of the image file and
                         of the weights, settings, library versions: :mod:`safire.provenance`).

One bad image is reported and skipped; the exit code is 1 if any image failed, else 0.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional

from .io import IMAGE_EXTENSIONS, ImageLoadError, load_image, save_png
from .visualize import colorize_partition, heatmap_to_uint8, overlay

OUTPUT_SUFFIXES = (".heatmap.png", ".sources.png", ".partition.png", ".overlay.png", ".json")


def expand_inputs(inputs: Iterable[str]) -> List[Path]:
    """Files, directories (their images, sorted) and glob patterns -> unique list of paths."""
    out: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file()))
        elif any(ch in item for ch in "*?["):
            out.extend(sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file()))
        else:
            out.append(p)
    seen, unique = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def _progress(i: int, n: int, name: str, t0: float, stream=sys.stderr) -> None:
    width = 28
    done = int(width * i / max(n, 1))
    rate = (time.perf_counter() - t0) / max(i, 1)
    eta = rate * (n - i)
    stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n}  {rate:.2f} s/img  eta {eta:.0f}s  {name[:40]:<40}")
    stream.flush()
    if i == n:
        stream.write("\n")


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="safire predict", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files, directories or glob patterns")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--sources", default="auto", help="'auto' or a fixed number of sources (default auto)")
    p.add_argument("--checkpoint", default=os.environ.get("SAFIRE_CHECKPOINT") or None,
                   help="weights (official safire.pth or ours); default: the embedded model")
    p.add_argument("--variant", default=None, help="vit_b, tiny, micro (default: from the checkpoint)")
    p.add_argument("--device", default=os.environ.get("SAFIRE_DEVICE", "cpu"), help="cpu, cuda, cuda:N, auto")
    p.add_argument("--grid", type=int, default=16, help="points per side of the prompt grid (default 16)")
    p.add_argument("--seed", type=int, default=0, help="clustering seed (default 0)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("SAFIRE_THREADS", "0")),
                   help="torch CPU threads (0 = torch default)")
    p.add_argument("--random-weights", action="store_true",
                   help="use untrained weights of --variant (for testing the pipeline only)")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose NAME.json exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from .build import build_safire
    from .partition import calibrated_defaults, partition
    from .predictor import SafirePredictor
    from .provenance import build_provenance

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sources = args.sources if args.sources == "auto" else int(args.sources)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = expand_inputs(args.inputs)
    if not paths:
        print("safire predict: no input images found", file=sys.stderr)
        return 2
    from .checkpoint import CheckpointError

    try:
        if args.random_weights:
            model = build_safire(args.variant or "tiny", None, args.device)
        else:
            model = build_safire(args.variant, args.checkpoint, args.device, use_default=not args.checkpoint)
    except (CheckpointError, RuntimeError, ValueError) as e:
        print(f"safire predict: cannot load the model: {e}", file=sys.stderr)
        return 2
    predictor = SafirePredictor(model, cache_bytes=0)
    failures, t0 = 0, time.perf_counter()
    for i, path in enumerate(paths, 1):
        stem = out_dir / path.stem
        try:
            if args.skip_existing and Path(f"{stem}.json").exists():
                continue
            t_load = time.perf_counter()
            data = path.read_bytes()  # hashed as read: sha256sum of the file gives the same value
            image = load_image(data, name=str(path))
            load_s = time.perf_counter() - t_load
            res = partition(predictor, image, sources, grid_size=args.grid, seed=args.seed)
            timings = {"load": load_s, **res.timings}
            prov = build_provenance(
                model=model, image_bytes=data, image_size=image.shape[:2], sources_requested=sources,
                sources_found=res.num_sources, grid=args.grid, seed=args.seed,
                partition_settings=calibrated_defaults(model), score=res.score, timings=timings,
                extra={"kind": "predict", "image_file": path.name, "uncertainty": round(float(res.uncertainty), 6)})
            del data
            save_png(f"{stem}.heatmap.png", heatmap_to_uint8(res.heatmap))
            save_png(f"{stem}.sources.png", res.labels.astype("uint8"))
            save_png(f"{stem}.partition.png", colorize_partition(res.labels))
            save_png(f"{stem}.overlay.png", overlay(image, res.labels))
            record = {
                "image": str(path),
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "num_sources": int(res.num_sources),
                "score": round(float(res.score), 6),
                "uncertainty": round(float(res.uncertainty), 6),
                "areas": [round(float(a), 6) for a in res.areas],
                "confidences": [round(float(c), 6) for c in res.confidences],
                "model_version": model.meta.get("model_version"),
                "variant": model.meta.get("variant"),
                "sources_requested": args.sources,
                "grid": args.grid,
                "seed": args.seed,
                "timings": {k: round(v, 4) for k, v in timings.items()},
                "provenance": prov,
            }
            tmp = Path(f"{stem}.json.tmp")
            tmp.write_text(json.dumps(record, indent=2))
            os.replace(tmp, f"{stem}.json")
        except (ImageLoadError, OSError, ValueError) as e:
            failures += 1
            print(f"\nsafire predict: skipped {path}: {e}", file=sys.stderr)
        if not args.quiet:
            _progress(i, len(paths), path.name, t0)
    if failures:
        print(f"safire predict: {failures} of {len(paths)} images failed", file=sys.stderr)
    return 1 if failures else 0


def main(argv: Optional[List[str]] = None) -> int:
    return run(build_parser().parse_args(argv))
