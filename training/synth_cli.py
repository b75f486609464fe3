"""The command line of ``training.synth`` (``safire synth`` / ``python -m training.synth``).

Parses the options (:func:`build_parser`, :func:`parse_manipulations`) and runs
:func:`training.synth_dataset.write_dataset`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, Optional, Sequence, Tuple

from training.synth_common import MANIPULATIONS
from training.synth_dataset import write_dataset

def parse_manipulations(text: str) -> Dict[str, float]:
    """``"exemplar-fill=1,splicing=0.5"`` -> ``{"exemplar-fill": 1.0, "splicing": 0.5}``."""
    out: Dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in MANIPULATIONS:
            raise argparse.ArgumentTypeError(f"unknown manipulation {name!r} (known: {', '.join(MANIPULATIONS)})")
        try:
            out[name] = float(value) if value.strip() else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {value!r}") from None
        if out[name] < 0:
            raise argparse.ArgumentTypeError(f"weight of {name!r} must be >= 0")
    if not any(v > 0 for v in out.values()):
        raise argparse.ArgumentTypeError("give at least one manipulation with a positive weight")
    return out


def _parse_sources(text: str) -> Tuple[int, int]:
    try:
        if "-" in text:
            a, b = text.split("-", 1)
            lo, hi = int(a), int(b)
        else:
            lo = hi = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sources expects N or MIN-MAX, got {text!r}")
    if not 1 <= lo <= hi <= 5:
        raise argparse.ArgumentTypeError("--sources must lie in 1..5 with MIN <= MAX")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="safire synth",
        description="Generate synthetic multi-source forgeries from bundled offline photos "
                    "(layout: docs/dataset-format.md).")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--n", type=int, default=100, help="number of samples (default 100)")
    p.add_argument("--sources", type=_parse_sources, default=(1, 4),
                   help="number of sources per image: N or MIN-MAX, uniform (default 1-4)")
    p.add_argument("--authentic-fraction", type=float, default=None,
                   help="share of authentic (single-source) images; the rest is uniform over "
                        "max(MIN,2)..MAX (default: not set, plain uniform over --sources)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--split", choices=["train", "val", "test", "heldout"], default="train",
                   help="photo split (docs/photos.md): val, test and heldout use only held-out photos, "
                        "never seen in training (default train)")
    p.add_argument("--size-min", type=int, default=256, help="min image side (default 256)")
    p.add_argument("--size-max", type=int, default=512, help="max image side (default 512)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--start-index", type=int, default=0,
                   help="first sample index (to extend a dataset reproducibly)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that already holds a dataset")
    p.add_argument("--manipulations", type=parse_manipulations, default=None,
                   help="foreign manipulation kinds and weights, e.g. 'exemplar-fill=1' (default: the "
                        "training mix, which never contains the held-out exemplar-fill and recolour)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n < 0 or args.size_min > args.size_max or args.seed < 0:
        build_parser().error("need --n >= 0, --seed >= 0 and --size-min <= --size-max")
    try:
        manifest = write_dataset(
            args.out, args.n, seed=args.seed, sources=args.sources,
            authentic_fraction=args.authentic_fraction, split=args.split,
            size_range=(args.size_min, args.size_max), workers=args.workers,
            start_index=args.start_index, overwrite=args.overwrite, progress=not args.quiet,
            manipulations=args.manipulations)
    except (FileExistsError, ValueError) as e:
        sys.stderr.write(f"safire synth: error: {e}\n")
        return 2
    if not args.quiet:
        sys.stderr.write(f"[synth] wrote {manifest['count']} samples to {args.out} "
                         f"(sources histogram {manifest['num_sources_histogram']})\n")
    return 0
