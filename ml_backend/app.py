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

import hmac
import logging
import re
import threading
import time
import uuid
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Tuple

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, NotFound, RequestEntityTooLarge, UnsupportedMediaType

from safire.io import ImageLoadError

from .fetch import FetchError, log_text
from .label_config import LabelConfigError
from .predictions import ContextError, empty_prediction, task_image_url
from .backend import Backend
from .runtime import _job_view, _scrub, parse_config, project_key
from .settings import Settings, is_loopback_host

log = logging.getLogger("safire.backend")


MODEL_CLASS = "SafireBackend"
_EXPLAIN_VIEWS = ("panel", "heatmap", "sources", "overlay")
_WEBHOOK_ACTIONS = ("START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
SETUP_LOAD_WAIT = 1.5  # seconds /setup waits for a newly published version to load (then: background)



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
