"""``safire export``'s command line: arguments, the live project (``--project`` with the Label Studio
client), the provenance records, then :func:`ml_backend.export.export_dataset`.

    safire export EXPORT.json --out DIR [--config label_config.xml] [--images-root DIR]
                  [--provenance FILE|DIR ...] [--skip-changed]
    safire export --project ID --url http://host:8080 --api-key KEY --out DIR

Exit status: 0 when at least one sample was written, 1 when none was, 2 on an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from ml_backend.annotations import ExportError
from ml_backend.export_rules import ExportRules
from ml_backend.lsclient import LabelStudioClient
from ml_backend.provenance_index import ProvenanceIndex, load_provenance

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="safire export",
        description="Turn a Label Studio JSON export (or a live project) into a SAFIRE dataset "
                    "(docs/dataset-format.md).",
    )
    p.add_argument("export", nargs="?", help="Label Studio export (JSON list of tasks); "
                                             "omit with --project")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--config", help="label config XML file (default: the project's config with "
                                    "--project, else labels inferred from the export)")
    p.add_argument("--labels", help="comma-separated label order when no config is given")
    p.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL"),
                   help="Label Studio base URL (default $LABEL_STUDIO_URL)")
    p.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                   help="legacy token or personal access token (default $LABEL_STUDIO_API_KEY)")
    p.add_argument("--project", type=int, help="export project ID live (needs --url, --api-key)")
    p.add_argument("--all-tasks", action="store_true",
                   help="with --project: include tasks without annotations (they are skipped)")
    p.add_argument("--images-root", help="directory with local copies of the images")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unlabelled", choices=("host", "ignore"), default="host",
                   help="multi-source: unpainted pixels join the host source or are ignored (255)")
    p.add_argument("--overlap", choices=("last", "highest"), default="last",
                   help="multi-source: overlapping regions: later region or higher label wins")
    p.add_argument("--empty-is-authentic", action="store_true",
                   help="annotations without regions count as authentic images")
    p.add_argument("--no-ground-truth-first", action="store_true",
                   help="pick the most recent annotation even if another is ground truth")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    p.add_argument("--save-export", action="store_true",
                   help="with --project: also save the raw export as OUT/labelstudio_export.json")
    p.add_argument("--provenance", nargs="+", metavar="FILE|DIR",
                   help="provenance records to check images against: the backend's MODEL_DIR/provenance/"
                        "*.jsonl, a JSON list of predictions (GET /api/predictions/?project=ID), safire "
                        "predict outputs (docs/provenance.md)")
    p.add_argument("--skip-changed", action="store_true",
                   help="skip images whose bytes changed since they were predicted (default: keep them, "
                        "report them in manifest.json and on stderr)")
    p.add_argument("--no-prediction-provenance", action="store_true",
                   help="with --project: do not read the project's predictions from Label Studio")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ml_backend.export import _write_json, export_dataset  # the export imports this module

    args = build_parser().parse_args(None if argv is None else list(argv))
    err = sys.stderr
    try:
        client = None
        if args.project is not None or (args.url and args.api_key):
            if args.project is not None and not (args.url and args.api_key):
                raise ExportError("--project needs --url and --api-key (or LABEL_STUDIO_URL / "
                                  "LABEL_STUDIO_API_KEY)")
            if args.url and args.api_key:
                client = LabelStudioClient(args.url, args.api_key)

        config_xml = None
        if args.config:
            with open(args.config, encoding="utf-8") as f:
                config_xml = f.read()

        if args.project is not None:
            assert client is not None
            tasks = client.export_tasks(args.project, all_tasks=args.all_tasks)
            if config_xml is None:
                config_xml = client.get_project(args.project).get("label_config")
            if args.save_export:
                os.makedirs(args.out, exist_ok=True)
                _write_json(os.path.join(args.out, "labelstudio_export.json"), tasks, indent=None)
        elif args.export:
            with open(args.export, encoding="utf-8") as f:
                tasks = json.load(f)
        else:
            raise ExportError("give an export file or --project ID")
        if not isinstance(tasks, list):
            raise ExportError("the export must be a JSON list of tasks (exportType=JSON)")
        if tasks and all(isinstance(t, dict) and "annotations" not in t for t in tasks):
            print("warning: no task has an 'annotations' key: is this JSON_MIN? use exportType=JSON",
                  file=err)
        if not args.images_root and client is None:
            raise ExportError("no way to get images: give --images-root DIR and/or --url/--api-key")
        index = load_provenance(args.provenance) if args.provenance else ProvenanceIndex()
        if args.project is not None and client is not None and not args.no_prediction_provenance:
            try:
                index.add(client.list_predictions(args.project))
            except ExportError as exc:
                print(f"warning: cannot read the project's predictions (provenance): {exc}", file=err)

        manifest = export_dataset(
            tasks,
            args.out,
            fetch_image=client.fetch_image if client is not None else None,
            max_pixels=client.max_pixels if client is not None else 40_000_000,
            images_root=args.images_root,
            label_config=config_xml,
            labels=[x.strip() for x in args.labels.split(",")] if args.labels else None,
            rules=ExportRules(
                unlabelled=args.unlabelled,
                overlap=args.overlap,
                empty_is_authentic=args.empty_is_authentic,
                prefer_ground_truth=not args.no_ground_truth_first,
            ),
            val_fraction=args.val_fraction,
            seed=args.seed,
            overwrite=args.overwrite,
            log=(lambda m: print(m, file=err)) if args.verbose else None,
            provenance=index,
            skip_changed=args.skip_changed,
        )
    except ExportError as exc:
        print(f"safire export: error: {exc}", file=err)
        return 2
    except Exception as exc:  # label config errors, JSON errors, network errors
        print(f"safire export: error: {type(exc).__name__}: {exc}", file=err)
        return 2
    print(manifest.summary())
    return 0 if manifest.count else 1
