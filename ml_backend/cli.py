"""The ``safire`` command: one entry point for every tool of the project.

    safire predict IMAGE|DIR|GLOB ... --out DIR      partition images (safire.cli)
    safire synth --out DIR --n N                     synthetic multi-source forgeries (training.synth)
    safire train ...                                 train / fine-tune (training.train)
    safire evaluate --data DIR [--checkpoint CK]     held-out metrics (training.evaluate); --report DIR: HTML
    safire robustness --data DIR --out DIR           metrics under JPEG, resizing, blur, noise (training.robustness)
    safire calibrate --checkpoint CK --data DIR --out CK2   tune automatic mode (training.calibrate)
    safire export EXPORT.json --out DIR              Label Studio export -> dataset (ml_backend.export)
    safire preannotate --url URL --api-key KEY --project ID   bulk pre-annotation on Ray Data (ml_backend.bulk)
    safire serve                                     the Label Studio ML backend (gunicorn)

It lives in ``ml_backend`` because that package may import both ``safire`` and ``training``.
"""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

COMMANDS = {
    "predict": ("safire.cli", "partition images and write heat maps, source maps, overlays, JSON"),
    "synth": ("training.synth", "generate synthetic multi-source forgeries"),
    "train": ("training.train", "train or fine-tune a SAFIRE model"),
    "pretrain": ("training.pretrain", "region-to-region contrastive pretraining of the encoder"),
    "calibrate": ("training.calibrate", "tune the automatic number of sources of a checkpoint on held-out data"),
    "evaluate": ("training.evaluate", "held-out metrics of a model on a dataset (model-card table, --report HTML)"),
    "robustness": ("training.robustness", "metrics under JPEG, resizing, blur, noise and a social-network chain"),
    "export": ("ml_backend.export", "turn a Label Studio export into a training dataset"),
    "preannotate": ("ml_backend.bulk", "pre-annotate a whole Label Studio project (or an export) in bulk, resumably"),
    "serve": ("ml_backend.serve", "run the Label Studio ML backend"),
}


def usage() -> str:
    lines = ["usage: safire COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "safire COMMAND --help shows a command's options."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"safire: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
