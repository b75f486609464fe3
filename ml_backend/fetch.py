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

Limits: ``SAFIRE_MAX_IMAGE_BYTES`` is enforced while streaming (the download aborts as soon as it is
exceeded, and at once when ``Content-Length`` announces more), ``SAFIRE_FETCH_TIMEOUT`` bounds the
connection and every wait for data (and 6x that the whole download), at most 5 redirects are followed
and only to allowed hosts (presign redirects excepted, as above). Every failure raises a subclass of
:class:`FetchError` whose message says what to fix; URLs in messages have their query strings removed
(presigned URLs carry signatures) except the ``d=`` of local files.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple
from urllib.parse import parse_qs, unquote_to_bytes, urljoin, urlparse, urlsplit

import requests

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
]

CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob")
MAX_REDIRECTS = 5
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
    """Any other unexpected HTTP status."""

    reason = "http_status"


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def display_url(url: str, limit: int = 160) -> str:
    """A URL safe for logs and messages: no query string (except local-files ``d=``), no userinfo."""
    if not isinstance(url, str):
        return repr(url)[:limit]
    if url[:5].lower() == "data:":
        return f"data: URI ({len(url)} characters)"
    try:
        p = urlsplit(url)
    except ValueError:
        return url[:limit]
    netloc = p.netloc.rsplit("@", 1)[-1]
    shown = f"{p.scheme}://{netloc}{p.path}" if p.scheme else p.path
    if p.query:
        d = parse_qs(p.query).get("d")
        shown += f"?d={d[0]}" if d and "local-files" in p.path else "?..."
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


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
            local_files_serving_enabled, fetch_timeout, max_image_bytes).
        session: a ``requests.Session`` to use (default: a new one).
    """

    def __init__(self, settings: Any, session: Optional[requests.Session] = None) -> None:
        self.base = (getattr(settings, "label_studio_url", "") or "").rstrip("/")
        self._key = getattr(settings, "label_studio_api_key", "") or ""
        self.timeout = float(getattr(settings, "fetch_timeout", 10.0))
        self.max_bytes = int(getattr(settings, "max_image_bytes", 50 * 2**20))
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
            sess = self._local.session = requests.Session()
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
            self._need_base(url)
            enc = base64.urlsafe_b64encode(url.encode()).decode()
            return Resolved("cloud", f"{self.base}/tasks/{task_id}/presign/?fileuri={enc}", auth=True)
        if scheme in ("http", "https"):
            if not p.netloc:
                raise InvalidURLError(f"image URL {display_url(url)} has no host")
            netloc = p.netloc.lower().rsplit("@", 1)[-1]
            if self._ls_netloc and netloc == self._ls_netloc:
                if self.local_root and p.path.startswith("/data/local-files"):
                    return Resolved("local", self._local_path(p.query, url))
                return Resolved("upload", url, auth=True)
            if self._host_allowed(netloc):
                return Resolved("http", url)
            raise HostNotAllowedError(
                f"image host {netloc!r} of {display_url(url)} is not allowed: images are downloaded only "
                f"from Label Studio ({self._ls_netloc or 'LABEL_STUDIO_URL is not set'}) and hosts listed "
                "in SAFIRE_ALLOWED_HOSTS")
        if scheme:
            raise InvalidURLError(
                f"unsupported URL scheme {scheme!r} in {display_url(url)}: use http(s), data:, "
                "Label Studio uploads/local files or s3/gs/azure-blob storage")
        # relative: a Label Studio media path
        path = url if url.startswith("/") else "/" + url
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

    # -- resolution helpers ----------------------------------------------------------------------
    def _need_base(self, url: str) -> None:
        if not self.base:
            raise FetchConfigError(
                f"image URL {display_url(url)} is served by Label Studio, but LABEL_STUDIO_URL is not set: "
                "set it to Label Studio's address as seen from the backend (not localhost inside docker) "
                "and LABEL_STUDIO_API_KEY to an access token")

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
        while True:
            headers = {"User-Agent": "safire-ml-backend", "Accept": "image/*,*/*;q=0.8"}
            if auth:
                value = self._auth_header()
                if value:
                    headers["Authorization"] = value
            try:
                resp = self._session.get(url, headers=headers, stream=True, allow_redirects=False,
                                         timeout=(self.timeout, self.timeout))
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
                    nxt = urljoin(url, resp.headers["Location"])
                    np_ = urlparse(nxt)
                    if np_.scheme not in ("http", "https") or not np_.netloc:
                        raise HostNotAllowedError(f"{display_url(url)} redirected to a non-http URL: refused")
                    netloc = np_.netloc.lower().rsplit("@", 1)[-1]
                    same_ls = bool(self._ls_netloc) and netloc == self._ls_netloc
                    if not (same_ls or self._host_allowed(netloc) or presign):
                        raise HostNotAllowedError(
                            f"{display_url(url)} redirected to {netloc!r}, which is neither Label Studio nor in "
                            "SAFIRE_ALLOWED_HOSTS: refused")
                    auth = auth and same_ls  # never send the key to another host
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

    def _auth_message(self, code: int, url: str) -> str:
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
        return f"Label Studio refused the image download {display_url(url)} (HTTP {code}): {fix}"

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


def fetch_and_decode(fetcher: ImageFetcher, url: str, task_id: Any, max_pixels: int) -> Tuple[bytes, Any]:
    """Convenience: fetch and decode to HxWx3 uint8 (raises FetchError or safire.io.ImageLoadError)."""
    from safire.io import load_image

    data = fetcher.fetch(url, task_id)
    return data, load_image(data, max_pixels=max_pixels, name=display_url(url))
