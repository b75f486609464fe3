"""``safire export``: turn a Label Studio JSON export into a SAFIRE training dataset.

    safire export EXPORT.json --out DIR [--config label_config.xml] [--images-root DIR]
                  [--provenance FILE|DIR ...] [--skip-changed]
    safire export --project ID --url http://host:8080 --api-key KEY --out DIR

Provenance (``docs/provenance.md``): each sample's ``meta`` records the SHA-256 of the image bytes
fetched for the export and the provenance record of the prediction it was annotated from (found in
the annotation, the task's predictions, the project's predictions read from Label Studio with
``--project``, or ``--provenance`` files: the backend's ``MODEL_DIR/provenance/*.jsonl``, a JSON
list from ``GET /api/predictions/?project=ID``, ``safire predict`` outputs). An image whose bytes
differ from the predicted ones is reported (``manifest.json["provenance"]["changed"]``, and on
stderr) and, with ``--skip-changed``, skipped (code ``image_changed``).

The dataset layout is ``docs/dataset-format.md``; the rules used to turn annotations into source
masks are documented there (section "Label Studio export rules") and in :class:`ExportRules`.

Public API: :func:`export_dataset`, :class:`ExportRules`, :class:`ExportManifest`,
:class:`LabelStudioClient`, :class:`LocalImageResolver`, :func:`select_annotation`,
:func:`main`.

The export is split along its seams, one module each: the Label Studio client
(:mod:`ml_backend.lsclient`, shared with the retraining jobs and ``safire preannotate``), annotation
selection, result parsing and mask building (:mod:`ml_backend.annotations`), image lookup and
loading (:mod:`ml_backend.imagefiles`), provenance records (:mod:`ml_backend.provenance_index`),
the rules and the manifest (:mod:`ml_backend.export_rules`), the command line
(:mod:`ml_backend.export_cli`); this module holds the dataset writer. Their public names stay
importable from here.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ml_backend.annotations import (  # noqa: F401 - re-exported (the export's seams, one module each)
    IGNORE,
    UNLABELLED,
    ExportError,
    _build_binary,
    _build_multi,
    _parse_result,
    _Parsed,
    _Region,
    _region_masks,
    _resolve_labels,
    _Skip,
    select_annotation,
)
from ml_backend.export_cli import main  # noqa: F401 - re-exported (safire export, python -m ml_backend.export)
from ml_backend.export_rules import ExportManifest, ExportRules
from ml_backend.imagefiles import (  # noqa: F401
    FetchImage,
    LocalImageResolver,
    _call_fetch,
    _chain,
    _image_bytes_for,
    _load_image,
)
from ml_backend.label_config import LabelConfigSpec, parse_label_config
from ml_backend.label_words import is_authentic_label, is_forged_label
from ml_backend.lsclient import ImageFetchError, LabelStudioClient  # noqa: F401
from ml_backend.provenance_index import ProvenanceIndex, _task_provenance, load_provenance  # noqa: F401

__all__ = [
    "ExportError",
    "ExportManifest",
    "ExportRules",
    "ImageFetchError",
    "LabelStudioClient",
    "LocalImageResolver",
    "ProvenanceIndex",
    "export_dataset",
    "load_provenance",
    "main",
    "select_annotation",
]

LAYOUT_DIRS = ("images", "sources", "masks_safirems", "masks_binary", "meta", "splits")
NAME_PREFIX = "ls_"


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------


def _write_bytes(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_png(path: str, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    _write_bytes(path, buf.getvalue())


def _write_json(path: str, obj: Any, indent: Optional[int] = 1) -> None:
    _write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def _sample_name(task: Dict[str, Any], index: int) -> str:
    tid = task.get("id")
    if tid is None:
        return f"{NAME_PREFIX}i{index}"
    proj = task.get("project")
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(tid))
    if isinstance(proj, int) or (isinstance(proj, str) and proj.isdigit()):
        return f"{NAME_PREFIX}p{proj}_t{safe}"
    return f"{NAME_PREFIX}t{safe}"


def _prepare_out(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(os.path.join(out_dir, "manifest.json")) and not overwrite:
        raise ExportError(f"{out_dir} already holds a dataset (manifest.json); use --overwrite")
    for d in LAYOUT_DIRS:
        os.makedirs(os.path.join(out_dir, d), exist_ok=True)
    if overwrite:  # drop files of an earlier export
        for d in LAYOUT_DIRS[:-1]:
            for fn in os.listdir(os.path.join(out_dir, d)):
                if fn.startswith(NAME_PREFIX):
                    os.remove(os.path.join(out_dir, d, fn))
        for fn in ("train.txt", "val.txt"):
            p = os.path.join(out_dir, "splits", fn)
            if os.path.exists(p):
                os.remove(p)


# ----------------------------------------------------------------------------------------
# main entry point
# ----------------------------------------------------------------------------------------


def export_dataset(
    tasks: Sequence[Dict[str, Any]],
    out_dir: str,
    fetch_image: Optional[FetchImage] = None,
    *,
    images_root: Optional[str] = None,
    label_config: Union[str, LabelConfigSpec, None] = None,
    labels: Optional[Sequence[str]] = None,
    rules: Optional[ExportRules] = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    log: Optional[Callable[[str], None]] = None,
    max_pixels: int = 40_000_000,
    provenance: Optional[ProvenanceIndex] = None,
    skip_changed: bool = False,
) -> ExportManifest:
    """Write the dataset of ``docs/dataset-format.md`` from a Label Studio JSON export.

    tasks: the export (``GET /api/projects/ID/export?exportType=JSON``), a list of tasks.
    fetch_image: ``fetch_image(url) -> bytes`` (or ``fetch_image(url, task_id=...)``) for
        ``task["data"][<image key>]``; ``images_root`` adds a local lookup tried first.
    label_config: the project's config (XML or parsed spec): gives the brush tag, the label
        order (= raw source order) and the mode. Without it, ``labels`` gives the order, else
        the labels are collected from the export in order of first appearance.
    max_pixels: images above this many pixels are skipped (checked from the header, before decoding).
    provenance: extra provenance records (:func:`load_provenance`); records inside the annotation
        or the task's predictions come first. ``skip_changed``: skip images whose SHA-256 differs
        from their prediction's (code ``image_changed``) instead of only reporting them.
    Every task ends up in ``manifest.samples`` or ``manifest.skipped`` (with a reason).
    """
    rules = rules or ExportRules()
    rules.validate()
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ExportError("val_fraction must be in [0, 1)")
    if isinstance(tasks, dict):
        tasks = [tasks]
    spec = parse_label_config(label_config) if isinstance(label_config, str) else label_config
    fetchers: List[FetchImage] = []
    if images_root:
        fetchers.append(LocalImageResolver(images_root))
    if fetch_image is not None:
        fetchers.append(fetch_image)
    if not fetchers:
        raise ExportError("no way to get images: pass fetch_image or images_root")
    fetch = fetchers[0] if len(fetchers) == 1 else _chain(fetchers)
    image_key = spec.image_value if spec else None

    mode, label_order, host_label, forged_label, authentic_label = _resolve_labels(tasks, spec, labels)
    _prepare_out(out_dir, overwrite)

    manifest = ExportManifest(out_dir=out_dir, total=len(tasks), mode=mode, labels=label_order,
                              rules=asdict(rules))
    metas: Dict[str, Dict[str, Any]] = {}
    prov_counts = {"match": 0, "changed": 0, "unknown": 0}
    changed: List[Dict[str, Any]] = []
    rows: List[Tuple[str, str, int]] = []  # name, image relpath, num_sources
    seen_names: Dict[str, Any] = {}

    for index, task in enumerate(tasks):
        tid = task.get("id") if isinstance(task, dict) else None
        try:
            if not isinstance(task, dict):
                raise _Skip("bad_task", "not a task object")
            name = _sample_name(task, index)
            if name in seen_names:
                raise _Skip("duplicate", f"duplicate task id (same sample name {name})")
            ann, why = select_annotation(task, rules.prefer_ground_truth)
            parsed = _parse_result(ann.get("result") or [], spec)
            auth_verdict = any(is_authentic_label(v) for v in parsed.verdicts)
            forged_verdict = any(is_forged_label(v) and not is_authentic_label(v) for v in parsed.verdicts)
            if any(reg.rotation % 360 for reg in parsed.regions):
                raise _Skip("rotated", "brush regions drawn on a rotated image (image_rotation != 0)")
            if not parsed.regions:
                if auth_verdict and forged_verdict:
                    raise _Skip("conflict", f"contradicting image-level choices {parsed.verdicts}")
                if not auth_verdict and not rules.empty_is_authentic:
                    what = " but marked " + "/".join(parsed.verdicts) if parsed.verdicts else ""
                    raise _Skip("empty", "annotation has no brush regions" + what +
                                " (paint the forged regions or choose 'authentic')")

            data = task.get("data") or {}
            key = image_key if image_key in data else ("image" if "image" in data else None)
            if key is None:
                str_vals = [k for k, v in data.items() if isinstance(v, str)]
                key = str_vals[0] if len(str_vals) == 1 else None
            url = data.get(key) if key else None
            if not url or not isinstance(url, str):
                raise _Skip("no_image_url", f"task data has no image URL (key {image_key or 'image'!r})")
            try:
                fetched = _call_fetch(fetch, url, tid)
                img = _load_image(fetched, max_pixels)
            except Exception as exc:
                raise _Skip("image_error", f"image failed to load: {exc}") from None
            from safire.provenance import check_image, sha256_bytes

            image_sha = sha256_bytes(fetched)
            del fetched
            prov, prov_from = _task_provenance(task, ann, url, provenance)
            prov_status = check_image(prov, sha256=image_sha)
            if prov_status == "changed" and skip_changed:
                raise _Skip("image_changed", f"image changed since it was predicted (sha256 {image_sha[:16]}..., "
                                             f"predicted {str(prov['image_sha256'])[:16]}...)")

            # Which orientation did Label Studio show? Browsers apply EXIF orientation, so the
            # regions' original_width/height normally match the oriented size.
            dims = {(r.width, r.height) for r in parsed.regions if r.width and r.height}
            if len(dims) > 1:
                raise _Skip("size_mismatch", f"brush regions have different sizes {sorted(dims)}")
            oriented = True
            h, w = img.height, img.width
            if dims:
                rw, rh = next(iter(dims))
                if (rw, rh) == (img.width, img.height):
                    pass
                elif (rw, rh) == (img.raw_width, img.raw_height):
                    oriented, h, w = False, img.raw_height, img.raw_width
                else:
                    raise _Skip("size_mismatch",
                                f"annotation is {rw}x{rh} but the image is {img.width}x{img.height}")
            masks = _region_masks(parsed, h, w)

            if mode == "multi":
                built = _build_multi(masks, parsed, label_order, host_label or label_order[0], rules, h, w)
            else:
                built = _build_binary(masks, parsed, forged_label or "Forged", authentic_label, h, w)
            if built is None:  # regions decoded to nothing usable
                if not (auth_verdict or rules.empty_is_authentic):
                    raise _Skip("empty", "brush regions are empty or unusable: "
                                + ("; ".join(parsed.warnings) or "no pixels painted"))
                built = (np.zeros((h, w), np.uint8),
                         [{"index": 0, "role": "host", "label": UNLABELLED, "area": 1.0}], {})
            sources, src_meta, extra = built
            num_sources = len(src_meta)
            if auth_verdict and num_sources > 1:
                raise _Skip("conflict", "marked authentic but has painted forged/foreign regions")
            if forged_verdict and num_sources == 1:
                raise _Skip("conflict", f"marked {'/'.join(parsed.verdicts)} but no forged/foreign "
                                        "pixels are painted")

            img_bytes, ext, reencoded = _image_bytes_for(img, oriented)
            rel_img = f"images/{name}{ext}"
            _write_bytes(os.path.join(out_dir, rel_img), img_bytes)
            _write_png(os.path.join(out_dir, "sources", name + ".png"), sources)
            valid = sources != IGNORE
            safirems = np.where(valid, np.minimum(sources, 5).astype(np.uint16) * 50, 0).astype(np.uint8)
            _write_png(os.path.join(out_dir, "masks_safirems", name + ".png"), safirems)
            binary = np.where(valid & (sources >= 1), 255, 0).astype(np.uint8)
            _write_png(os.path.join(out_dir, "masks_binary", name + ".png"), binary)

            meta: Dict[str, Any] = {
                "name": name,
                "num_sources": num_sources,
                "authentic": num_sources == 1,
                "height": int(h),
                "width": int(w),
                "sources": src_meta,
                "source": "label-studio",
                "mode": mode,
                "task_id": tid,
                "project": task.get("project"),
                "annotation_id": ann.get("id"),
                "annotation_selected": why,
                "annotations_total": len(task.get("annotations") or []),
                "completed_by": ann.get("completed_by"),
                "updated_at": ann.get("updated_at"),
                "image_url": url,
                "image_sha256": image_sha,
                "image_reencoded": reencoded,
                "verdict": parsed.verdicts or None,
                **extra,
            }
            meta["provenance"] = {"status": prov_status, "found_in": prov_from, "record": prov}
            prov_counts[prov_status] += 1
            if prov_status == "changed":
                changed.append({"name": name, "task_id": tid, "image_sha256": image_sha,
                                "predicted_sha256": prov.get("image_sha256") if prov else None})
            if parsed.ignored:
                meta["ignored_results"] = parsed.ignored
            if parsed.warnings:
                meta["warnings"] = parsed.warnings
            metas[name] = meta
            seen_names[name] = tid
            rows.append((name, rel_img, num_sources))
            manifest.samples.append({"name": name, "task_id": tid, "num_sources": num_sources,
                                     "provenance": prov_status})
            if log:
                log(f"task {tid}: {name} ({num_sources} source(s))")
        except _Skip as sk:
            manifest.skipped.append({"id": tid, "reason": sk.reason, "code": sk.code})
            if log:
                log(f"task {tid}: skipped: {sk.reason}")

    manifest.provenance = {**prov_counts, "changed_samples": changed}

    # ---- splits (exact fraction, deterministic in seed and sample names)
    names = sorted(metas)
    n_val = int(round(val_fraction * len(names))) if val_fraction > 0 else 0
    if val_fraction > 0 and len(names) >= 2:
        n_val = min(max(n_val, 1), len(names) - 1)
    else:
        n_val = 0
    rng = np.random.default_rng(seed)
    val = set(np.array(names)[rng.permutation(len(names))[:n_val]].tolist()) if n_val else set()
    split_of = {n: ("val" if n in val else "train") for n in names}
    for s in manifest.samples:
        s["split"] = split_of[s["name"]]
    for n, meta in metas.items():
        meta["split"] = split_of[n]
        _write_json(os.path.join(out_dir, "meta", n + ".json"), meta)
    manifest.splits = {"train": len(names) - n_val, "val": n_val} if n_val else {"train": len(names)}

    # ---- list files
    list_lines, bin_lines, benco = [], [], []
    for name, rel_img, k in rows:
        if k == 1:
            list_lines.append(f"{rel_img},None")
            bin_lines.append(f"{rel_img},None")
            benco.append([rel_img, "Negative"])
        else:
            list_lines.append(f"{rel_img},masks_safirems/{name}.png")
            bin_lines.append(f"{rel_img},masks_binary/{name}.png")
            benco.append([rel_img, f"masks_binary/{name}.png"])
    for fn, lines in (("list.txt", list_lines), ("list_binary.txt", bin_lines)):
        _write_bytes(os.path.join(out_dir, fn), ("\n".join(lines) + ("\n" if lines else "")).encode())
    _write_json(os.path.join(out_dir, "imdl_benco.json"), benco, indent=0)
    for split in ("train", "val"):
        members = [n for n in names if split_of[n] == split]
        if split == "train" or members:
            _write_bytes(os.path.join(out_dir, "splits", f"{split}.txt"),
                         ("\n".join(members) + ("\n" if members else "")).encode())
    man = manifest.to_dict()
    if spec is not None:
        man["label_config"] = {"image": spec.image_name, "image_value": spec.image_value,
                               "brush": spec.brush_name}
    _write_json(os.path.join(out_dir, "manifest.json"), man)
    assert manifest.count + len(manifest.skipped) == manifest.total
    return manifest





if __name__ == "__main__":
    sys.exit(main())
