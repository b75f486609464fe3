"""The Label Studio ML backend: a Flask app speaking the protocol of Label Studio 1.23.2.

``create_app(settings=None, registry=None, jobs=None)`` builds the WSGI app; the model registry
(and so the base model) is created once per process here, never per request. Run it with
``safire serve`` (gunicorn, gthread) or ``gunicorn 'ml_backend.app:create_app()'``.

Endpoints (all JSON; errors are ``{"status": code, "error": name, "message": text}``):

==========================  =====================================================================
``GET /health``, ``GET /``  ``{"status": "UP", "model_class": "SafireBackend", "model_version", ...}``
                            (no auth; Label Studio calls it before every prediction round, 1 s)
``POST /setup``             ``{"project": "<id>.<ts>", "schema": "<View>..."}`` -> ``{"model_version"}``;
                            an unusable label config -> HTTP 400 with every problem listed (3 s)
``POST /predict``           ``{"tasks": [...], "project", "label_config", "params": {"context"}}``
                            -> ``{"results": [one prediction per task, in order], "model_version"}``;
                            no context: pre-annotation (partition) of every task, a failing task
                            gets ``{"result": [], "score": 0, "model_version", "error"}``; a context
                            with smart keypoints/rectangles: the interactive mask for the task
``POST /webhook``           ``START_TRAINING`` -> ``jobs.submit`` -> 201 ``{"status": "ok", "job"}``;
                            ``ANNOTATION_CREATED/UPDATED`` (and ``ANNOTATIONS_DELETED``) counted per
                            project, every ``START_TRAINING_EACH_N_UPDATES`` -> a job; cancelled or
                            empty annotations ignored; other events 200 ``{"status": "Unknown event"}``
``GET /metrics``            request counts and p50/p95 latency per endpoint, task/click counters,
                            embedding-cache stats, model versions, job states
``POST /preannotate/<p>``   bulk pre-annotation of the whole project as a background job
                            (``safire preannotate``, :mod:`ml_backend.bulk`) -> 202 ``{"job"}``; body
                            (JSON, may be ``{}``): ``engine`` ray|local, ``workers``, ``all``,
                            ``overwrite``, ``chunk_size``
``GET /jobs``               ``{"jobs": [...]}``; ``GET /jobs/<project>`` the latest job (404 if none)
``GET /versions/<project>`` the project's versions (current, previous, candidate) and the current one
``POST /versions/<p>/<v>/promote``  serve version ``v`` of project ``p`` (a kept candidate, or a
                            rollback) -> ``{"project", "current", "replaced"}``; 404 if unknown
``POST /prewarm``           ``{"project", "tasks": [...]}`` or ``{"urls": [...]}``: embeddings computed
                            in the background so the first click is warm -> 202 ``{"queued", ...}``
``GET /explain/<p>/<t>``    PNG of task ``t``'s continuous heat map and sources at the image's
                            resolution (``?view=panel|heatmap|sources|overlay``); pre-annotations
                            link to it (``docs/provenance.md``)
==========================  =====================================================================

Every pre-annotation carries a :mod:`safire.provenance` record (SHA-256 of the image bytes as
fetched and of the weights, settings, versions, timings) as described in
:mod:`ml_backend.predictions`, and the record is appended to
``MODEL_DIR/provenance/<project>.jsonl``, the one place that keeps all of it whatever Label Studio
stores.

Projects are keyed by Label Studio's numeric id: the ``"<id>.<created timestamp>"`` strings of
``/setup`` and ``/predict`` and the ``project.id`` of webhooks all map to ``"<id>"``; any other
project value is a 400.

Protections (``docs/security.md``): with ``BASIC_AUTH_USER/PASS`` every endpoint but ``/health``
and ``/`` needs them; POST bodies must be JSON (``Content-Type: application/json``, so a web page
cannot post to the backend from a browser without a CORS preflight); a server without basic auth
on loopback answers only requests addressed to a loopback name (DNS rebinding); request-supplied
strings are escaped in logs; label configs, sources, grid and tasks per request are capped (400);
at most ``SAFIRE_MAX_JOBS`` retraining jobs run (429); job views hold no paths or URLs; there is
no static file route.

Embeddings are cached by image URL (the task id is only used to resolve cloud URIs) plus model
version, so a pre-annotated or prewarmed image answers its first click without the encoder.
Model computations are bounded by ``SAFIRE_COMPUTE_SLOTS``; clicks take a free slot before queued
pre-annotation work. Decoding an image happens inside the same slot as its encoding (so at most
that many full-resolution images are in memory at once), and a partition's per-source maps are
computed at a working resolution bounded by :data:`PARTITION_MAP_BYTES`, then each region is
scaled to the original size only when it is encoded.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import queue
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict, defaultdict, deque
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, NotFound, RequestEntityTooLarge, UnsupportedMediaType

from safire.io import ImageLoadError, load_image

from .fetch import FetchError, ImageFetcher, display_url, log_text
from .label_config import LabelConfigError, LabelConfigSpec, parse_label_config
from .predictions import (
    ContextError,
    attach_provenance,
    click_to_prediction,
    empty_prediction,
    parse_context,
    partition_to_prediction,
    task_image_url,
)
from .settings import Settings, is_loopback_host

log = logging.getLogger("safire.backend")

MODEL_CLASS = "SafireBackend"
_PROJECT_ID = re.compile(r"^\s*([1-9][0-9]{0,17})(?:\.[0-9]{1,20})?\s*$")
_MAX_CONFIGS = 1000
_MAX_CONFIG_BYTES_TOTAL = 16 * 2**20  # remembered label configs, all projects together
_PREWARM_QUEUE = 1000
PARTITION_MAP_BYTES = 256 * 2**20  # per-source maps of one partition (about 20 bytes per source and pixel)
_IMAGE_INFO = 20000  # remembered image hashes (model version + image key -> SHA-256, size, timings)
_TASK_URLS = 20000  # remembered (project, task) -> image URL of pre-annotated tasks, for /explain
EXPLAIN_PANEL_PIXELS = 24_000_000  # a side-by-side panel above this is scaled down (single views never are)
_EXPLAIN_VIEWS = ("panel", "heatmap", "sources", "overlay")
_WEBHOOK_ACTIONS = ("START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
_JOB_FIELDS = ("id", "kind", "project", "reason", "state", "created", "started", "finished", "progress", "error",
               "version", "parent_version", "already_running", "outcome", "decision", "metrics", "data")
SETUP_LOAD_WAIT = 1.5  # seconds /setup waits for a newly published version to load (then: background)


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------


def project_key(value: Any) -> Optional[str]:
    """``"12.1795310459"`` / ``12`` / ``{"id": 12}`` -> ``"12"``; None or empty -> None.

    Raises:
        BadRequest: anything else (project ids are Label Studio's positive integers).
    """
    if isinstance(value, Mapping):
        value = value.get("id")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        m = _PROJECT_ID.match(str(value))
        if m:
            return m.group(1)
    raise BadRequest(f"invalid project id {log_text(value, 40)}: Label Studio project ids are positive integers")


def work_hw(orig_hw: Tuple[int, int], max_sources: int, budget: int = PARTITION_MAP_BYTES) -> Tuple[int, int]:
    """Resolution at which a partition keeps its per-source maps: the original size when K float32
    maps (about 20 bytes per source and pixel with the combine step's temporaries) fit ``budget``,
    else the largest size of the same aspect ratio that does."""
    h, w = int(orig_hw[0]), int(orig_hw[1])
    limit = max(1, budget // (20 * max(2, int(max_sources))))
    if h * w <= limit:
        return h, w
    f = math.sqrt(limit / (h * w))
    wh, ww = max(1, int(h * f)), max(1, int(w * f))
    return wh, max(1, min(ww, limit // wh))  # a very thin image: the short side stays >= 1


def embedding_key(url: str) -> str:
    return "url:" + hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@lru_cache(maxsize=128)
def _parse_cached(xml: str) -> LabelConfigSpec:
    return parse_label_config(xml)


def parse_config(xml: Any) -> LabelConfigSpec:
    """:func:`parse_label_config` with a cache (Label Studio re-sends the same config every round)."""
    if not isinstance(xml, str):
        raise LabelConfigError(["the label config is missing or not a string"])
    return _parse_cached(xml)


def config_size_problem(xml: Any, limit: int) -> Optional[str]:
    if isinstance(xml, str) and len(xml) > limit // 4 and len(xml.encode("utf-8", "surrogatepass")) > limit:
        return (f"the label config is {len(xml.encode('utf-8', 'surrogatepass'))} bytes, above "
                f"SAFIRE_MAX_LABEL_CONFIG_BYTES ({limit})")
    return None


def _explicit(xml: str, attr: str) -> bool:
    return re.search(rf"\b{attr}\s*=", xml, re.IGNORECASE) is not None


class PriorityGate:
    """At most ``slots`` model computations at once; high-priority waiters (clicks) go first."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, int(slots))
        self._cond = threading.Condition()
        self._free = self.slots
        self._waiting = [0, 0]  # low, high

    @contextmanager
    def __call__(self, high: bool) -> Iterator[None]:
        with self._cond:
            self._waiting[high] += 1
            try:
                while self._free <= 0 or (not high and self._waiting[1] > 0):
                    self._cond.wait()
            finally:
                self._waiting[high] -= 1
            self._free -= 1
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()

    def stats(self) -> Dict[str, int]:
        with self._cond:
            return {"slots": self.slots, "busy": self.slots - self._free,
                    "waiting_clicks": self._waiting[1], "waiting_background": self._waiting[0]}


class KeyedLocks:
    """One lock per key, created on demand and dropped when unused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: Dict[str, List[Any]] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        with self._lock:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    self._locks.pop(key, None)


class Metrics:
    """Thread-safe request counters and latency samples per endpoint."""

    def __init__(self, samples: int = 2048) -> None:
        self._lock = threading.Lock()
        self._samples = samples
        self.started = time.time()
        self.requests: Dict[str, Counter] = defaultdict(Counter)
        self.latency: Dict[str, Deque[float]] = defaultdict(lambda: deque(maxlen=self._samples))
        self.counters: Counter = Counter()
        self.stage_latency: Dict[str, Deque[float]] = defaultdict(lambda: deque(maxlen=self._samples))

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[endpoint][str(status)] += 1
            self.latency[endpoint].append(seconds)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def stage(self, name: str, seconds: float) -> None:
        with self._lock:
            self.stage_latency[name].append(seconds)

    @staticmethod
    def _summary(samples: Deque[float]) -> Dict[str, Any]:
        if not samples:
            return {"n": 0}
        a = np.asarray(samples, dtype=np.float64) * 1000
        return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 1),
                "p95_ms": round(float(np.percentile(a, 95)), 1), "max_ms": round(float(a.max()), 1)}

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            endpoints = {}
            for ep, counts in sorted(self.requests.items()):
                endpoints[ep] = {"count": int(sum(counts.values())), "by_status": dict(counts),
                                 "latency": self._summary(self.latency[ep])}
            return {"uptime_seconds": round(time.time() - self.started, 1), "endpoints": endpoints,
                    "counters": dict(self.counters),
                    "stages": {k: self._summary(v) for k, v in sorted(self.stage_latency.items())}}


_URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")
_PATH_RE = re.compile(r"(?<![\w/])/(?:[\w.@+-]+/)+[\w.@+-]*")


def _scrub(text: str) -> str:
    """A job error message without URLs or file system paths (they stay in the job's log)."""
    return _PATH_RE.sub("<path>", _URL_RE.sub("<url>", text))


def _job_view(rec: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """What the API shows of a job record: state and progress, never paths, URLs or the config."""
    if rec is None:
        return None
    out = {k: rec[k] for k in _JOB_FIELDS if k in rec}
    if isinstance(out.get("error"), str):
        out["error"] = _scrub(out["error"])[:500]
    if isinstance(out.get("progress"), Mapping):
        out["progress"] = {k: v for k, v in out["progress"].items() if not isinstance(v, str) or k == "stage"}
    return out


# ------------------------------------------------------------------------------------------------
# the backend state (one per process)
# ------------------------------------------------------------------------------------------------


class Backend:
    """Everything the routes share: settings, registry, fetcher, jobs, caches and counters."""

    def __init__(self, settings: Settings, registry: Any, jobs: Any = None, fetcher: Optional[ImageFetcher] = None):
        self.settings = settings
        self.registry = registry
        self.fetcher = fetcher or ImageFetcher(settings)
        self.metrics = Metrics()
        self.gate = PriorityGate(settings.effective_compute_slots)
        self.image_locks = KeyedLocks()
        self._jobs = jobs
        self._jobs_error: Optional[str] = None
        self._jobs_lock = threading.Lock()
        self._configs: "OrderedDict[str, str]" = OrderedDict()
        self._configs_bytes = 0
        self._configs_lock = threading.Lock()
        self._submitting: set = set()
        self._submitting_lock = threading.Lock()
        self._updates: Counter = Counter()
        self._updates_lock = threading.Lock()
        self._prewarm_q: "queue.Queue[Tuple[Optional[str], str, Any, str]]" = queue.Queue(_PREWARM_QUEUE)
        self._prewarm_pending: set = set()
        self._prewarm_lock = threading.Lock()
        self._prewarm_thread: Optional[threading.Thread] = None
        self._image_info: "OrderedDict[Tuple[str, str], Dict[str, Any]]" = OrderedDict()
        self._task_urls: "OrderedDict[Tuple[str, str], str]" = OrderedDict()
        self._info_lock = threading.Lock()
        self._log_lock = threading.Lock()

    # -- jobs ---------------------------------------------------------------------------------
    def jobs(self) -> Any:
        """The job manager, created on first use (``ml_backend.jobs.JobManager``)."""
        if self._jobs is not None or self._jobs_error is not None:
            return self._jobs
        with self._jobs_lock:
            if self._jobs is None and self._jobs_error is None:
                try:
                    from ml_backend.jobs import JobManager

                    self._jobs = JobManager(self.registry, self.settings)
                    self._jobs_error = None
                except Exception as e:  # training unavailable must not take serving down
                    self._jobs_error = f"{type(e).__name__}: {e}"
                    log.error("retraining is unavailable: %s", self._jobs_error)
                    return None
        return self._jobs

    # -- label configs --------------------------------------------------------------------------
    def check_config_size(self, xml: Any) -> None:
        problem = config_size_problem(xml, self.settings.max_label_config_bytes)
        if problem:
            raise BadRequest(problem)

    def remember_config(self, project: Optional[str], xml: Any) -> None:
        """Keep the project's label config (at most 1000 projects and 16 MiB, least recent dropped)."""
        if project is None or not isinstance(xml, str) or not xml.strip():
            return
        self.check_config_size(xml)
        with self._configs_lock:
            old = self._configs.pop(project, None)
            if old is not None:
                self._configs_bytes -= len(old)
            self._configs[project] = xml
            self._configs_bytes += len(xml)
            while self._configs and (len(self._configs) > _MAX_CONFIGS or self._configs_bytes > _MAX_CONFIG_BYTES_TOTAL):
                _, dropped = self._configs.popitem(last=False)
                self._configs_bytes -= len(dropped)

    def configs_stats(self) -> Dict[str, int]:
        with self._configs_lock:
            return {"projects": len(self._configs), "bytes": self._configs_bytes}

    def config_for(self, project: Optional[str], xml: Any) -> str:
        if isinstance(xml, str) and xml.strip():
            self.remember_config(project, xml)
            return xml
        with self._configs_lock:
            known = self._configs.get(project) if project is not None else None
        if known is None:
            raise BadRequest("label_config is missing and no /setup was seen for this project")
        return known

    def model(self, project: Optional[str], wait: Optional[float] = None) -> Any:
        try:
            return self.registry.get(project, wait=wait)
        except ValueError as e:  # an unusable project name: serve the base model
            log.warning("project %s: %s; using the base model", log_text(project), log_text(str(e), 200))
            return self.registry.base

    def check_tuning(self, spec: LabelConfigSpec, xml: str) -> List[str]:
        """What in the config's ``safire_*`` attributes goes beyond the server's caps (empty: fine)."""
        problems = []
        s = self.settings
        if _explicit(xml, "safire_sources") and isinstance(spec.num_sources, int) and spec.num_sources > s.max_sources:
            problems.append(f"safire_sources={spec.num_sources} is above this server's SAFIRE_MAX_SOURCES "
                            f"({s.max_sources})")
        if _explicit(xml, "safire_grid") and spec.grid_size > s.max_grid:
            problems.append(f"safire_grid={spec.grid_size} is above this server's SAFIRE_MAX_GRID ({s.max_grid})")
        return problems

    def tuning(self, spec: LabelConfigSpec, xml: str) -> Dict[str, Any]:
        """Partition settings for a project: the config's ``safire_*`` attributes, else settings.

        Binary projects use SAFIRE's binary path (two sources, paper Eq. 11) with the image-level
        score deciding authentic images, unless ``safire_sources`` says otherwise;
        ``safire_authentic_threshold`` replaces the checkpoint's ``single_source_threshold``.
        """
        s = self.settings
        explicit = _explicit(xml, "safire_sources")
        out: Dict[str, Any] = {
            "num_sources": spec.num_sources if explicit else s.sources,
            "grid_size": spec.grid_size if _explicit(xml, "safire_grid") else s.grid,
            "seed": s.seed,
        }
        if spec.mode == "binary" and not explicit:
            out.update(num_sources=2, gate_authentic=True)
        if spec.authentic_threshold is not None:  # the project's own point on the calibration curve
            out["single_source_threshold"] = spec.authentic_threshold
        return out

    # -- images and embeddings --------------------------------------------------------------------
    def decode(self, data: bytes, url: str) -> np.ndarray:
        """The image file's pixels (HxWx3 uint8, EXIF-oriented); the caller holds a compute slot."""
        t0 = time.perf_counter()
        image = load_image(data, max_pixels=self.settings.max_pixels, name=display_url(url), exif_transpose=True)
        self.metrics.stage("decode_image", time.perf_counter() - t0)
        return image

    @staticmethod
    def cached_embedding(predictor: Any, key: str) -> Any:
        lookup = getattr(predictor, "cached_embedding", None)
        if callable(lookup):
            return lookup(key)
        tag = getattr(predictor, "_model_tag", None)
        cache = getattr(predictor, "cache", None)
        if tag is None or cache is None:
            return None
        return cache.get(f"{tag}:{key}")

    def image_key(self, url: str) -> str:
        """Cache key of an image: its URL, made absolute against LABEL_STUDIO_URL when relative."""
        if url[:5].lower() != "data:" and "://" not in url:
            url = self.fetcher.base + (url if url.startswith("/") else "/" + url)
        return embedding_key(url)

    def embedding(self, loaded: Any, url: str, task_id: Any, high: bool) -> Tuple[Any, bool]:
        """The image's embedding for ``loaded``'s model; fetches and encodes at most once per image."""
        key = self.image_key(url)
        emb = self.cached_embedding(loaded.predictor, key)
        if emb is not None:
            return emb, True
        with self.image_locks(key):
            emb = self.cached_embedding(loaded.predictor, key)
            if emb is not None:
                return emb, True
            t0 = time.perf_counter()
            data = self.fetcher.fetch(url, task_id)  # at most SAFIRE_MAX_IMAGE_BYTES per request thread
            fetch_s = time.perf_counter() - t0
            self.metrics.stage("fetch", fetch_s)
            info = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "fetch": fetch_s}
            with self.gate(high):  # decoded pixels exist only inside a compute slot
                t1 = time.perf_counter()
                image = self.decode(data, url)
                del data
                t2 = time.perf_counter()
                emb, was_cached = loaded.predictor.embed(image, key=key)
                del image
            info.update(decode=t2 - t1, encode=time.perf_counter() - t2)
            if not was_cached:
                self.metrics.stage("encode", info["encode"])
            self.remember_image(loaded, key, info)
            return emb, was_cached

    # -- provenance --------------------------------------------------------------------------------
    def remember_image(self, loaded: Any, key: str, info: Dict[str, Any]) -> None:
        """Keep the hash of the bytes an embedding was computed from (bounded, least recent dropped)."""
        with self._info_lock:
            self._image_info[(str(loaded.version), key)] = info
            self._image_info.move_to_end((str(loaded.version), key))
            while len(self._image_info) > _IMAGE_INFO:
                self._image_info.popitem(last=False)

    def image_info(self, loaded: Any, url: str, task_id: Any) -> Dict[str, Any]:
        """SHA-256 and size of the bytes behind ``url``'s embedding for ``loaded``; fetched again
        (not decoded) when the embedding came from a cache that outlived this record."""
        key = self.image_key(url)
        with self._info_lock:
            info = self._image_info.get((str(loaded.version), key))
        if info is not None:
            return info
        t0 = time.perf_counter()
        data = self.fetcher.fetch(url, task_id)
        info = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "fetch": time.perf_counter() - t0,
                "refetched": True}
        del data
        self.remember_image(loaded, key, info)
        return info

    def remember_task(self, project: Optional[str], task_id: Any, url: str) -> None:
        if project is None or task_id is None:
            return
        with self._info_lock:
            self._task_urls[(project, str(task_id))] = url
            self._task_urls.move_to_end((project, str(task_id)))
            while len(self._task_urls) > _TASK_URLS:
                self._task_urls.popitem(last=False)

    def task_url(self, project: str, task_id: int) -> Optional[str]:
        with self._info_lock:
            return self._task_urls.get((project, str(task_id)))

    def log_provenance(self, project: Optional[str], record: Mapping[str, Any]) -> None:
        """Append the record to ``MODEL_DIR/provenance/<project>.jsonl`` (a failure is only logged)."""
        import json
        import os

        name = f"{project}.jsonl" if project is not None else "no-project.jsonl"
        root = getattr(self.registry, "model_dir", None) or self.settings.model_dir  # the registry's MODEL_DIR
        path = os.path.join(str(root), "provenance", name)
        try:
            line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
            with self._log_lock:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "a", encoding="utf-8") as f:
                    f.write(line)
        except OSError as e:
            log.warning("cannot append to the provenance log %s: %s", name, log_text(str(e), 200))

    # -- predictions ------------------------------------------------------------------------------
    def preannotate(self, task: Mapping[str, Any], spec: LabelConfigSpec, xml: str, loaded: Any,
                    project: Optional[str] = None, explain_base: Optional[str] = None) -> Dict[str, Any]:
        from safire.partition import calibrated_defaults, partition
        from safire.provenance import build_provenance

        url = task_image_url(task, spec)
        t_start = time.perf_counter()
        emb, cached = self.embedding(loaded, url, task.get("id"), high=False)
        info = self.image_info(loaded, url, task.get("id"))
        t_emb = time.perf_counter() - t_start
        tune = self.tuning(spec, xml)
        k = tune.pop("num_sources")
        k_max = k if isinstance(k, int) else int({**calibrated_defaults(loaded.model), **tune}.get("max_sources", 4))
        orig_hw = (int(emb.orig_hw[0]), int(emb.orig_hw[1]))
        work = work_hw(orig_hw, k_max, PARTITION_MAP_BYTES)
        t0 = time.perf_counter()
        with self.gate(False):
            res = partition(loaded.predictor, emb, k, out_hw=None if work == orig_hw else work, **tune)
        t1 = time.perf_counter()
        pred = partition_to_prediction(res, spec, loaded.version, out_hw=orig_hw,
                                       prediction_score=self.settings.prediction_score)
        t2 = time.perf_counter()
        self.metrics.stage("partition", t1 - t0)
        self.metrics.stage("encode_rle", t2 - t1)
        task_id = task.get("id")
        extra: Dict[str, Any] = {"kind": "preannotation", "project": project, "task_id": task_id, "image_url": display_url(url),
                                 "embedding_cached": bool(cached), "work_resolution": list(work),
                                 "uncertainty": round(float(res.uncertainty), 6),
                                 "prediction_score": self.settings.prediction_score}
        if project is not None and isinstance(task_id, int) and not isinstance(task_id, bool) and task_id > 0:
            self.remember_task(project, task_id, url)
            extra["explain_url"] = f"{explain_base or '/'}explain/{project}/{task_id}"
        if info.get("refetched"):
            extra["image_refetched"] = True
        timings = {"embedding": t_emb}
        if not cached:
            timings.update({k_: info[k_] for k_ in ("fetch", "decode", "encode") if k_ in info})
        timings.update({f"partition_{k_}": v for k_, v in res.timings.items() if k_ not in ("encode", "total")})
        timings.update(partition=t1 - t0, rle=t2 - t1, total=time.perf_counter() - t_start)
        record = build_provenance(
            model=loaded.model, image_sha256=info["sha256"], num_bytes=info["bytes"], image_size=orig_hw,
            sources_requested=k, sources_found=res.num_sources, grid=tune.get("grid_size"), seed=tune.get("seed"),
            partition_settings={**calibrated_defaults(loaded.model),
                                **{k_: v for k_, v in tune.items() if k_ not in ("grid_size", "seed")}},
            score=res.score, timings=timings, model_version=loaded.version, weights_path=loaded.path,
            exif_transpose=True, device=self.settings.device, extra=extra)
        del res
        attach_provenance(pred, record, spec)
        self.log_provenance(project, record)
        return pred

    def explain(self, project: str, task_id: int, view: str) -> bytes:
        """PNG bytes of a task's heat map and sources at the image's resolution (``GET /explain``).

        The task's image URL is the one its last pre-annotation used (remembered per process), else
        Label Studio's ``GET /api/tasks/<id>`` (which must belong to ``project``); the label config
        is the one ``/setup`` or ``/predict`` sent, else the project's from Label Studio. The
        partition uses the project's model and settings, like the pre-annotation.
        """
        import io as _io

        from PIL import Image as _Image

        from safire.partition import calibrated_defaults, partition
        from safire.visualize import colorize_partition, explain_panel, heatmap_colour, overlay

        try:
            xml = self.config_for(project, None)
        except BadRequest:
            try:
                proj = self.fetcher.api_get(f"/api/projects/{int(project)}")
            except FetchError as e:
                raise NotFound(f"project {project}: no /setup seen and Label Studio did not give its "
                               f"label config: {e}") from None
            xml = proj.get("label_config") if isinstance(proj, Mapping) else None
            if not isinstance(xml, str) or not xml.strip():
                raise NotFound(f"project {project}: no label config")
            self.check_config_size(xml)
            self.remember_config(project, xml)
        spec = parse_config(xml)
        url = self.task_url(project, task_id)
        if url is None:  # not pre-annotated by this process: ask Label Studio for the task
            try:
                task = self.fetcher.api_get(f"/api/tasks/{int(task_id)}")
            except FetchError as e:
                raise NotFound(f"task {task_id}: cannot read it from Label Studio: {e}") from None
            if not isinstance(task, Mapping) or str(task.get("project")) != project:
                raise NotFound(f"task {task_id} is not a task of project {project}")
            url = task_image_url(task, spec)
        loaded = self.model(project)
        emb, _ = self.embedding(loaded, url, task_id, high=True)
        tune = self.tuning(spec, xml)
        k = tune.pop("num_sources")
        k_max = k if isinstance(k, int) else int({**calibrated_defaults(loaded.model), **tune}.get("max_sources", 4))
        orig_hw = (int(emb.orig_hw[0]), int(emb.orig_hw[1]))
        work = work_hw(orig_hw, k_max, PARTITION_MAP_BYTES)
        with self.gate(True):
            res = partition(loaded.predictor, emb, k, out_hw=None if work == orig_hw else work, **tune)
            heat, labels = res.heatmap, res.labels
            if work != orig_hw:  # back to the image's resolution (per-source maps were bounded)
                size = (orig_hw[1], orig_hw[0])
                heat = np.asarray(_Image.fromarray(heat.astype(np.float32), mode="F").resize(size, _Image.BILINEAR))
                labels = np.asarray(_Image.fromarray(labels.astype(np.uint8)).resize(size, _Image.NEAREST))
            num_sources, score = res.num_sources, float(res.score)
            del res
            if view == "heatmap":
                out = heatmap_colour(heat)
            elif view == "sources":
                out = colorize_partition(labels)
            else:
                data = self.fetcher.fetch(url, task_id)
                image = self.decode(data, url)
                del data
                if view == "overlay":
                    out = overlay(image, labels, band_rows=1024)
                else:
                    title = (f"project {project} task {task_id} | model {loaded.version} | "
                             f"{num_sources} source(s) | score {score:.3f}")
                    out = explain_panel(image, heat, labels, title=title, max_pixels=EXPLAIN_PANEL_PIXELS)
                del image
            del heat, labels
            buf = _io.BytesIO()
            _Image.fromarray(out).save(buf, format="PNG", compress_level=3)
        return buf.getvalue()

    def click(self, task: Mapping[str, Any], context: Any, spec: LabelConfigSpec, loaded: Any,
              project: Optional[str] = None) -> Dict[str, Any]:
        from safire.provenance import build_provenance

        url = task_image_url(task, spec)
        parse_context(context, spec)  # no usable prompt: fail before fetching or encoding anything
        t_start = time.perf_counter()
        emb, cached = self.embedding(loaded, url, task.get("id"), high=True)
        self.metrics.count("click_embedding_cached" if cached else "click_embedding_computed")
        h, w = emb.orig_hw
        prompt = parse_context(context, spec, width=w, height=h)
        t0 = time.perf_counter()
        with self.gate(True):
            pred = loaded.predictor.predict(
                prompt.points if len(prompt.points) else None,
                prompt.labels if len(prompt.points) else None,
                box=prompt.box, embedding=emb)
        t1 = time.perf_counter()
        self.metrics.stage("click_decode", t1 - t0)
        out = click_to_prediction(pred, prompt, spec, loaded.version)
        # provenance without any extra work on the click path: the image hash is the one recorded
        # when the embedding was computed (absent if that record was dropped meanwhile)
        with self._info_lock:
            info = self._image_info.get((str(loaded.version), self.image_key(url))) or {}
        record = build_provenance(
            model=loaded.model, image_sha256=info.get("sha256"), num_bytes=info.get("bytes"), image_size=(h, w),
            model_version=loaded.version, weights_path=loaded.path, exif_transpose=True, device=self.settings.device,
            partition_settings={"threshold": spec.threshold, "min_area": spec.min_area},
            timings={"embedding": t0 - t_start, "decode": t1 - t0, "total": time.perf_counter() - t_start},
            extra={"kind": "click", "project": project, "task_id": task.get("id"), "image_url": display_url(url),
                   "embedding_cached": bool(cached),
                   "prompt": {"positive_points": int((prompt.labels == 1).sum()),
                              "negative_points": int((prompt.labels == 0).sum()), "box": prompt.box is not None}})
        return attach_provenance(out, record)

    # -- prewarm ------------------------------------------------------------------------------------
    def prewarm(self, project: Optional[str], items: List[Tuple[str, Any]]) -> Dict[str, Any]:
        loaded = self.model(project)
        queued = cached = skipped = 0
        for url, task_id in items:
            key = self.image_key(url)
            pkey = f"{project}|{key}"
            if self.cached_embedding(loaded.predictor, key) is not None:
                cached += 1
                continue
            with self._prewarm_lock:
                if pkey in self._prewarm_pending:
                    cached += 1
                    continue
                try:
                    self._prewarm_q.put_nowait((project, url, task_id, pkey))
                except queue.Full:
                    skipped += 1
                    continue
                self._prewarm_pending.add(pkey)
                queued += 1
        if queued:
            self._ensure_prewarm_worker()
        self.metrics.count("prewarm_queued", queued)
        return {"queued": queued, "already_cached": cached, "skipped_queue_full": skipped,
                "pending": self._prewarm_q.qsize()}

    def _ensure_prewarm_worker(self) -> None:
        with self._prewarm_lock:
            if self._prewarm_thread is None or not self._prewarm_thread.is_alive():
                self._prewarm_thread = threading.Thread(target=self._prewarm_loop, name="safire-prewarm",
                                                        daemon=True)
                self._prewarm_thread.start()

    def _prewarm_loop(self) -> None:
        while True:
            project, url, task_id, pkey = self._prewarm_q.get()
            try:
                loaded = self.model(project)
                self.embedding(loaded, url, task_id, high=False)
                self.metrics.count("prewarm_done")
            except (FetchError, ImageLoadError) as e:
                self.metrics.count("prewarm_failed")
                log.warning("prewarm of %s (task %s) failed: %s", display_url(url), log_text(task_id),
                            log_text(str(e), 500))
            except Exception:
                self.metrics.count("prewarm_failed")
                log.exception("prewarm of %s (task %s) failed", display_url(url), log_text(task_id))
            finally:
                with self._prewarm_lock:
                    self._prewarm_pending.discard(pkey)
                self._prewarm_q.task_done()

    def wait_prewarm(self, timeout: float = 30.0) -> bool:
        """Block until the prewarm queue is empty (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._prewarm_lock:
                if not self._prewarm_pending:
                    return True
            time.sleep(0.01)
        return False

    # -- webhook counters -------------------------------------------------------------------------
    def count_update(self, project: str) -> int:
        with self._updates_lock:
            self._updates[project] += 1
            return self._updates[project]

    def updates(self) -> Dict[str, int]:
        with self._updates_lock:
            return dict(self._updates)


# ------------------------------------------------------------------------------------------------
# the Flask app
# ------------------------------------------------------------------------------------------------


def _error(status: int, error: str, message: str, **extra: Any) -> Response:
    resp = jsonify({"status": status, "error": error, "message": message, **extra})
    resp.status_code = status
    return resp


def _body() -> Dict[str, Any]:
    limit = request.max_content_length
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    if not request.is_json:
        raise UnsupportedMediaType(
            f"the request body must be JSON sent as Content-Type: application/json (got "
            f"{log_text(request.mimetype or 'none', 60)})")
    data = request.get_json(force=True, silent=True)
    if data is None:
        raw = request.get_data(cache=True)
        raise BadRequest("the request body must be JSON" if raw else "the request body is empty: JSON expected")
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def _build_registry(settings: Settings) -> Any:
    from .models import ModelRegistry

    return ModelRegistry(settings.model_dir, base_checkpoint=settings.checkpoint, device=settings.device,
                         cache_bytes=settings.cache_bytes, cache_ttl=settings.cache_ttl or None,
                         base_variant=settings.variant)


def create_app(settings: Optional[Settings] = None, registry: Any = None, jobs: Any = None) -> Flask:
    """The backend's Flask app. ``registry``/``jobs`` may be injected (tests); otherwise the
    registry (and the base model) is built here, once, and the job manager on first use."""
    settings = settings or Settings.from_env()
    if registry is None:
        import torch

        torch.set_num_threads(settings.threads)
        registry = _build_registry(settings)
    backend = Backend(settings, registry, jobs)
    if jobs is None:
        backend.jobs()  # created now so the first webhook is fast; a failure only disables training

    app = Flask("safire_backend", static_folder=None)  # no static route: every URL is an endpoint below
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    app.extensions["safire"] = backend
    public = {"health", "index"}

    # -- request lifecycle ------------------------------------------------------------------------
    check_host = settings.loopback_only and not settings.auth_enabled

    @app.before_request
    def _start() -> Optional[Response]:
        g.t0 = time.perf_counter()
        g.tasks = None
        if check_host:
            # no basic auth on loopback: only requests addressed to a loopback name, so a web page
            # whose name re-resolves to 127.0.0.1 (DNS rebinding) cannot drive the backend
            host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") \
                else (request.host or "").split("]", 1)[0] + "]"
            if not is_loopback_host(host):
                return _error(403, "Forbidden", "this backend listens on loopback without authentication and "
                              "answers only requests addressed to 127.0.0.1, ::1 or localhost")
        if settings.auth_enabled and request.endpoint not in public:
            auth = request.authorization
            ok = (auth is not None and auth.type == "basic"
                  and hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
                  and hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode()))
            if not ok:
                resp = _error(401, "Unauthorized", "HTTP basic authentication required (BASIC_AUTH_USER/PASS)")
                resp.headers["WWW-Authenticate"] = 'Basic realm="safire-ml-backend"'
                return resp
        return None

    @app.after_request
    def _finish(resp: Response) -> Response:
        dt = time.perf_counter() - g.get("t0", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        backend.metrics.record(f"{request.method} {endpoint}", resp.status_code, dt)
        tasks = g.get("tasks")
        log.info("%s %s %d %.0fms%s", request.method, log_text(request.path, 120), resp.status_code, dt * 1000,
                 f" tasks={tasks}" if tasks is not None else "")
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        code = e.code or 500
        msg = e.description or e.name
        if code == 413:
            msg = f"request body larger than SAFIRE_MAX_REQUEST_BYTES ({settings.max_request_bytes} bytes)"
        resp = _error(code, e.name, msg)
        if code == 405:
            allow = e.get_response().headers.get("Allow")
            if allow:
                resp.headers["Allow"] = allow
        return resp

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        if isinstance(e, HTTPException):
            return _http_error(e)
        error_id = uuid.uuid4().hex[:12]
        log.error("error %s on %s %s: %s: %s", error_id, request.method, log_text(request.path, 120),
                  type(e).__name__, log_text(str(e), 500), exc_info=e)
        return _error(500, "Internal Server Error", "the backend failed; see its log for this error id",
                      error_id=error_id)

    # -- health / setup -----------------------------------------------------------------------------
    @app.get("/")
    def index() -> Response:
        return health()

    @app.get("/health")
    def health() -> Response:
        base = registry.base
        meta = getattr(base.model, "meta", {}) or {}
        return jsonify({"status": "UP", "model_class": MODEL_CLASS, "model_version": base.version,
                        "variant": meta.get("variant"), "device": settings.device,
                        "uptime_seconds": round(time.time() - backend.metrics.started, 1)})

    @app.post("/setup")
    def setup() -> Response:
        body = _body()
        project = project_key(body.get("project"))
        schema = body.get("schema", body.get("label_config"))
        if not isinstance(schema, str) or not schema.strip():
            raise BadRequest("'schema' (the project's label config) is missing")
        backend.check_config_size(schema)
        try:
            spec = parse_config(schema)
        except LabelConfigError as e:
            backend.metrics.count("setup_rejected")
            return _error(400, "Invalid label config", str(e), problems=e.problems)
        over = backend.check_tuning(spec, schema)
        if over:
            backend.metrics.count("setup_rejected")
            return _error(400, "Invalid label config", "; ".join(over), problems=over)
        backend.remember_config(project, schema)
        loaded = backend.model(project, wait=SETUP_LOAD_WAIT)  # Label Studio allows /setup 3 s
        return jsonify({"model_version": loaded.version, "mode": spec.mode})

    # -- predict ----------------------------------------------------------------------------------
    @app.post("/predict")
    def predict() -> Response:
        body = _body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("'tasks' must be a list of Label Studio tasks")
        g.tasks = len(tasks)
        if len(tasks) > settings.max_tasks:
            raise BadRequest(f"{len(tasks)} tasks in one request, above SAFIRE_MAX_TASKS ({settings.max_tasks}): "
                             "select fewer tasks for Retrieve Predictions")
        project = project_key(body.get("project"))
        if project is None and tasks and isinstance(tasks[0], Mapping):
            project = project_key(tasks[0].get("project"))
        params = body.get("params") if isinstance(body.get("params"), Mapping) else {}
        context = params.get("context", body.get("context"))
        xml = backend.config_for(project, body.get("label_config"))
        try:
            spec = parse_config(xml)
        except LabelConfigError as e:
            return _error(400, "Invalid label config", str(e), problems=e.problems)
        over = backend.check_tuning(spec, xml)
        if over:
            return _error(400, "Invalid label config", "; ".join(over), problems=over)
        loaded = backend.model(project)
        version = loaded.version
        # LS sends context=null for pre-annotation; a context with "result" is a smart-tool call,
        # answered with the click's mask (an empty "result" gets an empty answer, not a partition)
        interactive = isinstance(context, Mapping) and "result" in context
        results: List[Dict[str, Any]] = []
        for task in tasks:
            task_id = task.get("id") if isinstance(task, Mapping) else None
            try:
                if not isinstance(task, Mapping):
                    raise ValueError("task is not a JSON object")
                if interactive:
                    results.append(backend.click(task, context, spec, loaded, project=project))
                    backend.metrics.count("clicks")
                else:
                    results.append(backend.preannotate(task, spec, xml, loaded, project=project,
                                                       explain_base=request.host_url))
                    backend.metrics.count("tasks_predicted")
            except ContextError as e:
                backend.metrics.count("clicks_without_prompt")
                log.info("task %s: %s", log_text(task_id), log_text(str(e), 300))
                results.append(empty_prediction(version, error=str(e)))
            except (FetchError, ImageLoadError, ValueError) as e:
                reason = getattr(e, "reason", "image" if isinstance(e, ImageLoadError) else "task")
                backend.metrics.count(f"tasks_failed_{reason}")
                log.warning("task %s: %s: %s", log_text(task_id), type(e).__name__, log_text(str(e), 500))
                results.append(empty_prediction(version, error=str(e)))
            except Exception as e:
                error_id = uuid.uuid4().hex[:12]
                backend.metrics.count("tasks_failed_internal")
                log.error("task %s: error %s: %s: %s", log_text(task_id), error_id, type(e).__name__,
                          log_text(str(e), 500), exc_info=e)
                results.append(empty_prediction(version, error=f"internal error {error_id}"))
        return jsonify({"results": results, "model_version": version})

    # -- webhook ----------------------------------------------------------------------------------
    def _submit(project: str, reason: str, xml: Optional[str]) -> Dict[str, Any]:
        manager = backend.jobs()
        if manager is None:
            raise RuntimeError(f"retraining is unavailable: {backend._jobs_error}")
        rec = manager.submit(project, reason=reason, label_config=xml)
        backend.metrics.count("jobs_submitted")
        return rec

    def _submit_background(project: str, reason: str, xml: Optional[str]) -> bool:
        """Submit from a thread (webhooks must answer within 1 s); one pending submit per project."""
        with backend._submitting_lock:
            if project in backend._submitting or len(backend._submitting) >= 64:
                return False
            backend._submitting.add(project)

        def run() -> None:
            try:
                rec = _submit(project, reason, xml)
                log.info("project %s: retraining job %s (%s)%s", project, rec.get("id"), reason,
                         " already running" if rec.get("already_running") else "")
            except Exception as e:
                log.error("project %s: cannot start retraining: %s: %s", project, type(e).__name__,
                          log_text(str(e), 300))
            finally:
                with backend._submitting_lock:
                    backend._submitting.discard(project)

        threading.Thread(target=run, name="safire-submit", daemon=True).start()
        return True

    @app.post("/webhook")
    def webhook() -> Tuple[Response, int]:
        from .jobs import JobLimitError

        body = _body()
        action = body.get("action") if isinstance(body.get("action"), str) else ""
        backend.metrics.count(f"webhook_{action if action in _WEBHOOK_ACTIONS else ('none' if not action else 'other')}")
        project_obj = body.get("project") if isinstance(body.get("project"), Mapping) else {}
        xml = project_obj.get("label_config") if isinstance(project_obj.get("label_config"), str) else None
        if action == "START_TRAINING":
            project = project_key(project_obj)
            if project is None:
                raise BadRequest("START_TRAINING without project.id")
            backend.remember_config(project, xml)
            try:
                rec = _submit(project, "START_TRAINING", xml)
            except JobLimitError as e:
                backend.metrics.count("jobs_refused_limit")
                return _error(429, "Too Many Requests", str(e)), 429
            except ValueError as e:
                raise BadRequest(str(e)) from None
            except RuntimeError as e:
                return _error(503, "Service Unavailable", str(e)), 503
            job = _job_view(rec) or {}
            return jsonify({"status": "ok", "job": str(job.get("id")), "result": job}), 201
        if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"):
            ann = body.get("annotation") if isinstance(body.get("annotation"), Mapping) else {}
            project = project_key(ann.get("project")) or project_key(project_obj)
            if project is None:
                raise BadRequest(f"{action} without a project id")
            if action != "ANNOTATIONS_DELETED" and (ann.get("was_cancelled") or not ann.get("result")):
                backend.metrics.count("webhook_ignored_cancelled")
                return jsonify({"status": "ignored", "reason": "cancelled (skipped) or empty annotation"}), 200
            backend.remember_config(project, xml)
            n = backend.count_update(project)
            every = settings.start_training_each_n_updates
            if every > 0 and n % every == 0:
                started = _submit_background(project, f"{every} annotation updates", xml)
                return jsonify({"status": "ok", "updates": n,
                                "training": "submitted" if started else "a submit is already pending"}), 201
            return jsonify({"status": "ok", "updates": n,
                            "training": f"every {every} updates" if every > 0 else "on Start Training only"}), 201
        return jsonify({"status": "Unknown event"}), 200

    # -- bulk pre-annotation ------------------------------------------------------------------------
    @app.post("/preannotate/<project>")
    def preannotate_project(project: str) -> Tuple[Response, int]:
        import os as _os

        from .jobs import JobLimitError

        body = _body()
        key = project_key(project)
        if key is None or "." in str(project):
            raise BadRequest("POST /preannotate/<project id>: project ids are positive integers")
        if not settings.label_studio_url or not settings.label_studio_api_key:
            return _error(503, "Service Unavailable", "bulk pre-annotation needs LABEL_STUDIO_URL and "
                          "LABEL_STUDIO_API_KEY (it lists the project's tasks and imports the predictions)"), 503
        engine = body.get("engine", "ray")
        if engine not in ("ray", "local"):
            raise BadRequest("engine must be 'ray' or 'local'")
        cpus = _os.cpu_count() or 1
        opts: Dict[str, Any] = {"engine": engine, "explain_base": request.host_url}
        for name, lo, hi, default in (("workers", 1, cpus, 1), ("chunk_size", 1, 1000, 100)):
            v = body.get(name, default)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise BadRequest(f"{name} must be an integer from {lo} to {hi}")
            opts[name] = v
        for name in ("all", "overwrite"):
            v = body.get(name, False)
            if not isinstance(v, bool):
                raise BadRequest(f"{name} must be true or false")
            opts[name] = v
        if opts["all"] and not opts["overwrite"]:
            raise BadRequest("all=true needs overwrite=true (a task would get a second prediction of one version)")
        manager = backend.jobs()
        if manager is None:
            return _error(503, "Service Unavailable", f"background jobs are unavailable: {backend._jobs_error}"), 503
        try:
            # label_config None: the job reads the project's current config from Label Studio, which is
            # what Label Studio sends with every /predict
            rec = manager.submit(key, reason="preannotate", label_config=None, kind="preannotate", options=opts)
        except JobLimitError as e:
            backend.metrics.count("jobs_refused_limit")
            return _error(429, "Too Many Requests", str(e)), 429
        except ValueError as e:
            raise BadRequest(str(e)) from None
        backend.metrics.count("preannotate_jobs_submitted")
        job = _job_view(rec) or {}
        return jsonify({"status": "ok", "job": str(job.get("id")), "result": job}), 202

    # -- jobs, versions, metrics ------------------------------------------------------------------
    @app.get("/jobs")
    def jobs_list() -> Response:
        manager = backend.jobs()
        if manager is None:
            return _error(503, "Service Unavailable", f"retraining is unavailable: {backend._jobs_error}")
        return jsonify({"jobs": [_job_view(r) for r in manager.list()]})

    @app.get("/jobs/<project>")
    def jobs_get(project: str) -> Response:
        manager = backend.jobs()
        if manager is None:
            return _error(503, "Service Unavailable", f"retraining is unavailable: {backend._jobs_error}")
        key = project_key(project)
        if key is None:
            raise BadRequest("a project id is needed: GET /jobs/<project id>")
        try:
            rec = manager.get(key)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if rec is None:
            raise NotFound(f"no retraining job for project {key}")
        out = _job_view(rec) or {}
        out["updates_since_start"] = backend.updates().get(str(key), 0)
        return jsonify(out)

    @app.get("/versions/<project>")
    def versions(project: str) -> Response:
        key = project_key(project)
        if key is None:
            raise BadRequest("a project id is needed: GET /versions/<project id>")
        try:
            out = dict(registry.versions(key))
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if isinstance(out.get("error"), str):
            out["error"] = _scrub(out["error"])
        return jsonify(out)

    @app.post("/versions/<project>/<version>/promote")
    def versions_promote(project: str, version: str) -> Response:
        """Serve a kept candidate (or roll back to an earlier version) by hand: the analyst's override."""
        key = project_key(project)
        if key is None:
            raise BadRequest("a project id is needed: POST /versions/<project id>/<version>/promote")
        from .models import promote_version

        try:
            man = promote_version(registry.model_dir, key, version)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        except FileNotFoundError as e:
            raise NotFound(str(e)) from None
        log.info("project %s: version %s promoted by request (replaced %s)", key, version,
                 man["promoted"]["replaced"])
        return jsonify({"project": str(key), "current": version, "replaced": man["promoted"]["replaced"]})

    @app.get("/metrics")
    def metrics() -> Response:
        snap = backend.metrics.snapshot()
        cache = getattr(registry, "cache", None)
        if cache is not None:
            st = cache.stats()
            snap["embedding_cache"] = dict(vars(st)) if hasattr(st, "__dict__") else st
        loaded = getattr(registry, "_loaded", {}) or {}
        snap["models"] = {"base": registry.base.version,
                          "projects": {p: m.version for p, m in list(loaded.items())}}
        snap["compute"] = backend.gate.stats()
        snap["label_configs"] = backend.configs_stats()
        snap["prewarm_pending"] = backend._prewarm_q.qsize()
        snap["annotation_updates"] = backend.updates()
        manager = backend.jobs()
        if manager is not None:
            try:
                recs = manager.list()
                snap["jobs"] = {"by_state": dict(Counter(str(r.get("state")) for r in recs)),
                                "latest": {str(r.get("project")): {"id": r.get("id"), "state": r.get("state")}
                                           for r in recs}}
            except Exception as e:
                snap["jobs"] = {"error": _scrub(f"{type(e).__name__}: {e}")}
        else:
            snap["jobs"] = {"error": backend._jobs_error}
        return jsonify(snap)

    # -- explain ----------------------------------------------------------------------------------
    @app.get("/explain/<project>/<task>")
    def explain(project: str, task: str) -> Response:
        key = project_key(project)
        if key is None or "." in str(project):
            raise BadRequest("GET /explain/<project id>/<task id>: project ids are positive integers")
        if not re.fullmatch(r"[1-9][0-9]{0,17}", task or ""):
            raise BadRequest("GET /explain/<project id>/<task id>: task ids are positive integers")
        view = request.args.get("view", "panel")
        if view not in _EXPLAIN_VIEWS:
            raise BadRequest(f"view must be one of {', '.join(_EXPLAIN_VIEWS)}")
        g.tasks = 1
        try:
            png = backend.explain(key, int(task), view)
        except (FetchError, ImageLoadError, ValueError) as e:
            return _error(502 if isinstance(e, FetchError) else 422, "Cannot explain", str(e))
        backend.metrics.count("explained")
        resp = Response(png, mimetype="image/png")
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Content-Disposition"] = f'inline; filename="safire-p{key}-t{int(task)}-{view}.png"'
        return resp

    # -- prewarm ----------------------------------------------------------------------------------
    @app.post("/prewarm")
    def prewarm() -> Tuple[Response, int]:
        body = _body()
        project = project_key(body.get("project"))
        items: List[Tuple[str, Any]] = []
        problems: List[str] = []
        urls = body.get("urls")
        tasks = body.get("tasks")
        if urls is None and tasks is None:
            raise BadRequest("give 'tasks' (Label Studio tasks) or 'urls' (image URLs)")
        n = sum(len(v) for v in (urls, tasks) if isinstance(v, list))
        if n > settings.max_tasks:
            raise BadRequest(f"{n} images in one request, above SAFIRE_MAX_TASKS ({settings.max_tasks})")
        if urls is not None:
            if not isinstance(urls, list) or not all(isinstance(u, str) and u.strip() for u in urls):
                raise BadRequest("'urls' must be a list of non-empty strings")
            items += [(u.strip(), None) for u in urls]
        if tasks is not None:
            if not isinstance(tasks, list):
                raise BadRequest("'tasks' must be a list")
            spec = None
            xml = body.get("label_config")
            backend.check_config_size(xml)
            try:
                xml = backend.config_for(project, xml)
                spec = parse_config(xml)
            except (BadRequest, LabelConfigError):
                spec = None
            for t in tasks:
                if not isinstance(t, Mapping):
                    problems.append("a task is not a JSON object")
                    continue
                try:
                    if spec is not None:
                        url = task_image_url(t, spec)
                    else:  # no config known: a task with a single string value or an "image" key
                        data = t.get("data") or {}
                        strings = [v for v in data.values() if isinstance(v, str)] if isinstance(data, Mapping) else []
                        url = data.get("image") if isinstance(data, Mapping) and isinstance(data.get("image"), str) \
                            else (strings[0] if len(strings) == 1 else None)
                        if not url:
                            raise ValueError("cannot tell the image URL without the project's label config")
                    items.append((url, t.get("id")))
                except ValueError as e:
                    problems.append(f"task {log_text(t.get('id'))}: {log_text(str(e), 300)}")
        g.tasks = len(items)
        out = backend.prewarm(project, items)
        if problems:
            out["problems"] = problems[:20]
        return jsonify(out), 202

    return app
