"""Versioned models per Label Studio project, hot-swapped without restarts.

Layout under ``MODEL_DIR``::

    MODEL_DIR/<project>/<version>/model.pt        weights (our checkpoint format)
    MODEL_DIR/<project>/<version>/manifest.json   metrics, data counts, parent version, timings
    MODEL_DIR/<project>/CURRENT                   name of the version being served (atomic rename)

A project without ``CURRENT`` is served by the base model (``SAFIRE_CHECKPOINT``, or the embedded
default). Publishing writes the version folder under a temporary name, renames it into place, then
replaces ``CURRENT`` atomically, so a reader never sees half a version. Each server process notices
a new ``CURRENT`` (checked at most once per ``poll_seconds``) and loads it once; the previous model
keeps serving until the new one is loaded, and if loading fails the previous model stays.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from safire.build import build_safire
from safire.cache import LRUCache
from safire.modeling import Safire
from safire.predictor import SafirePredictor

log = logging.getLogger("safire.models")

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_name(value: Any, what: str = "name") -> str:
    s = str(value)
    if not _SAFE.match(s) or s in (".", ".."):
        raise ValueError(f"invalid {what} {s!r}: use letters, digits, '.', '_' and '-'")
    return s


@dataclass
class LoadedModel:
    """A model ready to serve: ``predictor`` shares the process-wide embedding cache."""

    model: Safire
    predictor: SafirePredictor
    version: str
    path: Optional[str]
    project: Optional[str] = None
    loaded_at: float = field(default_factory=time.time)
    manifest: Dict[str, Any] = field(default_factory=dict)


def read_current(model_dir: Path, project: str) -> Optional[str]:
    p = model_dir / safe_name(project, "project") / "CURRENT"
    try:
        v = p.read_text().strip()
    except FileNotFoundError:
        return None
    return v or None


def _write_current(pdir: Path, version: str) -> None:
    """Make ``version`` the one served (atomic rename of ``pdir/CURRENT``)."""
    cur_tmp = pdir / f".CURRENT.{os.getpid()}.tmp"
    cur_tmp.write_text(version + "\n")
    os.replace(cur_tmp, pdir / "CURRENT")


def _read_manifest(vdir: Path) -> Dict[str, Any]:
    """A version's manifest ({} when missing or unreadable)."""
    try:
        man = json.loads((vdir / "manifest.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return man if isinstance(man, dict) else {}


def publish_version(model_dir: os.PathLike, project: str, version: str, checkpoint: os.PathLike,
                    manifest: Dict[str, Any], make_current: bool = True) -> Path:
    """Atomically publish ``checkpoint`` as ``MODEL_DIR/<project>/<version>/``.

    ``make_current``: also serve it (replace ``CURRENT``); False keeps it as a *candidate*: listed
    by ``GET /versions`` with its manifest (metrics, the reason it was not promoted), never served.
    """
    project, version = safe_name(project, "project"), safe_name(version, "version")
    pdir = Path(model_dir) / project
    pdir.mkdir(parents=True, exist_ok=True)
    final = pdir / version
    if final.exists():
        raise FileExistsError(f"model version already published: {final}")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=pdir))
    try:
        shutil.copyfile(checkpoint, tmp / "model.pt")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not make_current:
        return final
    _write_current(pdir, version)
    return final


def promote_version(model_dir: os.PathLike, project: str, version: str) -> Dict[str, Any]:
    """Serve an already published version of ``project`` (a candidate, or an earlier one: rollback).

    Replaces ``CURRENT`` atomically and records in the version's manifest that a person promoted it
    (``promoted``: time and the version it replaced). Raises FileNotFoundError for an unknown
    version, ValueError for an invalid name. Returns the updated manifest.
    """
    project, version = safe_name(project, "project"), safe_name(version, "version")
    pdir = Path(model_dir) / project
    vdir = pdir / version
    if not (vdir / "model.pt").is_file():
        raise FileNotFoundError(f"project {project} has no version {version}")
    man = _read_manifest(vdir)
    man["status"] = "published"
    man["promoted"] = {"by": "request", "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "replaced": read_current(Path(model_dir), project)}
    tmp = vdir / f".manifest.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(man, indent=2, default=str))
    os.replace(tmp, vdir / "manifest.json")
    _write_current(pdir, version)
    return man


class ModelRegistry:
    """Serves the right model for each project.

    Args:
        model_dir: root of published versions (created if missing).
        base_checkpoint: weights for projects with no published version (None: embedded default).
        device: torch device string.
        cache_bytes / cache_ttl: one embedding cache shared by all loaded models (keys include the
            model, so embeddings never mix between versions or images).
        poll_seconds: how often ``CURRENT`` files are re-read.
    """

    def __init__(self, model_dir: os.PathLike, base_checkpoint: Optional[str] = None, device: str = "cpu",
                 cache_bytes: int = 512 * 2**20, cache_ttl: Optional[float] = None, poll_seconds: float = 1.0,
                 base_variant: Optional[str] = None) -> None:
        self.model_dir = Path(model_dir)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.cache = LRUCache(cache_bytes, cache_ttl)
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._loaded: Dict[str, LoadedModel] = {}
        self._checked: Dict[str, float] = {}
        self._errors: Dict[str, str] = {}
        self._loader_locks: Dict[str, threading.Lock] = {}
        model = build_safire(base_variant, base_checkpoint, device, use_default=base_checkpoint is None)
        self.base = LoadedModel(model, SafirePredictor(model, cache=self.cache),
                                str(model.meta.get("model_version")), base_checkpoint or model.meta.get("checkpoint"))

    def _load_version(self, project: str, version: str) -> LoadedModel:
        vdir = self.model_dir / project / version
        model = build_safire(checkpoint=vdir / "model.pt", device=self.device)
        manifest = {}
        if (vdir / "manifest.json").is_file():
            manifest = json.loads((vdir / "manifest.json").read_text())
        model.meta["model_version"] = version
        return LoadedModel(model, SafirePredictor(model, cache=self.cache), version, str(vdir / "model.pt"),
                           project, manifest=manifest)

    def get(self, project: Optional[Any] = None, wait: Optional[float] = None) -> LoadedModel:
        """The model serving ``project`` (the base model when none is published).

        A newly published version is loaded once (one loader per project at a time). ``wait``
        bounds how long the call waits for that load, in seconds (None: as long as it takes); when
        it runs out (``/setup``, which Label Studio gives 3 s) the load goes on in the background
        and the call answers with the model serving until now.
        """
        if project is None or str(project) == "":
            return self.base
        project = safe_name(project, "project")
        now = time.monotonic()
        with self._lock:
            loaded = self._loaded.get(project)
            if loaded is not None and now - self._checked.get(project, 0) < self.poll_seconds:
                return loaded
            self._checked[project] = now
        version = read_current(self.model_dir, project)
        if version is None:
            return self.base
        if loaded is not None and loaded.version == version:
            return loaded
        if wait is None:
            return self._load_current(project, version) or loaded or self.base
        result: Dict[str, Optional[LoadedModel]] = {}
        worker = threading.Thread(target=lambda: result.update(new=self._load_current(project, version)),
                                  daemon=True, name=f"safire-load-{project}")
        worker.start()
        worker.join(max(0.0, float(wait)))
        return result.get("new") or loaded or self.base

    def _load_current(self, project: str, version: str) -> Optional[LoadedModel]:
        """Load ``version`` for ``project`` unless it is loaded already; None if it cannot load."""
        with self._loader_locks.setdefault(project, threading.Lock()):
            with self._lock:
                loaded = self._loaded.get(project)
            if loaded is not None and loaded.version == version:
                return loaded
            try:
                new = self._load_version(project, version)
            except Exception as e:  # a broken version never takes the service down
                msg = f"cannot load {project}/{version}: {type(e).__name__}: {e}"
                if self._errors.get(project) != msg:
                    log.error(msg)
                self._errors[project] = msg
                return None
            with self._lock:
                self._loaded[project] = new
                self._errors.pop(project, None)
            log.info("project %s now served by model version %s", project, version)
            return new

    def versions(self, project: Any) -> Dict[str, Any]:
        project = safe_name(project, "project")
        pdir = self.model_dir / project
        out = []
        if pdir.is_dir():
            for d in sorted(pdir.iterdir()):
                if d.is_dir() and not d.name.startswith(".") and (d / "model.pt").is_file():
                    man = _read_manifest(d)
                    out.append({"version": d.name, "parent": man.get("parent_version"),
                                "created": man.get("created"), "metrics": man.get("metrics"),
                                "status": man.get("status", "published"), "decision": man.get("decision"),
                                "fit": man.get("fit")})
        current = read_current(self.model_dir, project)
        for v in out:  # what it is now: serving, an earlier served version, or a never-served candidate
            v["status"] = "current" if v["version"] == current else \
                ("candidate" if v["status"] == "candidate" else "previous")
        return {"project": project, "current": current or self.base.version,
                "base": self.base.version, "versions": out, "error": self._errors.get(project)}
