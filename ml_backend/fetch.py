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

This module holds :class:`ImageFetcher`'s downloads (HTTP, redirects, authentication, Label Studio's
REST API); the URL resolution and the ``data:``/local-file readers are its base class
:class:`ml_backend.fetch_resolve.URLResolver`, the errors and the log-safe text helpers are in
:mod:`ml_backend.fetch_errors`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from typing import Any, Dict, Optional
from urllib.parse import urljoin, urlparse, urlsplit

import requests

# errors and log-safe text: fetch_errors; URL resolution and the local readers: fetch_resolve. The
# names below stay importable from ml_backend.fetch (callers import them from here).
from .fetch_errors import (  # noqa: F401 - re-exported
    AuthError,
    FetchConfigError,
    FetchError,
    FetchTimeoutError,
    HostNotAllowedError,
    HTTPStatusError,
    InvalidURLError,
    LocalFileError,
    NotFoundError,
    TooLargeError,
    UnreachableError,
    display_url,
    log_text,
)
from .fetch_resolve import CLOUD_SCHEMES, URLResolver, has_userinfo, task_id_int  # noqa: F401 - re-exported
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

MAX_REDIRECTS = 5
CHUNK = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)


# ------------------------------------------------------------------------------------------------
# API keys: JWT payloads
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# the fetcher
# ------------------------------------------------------------------------------------------------


class ImageFetcher(URLResolver):
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

