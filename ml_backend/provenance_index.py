"""Provenance records for the export: an index of the records of predictions (by prediction id, task
and image name) and where an exported annotation's record is found (``docs/provenance.md``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlparse

from ml_backend.imagefiles import _UUID_PREFIX
from ml_backend.lsclient import LabelStudioError
from ml_backend.predictions import find_provenance

__all__ = ["ProvenanceIndex", "load_provenance"]

ExportError = LabelStudioError

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
