"""Turn a calibrated training checkpoint into the embedded default's file, with its lineage.

    python scripts/ship_checkpoint.py --checkpoint CAL.pt --version safire-native-synth-vN \\
        --lineage "stage ...: what was trained, on what, how long" [--lineage "calibrate: ..."] \\
        --metrics TEST_EVAL.json --metrics-on "400 test composites ..." \\
        [--parent safire/weights/safire-native-default.pt] [--out safire/weights/safire-native-default.pt]

The result keeps the weights and the calibration (``meta["partition"]``) of ``--checkpoint`` as they
are; it takes the lineage of ``--parent`` (the model it continued) and appends the given entries,
keeps the parent's photo-pool record when the checkpoint has none, sets the model version in the
metadata and in the recorded training config, and stores the summary of a ``safire evaluate
--json`` run as ``meta["metrics"]`` (numbers only) with a sentence saying what they were measured on.
Weights stay in the dtype the checkpoint has (``safire calibrate --half`` writes float16).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import torch


def ship(checkpoint: str, version: str, lineage: List[str], *, parent: Optional[str] = None,
         metrics: Optional[str] = None, metrics_on: Optional[str] = None) -> dict:
    """The shipped checkpoint dictionary (see the module docstring)."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    meta = ck["meta"]
    prov = meta.setdefault("provenance", {})
    old_lineage: List[str] = []
    if parent:
        pm = torch.load(parent, map_location="cpu", weights_only=False)["meta"]
        old_lineage = list(pm.get("provenance", {}).get("lineage", []))
        if not prov.get("photos") and pm.get("provenance", {}).get("photos"):
            prov["photos"] = pm["provenance"]["photos"]
    prov["lineage"] = old_lineage + list(lineage)
    meta["model_version"] = version
    if isinstance(prov.get("train_config"), dict):
        prov["train_config"]["model_version"] = version
    if metrics:
        with open(metrics) as f:
            summary = json.load(f)["summary"]
        meta["metrics"] = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
        meta["metrics_on"] = metrics_on or metrics
    return ck


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="calibrated checkpoint (safire calibrate --half)")
    p.add_argument("--version", required=True, help="model version to ship it as")
    p.add_argument("--lineage", action="append", default=[], help="lineage entry to append (repeatable)")
    p.add_argument("--parent", default="safire/weights/safire-native-default.pt",
                   help="the model it continued (its lineage is kept); 'none' for a new lineage")
    p.add_argument("--metrics", default=None, help="safire evaluate --json output on the test set")
    p.add_argument("--metrics-on", default=None, help="what the metrics were measured on (one sentence)")
    p.add_argument("--out", default="safire/weights/safire-native-default.pt")
    args = p.parse_args(argv)
    if not args.lineage:
        p.error("give at least one --lineage entry: what this checkpoint adds to its parent")
    ck = ship(args.checkpoint, args.version, args.lineage, parent=None if args.parent == "none" else args.parent,
              metrics=args.metrics, metrics_on=args.metrics_on)
    torch.save(ck, args.out)
    m = ck["meta"]
    print(json.dumps({"out": args.out, "model_version": m["model_version"], "partition": m.get("partition"),
                      "lineage": m["provenance"]["lineage"][-len(args.lineage):]}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
