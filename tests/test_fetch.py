"""ImageFetcher against a local fake Label Studio over HTTP (127.0.0.1, ephemeral ports).

``FakeLabelStudioMedia`` (also used by tests/test_app.py) serves uploads under /data/upload/...,
checks the Authorization header (legacy ``Token`` or the ``Bearer`` access token it issued), has
the PAT refresh endpoint and the presign endpoint, and a few misbehaving routes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
from flask import Flask, Response, redirect, request
from PIL import Image
from werkzeug.serving import make_server

from ml_backend.fetch import (
    AuthError,
    FetchConfigError,
    FetchTimeoutError,
    HostNotAllowedError,
    ImageFetcher,
    InvalidURLError,
    LocalFileError,
    NotFoundError,
    TooLargeError,
    UnreachableError,
    display_url,
    jwt_payload,
)
from ml_backend.settings import Settings

LEGACY = "0123456789abcdef0123456789abcdef01234567"


def make_jwt(payload: Dict[str, Any]) -> str:
    def seg(obj: Dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg(payload)}.c2lnbmF0dXJl"


PAT = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 86400, "user_id": 1})


def png_bytes(h: int = 48, w: int = 64, seed: int = 0, fmt: str = "PNG") -> bytes:
    img = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt)
    return buf.getvalue()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Server:
    def __init__(self, app: Flask) -> None:
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class FakeLabelStudioMedia:
    """Uploads, token refresh, presign, plus a second "cloud" host for presigned redirects."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.files: Dict[str, bytes] = {}
        self.cloud: Dict[str, bytes] = {}
        self.presign_mode = "redirect"  # or "proxy"
        self.log: List[Tuple[str, str, Optional[str]]] = []  # (host, path, Authorization)
        self.refreshes = 0
        self.access_tokens: set = set()
        self.slow_seconds = 2.0
        self.lock = threading.Lock()

        cloud = Flask("fake-cloud")

        @cloud.get("/<path:name>")
        def cloud_get(name: str) -> Any:
            self._record("cloud")
            data = self.cloud.get(name)
            return (data, 200, {"Content-Type": "image/png"}) if data else ("no", 404)

        self.cloud_server = _Server(cloud)

        app = Flask("fake-label-studio-media")
        p = prefix

        @app.get(p + "/data/upload/<path:name>")
        def upload(name: str) -> Any:
            self._record("ls")
            if not self.authorized():
                return {"detail": "Authentication credentials were not provided."}, 401
            data = self.files.get(f"/data/upload/{name}")
            if data is None:
                return {"detail": "Not found."}, 404
            return data, 200, {"Content-Type": "image/png"}

        @app.get(p + "/data/local-files/")
        def local_files() -> Any:
            self._record("ls")
            if not self.authorized():
                return {"detail": "no"}, 401
            data = self.files.get("local:" + request.args.get("d", ""))
            return (data, 200) if data is not None else ({"detail": "Not found."}, 404)

        @app.post(p + "/api/token/refresh/")
        def refresh() -> Any:
            self._record("ls")
            body = request.get_json(silent=True) or {}
            if body.get("refresh") != PAT:
                return {"detail": "Token is invalid or expired"}, 401
            with self.lock:
                self.refreshes += 1
                token = make_jwt({"token_type": "access", "exp": int(time.time()) + 300, "n": self.refreshes})
                self.access_tokens.add(token)
            return {"access": token}

        @app.get(p + "/tasks/<int:task_id>/presign/")
        def presign(task_id: int) -> Any:
            self._record("ls")
            if not self.authorized():
                return {"detail": "no"}, 401
            uri = base64.urlsafe_b64decode(request.args["fileuri"]).decode()
            name = uri.split("://", 1)[1]
            if self.presign_mode == "proxy":
                data = self.cloud.get(name)
                return (data, 200) if data else ("no", 404)
            return redirect(f"{self.cloud_server.url}/{name}?X-Amz-Signature=secret", 303)

        @app.get(p + "/redirect-inside")
        def redirect_inside() -> Any:
            self._record("ls")
            return redirect(p + "/data/upload/1/a.png", 302)

        @app.get(p + "/redirect-outside")
        def redirect_outside() -> Any:
            self._record("ls")
            return redirect(f"{self.cloud_server.url}/bucket/a.png", 302)

        @app.get(p + "/big-declared")
        def big_declared() -> Any:
            self._record("ls")
            return Response(iter([b"x" * 10]), headers={"Content-Length": str(10**9)}, direct_passthrough=True)

        @app.get(p + "/big-streamed")
        def big_streamed() -> Any:
            self._record("ls")

            def gen():
                for _ in range(64):
                    yield b"\0" * 4096

            return Response(gen(), mimetype="image/png")

        @app.get(p + "/slow")
        def slow() -> Any:
            self._record("ls")
            time.sleep(self.slow_seconds)
            return b"late"

        self.server = _Server(app)
        self.url = self.server.url + prefix

    def _record(self, host: str) -> None:
        with self.lock:
            self.log.append((host, request.path, request.headers.get("Authorization")))

    def authorized(self) -> bool:
        auth = request.headers.get("Authorization", "")
        if auth == f"Token {LEGACY}":
            return True
        return auth.startswith("Bearer ") and auth[7:] in self.access_tokens

    def close(self) -> None:
        self.server.close()
        self.cloud_server.close()


@pytest.fixture(scope="module")
def ls():
    server = FakeLabelStudioMedia()
    server.files["/data/upload/1/a.png"] = png_bytes()
    server.files["/data/upload/1/big.png"] = png_bytes(200, 200)
    server.cloud["bucket/c.png"] = png_bytes(seed=3)
    yield server
    server.close()


def fetcher_for(url: str, key: str = LEGACY, **env: str) -> ImageFetcher:
    base = {"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": key, "SAFIRE_FETCH_TIMEOUT": "2"}
    base.update(env)
    return ImageFetcher(Settings.from_env(base))


# ------------------------------------------------------------------------------------------------


def test_upload_with_legacy_token(ls):
    f = fetcher_for(ls.url)
    assert f.auth_scheme == "token"
    assert f.fetch("/data/upload/1/a.png", 1) == ls.files["/data/upload/1/a.png"]
    assert ls.log[-1] == ("ls", "/data/upload/1/a.png", f"Token {LEGACY}")


def test_personal_access_token_is_refreshed_once_and_sent_as_bearer(ls):
    f = fetcher_for(ls.url, key=PAT)
    assert f.auth_scheme == "refresh"
    before = ls.refreshes
    for _ in range(3):
        assert f.fetch("/data/upload/1/a.png") == ls.files["/data/upload/1/a.png"]
    assert ls.refreshes == before + 1
    auth = ls.log[-1][2]
    assert auth.startswith("Bearer ") and jwt_payload(auth[7:])["token_type"] == "access"


def test_revoked_access_token_is_refreshed_on_401(ls):
    f = fetcher_for(ls.url, key=PAT)
    f.fetch("/data/upload/1/a.png")
    ls.access_tokens.clear()  # server forgets the access token: next call gets 401, refreshes, retries
    before = ls.refreshes
    assert f.fetch("/data/upload/1/a.png") == ls.files["/data/upload/1/a.png"]
    assert ls.refreshes == before + 1


def test_expired_or_wrong_pat_gives_clear_error(ls):
    expired = make_jwt({"token_type": "refresh", "exp": int(time.time()) - 10})
    with pytest.raises(AuthError, match="expired personal access token"):
        fetcher_for(ls.url, key=expired).fetch("/data/upload/1/a.png")
    wrong = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 100, "x": 1})
    with pytest.raises(AuthError, match="LABEL_STUDIO_API_KEY"):
        fetcher_for(ls.url, key=wrong).fetch("/data/upload/1/a.png")


def test_401_mentions_api_key_and_never_leaks_it(ls):
    f = fetcher_for(ls.url, key="wrong-legacy-key")
    with pytest.raises(AuthError) as e:
        f.fetch("/data/upload/1/a.png")
    assert "LABEL_STUDIO_API_KEY" in str(e.value) and "legacy" in str(e.value)
    assert "wrong-legacy-key" not in str(e.value)
    with pytest.raises(AuthError, match="not set"):
        fetcher_for(ls.url, key="").fetch("/data/upload/1/a.png")


def test_404(ls):
    with pytest.raises(NotFoundError, match="404"):
        fetcher_for(ls.url).fetch("/data/upload/1/missing.png")


def test_unreachable_host_names_label_studio_url():
    f = fetcher_for(f"http://127.0.0.1:{closed_port()}")
    t0 = time.monotonic()
    with pytest.raises(UnreachableError, match="LABEL_STUDIO_URL"):
        f.fetch("/data/upload/1/a.png")
    assert time.monotonic() - t0 < 5


def test_relative_url_needs_label_studio_url():
    with pytest.raises(FetchConfigError, match="LABEL_STUDIO_URL is not set"):
        ImageFetcher(Settings.from_env({})).fetch("/data/upload/1/a.png")


def test_disallowed_and_allowed_hosts(ls):
    f = fetcher_for(ls.url)
    cloud_url = f"{ls.cloud_server.url}/bucket/c.png"
    with pytest.raises(HostNotAllowedError, match="SAFIRE_ALLOWED_HOSTS"):
        f.fetch("http://images.example.invalid/x.png")
    with pytest.raises(HostNotAllowedError):
        f.fetch(cloud_url)
    allowed = fetcher_for(ls.url, SAFIRE_ALLOWED_HOSTS=f"other.example, 127.0.0.1:{ls.cloud_server.port}")
    assert allowed.fetch(cloud_url) == ls.cloud["bucket/c.png"]
    assert ls.log[-1] == ("cloud", "/bucket/c.png", None)  # the key never goes to another host
    # absolute URL on the Label Studio host itself: key sent
    assert f.fetch(f"{ls.url}/data/upload/1/a.png") == ls.files["/data/upload/1/a.png"]


def test_redirects_stay_on_allowed_hosts(ls):
    f = fetcher_for(ls.url)
    assert f.fetch("/redirect-inside") == ls.files["/data/upload/1/a.png"]
    with pytest.raises(HostNotAllowedError, match="redirected"):
        f.fetch("/redirect-outside")


def test_cloud_uri_through_presign(ls):
    f = fetcher_for(ls.url)
    with pytest.raises(FetchConfigError, match="task id"):
        f.fetch("s3://bucket/c.png")
    n = len(ls.log)
    assert f.fetch("s3://bucket/c.png", task_id=7) == ls.cloud["bucket/c.png"]
    hits = ls.log[n:]
    presign = [h for h in hits if h[1].startswith("/tasks/7/presign")]
    assert presign and presign[0][2] == f"Token {LEGACY}"
    assert ("cloud", "/bucket/c.png", None) in hits  # presigned redirect followed without the key
    resolved = f.resolve("gs://bucket/c.png", 9)
    assert resolved.kind == "cloud"
    assert resolved.target.endswith("fileuri=" + base64.urlsafe_b64encode(b"gs://bucket/c.png").decode())
    ls.presign_mode = "proxy"
    try:
        assert f.fetch("azure-blob://bucket/c.png", task_id=7) == ls.cloud["bucket/c.png"]
    finally:
        ls.presign_mode = "redirect"


def test_byte_limit_enforced_while_streaming(ls):
    f = fetcher_for(ls.url, SAFIRE_MAX_IMAGE_BYTES="65536")
    with pytest.raises(TooLargeError, match="SAFIRE_MAX_IMAGE_BYTES"):
        f.fetch("/big-declared")
    with pytest.raises(TooLargeError, match="aborted"):
        f.fetch("/big-streamed")
    small = fetcher_for(ls.url, SAFIRE_MAX_IMAGE_BYTES="2048")
    with pytest.raises(TooLargeError):
        small.fetch("/data/upload/1/big.png")


def test_timeout(ls):
    f = fetcher_for(ls.url, SAFIRE_FETCH_TIMEOUT="0.3")
    ls.slow_seconds = 1.0
    t0 = time.monotonic()
    with pytest.raises(FetchTimeoutError, match="SAFIRE_FETCH_TIMEOUT"):
        f.fetch("/slow")
    assert time.monotonic() - t0 < 1.0


def test_data_uris():
    f = ImageFetcher(Settings.from_env({"SAFIRE_MAX_IMAGE_BYTES": "4096"}))
    data = png_bytes(8, 8)
    assert f.fetch("data:image/png;base64," + base64.b64encode(data).decode()) == data
    with pytest.raises(InvalidURLError, match="base64"):
        f.fetch("data:image/png;base64,@@@@")
    with pytest.raises(TooLargeError):
        f.fetch("data:image/png;base64," + base64.b64encode(b"\0" * 8000).decode())


def test_unsupported_scheme_and_empty_url():
    f = ImageFetcher(Settings.from_env({"LABEL_STUDIO_URL": "http://ls:8080"}))
    with pytest.raises(InvalidURLError, match="scheme"):
        f.fetch("file:///etc/passwd")
    with pytest.raises(InvalidURLError):
        f.fetch("")


@pytest.fixture
def local_root(tmp_path):
    root = tmp_path / "files"
    (root / "set1").mkdir(parents=True)
    (root / "set1" / "img.png").write_bytes(png_bytes(seed=5))
    (tmp_path / "secret.png").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.png", root / "set1" / "escape.png")
    os.symlink(root / "set1" / "img.png", root / "inside-link.png")
    return root


def test_local_files_read_from_disk_and_confined(local_root):
    f = ImageFetcher(Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": str(local_root),
                                        "LOCAL_FILES_SERVING_ENABLED": "true"}))
    data = (local_root / "set1" / "img.png").read_bytes()
    assert f.fetch("/data/local-files/?d=set1/img.png") == data
    assert f.fetch("/data/local-files/?d=set1%2Fimg.png") == data
    assert f.fetch("/data/local-files/?d=/set1/img.png") == data  # leading "/" is relative to the root
    assert f.fetch("/data/local-files/?d=inside-link.png") == data  # a symlink staying inside is fine
    with pytest.raises(LocalFileError, match=r"\.\."):
        f.fetch("/data/local-files/?d=../secret.png")
    with pytest.raises(LocalFileError, match=r"\.\."):
        f.fetch("/data/local-files/?d=set1/../../secret.png")
    with pytest.raises(LocalFileError, match="outside"):
        f.fetch("/data/local-files/?d=set1/escape.png")
    with pytest.raises(NotFoundError):
        f.fetch("/data/local-files/?d=etc/passwd")
    with pytest.raises(InvalidURLError, match="d=<path>"):
        f.fetch("/data/local-files/")


def test_local_files_without_root_are_downloaded_from_label_studio(ls):
    ls.files["local:set1/img.png"] = b"from-ls"
    f = fetcher_for(ls.url)
    assert f.resolve("/data/local-files/?d=set1/img.png").kind == "upload"
    assert f.fetch("/data/local-files/?d=set1/img.png") == b"from-ls"


def test_local_file_404_explains_the_local_storage_label_studio_needs(ls):
    # Label Studio 1.23.2 answers 404 to /data/local-files/ unless the project has a Local Storage
    # covering the file's folder (found by tests/e2e): the error must say so, not "was it deleted?"
    with pytest.raises(NotFoundError, match="Local Storage") as e:
        fetcher_for(ls.url).fetch("/data/local-files/?d=nowhere/img.png")
    assert "LOCAL_FILES_DOCUMENT_ROOT" in str(e.value)
    with pytest.raises(NotFoundError) as e:
        fetcher_for(ls.url).fetch("/data/upload/1/missing.png")
    assert "Local Storage" not in str(e.value)


def test_base_url_with_path_prefix_is_not_doubled():
    server = FakeLabelStudioMedia(prefix="/label-studio")
    try:
        server.files["/data/upload/2/b.png"] = b"png!"
        f = fetcher_for(server.url)
        assert f.fetch("/data/upload/2/b.png") == b"png!"
        assert f.fetch("/label-studio/data/upload/2/b.png") == b"png!"
    finally:
        server.close()


def test_display_url_hides_queries_and_userinfo():
    assert display_url("https://u:p@s3.example/b/k.png?X-Amz-Signature=abc") == "https://s3.example/b/k.png?..."
    assert display_url("/data/local-files/?d=a/b.png") == "/data/local-files/?d=a/b.png"
    assert display_url("data:image/png;base64,AAAA").startswith("data: URI")


def test_jwt_detection():
    assert jwt_payload(PAT)["token_type"] == "refresh"
    assert jwt_payload(LEGACY) is None
    assert jwt_payload("a.b.c") is None
