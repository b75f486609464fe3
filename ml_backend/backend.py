"""The backend's state, one per server process: settings, model registry, image fetcher, job
manager, caches (label configs, image hashes, task URLs), counters, and the model work behind every
route (pre-annotation, clicks, the explain view; prewarming in :mod:`ml_backend.prewarm`). :mod:`ml_backend.app` maps HTTP
requests onto it; tests may drive it directly.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
from werkzeug.exceptions import BadRequest, NotFound

from safire.io import load_image

from .fetch import FetchError, ImageFetcher, display_url, log_text
from .label_config import LabelConfigSpec
from .prewarm import Prewarmer
from .predictions import (
    attach_provenance,
    click_to_prediction,
    parse_context,
    partition_to_prediction,
    task_image_url,
)
from .runtime import (
    PARTITION_MAP_BYTES,
    KeyedLocks,
    Metrics,
    PriorityGate,
    _explicit,
    config_size_problem,
    embedding_key,
    parse_config,
    work_hw,
)
from .settings import Settings

log = logging.getLogger("safire.backend")

_MAX_CONFIGS = 1000
_MAX_CONFIG_BYTES_TOTAL = 16 * 2**20  # remembered label configs, all projects together
_IMAGE_INFO = 20000  # remembered image hashes (model version + image key -> SHA-256, size, timings)
_TASK_URLS = 20000  # remembered (project, task) -> image URL of pre-annotated tasks, for /explain
EXPLAIN_PANEL_PIXELS = 24_000_000  # a side-by-side panel above this is scaled down (single views never are)


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
        self.prewarmer = Prewarmer(self)
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
        """Queue embeddings of ``(url, task_id)`` items for the background worker (:mod:`ml_backend.prewarm`)."""
        return self.prewarmer.submit(project, items)

    def wait_prewarm(self, timeout: float = 30.0) -> bool:
        """Block until the prewarm queue is empty (tests, benchmarks)."""
        return self.prewarmer.wait(timeout)

    # -- webhook counters -------------------------------------------------------------------------
    def count_update(self, project: str) -> int:
        with self._updates_lock:
            self._updates[project] += 1
            return self._updates[project]

    def updates(self) -> Dict[str, int]:
        with self._updates_lock:
            return dict(self._updates)
