"""The errors of :class:`ml_backend.fetch.ImageFetcher` and the log-safe text helpers.

Every failure to fetch an image raises a subclass of :class:`FetchError`; its ``reason`` (a short
code: ``invalid_url``, ``host_not_allowed``, ``not_found``, ``too_large``, ...) is what callers
count and show, its message says what to fix. :func:`log_text` and :func:`display_url` make
request-supplied values and URLs safe for log lines and messages (control characters escaped,
query strings dropped: presigned URLs carry signatures).
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


class FetchError(Exception):
    """An image could not be fetched; the message says why and what to change."""

    reason = "fetch_failed"


class FetchConfigError(FetchError):
    """The backend is not configured for this kind of URL (e.g. no LABEL_STUDIO_URL)."""

    reason = "not_configured"


class InvalidURLError(FetchError):
    """The URL is malformed or of an unsupported scheme."""

    reason = "invalid_url"


class HostNotAllowedError(FetchError):
    """The URL (or a redirect) points to a host that is neither Label Studio nor allowed."""

    reason = "host_not_allowed"


class LocalFileError(FetchError):
    """A local-files path is outside the document root or unreadable."""

    reason = "local_file"


class UnreachableError(FetchError):
    """The host could not be reached (DNS, refused connection, TLS...)."""

    reason = "unreachable"


class FetchTimeoutError(UnreachableError):
    """The host did not answer in time."""

    reason = "timeout"


class AuthError(FetchError):
    """Label Studio refused the credentials (HTTP 401/403)."""

    reason = "unauthorized"


class NotFoundError(FetchError):
    """HTTP 404 or a missing local file."""

    reason = "not_found"


class TooLargeError(FetchError):
    """The image is larger than SAFIRE_MAX_IMAGE_BYTES."""

    reason = "too_large"


class HTTPStatusError(FetchError):
    """Any other unexpected HTTP status (``status``: the HTTP status, when there was one)."""

    reason = "http_status"
    status: Optional[int] = None


# ------------------------------------------------------------------------------------------------
# log-safe text
# ------------------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Control characters (CR, LF, ESC, ...) as Python escapes, so they cannot forge log lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def log_text(value: Any, limit: int = 80) -> str:
    """A request-supplied value (task id, project, action, ...) safe to put into a log line."""
    text = value if isinstance(value, str) else repr(value)
    text = _escape(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def display_url(url: str, limit: int = 160) -> str:
    """A URL safe for logs and messages: no query string (except local-files ``d=``), no userinfo,
    control characters escaped."""
    if not isinstance(url, str):
        return log_text(url, limit)
    if url[:5].lower() == "data:":
        return f"data: URI ({len(url)} characters)"
    try:
        p = urlsplit(url)
    except ValueError:
        return log_text(url, limit)
    netloc = p.netloc.rsplit("@", 1)[-1]
    shown = f"{p.scheme}://{netloc}{p.path}" if p.scheme else p.path
    if p.query:
        d = parse_qs(p.query).get("d")
        shown += f"?d={d[0]}" if d and "local-files" in p.path else "?..."
    shown = _escape(shown)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."

