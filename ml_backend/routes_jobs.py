"""The backend's job, version and background-work routes, registered on the app by
:func:`ml_backend.app.create_app`: bulk pre-annotation (``POST /preannotate/<p>``), jobs
(``GET /jobs``, ``GET /jobs/<p>``), versions (``GET /versions/<p>``,
``POST /versions/<p>/<v>/promote``), ``GET /metrics``, ``GET /explain/<p>/<t>`` and
``POST /prewarm``. The endpoints are described in :mod:`ml_backend.app`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any, Dict, List, Mapping, Tuple

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import BadRequest, NotFound

from safire.io import ImageLoadError

from .backend import Backend
from .fetch import FetchError, log_text
from .http_json import _body, _error
from .label_config import LabelConfigError
from .predictions import task_image_url
from .runtime import _job_view, _scrub, parse_config, project_key
from .settings import Settings

log = logging.getLogger("safire.backend")

_EXPLAIN_VIEWS = ("panel", "heatmap", "sources", "overlay")


def register_job_routes(app: Flask, backend: Backend, settings: Settings, registry: Any) -> None:
    """Add the job, version, pre-annotation, metrics, explain and prewarm routes to ``app``
    (closures over ``backend``, ``settings`` and ``registry``, as the routes of
    :func:`ml_backend.app.create_app`)."""
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
        snap["prewarm_pending"] = backend.prewarmer.pending()
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
