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

This module holds the app factory, the request lifecycle (host check, basic auth, metrics, errors)
and ``/``, ``/health``, ``/setup``, ``/predict`` and ``/webhook``; the pre-annotation, job, version,
metrics, explain and prewarm routes are in :mod:`ml_backend.routes_jobs`, the JSON body and error
helpers in :mod:`ml_backend.http_json`.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

from safire.io import ImageLoadError

from .fetch import FetchError, log_text
from .http_json import _body, _error
from .label_config import LabelConfigError
from .predictions import ContextError, empty_prediction
from .backend import Backend
from .routes_jobs import register_job_routes
from .runtime import _job_view, parse_config, project_key
from .settings import Settings, is_loopback_host

log = logging.getLogger("safire.backend")


MODEL_CLASS = "SafireBackend"
_WEBHOOK_ACTIONS = ("START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
SETUP_LOAD_WAIT = 1.5  # seconds /setup waits for a newly published version to load (then: background)



# ------------------------------------------------------------------------------------------------
# the Flask app
# ------------------------------------------------------------------------------------------------


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

    # -- pre-annotation, jobs, versions, metrics, explain, prewarm: routes_jobs ---------------------
    register_job_routes(app, backend, settings, registry)

    return app
