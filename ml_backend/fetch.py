"""Download task images the way Label Studio (1.23.2) expects an ML backend to.

``ImageFetcher(settings).fetch(url, task_id)`` returns the image file's bytes. URLs resolve as in the
Label Studio SDK's ``get_local_path`` (protocol note §7), with stricter safety:

==========================================  ==============================================================
task URL                                    how it is fetched
==========================================  ==============================================================
``/data/upload/<pid>/<file>``, other        ``LABEL_STUDIO_URL`` + path, with the API key. A base URL with
relative paths (``/storage-data/...``)      a path prefix (``http://host/label-studio``) is not doubled.
``/data/local-files/?d=<path>``             read from ``LOCAL_FILES_DOCUMENT_ROOT`` when that is set and
                                            ``LOCAL_FILES_SERVING_ENABLED`` is true (confined to the root:
                                            ``..``, absolute escapes and symlinks leaving it are refused);
                                            otherwise downloaded from Label Studio like an upload.
``s3://``, ``gs://``, ``azure-blob://``     ``LABEL_STUDIO_URL/tasks/<task_id>/presign/?fileuri=<base64url>``
                                            (needs the task id); Label Studio answers with the bytes or a
                                            redirect to a presigned URL, which is followed without the key.
``http(s)://host/...``                      only from the Label Studio host (key sent) or a host listed in
                                            ``SAFIRE_ALLOWED_HOSTS`` (no key sent).
``data:image/...;base64,...``               decoded in place.
==========================================  ==============================================================

Authentication: a Personal Access Token (a JWT *refresh* token) is exchanged at
``/api/token/refresh/`` for an access token, sent as ``Authorization: Bearer``, and cached until
shortly before it expires (a 401 forces one refresh and retry); a JWT access token is sent as
``Bearer`` as is; any other key is a legacy token sent as ``Authorization: Token <key>``. Keys are
sent to the Label Studio host only, never logged and never put in error messages.

This is the one download path of the project: the backend's predictions and prewarm, ``safire
export --project`` and the retraining jobs all fetch through an :class:`ImageFetcher`
(``docs/security.md``). Its rules:

* **hosts**: Label Studio's host (``LABEL_STUDIO_URL``, exact host and port) and the hosts of
  ``SAFIRE_ALLOWED_HOSTS``; anything else is refused before a connection is made;
* **addresses**: every connection goes through :mod:`ml_backend.netguard`: the name is resolved
  once and each address checked (loopback and private addresses only for Label Studio's own host
  or ``SAFIRE_ALLOWED_NETWORKS``; link-local, metadata and other non-public ones refused);
* **redirects**: every hop is checked like the first URL; only the presign hop (Label Studio's
  answer to ``/tasks/<id>/presign/``) may leave for a host that is not allowed by name (a storage
  bucket), and only once; the API key is sent only while the request stays on Label Studio's host
  and is never sent again after a hop left it;
* **task ids** must be positive integers before they are put into a presign URL; Label Studio
  paths with ``.``/``..`` segments or under ``/api/`` are refused (no authenticated request to
  Label Studio's REST API can be made from task data);
* **credentials**: URLs with ``user:password@`` are refused (task data, redirects and
  ``LABEL_STUDIO_URL``); no proxy, ``.netrc`` or cookie is ever used;
* **limits**: ``SAFIRE_MAX_IMAGE_BYTES`` is enforced while streaming (the download aborts as soon
  as it is exceeded, and at once when ``Content-Length`` announces more), ``SAFIRE_FETCH_TIMEOUT``
  bounds the connection and every wait for data (and 6x that the whole download), at most 5
  redirects are followed; the pixel limit (``SAFIRE_MAX_PIXELS``) is checked from the image
  header by whoever decodes the bytes (``safire.io.load_image``, the export).

Every failure raises a subclass of :class:`FetchError` whose message says what to fix; URLs in
messages have their query strings removed (presigned URLs carry signatures) except the ``d=`` of
local files, and control characters escaped (they come from task data).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional
from urllib.parse import parse_qs, unquote, unquote_to_bytes, urljoin, urlparse, urlsplit

import requests

from .netguard import AddressNotAllowed, AddressPolicy, guarded_session, host_of, parse_networks

log = logging.getLogger("safire.fetch")

__all__ = [
    "AuthError",
    "CLOUD_SCHEMES",
    "FetchConfigError",
    "FetchError",
    "FetchTimeoutError",
    "HTTPStatusError",
    "HostNotAllowedError",
    "ImageFetcher",
    "InvalidURLError",
    "LocalFileError",
    "NotFoundError",
    "TooLargeError",
    "UnreachableError",
    "display_url",
    "log_text",
    "task_id_int",
]

CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob")
MAX_REDIRECTS = 5
MAX_TASK_ID = 2**63 - 1
CHUNK = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)


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
# helpers
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


def task_id_int(value: Any) -> int:
    """A task id as a positive integer (int, or a string of digits); :class:`InvalidURLError` otherwise.

    Task ids go into Label Studio URLs (``/tasks/<id>/presign/``), so nothing else may pass.
    """
    if isinstance(value, bool):
        raise InvalidURLError(f"task id {log_text(value)} is not an integer: refused")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        n = int(value.strip())
    else:
        raise InvalidURLError(f"task id {log_text(value)} is not an integer: refused")
    if not 1 <= n <= MAX_TASK_ID:
        raise InvalidURLError(f"task id {n} is out of range: refused")
    return n


def has_userinfo(netloc: str) -> bool:
    return "@" in netloc


def _b64url_json(segment: str) -> Optional[Dict[str, Any]]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        out = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return out if isinstance(out, dict) else None


def jwt_payload(token: str) -> Optional[Dict[str, Any]]:
    """The (unverified) payload of a JWT, or None when ``token`` is not one (e.g. a legacy key)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    header = _b64url_json(parts[0])
    if header is None or "alg" not in header:
        return None
    return _b64url_json(parts[1])


@dataclass(frozen=True)
class Resolved:
    """Where a task URL will be read from: kind is upload|local|cloud|http|data; target the URL/path."""

    kind: str
    target: str
    auth: bool = False


# ------------------------------------------------------------------------------------------------
# the fetcher
# ------------------------------------------------------------------------------------------------


class ImageFetcher:
    """Resolve and download task images (thread-safe; one per process).

    Args:
        settings: a :class:`ml_backend.settings.Settings` (or any object with the same attributes:
            label_studio_url, label_studio_api_key, allowed_hosts, local_files_document_root,
            local_files_serving_enabled, fetch_timeout, max_image_bytes, max_pixels, allowed_networks).
        session: a ``requests.Session`` to use (default: one guarded session per thread, see
            :func:`ml_backend.netguard.guarded_session`; a session passed here must be guarded too).

    Raises:
        FetchConfigError: ``LABEL_STUDIO_URL`` carries credentials or is not an http(s) URL.
    """

    def __init__(self, settings: Any, session: Optional[requests.Session] = None) -> None:
        self.base = (getattr(settings, "label_studio_url", "") or "").strip().rstrip("/")
        if self.base:
            bp0 = urlsplit(self.base)
            if bp0.scheme not in ("http", "https") or not bp0.netloc:
                raise FetchConfigError("LABEL_STUDIO_URL must start with http:// or https:// and name a host")
            if has_userinfo(bp0.netloc):
                raise FetchConfigError(
                    "LABEL_STUDIO_URL must not contain credentials (user:password@): refused; the backend "
                    "authenticates with LABEL_STUDIO_API_KEY")
        self._key = getattr(settings, "label_studio_api_key", "") or ""
        self.timeout = float(getattr(settings, "fetch_timeout", 10.0))
        self.max_bytes = int(getattr(settings, "max_image_bytes", 50 * 2**20))
        self.max_pixels = int(getattr(settings, "max_pixels", 40_000_000))
        root = getattr(settings, "local_files_document_root", None)
        serving = bool(getattr(settings, "local_files_serving_enabled", False))
        self.local_root = os.path.realpath(root) if root and serving else None
        if self.local_root == os.path.sep:  # as the SDK: "/" means "not set"
            self.local_root = None
        bp = urlparse(self.base) if self.base else None
        self._ls_netloc = bp.netloc.lower() if bp else ""
        self._ls_origin = f"{bp.scheme}://{bp.netloc}" if bp else ""
        self._ls_prefix = bp.path.rstrip("/") if bp else ""
        self.allowed_hosts = tuple(h.lower() for h in (getattr(settings, "allowed_hosts", ()) or ()))
        networks = getattr(settings, "allowed_networks", ()) or ()
        self.policy = AddressPolicy(
            trusted_hosts=frozenset({host_of(self._ls_netloc)} if self._ls_netloc else set()),
            allowed_networks=tuple(networks) if all(not isinstance(n, str) for n in networks)
            else parse_networks(networks))
        self._shared_session = session
        self._local = threading.local()  # one requests.Session per thread (Session is not thread-safe)
        self._lock = threading.Lock()
        self._access: Optional[str] = None
        self._access_exp = 0.0
        self._payload = jwt_payload(self._key) if self._key else None
        if self.base and "localhost" in self._ls_netloc:
            log.info("LABEL_STUDIO_URL uses localhost: inside docker that is the backend's own container")

    @property
    def _session(self) -> requests.Session:
        if self._shared_session is not None:
            return self._shared_session
        sess = getattr(self._local, "session", None)
        if sess is None:
            sess = self._local.session = guarded_session(self.policy)
        return sess

    # -- public ---------------------------------------------------------------------------------
    @property
    def auth_scheme(self) -> str:
        """``none``, ``token`` (legacy key), ``bearer`` (JWT access token) or ``refresh`` (PAT)."""
        if not self._key:
            return "none"
        if self._payload is None:
            return "token"
        return "refresh" if self._payload.get("token_type") == "refresh" else "bearer"

    def resolve(self, url: str, task_id: Any = None) -> Resolved:
        """Decide where ``url`` is read from, without reading it (raises :class:`FetchError`)."""
        if not isinstance(url, str) or not url.strip():
            raise InvalidURLError(f"the task has no image URL (got {url!r})")
        url = url.strip()
        if url[:5].lower() == "data:":
            return Resolved("data", url)
        try:
            p = urlsplit(url)
        except ValueError as e:
            raise InvalidURLError(f"malformed image URL {display_url(url)}: {e}") from None
        scheme = p.scheme.lower()
        if scheme in CLOUD_SCHEMES:
            if task_id is None or str(task_id).strip() == "":
                raise FetchConfigError(
                    f"cloud storage URI {display_url(url)} can only be resolved through Label Studio's "
                    "presign endpoint, which needs the task id")
            tid = task_id_int(task_id)
            self._need_base(url)
            enc = base64.urlsafe_b64encode(url.encode()).decode()
            return Resolved("cloud", f"{self.base}/tasks/{tid}/presign/?fileuri={enc}", auth=True)
        if scheme in ("http", "https"):
            if not p.netloc:
                raise InvalidURLError(f"image URL {display_url(url)} has no host")
            if has_userinfo(p.netloc):
                raise InvalidURLError(
                    f"image URL {display_url(url)} carries credentials (user:password@): refused")
            netloc = p.netloc.lower()
            if self._ls_netloc and netloc == self._ls_netloc:
                self._check_ls_path(p.path, url)
                if self.local_root and p.path.startswith("/data/local-files"):
                    return Resolved("local", self._local_path(p.query, url))
                return Resolved("upload", url, auth=True)
            if self._host_allowed(netloc):
                return Resolved("http", url)
            raise HostNotAllowedError(
                f"image host {log_text(netloc)!r} of {display_url(url)} is not allowed: images are downloaded only "
                f"from Label Studio ({self._ls_netloc or 'LABEL_STUDIO_URL is not set'}) and hosts listed "
                "in SAFIRE_ALLOWED_HOSTS")
        if scheme:
            raise InvalidURLError(
                f"unsupported URL scheme {log_text(scheme, 20)!r} in {display_url(url)}: use http(s), data:, "
                "Label Studio uploads/local files or s3/gs/azure-blob storage")
        if p.netloc or url.startswith("//"):
            raise InvalidURLError(f"image URL {display_url(url)} has a host but no scheme: refused")
        # relative: a Label Studio media path
        path = url if url.startswith("/") else "/" + url
        self._check_ls_path(urlsplit(path).path, url)
        if path.startswith("/data/local-files") and self.local_root:
            return Resolved("local", self._local_path(urlsplit(path).query, url))
        self._need_base(url)
        if self._ls_prefix and (path == self._ls_prefix or path.startswith(self._ls_prefix + "/")):
            target = self._ls_origin + path  # "/label-studio/data/upload/..." with base ".../label-studio"
        else:
            target = self.base + path
        return Resolved("upload", target, auth=True)

    def fetch(self, url: str, task_id: Any = None) -> bytes:
        """The bytes of the image at ``url`` (a task's data value); raises :class:`FetchError`."""
        r = self.resolve(url, task_id)
        if r.kind == "data":
            return self._data_uri(r.target)
        if r.kind == "local":
            return self._read_local(r.target)
        return self._http_get(r.target, auth=r.auth, presign=r.kind == "cloud", original=url)

    def api_get(self, path: str, params: Optional[Dict[str, str]] = None, timeout: Optional[float] = None) -> Any:
        """``GET LABEL_STUDIO_URL + path`` of Label Studio's REST API, authenticated; the decoded JSON.

        Used by the export and the retraining jobs (``/api/projects/<id>``, ``.../export``). Through
        the same guarded session as images; redirects are followed only on Label Studio's own host
        (e.g. Django's trailing-slash redirect), at most 5. Raises :class:`FetchError`
        (``AuthError`` for 401/403, ``HTTPStatusError`` with the status otherwise).
        """
        return self.api_request("GET", path, params=params, timeout=timeout)

    def api_request(self, method: str, path: str, params: Optional[Dict[str, str]] = None, json_body: Any = None,
                    timeout: Optional[float] = None) -> Any:
        """An authenticated call of Label Studio's REST API (``/api/...`` paths only); the decoded JSON
        (None for an empty answer such as a 204).

        ``GET`` follows redirects on Label Studio's own host only (at most 5); other methods never
        follow a redirect (a body must not be re-sent elsewhere). Statuses 200, 201 and 204 are
        success; anything else raises :class:`FetchError` (``AuthError`` for 401/403,
        ``HTTPStatusError`` otherwise, with the status in its ``status`` attribute).
        """
        method = method.upper()
        if method not in ("GET", "POST", "PATCH", "DELETE"):
            raise InvalidURLError(f"unsupported API method {log_text(method, 10)}")
        if not path.startswith("/api/"):
            raise InvalidURLError("api_get is for Label Studio's /api/ paths only")
        self._need_base(path)
        url = self.base + path
        wait = float(timeout or self.timeout)
        refreshed = False
        hops = 0
        while True:
            headers = {"User-Agent": "safire-ml-backend", "Accept": "application/json"}
            value = self._auth_header()
            if value:
                headers["Authorization"] = value
            try:
                r = self._session.request(method, url, params=params, json=json_body, headers=headers,
                                          allow_redirects=False, timeout=(self.timeout, wait))
            except AddressNotAllowed as e:
                raise HostNotAllowedError(f"{display_url(url)}: {e}") from None
            except requests.Timeout:
                raise FetchTimeoutError(f"{display_url(url)} did not answer within {wait:g} s") from None
            except requests.RequestException as e:
                raise UnreachableError(self._unreachable_message(url, e)) from None
            if r.status_code == 401 and self.auth_scheme == "refresh" and not refreshed:
                refreshed = True
                self._access_token(force=True)
                continue
            if r.status_code in _REDIRECTS and r.headers.get("Location"):
                hops += 1
                nxt = urljoin(r.url, r.headers["Location"])
                if method != "GET" or hops > MAX_REDIRECTS or urlsplit(nxt).scheme not in ("http", "https") \
                        or urlsplit(nxt).netloc.lower() != self._ls_netloc:
                    err = HTTPStatusError(f"{display_url(url)} redirected away from Label Studio: refused"
                                          if method == "GET" else
                                          f"{method} {display_url(url)} answered a redirect (HTTP {r.status_code}): refused")
                    err.status = r.status_code
                    raise err
                url, params = nxt, None  # the query string is in the new URL
                continue
            if r.status_code in (401, 403):
                raise AuthError(self._auth_message(r.status_code, url, "request"))
            if r.status_code not in (200, 201, 204):
                err = HTTPStatusError(f"{method} {display_url(url)} answered HTTP {r.status_code}: {log_text(r.text, 200)}"
                                      if method != "GET" else
                                      f"{display_url(url)} answered HTTP {r.status_code}: {log_text(r.text, 200)}")
                err.status = r.status_code
                raise err
            if r.status_code == 204 or not r.content:
                return None
            try:
                return r.json()
            except ValueError:
                raise HTTPStatusError(f"{display_url(url)} did not answer JSON") from None

    # -- resolution helpers ----------------------------------------------------------------------
    def _need_base(self, url: str) -> None:
        if not self.base:
            raise FetchConfigError(
                f"image URL {display_url(url)} is served by Label Studio, but LABEL_STUDIO_URL is not set: "
                "set it to Label Studio's address as seen from the backend (not localhost inside docker) "
                "and LABEL_STUDIO_API_KEY to an access token")

    def _check_ls_path(self, path: str, url: str) -> None:
        """Refuse Label Studio paths that would turn task data into an authenticated API call."""
        decoded = unquote(unquote(path)).replace("\\", "/")
        if "." in decoded.split("/") or ".." in decoded.split("/") or "\x00" in decoded:
            raise InvalidURLError(f"image path {display_url(url)} contains '.' or '..' segments: refused")
        rel = re.sub("/+", "/", decoded)
        if self._ls_prefix and (rel == self._ls_prefix or rel.startswith(self._ls_prefix + "/")):
            rel = rel[len(self._ls_prefix):]
        if rel == "/api" or rel.startswith("/api/"):
            raise InvalidURLError(
                f"image path {display_url(url)} points to Label Studio's REST API, not to media: refused")

    def _host_allowed(self, netloc: str) -> bool:
        host = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
        return netloc in self.allowed_hosts or host in self.allowed_hosts

    def _local_path(self, query: str, url: str) -> str:
        d = parse_qs(query).get("d")
        if not d or not d[0].strip():
            raise InvalidURLError(f"local-files URL {display_url(url)} has no d=<path> parameter")
        rel = d[0].replace("\\", "/")
        if "\x00" in rel:
            raise LocalFileError("local-files path contains a NUL byte")
        if ".." in rel.split("/"):
            raise LocalFileError(f"local-files path {rel!r} contains '..': refused")
        assert self.local_root is not None
        target = os.path.realpath(os.path.join(self.local_root, rel.lstrip("/")))
        if os.path.commonpath([self.local_root, target]) != self.local_root:
            raise LocalFileError(
                f"local-files path {rel!r} resolves outside LOCAL_FILES_DOCUMENT_ROOT (a symlink?): refused")
        return target

    # -- readers ---------------------------------------------------------------------------------
    def _data_uri(self, url: str) -> bytes:
        head, sep, data = url.partition(",")
        if not sep:
            raise InvalidURLError("malformed data: URI (no comma)")
        is_b64 = head.lower().endswith(";base64")
        estimate = len(data) * 3 // 4 if is_b64 else len(data)
        if estimate > self.max_bytes:
            raise TooLargeError(
                f"data: URI image is about {estimate / 2**20:.1f} MiB, above SAFIRE_MAX_IMAGE_BYTES "
                f"({self.max_bytes / 2**20:.1f} MiB)")
        try:
            raw = base64.b64decode("".join(data.split()), validate=True) if is_b64 else unquote_to_bytes(data)
        except (binascii.Error, ValueError):
            raise InvalidURLError("malformed data: URI (invalid base64)") from None
        if len(raw) > self.max_bytes:
            raise TooLargeError(f"data: URI image is {len(raw)} bytes, above SAFIRE_MAX_IMAGE_BYTES")
        return raw

    def _read_local(self, path: str) -> bytes:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFoundError(
                f"local file {os.path.relpath(path, self.local_root)!r} not found under "
                "LOCAL_FILES_DOCUMENT_ROOT (is the same folder mounted into the backend?)") from None
        except OSError as e:
            raise LocalFileError(f"cannot read local file: {e.strerror}") from None
        if not os.path.isfile(path):
            raise LocalFileError(f"local-files path {os.path.relpath(path, self.local_root)!r} is not a file")
        if st.st_size > self.max_bytes:
            raise TooLargeError(
                f"local file is {st.st_size / 2**20:.1f} MiB, above SAFIRE_MAX_IMAGE_BYTES "
                f"({self.max_bytes / 2**20:.1f} MiB)")
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as e:
            raise LocalFileError(f"cannot read local file: {e.strerror}") from None
        if len(data) > self.max_bytes:
            raise TooLargeError("local file grew above SAFIRE_MAX_IMAGE_BYTES while being read")
        return data

    # -- HTTP --------------------------------------------------------------------------------------
    def _auth_header(self, force_refresh: bool = False) -> Optional[str]:
        scheme = self.auth_scheme
        if scheme == "none":
            return None
        if scheme == "token":
            return f"Token {self._key}"
        if scheme == "bearer":
            return f"Bearer {self._key}"
        return f"Bearer {self._access_token(force_refresh)}"

    def _access_token(self, force: bool = False) -> str:
        with self._lock:
            if not force and self._access and time.time() < self._access_exp - 30:
                return self._access
            exp = (self._payload or {}).get("exp")
            if isinstance(exp, (int, float)) and exp < time.time():
                raise AuthError(
                    "LABEL_STUDIO_API_KEY is an expired personal access token: create a new one in Label "
                    "Studio (Account & Settings > Personal Access Token)")
            url = f"{self.base}/api/token/refresh/"
            try:
                r = self._session.post(url, json={"refresh": self._key}, timeout=(self.timeout, self.timeout),
                                       allow_redirects=False)
            except requests.Timeout:
                raise FetchTimeoutError(f"Label Studio did not answer the token refresh at {url} in time") from None
            except requests.RequestException as e:
                raise UnreachableError(self._unreachable_message(url, e)) from None
            if r.status_code in (401, 403):
                raise AuthError(
                    f"Label Studio refused LABEL_STUDIO_API_KEY at /api/token/refresh/ (HTTP {r.status_code}): "
                    "the personal access token is invalid, revoked or from another Label Studio")
            if r.status_code != 200:
                raise HTTPStatusError(f"token refresh at {url} answered HTTP {r.status_code}")
            try:
                access = r.json()["access"]
            except (ValueError, KeyError, TypeError):
                raise HTTPStatusError(f"token refresh at {url} did not return an access token") from None
            payload = jwt_payload(access) or {}
            exp_a = payload.get("exp")
            self._access = access
            self._access_exp = float(exp_a) if isinstance(exp_a, (int, float)) else time.time() + 240
            log.debug("refreshed the Label Studio access token")
            return access

    def _unreachable_message(self, url: str, err: Exception) -> str:
        text = str(err)
        why = ("connection refused" if "refused" in text.lower() else
               "name not resolved" if ("resolve" in text.lower() or "name or service" in text.lower()) else
               "TLS error" if isinstance(err, requests.exceptions.SSLError) else
               type(err).__name__)
        hint = ""
        if self._ls_netloc and urlparse(url).netloc.lower() == self._ls_netloc:
            hint = (": check LABEL_STUDIO_URL (Label Studio's address as seen from the backend; inside "
                    "docker, localhost is the backend's own container)")
        return f"cannot reach {display_url(url)} ({why}){hint}"

    def _http_get(self, url: str, auth: bool, presign: bool, original: str) -> bytes:
        deadline = time.monotonic() + 6 * self.timeout
        refreshed = False
        hops = 0
        presign_hop = presign  # the one hop that may leave Label Studio for a host not allowed by name
        while True:
            headers = {"User-Agent": "safire-ml-backend", "Accept": "image/*,*/*;q=0.8"}
            if auth:
                value = self._auth_header()
                if value:
                    headers["Authorization"] = value
            try:
                resp = self._session.get(url, headers=headers, stream=True, allow_redirects=False,
                                         timeout=(self.timeout, self.timeout))
            except AddressNotAllowed as e:
                raise HostNotAllowedError(f"{display_url(url)}: {e}") from None
            except requests.Timeout:
                raise FetchTimeoutError(
                    f"{display_url(url)} did not answer within {self.timeout:g} s (SAFIRE_FETCH_TIMEOUT)") from None
            except requests.exceptions.InvalidURL as e:
                raise InvalidURLError(f"malformed image URL {display_url(url)}: {e}") from None
            except requests.RequestException as e:
                raise UnreachableError(self._unreachable_message(url, e)) from None
            with resp:
                code = resp.status_code
                if code in _REDIRECTS and resp.headers.get("Location"):
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise HTTPStatusError(f"too many redirects fetching {display_url(original)}")
                    try:
                        nxt = urljoin(url, resp.headers["Location"])
                        np_ = urlsplit(nxt)
                    except ValueError:
                        raise HostNotAllowedError(f"{display_url(url)} redirected to a malformed URL: refused") from None
                    if np_.scheme not in ("http", "https") or not np_.netloc:
                        raise HostNotAllowedError(f"{display_url(url)} redirected to a non-http URL: refused")
                    if has_userinfo(np_.netloc):
                        raise HostNotAllowedError(
                            f"{display_url(url)} redirected to a URL with credentials (user:password@): refused")
                    netloc = np_.netloc.lower()
                    here_ls = bool(self._ls_netloc) and urlsplit(url).netloc.lower() == self._ls_netloc
                    same_ls = bool(self._ls_netloc) and netloc == self._ls_netloc
                    if same_ls or self._host_allowed(netloc):
                        pass
                    elif presign_hop and here_ls:
                        presign_hop = False  # Label Studio's presigned storage URL: followed once, without the key
                    else:
                        raise HostNotAllowedError(
                            f"{display_url(url)} redirected to {log_text(netloc)}, which is neither Label Studio nor "
                            "in SAFIRE_ALLOWED_HOSTS: refused")
                    auth = auth and same_ls  # never send the key to another host, nor after leaving Label Studio
                    url = nxt
                    continue
                if code == 401 and auth and self.auth_scheme == "refresh" and not refreshed:
                    refreshed = True
                    self._access_token(force=True)
                    continue
                if code in (401, 403):
                    raise AuthError(self._auth_message(code, url))
                if code == 404:
                    if "/data/local-files" in urlparse(url).path:
                        # Label Studio 1.23.2 answers 404 to a local file of a project without a Local
                        # Storage covering its folder, even with local-files serving enabled
                        raise NotFoundError(
                            f"{display_url(original)} not found (HTTP 404 from {display_url(url)}): Label Studio "
                            "serves /data/local-files/ only to projects with a Local Storage (Settings > Cloud "
                            "Storage > Add Source Storage > Local files) whose path contains the file; or set "
                            "LOCAL_FILES_SERVING_ENABLED and LOCAL_FILES_DOCUMENT_ROOT on the backend to read it "
                            "from disk")
                    raise NotFoundError(
                        f"{display_url(original)} not found (HTTP 404 from {display_url(url)}): was the file "
                        "deleted, or does LABEL_STUDIO_URL point to another Label Studio?")
                if code >= 400:
                    raise HTTPStatusError(f"{display_url(url)} answered HTTP {code}")
                if code != 200:
                    raise HTTPStatusError(f"{display_url(url)} answered HTTP {code} instead of the image")
                return self._read_body(resp, url, deadline)

    def _auth_message(self, code: int, url: str, what: str = "image download") -> str:
        if not self._ls_netloc or urlparse(url).netloc.lower() != self._ls_netloc:
            return f"{display_url(url)} refused access (HTTP {code})"
        scheme = self.auth_scheme
        if scheme == "none":
            fix = "LABEL_STUDIO_API_KEY is not set: set it to a Label Studio personal access token"
        elif scheme == "token":
            fix = ("LABEL_STUDIO_API_KEY is a legacy token: check it, and note that new Label Studio "
                   "organisations reject legacy tokens unless legacy API tokens are enabled; a personal "
                   "access token works everywhere")
        else:
            fix = "check LABEL_STUDIO_API_KEY (a personal access token of a user who can see this project)"
        return f"Label Studio refused the {what} {display_url(url)} (HTTP {code}): {fix}"

    def _read_body(self, resp: requests.Response, url: str, deadline: float) -> bytes:
        limit = self.max_bytes
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise TooLargeError(
                f"{display_url(url)} is {int(length) / 2**20:.1f} MiB, above SAFIRE_MAX_IMAGE_BYTES "
                f"({limit / 2**20:.1f} MiB)")
        buf = bytearray()
        try:
            for chunk in resp.iter_content(CHUNK):
                buf += chunk
                if len(buf) > limit:
                    raise TooLargeError(
                        f"{display_url(url)} is larger than SAFIRE_MAX_IMAGE_BYTES ({limit / 2**20:.1f} MiB): "
                        "download aborted")
                if time.monotonic() > deadline:
                    raise FetchTimeoutError(
                        f"downloading {display_url(url)} took longer than {6 * self.timeout:g} s "
                        "(6 x SAFIRE_FETCH_TIMEOUT)")
        except requests.Timeout:
            raise FetchTimeoutError(f"{display_url(url)} stalled for {self.timeout:g} s while sending the image") from None
        except requests.RequestException as e:
            if "timed out" in str(e).lower():
                raise FetchTimeoutError(
                    f"{display_url(url)} stalled for {self.timeout:g} s while sending the image") from None
            raise UnreachableError(f"download of {display_url(url)} broke off: {type(e).__name__}") from None
        if not buf:
            raise HTTPStatusError(f"{display_url(url)} returned an empty body")
        return bytes(buf)

