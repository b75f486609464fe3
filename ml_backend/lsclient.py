"""The one Label Studio REST client of the project (export, retraining jobs, bulk pre-annotation).

Everything goes through an :class:`ml_backend.fetch.ImageFetcher` (``docs/security.md``): API calls
only to Label Studio's host, images only from Label Studio's host or ``allowed_hosts``, addresses
checked per connection, every redirect hop checked, byte and time limits, task ids validated before
a presign URL is built, the key sent to Label Studio's host only and never put into a message.

Calls used, all checked against Label Studio 1.23.2:

======================================================  ==========================================
``GET /api/projects/<id>``                              project (label config)
``GET /api/projects/<id>/export?exportType=JSON``        export (retraining, ``safire export``)
``GET /api/predictions/?project=<id>`` / ``?task=<id>``  predictions with their results
``GET /api/tasks?project=<id>&query=...``               Data Manager task list: one page of tasks
                                                        with ``id > after`` (and ``< before``),
                                                        ordered by id (keyset paging: stable while
                                                        predictions are added, no deep OFFSET),
                                                        raw data (``resolve_uri=false``) and the
                                                        ``predictions_model_versions`` column
``POST /api/projects/<id>/import/predictions``          ``[{"task", "result", "score",
                                                        "model_version"}, ...]`` -> ``{"created"}``;
                                                        one bulk insert (all or nothing); an unknown
                                                        task id fails the whole request (400)
``DELETE /api/predictions/<id>``                        one prediction (``--overwrite``)
======================================================  ==========================================
"""

from __future__ import annotations

import json
import random
import re
import time
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

__all__ = ["ImageFetchError", "LabelStudioClient", "LabelStudioError", "project_int", "task_versions"]

# the Data Manager joins a task's prediction model versions with "," and cuts the text at 500 characters
_DM_CHAR_LIMIT = 500
# columns of the Data Manager list that the bulk run does not need (smaller pages)
_HIDDEN_COLUMNS = ["tasks:annotations_results", "tasks:predictions_results", "tasks:annotators",
                   "tasks:updated_by", "tasks:comment_authors", "tasks:drafts", "tasks:annotations_ids",
                   "tasks:predictions_score", "tasks:avg_lead_time", "tasks:storage_filename"]


class LabelStudioError(RuntimeError):
    """A Label Studio API call failed, or the client cannot be set up (URL, key, settings)."""

    status: Optional[int] = None  # the HTTP status when Label Studio answered one
    retryable: bool = False  # a network error, a timeout or a 5xx/429: the same call may succeed later


class ImageFetchError(RuntimeError):
    """An image could not be fetched."""


def project_int(value: Any) -> int:
    """A Label Studio project id as a positive integer; :class:`LabelStudioError` otherwise."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise LabelStudioError(f"project id must be a positive integer, got {str(value)[:40]!r}")
    n = int(value)
    if n < 1:
        raise LabelStudioError("project id must be a positive integer")
    return n


def _looks_like_jwt(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and all(re.fullmatch(r"[A-Za-z0-9_\-]+=*", p) for p in parts)


def task_versions(task: Dict[str, Any]) -> Optional[List[str]]:
    """The model versions of a listed task's predictions (Data Manager column), or None when the
    column cannot be trusted (cut at its character limit): ask ``/api/predictions/?task=`` then."""
    raw = task.get("predictions_model_versions")
    if raw is None:
        return None
    if isinstance(raw, list):
        return [str(v) for v in raw if v is not None]
    text = str(raw)
    if len(text) >= _DM_CHAR_LIMIT - 5:
        return None
    return [v.strip() for v in text.split(",") if v.strip()]


class LabelStudioClient:
    """Minimal Label Studio REST client over the backend's one download path.

    ``api_key`` is a legacy token (sent as ``Authorization: Token <key>``) or a Personal Access
    Token (a JWT refresh token: exchanged at ``POST /api/token/refresh/`` for an access token
    sent as ``Authorization: Bearer <access>``, refreshed once on HTTP 401).

    Args:
        url: Label Studio's base URL (``http(s)://host[:port][/prefix]``, no credentials).
        timeout: seconds for API calls (the export can take a while).
        session: a guarded ``requests.Session`` (default: one per thread).
        download: download settings (:func:`ml_backend.settings.download_settings`: allowed hosts
            and networks, byte and pixel limits, fetch timeout; or the server's
            :class:`ml_backend.settings.Settings`); default: from the environment.
        error: the exception class raised for API errors (a subclass of :class:`LabelStudioError`).
    """

    def __init__(self, url: str, api_key: str, timeout: float = 60.0, session=None, download: Any = None,
                 error: type = LabelStudioError):
        from ml_backend.fetch import ImageFetcher
        from ml_backend.fetch_errors import FetchError
        from ml_backend.settings import SettingsError, download_settings
        from ml_backend.settings_parsers import redact

        self._error = error
        if not re.match(r"^https?://", url or ""):
            raise error(f"Label Studio URL must start with http:// or https://, got {redact(str(url))!r}")
        if "@" in urlparse(url).netloc:
            raise error("the Label Studio URL must not contain credentials (user:password@): "
                        "pass the API key with --api-key")
        if not api_key:
            raise error("an API key is needed to talk to Label Studio (--api-key)")
        self.url = url.rstrip("/")
        self.timeout = timeout
        try:
            base = download if download is not None else download_settings()
            fields = dict(vars(base)) if not hasattr(base, "__dataclass_fields__") else \
                {k: getattr(base, k) for k in base.__dataclass_fields__}
            settings = SimpleNamespace(**{**fields, "label_studio_url": self.url, "label_studio_api_key": api_key})
            self.fetcher = ImageFetcher(settings, session=session)
        except (SettingsError, FetchError) as e:
            raise error(str(e)) from None
        self.max_pixels = int(getattr(settings, "max_pixels", 40_000_000))
        self.is_pat = _looks_like_jwt(api_key)
        self._fetch_error = FetchError

    # -- plumbing --------------------------------------------------------------------------
    def _fail(self, what: str, e: Exception) -> Exception:
        from ml_backend.fetch_errors import FetchTimeoutError, HTTPStatusError, UnreachableError

        err = self._error(f"{what}: {e}")
        status = getattr(e, "status", None)
        err.status = status
        err.retryable = isinstance(e, (UnreachableError, FetchTimeoutError)) or (
            isinstance(e, HTTPStatusError) and status is not None and (status >= 500 or status == 429))
        return err

    def _api(self, path: str, params: Optional[Dict[str, str]] = None) -> Any:
        try:
            return self.fetcher.api_get(path, params=params, timeout=self.timeout)
        except self._fetch_error as e:
            raise self._fail(f"GET {path}", e) from None

    def _call(self, method: str, path: str, body: Any = None, params: Optional[Dict[str, str]] = None) -> Any:
        try:
            return self.fetcher.api_request(method, path, params=params, json_body=body, timeout=self.timeout)
        except self._fetch_error as e:
            raise self._fail(f"{method} {path}", e) from None

    # -- projects, export, predictions -------------------------------------------------------
    def get_project(self, project_id: int) -> Dict[str, Any]:
        data = self._api(f"/api/projects/{project_int(project_id)}")
        if not isinstance(data, dict):
            raise self._error(f"GET /api/projects/{project_id}: not a project object")
        return data

    def export_tasks(self, project_id: int, all_tasks: bool = False) -> List[Dict[str, Any]]:
        params = {"exportType": "JSON"}
        if all_tasks:
            params["download_all_tasks"] = "true"
        data = self._api(f"/api/projects/{project_int(project_id)}/export", params=params)
        if not isinstance(data, list):
            raise self._error("the export is not a JSON list of tasks")
        return data

    def list_predictions(self, project_id: Optional[int] = None, task_id: Optional[int] = None) -> List[Dict[str, Any]]:
        """Predictions with their results (``GET /api/predictions/?project=ID`` or ``?task=ID``);
        the JSON export only lists prediction ids."""
        params = {"task": str(int(task_id))} if task_id is not None else {"project": str(project_int(project_id))}
        data = self._api("/api/predictions/", params=params)
        if isinstance(data, dict) and isinstance(data.get("results"), list):
            data = data["results"]
        if not isinstance(data, list):
            raise self._error("GET /api/predictions/: not a list of predictions")
        return data

    def import_predictions(self, project_id: int, predictions: Sequence[Dict[str, Any]]) -> int:
        """``POST /api/projects/<id>/import/predictions``; the number created. Label Studio 1.23.2
        inserts them in one bulk insert (all or none) and refuses the whole list (HTTP 400) when a
        task id is not in the project."""
        body = [{"task": int(p["task"]), "result": p.get("result") or [], "score": p.get("score"),
                 "model_version": str(p["model_version"])} for p in predictions]
        data = self._call("POST", f"/api/projects/{project_int(project_id)}/import/predictions", body)
        created = data.get("created") if isinstance(data, dict) else None
        return int(created) if isinstance(created, int) else len(body)

    def delete_prediction(self, prediction_id: int) -> None:
        self._call("DELETE", f"/api/predictions/{int(prediction_id)}/")

    # -- the task list ----------------------------------------------------------------------------
    def tasks_page(self, project_id: int, *, after: int = 0, before: Optional[int] = None, page_size: int = 500,
                   descending: bool = False, ids: Optional[Sequence[int]] = None) -> Tuple[List[Dict[str, Any]], int]:
        """One page of the project's tasks ordered by id (``(tasks, total matching)``): those with
        ``after < id < before`` (or ``id in ids``), with their raw data and prediction model versions."""
        items: List[Dict[str, Any]] = []
        if ids is None:
            items.append({"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": int(after)})
            if before is not None:
                items.append({"filter": "filter:tasks:id", "operator": "less", "type": "Number", "value": int(before)})
        query: Dict[str, Any] = {"filters": {"conjunction": "and", "items": items},
                                 "ordering": ["-tasks:id" if descending else "tasks:id"],
                                 "hiddenColumns": {"explore": _HIDDEN_COLUMNS, "labeling": _HIDDEN_COLUMNS}}
        if ids is not None:
            query["selectedItems"] = {"all": False, "included": [int(i) for i in ids]}
        params = {"project": str(project_int(project_id)), "page": "1", "page_size": str(int(page_size)),
                  "resolve_uri": "false", "query": json.dumps(query, separators=(",", ":"))}
        data = self._api("/api/tasks", params=params)
        if isinstance(data, dict) and isinstance(data.get("tasks"), list):
            tasks, total = data["tasks"], int(data.get("total") or 0)
        elif isinstance(data, list):
            tasks, total = data, len(data)
        else:
            raise self._error("GET /api/tasks: not a task list")
        tasks = [t for t in tasks if isinstance(t, dict) and isinstance(t.get("id"), int)]
        if ids is not None:
            wanted = set(int(i) for i in ids)
            tasks = [t for t in tasks if t["id"] in wanted]
        else:  # the filter's bounds are strict; keep the contract whatever the server did
            tasks = [t for t in tasks if t["id"] > after and (before is None or t["id"] < before)]
        return tasks, total

    def task_id_range(self, project_id: int) -> Tuple[int, int, int]:
        """``(smallest task id, largest task id, number of tasks)``; ``(0, 0, 0)`` for an empty project."""
        first, total = self.tasks_page(project_id, page_size=1)
        if not first:
            return 0, 0, 0
        last, _ = self.tasks_page(project_id, page_size=1, descending=True)
        return int(first[0]["id"]), int(last[0]["id"] if last else first[0]["id"]), int(total)

    def iter_tasks(self, project_id: int, *, after: int = 0, before: Optional[int] = None,
                   page_size: int = 500) -> Iterator[Dict[str, Any]]:
        """Every task with ``after < id < before``, page by page (keyset paging on the id)."""
        while True:
            page, _ = self.tasks_page(project_id, after=after, before=before, page_size=page_size)
            if not page:
                return
            yield from page
            after = int(page[-1]["id"])
            if len(page) < page_size:
                return

    def versions_of(self, task: Dict[str, Any]) -> List[str]:
        """Exact model versions of a listed task's predictions (asks the predictions API when the
        Data Manager's column was cut)."""
        got = task_versions(task)
        if got is not None:
            return got
        return [str(p.get("model_version")) for p in self.list_predictions(task_id=int(task["id"]))]

    # -- media ------------------------------------------------------------------------------------
    def fetch_image(self, url: str, task_id: Optional[int] = None) -> bytes:
        from ml_backend.fetch_errors import display_url

        try:
            return self.fetcher.fetch(url, task_id)
        except self._fetch_error as e:
            raise ImageFetchError(f"{display_url(url)}: {e}") from None


def with_retries(call, *, attempts: int = 5, base_delay: float = 1.0, max_delay: float = 30.0,
                 log=None, what: str = "Label Studio call", sleep=time.sleep) -> Any:
    """``call()`` again after a retryable :class:`LabelStudioError` (network, timeout, 5xx, 429),
    with exponential backoff and jitter; other errors, and the last failure, are raised."""
    for i in range(attempts):
        try:
            return call()
        except LabelStudioError as e:
            if not e.retryable or i == attempts - 1:
                raise
            delay = min(max_delay, base_delay * 2 ** i) * (0.5 + random.random() / 2)
            if log:
                log(f"{what} failed ({e}); retry {i + 1}/{attempts - 1} in {delay:.1f} s")
            sleep(delay)
    raise AssertionError("unreachable")
