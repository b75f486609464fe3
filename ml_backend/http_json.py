"""JSON request and response helpers shared by the route modules (:mod:`ml_backend.app`,
:mod:`ml_backend.routes_jobs`): the error body ``{"status", "error", "message"}`` and the request's
JSON object, checked (size, ``Content-Type``, an object).
"""

from __future__ import annotations

from typing import Any, Dict

from flask import Response, jsonify, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from .fetch import log_text


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
