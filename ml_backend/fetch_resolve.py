"""Where a task's image URL is read from, decided before anything is read, and the two readers that
need no network.

:class:`URLResolver` is the resolution half of :class:`ml_backend.fetch.ImageFetcher` (a base class:
it reads the attributes ``ImageFetcher.__init__`` sets: ``base``, ``_ls_netloc``, ``_ls_origin``,
``_ls_prefix``, ``local_root``, ``allowed_hosts``, ``max_bytes``). ``resolve(url, task_id)`` gives a
:class:`Resolved` (``kind``: upload|local|cloud|http|data; ``target``: the URL or file path;
``auth``: send the key) or raises a :class:`ml_backend.fetch_errors.FetchError`; the rules (hosts,
task ids, Label Studio paths, credentials, local-files confinement) are in :mod:`ml_backend.fetch`'s
docstring. ``data:`` URIs and local files are read here too, within ``SAFIRE_MAX_IMAGE_BYTES``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, unquote_to_bytes, urlsplit

from .fetch_errors import (FetchConfigError, HostNotAllowedError, InvalidURLError, LocalFileError, NotFoundError,
                           TooLargeError, display_url, log_text)

CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob")
MAX_TASK_ID = 2**63 - 1


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


@dataclass(frozen=True)
class Resolved:
    """Where a task URL will be read from: kind is upload|local|cloud|http|data; target the URL/path."""

    kind: str
    target: str
    auth: bool = False


class URLResolver:
    """URL resolution and the local readers of :class:`ml_backend.fetch.ImageFetcher` (see the module
    docstring for the attributes it reads)."""

    base: str
    local_root: Any
    max_bytes: int
    allowed_hosts: tuple
    _ls_netloc: str
    _ls_origin: str
    _ls_prefix: str

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
