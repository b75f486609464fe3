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
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from PIL import Image

from ml_backend.label_config import (
    LabelConfigSpec,
    infer_mode,
    is_authentic_label,
    is_forged_label,
    parse_label_config,
)
from ml_backend.predictions import find_provenance
from ml_backend.rle import RLEError, decode_rle

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

FetchImage = Callable[..., bytes]
LAYOUT_DIRS = ("images", "sources", "masks_safirems", "masks_binary", "meta", "splits")
NAME_PREFIX = "ls_"
IGNORE = 255
UNLABELLED = "(unlabelled)"
_KEEP_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}


class ExportError(RuntimeError):
    """The export cannot run at all (bad arguments, output already holds a dataset, ...)."""


class ImageFetchError(RuntimeError):
    """An image could not be fetched."""


# ----------------------------------------------------------------------------------------
# rules and manifest
# ----------------------------------------------------------------------------------------


@dataclass
class ExportRules:
    """How annotations become source masks (see docs/dataset-format.md).

    unlabelled: multi mode only. ``"host"``: pixels no brush region covers join the host
        label's source (annotators only paint the foreign sources); ``"ignore"``: they are
        written as 255 in ``sources/``. Binary mode: unpainted pixels are always authentic.
    overlap: multi mode only. ``"last"``: where brush regions overlap, the region later in the
        annotation's ``result`` list wins (paint order); ``"highest"``: the label later in the
        config wins. Binary mode: forged always wins over authentic.
    empty_is_authentic: an annotation without any brush pixels and without an image-level
        "authentic" choice is skipped (False) or taken as an authentic image (True).
    prefer_ground_truth: choose a ``ground_truth`` annotation over more recent ones.
    reindex_by_area: multi mode: renumber sources by decreasing area so 0 is the largest
        (the dataset convention). Binary mode never reorders (0 = authentic, 1 = forged).
    """

    unlabelled: str = "host"
    overlap: str = "last"
    empty_is_authentic: bool = False
    prefer_ground_truth: bool = True
    reindex_by_area: bool = True

    def validate(self) -> None:
        if self.unlabelled not in ("host", "ignore"):
            raise ExportError(f"unlabelled must be 'host' or 'ignore', got {self.unlabelled!r}")
        if self.overlap not in ("last", "highest"):
            raise ExportError(f"overlap must be 'last' or 'highest', got {self.overlap!r}")


@dataclass
class ExportManifest:
    out_dir: str
    total: int
    mode: str
    labels: List[str]
    samples: List[Dict[str, Any]] = field(default_factory=list)  # name, task_id, num_sources, split
    skipped: List[Dict[str, Any]] = field(default_factory=list)  # id, reason, code
    rules: Dict[str, Any] = field(default_factory=dict)
    splits: Dict[str, int] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)  # counts by status, changed samples

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def num_sources_histogram(self) -> Dict[str, int]:
        hist: Dict[str, int] = {}
        for s in self.samples:
            k = str(s["num_sources"])
            hist[k] = hist.get(k, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: int(kv[0])))

    @property
    def skipped_by_code(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for s in self.skipped:
            out[s["code"]] = out.get(s["code"], 0) + 1
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": "safire-dataset",
            "version": 1,
            "count": self.count,
            "num_sources_histogram": self.num_sources_histogram,
            "labels": list(self.labels),
            "skipped": list(self.skipped),
            "source": "label-studio",
            "mode": self.mode,
            "total_tasks": self.total,
            "authentic": sum(1 for s in self.samples if s["num_sources"] == 1),
            "skipped_by_code": self.skipped_by_code,
            "rules": dict(self.rules),
            "splits": dict(self.splits),
            "provenance": dict(self.provenance),
            "samples": [dict(s) for s in self.samples],
        }

    def summary(self) -> str:
        lines = [
            f"exported {self.count} of {self.total} tasks to {self.out_dir} "
            f"({self.mode} mode; sources histogram {self.num_sources_histogram}; "
            f"splits {self.splits})"
        ]
        changed = self.provenance.get("changed_samples") or []
        if self.provenance:
            lines.append("provenance: " + ", ".join(f"{k} {self.provenance.get(k, 0)}"
                                                    for k in ("match", "changed", "unknown")))
        if changed:
            lines.append(f"WARNING: {len(changed)} image(s) changed since they were predicted "
                         "(SHA-256 of the exported bytes differs from the prediction's):")
            for c in changed[:20]:
                lines.append(f"  {c['name']} (task {c['task_id']}): predicted {str(c['predicted_sha256'])[:16]}..., "
                             f"now {str(c['image_sha256'])[:16]}...")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}: " + ", ".join(
                f"{k} x{v}" for k, v in sorted(self.skipped_by_code.items())))
            for s in self.skipped[:20]:
                lines.append(f"  task {s['id']}: {s['reason']}")
            if len(self.skipped) > 20:
                lines.append(f"  ... {len(self.skipped) - 20} more (see manifest.json)")
        return "\n".join(lines)


class _Skip(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


# ----------------------------------------------------------------------------------------
# annotation selection and parsing
# ----------------------------------------------------------------------------------------


def _ts(a: Dict[str, Any]) -> Tuple[str, str, int]:
    # ISO-8601 strings from LS compare correctly as strings
    aid = a.get("id")
    return (str(a.get("updated_at") or ""), str(a.get("created_at") or ""),
            aid if isinstance(aid, int) else 0)


def select_annotation(task: Dict[str, Any], prefer_ground_truth: bool = True
                      ) -> Tuple[Dict[str, Any], str]:
    """Pick the annotation to export: ``(annotation, why)``; raises ``_Skip``.

    Cancelled (skipped) annotations never count. Among the rest a ``ground_truth`` one wins
    (if ``prefer_ground_truth``), else the most recently updated (``updated_at``, then
    ``created_at``, then ``id``).
    """
    anns = [a for a in (task.get("annotations") or []) if isinstance(a, dict)]
    if not anns:
        raise _Skip("no_annotations", "task has no annotations")
    live = [a for a in anns if not a.get("was_cancelled")]
    if not live:
        raise _Skip("cancelled", f"all {len(anns)} annotation(s) cancelled (task skipped in Label Studio)")
    if prefer_ground_truth:
        gt = [a for a in live if a.get("ground_truth")]
        if gt:
            return max(gt, key=_ts), "ground_truth"
    return max(live, key=_ts), ("most_recent" if len(live) > 1 else "only")


@dataclass
class _Region:
    id: Optional[str]
    label: Optional[str]
    rle: List[int]
    width: Optional[int]
    height: Optional[int]
    rotation: float


@dataclass
class _Parsed:
    regions: List[_Region]
    verdicts: List[str]  # image-level choice values
    region_choices: Dict[str, List[str]]  # region id -> per-region choice values
    ignored: Dict[str, int]  # result types not used (keypoints, rectangles, ...)
    warnings: List[str]


def _parse_result(result: Sequence[Dict[str, Any]], spec: Optional[LabelConfigSpec]) -> _Parsed:
    regions: List[_Region] = []
    ignored: Dict[str, int] = {}
    warnings: List[str] = []
    choices_items = []
    for r in result or []:
        if not isinstance(r, dict):
            continue
        rtype = str(r.get("type") or "").lower()
        value = r.get("value") or {}
        if rtype == "brushlabels" and (spec is None or r.get("from_name") in (None, spec.brush_name)):
            fmt = value.get("format")
            if fmt not in (None, "rle") or "rle" not in value:
                warnings.append(f"region {r.get('id')}: unsupported brush format {fmt!r}, ignored")
                continue
            labels = value.get("brushlabels") or value.get("labels") or []
            if len(labels) > 1:
                warnings.append(f"region {r.get('id')}: several labels {labels}, using {labels[0]!r}")
            regions.append(_Region(
                id=r.get("id"),
                label=labels[0] if labels else None,
                rle=value["rle"],
                width=r.get("original_width"),
                height=r.get("original_height"),
                rotation=float(r.get("image_rotation") or 0),
            ))
        elif rtype == "choices":
            choices_items.append(r)
        else:
            key = rtype or "unknown"
            if rtype == "brushlabels":
                key = f"brushlabels:{r.get('from_name')}"
            ignored[key] = ignored.get(key, 0) + 1

    region_ids = {reg.id for reg in regions if reg.id}
    per_region_tags = {c.name for c in spec.region_choices} if spec else set()
    image_tags = {c.name for c in spec.image_choices} if spec else set()
    verdicts: List[str] = []
    region_choices: Dict[str, List[str]] = {}
    for r in choices_items:
        vals = [str(v) for v in ((r.get("value") or {}).get("choices") or [])]
        name = r.get("from_name")
        per_region = name in per_region_tags if spec else r.get("id") in region_ids
        if spec and name not in per_region_tags and name not in image_tags:
            per_region = r.get("id") in region_ids
        if per_region:
            if r.get("id") in region_ids:
                region_choices.setdefault(r["id"], []).extend(vals)
        else:
            verdicts.extend(vals)
    return _Parsed(regions, verdicts, region_choices, ignored, warnings)


# ----------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------

_UUID_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


class LocalImageResolver:
    """Find the image of a task URL under a local directory (``--images-root``).

    Tried in order, relative to ``root``: the ``?d=`` path of ``/data/local-files/`` URLs; for
    ``/data/upload/<pid>/<file>`` URLs ``upload/<pid>/<file>``, ``media/upload/<pid>/<file>``,
    ``<pid>/<file>``; for cloud URIs ``bucket/key`` and ``key``; for other URLs every suffix
    of the path (``a/b/c.png``, ``b/c.png``);
    finally the bare file name, also without the 8-hex-digit prefix Label Studio adds to
    uploads (``8e5f7079-photo.jpg`` -> ``photo.jpg``). Paths never escape ``root``.
    """

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise ExportError(f"images root {root!r} is not a directory")

    def candidates(self, url: str) -> List[str]:
        u = urlparse(url)
        path = unquote(u.path or "")
        rels: List[str] = []
        base_of = path
        upload = re.search(r"/data/upload/(\d+)/(.+)$", path)
        if "local-files" in path:
            d = parse_qs(u.query).get("d")
            if d:
                rels.append(d[0].lstrip("/"))
                base_of = d[0]
        elif upload:
            pid, fname = upload.group(1), upload.group(2)
            rels += [f"upload/{pid}/{fname}", f"media/upload/{pid}/{fname}", f"{pid}/{fname}"]
        elif u.scheme in ("s3", "gs", "gcs", "azure-blob"):
            rels += [f"{u.netloc}{path}", path.lstrip("/")]
        elif path:
            parts = [x for x in path.split("/") if x]
            rels += ["/".join(parts[i:]) for i in range(len(parts))]  # every path suffix
        base = os.path.basename(base_of)
        if base:
            rels.append(base)
            mm = _UUID_PREFIX.match(base)
            if mm:
                rels.append(mm.group(1))
        return [r for r in dict.fromkeys(rels) if r]

    def find(self, url: str) -> Optional[str]:
        for rel in self.candidates(url):
            p = os.path.realpath(os.path.join(self.root, rel))
            if (p == self.root or p.startswith(self.root + os.sep)) and os.path.isfile(p):
                return p
        return None

    def __call__(self, url: str) -> bytes:
        p = self.find(url)
        if p is None:
            raise ImageFetchError(f"{url}: not found under {self.root}")
        with open(p, "rb") as f:
            return f.read()


def _looks_like_jwt(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and all(re.fullmatch(r"[A-Za-z0-9_\-]+=*", p) for p in parts)


class LabelStudioClient:
    """Minimal Label Studio REST client for exports and media, over the backend's one download path.

    Everything goes through an :class:`ml_backend.fetch.ImageFetcher` (``docs/security.md``): images
    only from Label Studio's host or ``allowed_hosts``, addresses checked per connection, every
    redirect hop checked, byte and time limits, task ids validated before a presign URL is built,
    the key sent to Label Studio's host only.

    ``api_key`` is a legacy token (sent as ``Authorization: Token <key>``) or a Personal Access
    Token (a JWT refresh token: exchanged at ``POST /api/token/refresh/`` for an access token
    sent as ``Authorization: Bearer <access>``, refreshed once on HTTP 401).

    Args:
        url: Label Studio's base URL (``http(s)://host[:port][/prefix]``, no credentials).
        timeout: seconds for API calls (the export can take a while).
        session: a guarded ``requests.Session`` (default: one per thread).
        download: download settings (:func:`ml_backend.settings.download_settings`: allowed hosts
            and networks, byte and pixel limits, fetch timeout); default: from the environment.
    """

    def __init__(self, url: str, api_key: str, timeout: float = 60.0, session=None, download: Any = None):
        from ml_backend.fetch import FetchError, ImageFetcher
        from ml_backend.settings import SettingsError, download_settings, redact

        if not re.match(r"^https?://", url or ""):
            raise ExportError(f"Label Studio URL must start with http:// or https://, got {redact(str(url))!r}")
        if "@" in urlparse(url).netloc:
            raise ExportError("the Label Studio URL must not contain credentials (user:password@): "
                              "pass the API key with --api-key")
        if not api_key:
            raise ExportError("an API key is needed to talk to Label Studio (--api-key)")
        self.url = url.rstrip("/")
        self.timeout = timeout
        try:
            base = download if download is not None else download_settings()
            settings = SimpleNamespace(**{**vars(base), "label_studio_url": self.url, "label_studio_api_key": api_key})
            self.fetcher = ImageFetcher(settings, session=session)
        except (SettingsError, FetchError) as e:
            raise ExportError(str(e)) from None
        self.max_pixels = int(getattr(settings, "max_pixels", 40_000_000))
        self.is_pat = _looks_like_jwt(api_key)
        self._fetch_error = FetchError

    # -- API --------------------------------------------------------------------------
    def _api(self, path: str, params: Optional[Dict[str, str]] = None) -> Any:
        try:
            return self.fetcher.api_get(path, params=params, timeout=self.timeout)
        except self._fetch_error as e:
            raise ExportError(f"GET {path}: {e}") from None

    def get_project(self, project_id: int) -> Dict[str, Any]:
        data = self._api(f"/api/projects/{_project_int(project_id)}")
        if not isinstance(data, dict):
            raise ExportError(f"GET /api/projects/{project_id}: not a project object")
        return data

    def export_tasks(self, project_id: int, all_tasks: bool = False) -> List[Dict[str, Any]]:
        params = {"exportType": "JSON"}
        if all_tasks:
            params["download_all_tasks"] = "true"
        data = self._api(f"/api/projects/{_project_int(project_id)}/export", params=params)
        if not isinstance(data, list):
            raise ExportError("the export is not a JSON list of tasks")
        return data

    def list_predictions(self, project_id: int) -> List[Dict[str, Any]]:
        """The project's predictions with their results (``GET /api/predictions/?project=ID``);
        the JSON export only lists prediction ids."""
        data = self._api("/api/predictions/", params={"project": str(_project_int(project_id))})
        if isinstance(data, dict) and isinstance(data.get("results"), list):
            data = data["results"]
        if not isinstance(data, list):
            raise ExportError("GET /api/predictions/: not a list of predictions")
        return data

    def fetch_image(self, url: str, task_id: Optional[int] = None) -> bytes:
        from ml_backend.fetch import display_url

        try:
            return self.fetcher.fetch(url, task_id)
        except self._fetch_error as e:
            raise ImageFetchError(f"{display_url(url)}: {e}") from None


def _project_int(value: Any) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise ExportError(f"project id must be a positive integer, got {str(value)[:40]!r}")
    n = int(value)
    if n < 1:
        raise ExportError("project id must be a positive integer")
    return n


def _call_fetch(fetch: FetchImage, url: str, task_id: Any) -> bytes:
    try:
        params = inspect.signature(fetch).parameters
        takes_id = "task_id" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_id = False
    data = fetch(url, task_id=task_id) if takes_id else fetch(url)
    if isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            data = f.read()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageFetchError(f"{url}: fetch_image returned {type(data).__name__}, expected bytes")
    return bytes(data)


def _chain(fetchers: Sequence[FetchImage]) -> FetchImage:
    def fetch(url: str, task_id: Any = None) -> bytes:
        errors = []
        for f in fetchers:
            try:
                return _call_fetch(f, url, task_id)
            except Exception as exc:
                errors.append(str(exc))
        raise ImageFetchError("; ".join(errors))

    return fetch


_ORIENT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


@dataclass
class _LoadedImage:
    data: bytes
    ext: str
    width: int  # as displayed (EXIF orientation applied)
    height: int
    raw_width: int
    raw_height: int
    orientation: int
    format: str
    pil: Image.Image


def _load_image(data: bytes, max_pixels: int = 40_000_000) -> _LoadedImage:
    im = Image.open(io.BytesIO(data))
    rw0, rh0 = im.size
    if rw0 * rh0 > max_pixels:
        raise ImageFetchError(f"image is {rw0}x{rh0} = {rw0 * rh0 / 1e6:.1f} MP, above the limit of "
                              f"{max_pixels / 1e6:.1f} MP (SAFIRE_MAX_PIXELS)")
    im.load()
    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        orientation = 1
    rw, rh = im.size
    w, h = (rh, rw) if orientation in (5, 6, 7, 8) else (rw, rh)
    fmt = (im.format or "").upper()
    ext = _KEEP_FORMATS.get(fmt, ".png")
    return _LoadedImage(data, ext, w, h, rw, rh, orientation, fmt, im)


def _image_bytes_for(img: _LoadedImage, oriented: bool) -> Tuple[bytes, str, bool]:
    """Bytes + extension to write. Returns (bytes, ext, reencoded)."""
    needs_turn = oriented and img.orientation in _ORIENT_TRANSPOSE
    if img.format in _KEEP_FORMATS and not needs_turn:
        return img.data, img.ext, False
    pil = img.pil
    if needs_turn:
        pil = pil.transpose(_ORIENT_TRANSPOSE[img.orientation])
    pil = pil.convert("RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), ".png", True


# ----------------------------------------------------------------------------------------
# provenance
# ----------------------------------------------------------------------------------------


def _ts_of(rec: Dict[str, Any]) -> str:
    return str(rec.get("created_at") or "")


class ProvenanceIndex:
    """Provenance records by Label Studio prediction id, by (project, task id) and by image name.

    ``add(obj)`` takes a record, a Label Studio prediction (``{"id", "task", "result", ...}``, as
    ``GET /api/predictions/`` returns it), a ``safire predict`` ``NAME.json``, or a list of those.
    """

    def __init__(self) -> None:
        self.by_prediction: Dict[int, Dict[str, Any]] = {}
        self.by_task: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
        self.by_name: Dict[str, List[Dict[str, Any]]] = {}
        self.count = 0

    def add(self, obj: Any) -> None:
        if isinstance(obj, list):
            for x in obj:
                self.add(x)
            return
        rec = find_provenance(obj)
        if rec is None:
            return
        self.count += 1
        if isinstance(obj, dict) and isinstance(obj.get("id"), int) and "task" in obj:
            self.by_prediction[obj["id"]] = rec
        task = rec.get("task_id", obj.get("task") if isinstance(obj, dict) else None)
        if task is not None:
            self.by_task.setdefault((str(rec.get("project")), str(task)), []).append(rec)
            self.by_task.setdefault(("*", str(task)), []).append(rec)
        for key in ("image_url", "image_file", "image"):
            v = rec.get(key) or (obj.get(key) if isinstance(obj, dict) and key == "image" else None)
            if isinstance(v, str) and v:
                for name in _image_names(v):
                    self.by_name.setdefault(name, []).append(rec)

    def lookup(self, task: Dict[str, Any], url: Optional[str], parent_prediction: Any = None
               ) -> Optional[Dict[str, Any]]:
        if isinstance(parent_prediction, int) and parent_prediction in self.by_prediction:
            return self.by_prediction[parent_prediction]
        tid, proj = task.get("id"), task.get("project")
        cands = self.by_task.get((str(proj), str(tid))) or self.by_task.get(("*", str(tid))) if tid is not None else None
        if not cands and url:
            for name in _image_names(url):
                cands = self.by_name.get(name)
                if cands:
                    break
        return max(cands, key=_ts_of) if cands else None


def _image_names(url: str) -> List[str]:
    u = urlparse(url)
    path = unquote(u.path or "")
    if "local-files" in path:
        d = parse_qs(u.query).get("d")
        if d:
            path = d[0]
    base = os.path.basename(path.rstrip("/"))
    if not base:
        return []
    out = [base]
    mm = _UUID_PREFIX.match(base)
    if mm:
        out.append(mm.group(1))
    return out


def load_provenance(paths: Sequence[str], index: Optional[ProvenanceIndex] = None) -> ProvenanceIndex:
    """Read provenance files into an index: ``.jsonl`` (one record or prediction per line),
    ``.json`` (a record, a prediction, a list of them, or a ``safire predict`` output), or a
    directory of such files (not recursive)."""
    index = index or ProvenanceIndex()
    files: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith((".json", ".jsonl")))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise ExportError(f"provenance file or folder {p!r} does not exist")
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                if f.endswith(".jsonl"):
                    for line in fh:
                        if line.strip():
                            index.add(json.loads(line))
                else:
                    index.add(json.load(fh))
        except (OSError, ValueError) as e:
            raise ExportError(f"cannot read provenance from {f}: {e}") from None
    return index


def _task_provenance(task: Dict[str, Any], ann: Dict[str, Any], url: str,
                     index: Optional[ProvenanceIndex]) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(record, where it was found) for the annotation exported from ``task``."""
    rec = find_provenance(ann)
    if rec:
        return rec, "annotation"
    parent = ann.get("parent_prediction")
    preds = [p for p in (task.get("predictions") or []) if isinstance(p, dict)]
    if preds:
        chosen = [p for p in preds if parent is not None and p.get("id") == parent] or \
            sorted(preds, key=lambda p: str(p.get("created_at") or ""), reverse=True)
        for p in chosen:
            rec = find_provenance(p)
            if rec:
                return rec, "task_prediction"
    if index is not None:
        rec = index.lookup(task, url, parent)
        if rec:
            return rec, "provenance_files"
    return None, None


# ----------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------


def _region_masks(parsed: _Parsed, h: int, w: int) -> List[Tuple[_Region, np.ndarray]]:
    out = []
    for reg in parsed.regions:
        rh, rw = reg.height or h, reg.width or w
        if (rh, rw) != (h, w):
            raise _Skip("size_mismatch", f"brush region {reg.id} is {rw}x{rh} but the image is {w}x{h}")
        try:
            m = decode_rle(reg.rle, h, w) > 0
        except (RLEError, ValueError, TypeError) as exc:
            raise _Skip("bad_rle", f"brush region {reg.id}: cannot decode RLE ({exc})") from None
        out.append((reg, m))
    return out


def _manipulation(values: List[str]) -> Union[None, str, List[str]]:
    vals = list(dict.fromkeys(values))
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else vals


def _build_multi(masks, parsed: _Parsed, labels: List[str], host_label: str,
                 rules: ExportRules, h: int, w: int):
    raw = np.full((h, w), -1, dtype=np.int16)
    n_regions: Dict[int, int] = {}
    manips: Dict[int, List[str]] = {}
    for reg, m in masks:
        if reg.label is None:
            parsed.warnings.append(f"region {reg.id}: brush region without a label, ignored")
            continue
        if reg.label not in labels:
            parsed.warnings.append(f"region {reg.id}: label {reg.label!r} is not in the config, ignored")
            continue
        i = labels.index(reg.label)
        if rules.overlap == "last":
            raw[m] = i
        else:
            raw[m] = np.maximum(raw[m], i)
        n_regions[i] = n_regions.get(i, 0) + 1
        manips.setdefault(i, []).extend(parsed.region_choices.get(reg.id or "", []))
    painted = raw >= 0
    host_i = labels.index(host_label)
    if not painted.any():
        return None
    unlabelled_px = int((~painted).sum())
    if rules.unlabelled == "host":
        raw[~painted] = host_i
    total = float(h * w)
    present = [i for i in range(len(labels)) if (raw == i).any()]
    areas = {i: int((raw == i).sum()) for i in present}
    if rules.reindex_by_area:
        order = sorted(present, key=lambda i: (-areas[i], i))
    else:
        order = sorted(present)
    lut = np.full(len(labels) + 1, IGNORE, dtype=np.uint8)  # raw -1 -> last entry -> 255
    for new_i, old_i in enumerate(order):
        lut[old_i] = new_i
    sources = lut[raw]  # -1 indexes the last element (255)
    src_meta = []
    for new_i, old_i in enumerate(order):
        entry: Dict[str, Any] = {
            "index": new_i,
            "role": "host" if new_i == 0 else "source",
            "label": labels[old_i],
            "area": round(areas[old_i] / total, 6),
            "regions": n_regions.get(old_i, 0),
        }
        if old_i == host_i and rules.unlabelled == "host" and unlabelled_px:
            entry["unlabelled_area"] = round(unlabelled_px / total, 6)
        man = _manipulation(manips.get(old_i, []))
        if man is not None:
            entry["manipulation"] = man
        src_meta.append(entry)
    extra = {}
    if rules.unlabelled == "ignore" and unlabelled_px:
        extra["ignored_area"] = round(unlabelled_px / total, 6)
    return sources, src_meta, extra


def _build_binary(masks, parsed: _Parsed, forged_label: str, authentic_label: Optional[str],
                  h: int, w: int):
    forged = np.zeros((h, w), dtype=bool)
    n_forged = 0
    manips: List[str] = []
    for reg, m in masks:
        label = reg.label
        if label is None or label == forged_label or (label != authentic_label and is_forged_label(label)):
            forged |= m
            n_forged += 1
            manips.extend(parsed.region_choices.get(reg.id or "", []))
        elif label == authentic_label or is_authentic_label(label):
            continue  # explicit authentic paint: unpainted is authentic anyway, forged wins
        else:
            parsed.warnings.append(f"region {reg.id}: label {label!r} is not in the config, ignored")
    total = float(h * w)
    fa = int(forged.sum())
    if fa == 0 and not any(m.any() for _, m in masks):
        return None  # nothing painted at all
    if fa == h * w:
        raise _Skip("all_forged", "the whole image is painted forged (no authentic host left)")
    sources = forged.astype(np.uint8)
    src_meta = [{"index": 0, "role": "host", "label": authentic_label or UNLABELLED,
                 "area": round((h * w - fa) / total, 6)}]
    if fa:
        entry = {"index": 1, "role": "forged", "label": forged_label, "area": round(fa / total, 6),
                 "regions": n_forged}
        man = _manipulation(manips)
        if man is not None:
            entry["manipulation"] = man
        src_meta.append(entry)
    return sources, src_meta, {}


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


def _resolve_labels(tasks: Sequence[Dict[str, Any]], spec: Optional[LabelConfigSpec],
                    labels: Optional[Sequence[str]]) -> Tuple[str, List[str], Optional[str], Optional[str], Optional[str]]:
    """(mode, label order, host label, forged label, authentic label)."""
    if spec is not None:
        order = list(spec.brush_labels)
        if spec.mode == "binary":
            return "binary", order, None, spec.forged_label, spec.authentic_label
        return "multi", order, spec.host_label, None, None
    if labels:
        order = list(labels)
    else:  # infer from the data, in order of first appearance
        seen: Dict[str, None] = {}
        for t in tasks:
            for a in t.get("annotations") or []:
                for r in a.get("result") or []:
                    if str(r.get("type", "")).lower() == "brushlabels":
                        for lab in (r.get("value") or {}).get("brushlabels") or []:
                            seen.setdefault(lab, None)
        order = list(seen)
    mode = infer_mode(order) if order else "binary"
    if mode == "binary":
        forged = next((x for x in order if is_forged_label(x)), None)
        if forged is None:
            forged = next((x for x in order if not is_authentic_label(x)), order[0] if order else "Forged")
        auth = next((x for x in order if x != forged and is_authentic_label(x)), None)
        return "binary", order or [forged], None, forged, auth
    host = next((x for x in order if "host" in x.lower()), order[0])
    return "multi", order, host, None, None


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


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


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


if __name__ == "__main__":
    sys.exit(main())
