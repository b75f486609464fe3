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

from ml_backend.fetch import ImageFetcher, jwt_payload
from ml_backend.fetch_errors import (
    AuthError,
    FetchConfigError,
    FetchTimeoutError,
    HostNotAllowedError,
    HTTPStatusError,
    InvalidURLError,
    LocalFileError,
    NotFoundError,
    TooLargeError,
    UnreachableError,
    display_url,
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


# ------------------------------------------------------------------------------------------------
# the hardened download path (docs/security.md); tests/test_security.py attacks a running server
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ip, trusted, networks, allowed", [
    ("93.184.216.34", False, (), True),           # public
    ("2606:4700::1111", False, (), True),
    ("127.0.0.1", False, (), False),              # loopback
    ("127.0.0.1", True, (), True),                # ... of Label Studio's own host
    ("::1", False, (), False),
    ("::ffff:127.0.0.1", False, (), False),       # IPv4-mapped
    ("10.1.2.3", False, (), False),               # private
    ("10.1.2.3", True, (), True),
    ("10.1.2.3", False, ("10.0.0.0/8",), True),   # SAFIRE_ALLOWED_NETWORKS
    ("172.18.0.2", True, (), True),               # a compose network
    ("169.254.169.254", True, ("169.254.0.0/16",), False),  # metadata: always refused
    ("::ffff:169.254.169.254", True, (), False),
    ("fd00:ec2::254", True, ("fd00::/8",), False),
    ("100.100.100.200", False, ("100.64.0.0/10",), False),
    ("168.63.129.16", False, (), False),          # Azure WireServer, a public address
    ("169.254.10.1", True, (), False),            # link-local
    ("169.254.10.1", False, ("169.254.10.0/24",), True),
    ("100.64.0.1", False, (), False),             # shared address space
    ("0.0.0.0", True, (), False),                 # unspecified
    ("224.0.0.1", True, (), False),               # multicast
    ("240.0.0.1", True, (), False),               # reserved
])
def test_address_policy(ip, trusted, networks, allowed):
    import ipaddress

    from ml_backend.netguard import AddressPolicy, parse_networks

    policy = AddressPolicy(trusted_hosts=frozenset({"ls.internal"}), allowed_networks=parse_networks(networks))
    verdict = policy.verdict("ls.internal" if trusted else "images.example", ipaddress.ip_address(ip))
    assert (verdict == "") == allowed, verdict


def test_rebinding_name_is_refused_before_connecting(ls, monkeypatch):
    """A name allowed by SAFIRE_ALLOWED_HOSTS that resolves to loopback or to the metadata address:
    refused by the connection layer, and no socket is ever opened to it."""
    import ipaddress

    from ml_backend import netguard

    table = {"cdn.example": "127.0.0.1", "meta.example": "169.254.169.254", "mixed.example": "93.184.216.34"}
    real_resolve = netguard.resolve

    def resolve(host, port):
        if host == "mixed.example":  # one public and one private record: refused as a whole
            return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.1")]
        return [ipaddress.ip_address(table[host])] if host in table else real_resolve(host, port)

    connects = []
    real_connect = netguard.u3connection.create_connection

    def create_connection(address, *a, **kw):
        connects.append(address[0])
        return real_connect(address, *a, **kw)

    monkeypatch.setattr(netguard, "resolve", resolve)
    monkeypatch.setattr(netguard.u3connection, "create_connection", create_connection)
    f = fetcher_for(ls.url, SAFIRE_ALLOWED_HOSTS=f"cdn.example:{ls.server.port},meta.example,mixed.example")
    with pytest.raises(HostNotAllowedError, match="loopback address"):
        f.fetch(f"http://cdn.example:{ls.server.port}/data/upload/1/a.png")
    with pytest.raises(HostNotAllowedError, match="metadata address"):
        f.fetch("http://meta.example/latest/meta-data/")
    with pytest.raises(HostNotAllowedError, match="private address"):
        f.fetch("http://mixed.example/x.png")
    assert connects == []
    # Label Studio's own host may be loopback: that connection goes ahead
    assert f.fetch("/data/upload/1/a.png") == ls.files["/data/upload/1/a.png"]
    assert connects == ["127.0.0.1"]


def test_task_ids_must_be_integers():
    from ml_backend.fetch_resolve import task_id_int

    assert task_id_int(7) == 7 and task_id_int(" 12 ") == 12
    for bad in ("1/../../api/projects/1/export", "1?x", "-1", "0", 0, "1.0", 1.0, True, None, "", "١٢", 2**63):
        with pytest.raises(InvalidURLError):
            task_id_int(bad)
    f = fetcher_for("http://ls:8080")
    with pytest.raises(InvalidURLError, match="task id"):
        f.resolve("s3://bucket/a.png", "1/../../api/projects/1/export?exportType=JSON&")
    assert f.resolve("s3://bucket/a.png", "5").target.startswith("http://ls:8080/tasks/5/presign/?fileuri=")


@pytest.mark.parametrize("url, needle", [
    ("/data/upload/../../api/projects/1/export", "'..'"),
    ("/data/upload/%2e%2e/%2E%2E/api/projects/1/export", "'..'"),
    ("/data/upload/%252e%252e/x", "'..'"),
    ("/data/upload/..\\..\\api/projects", "'..'"),
    ("/data/./upload/1/a.png", "'..'"),
    ("/api/projects/1/export", "REST API"),
    ("api/projects/1", "REST API"),
    ("/API/projects/1", None),  # a different path on Label Studio (case matters): not the API
    ("//api/projects/1", "no scheme"),
    ("///api//projects/1", "no scheme"),
    ("/data//api/../api/x", "'..'"),
    ("http://ls:8080/api/projects/1/export", "REST API"),
    ("http://ls:8080/data/upload/..%2f..%2fapi/x", "'..'"),
    ("http://user:pw@ls:8080/data/upload/1/a.png", "credentials"),
    ("http://user@images.example/a.png", "credentials"),
])
def test_label_studio_paths_from_task_data_cannot_reach_its_api(url, needle):
    f = fetcher_for("http://ls:8080", SAFIRE_ALLOWED_HOSTS="images.example")
    if needle is None:
        assert f.resolve(url).kind == "upload"
        return
    with pytest.raises(InvalidURLError, match=needle):
        f.resolve(url)


def test_base_url_prefix_api_is_refused_too():
    f = fetcher_for("http://host/label-studio")
    with pytest.raises(InvalidURLError, match="REST API"):
        f.resolve("/label-studio/api/projects/1")
    assert f.resolve("/label-studio/data/upload/1/a.png").target == "http://host/label-studio/data/upload/1/a.png"


def test_presign_hop_leaves_label_studio_once_and_without_the_key(ls):
    f = fetcher_for(ls.url)
    ls.cloud["bucket/again.png"] = b"x"
    n = len(ls.log)
    assert f.fetch("s3://bucket/c.png", task_id=7) == ls.cloud["bucket/c.png"]
    assert [h for h in ls.log[n:] if h[0] == "cloud"] == [("cloud", "/bucket/c.png", None)]
    # a redirect off Label Studio from a *non*-presign URL is refused (as before)
    with pytest.raises(HostNotAllowedError, match="redirected"):
        f.fetch("/redirect-outside")


def test_credentials_in_label_studio_url_are_refused_and_not_echoed():
    from ml_backend.settings import SettingsError

    with pytest.raises(SettingsError) as e:
        Settings.from_env({"LABEL_STUDIO_URL": "http://admin:hunter2@ls:8080"})
    assert "credentials" in str(e.value) and "hunter2" not in str(e.value) and "admin" not in str(e.value)
    with pytest.raises(FetchConfigError, match="credentials"):
        ImageFetcher(type("S", (), {"label_studio_url": "http://a:b@ls:8080"})())
    with pytest.raises(SettingsError, match="credentials"):
        Settings.from_env({"SAFIRE_ALLOWED_HOSTS": "user:pw@cdn.example"})


def test_display_url_and_log_text_escape_control_characters():
    from ml_backend.fetch_errors import log_text

    assert "\n" not in display_url("/data/upload/1/a.png\nFAKE LINE")  # (urlsplit drops CR/LF/TAB)
    assert display_url("/data/upload/1/a\x00b\x85.png") == "/data/upload/1/a\\x00b\\x85.png"
    assert "\x1b" not in display_url("http://h/\x1b[2Jx.png")
    assert log_text("7\r\nFAKE") == "7\\r\\nFAKE" and log_text({"id": 1}) == "{'id': 1}"
    assert len(log_text("x" * 1000, 50)) == 50


def test_session_ignores_proxies_netrc_and_cookies(monkeypatch, tmp_path):
    from ml_backend.netguard import AddressPolicy, guarded_session

    seen = []
    app = Flask("cookie-jar")

    @app.get("/<name>")
    def page(name: str) -> Any:
        seen.append((request.headers.get("Cookie"), request.headers.get("Authorization")))
        resp = Response(b"ok")
        resp.set_cookie("sessionid", "abc")
        return resp

    server = _Server(app)
    try:
        netrc = tmp_path / ".netrc"
        netrc.write_text("machine 127.0.0.1 login me password secret\n")
        monkeypatch.setenv("NETRC", str(netrc))
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")  # would fail the request if used
        monkeypatch.setenv("NO_PROXY", "")
        s = guarded_session(AddressPolicy(trusted_hosts=frozenset({"127.0.0.1"})))
        assert s.trust_env is False
        for _ in range(2):
            assert s.get(server.url + "/a", timeout=5).text == "ok"
        assert seen == [(None, None), (None, None)]  # no cookie kept, no .netrc credentials
        assert len(s.cookies) == 0
    finally:
        server.close()


def test_api_get_follows_redirects_on_label_studio_only():
    app = Flask("fake-ls-api")
    seen = []

    @app.get("/api/projects/<int:pid>")
    def no_slash(pid: int) -> Any:
        seen.append((request.full_path, request.headers.get("Authorization")))
        return redirect(f"/api/projects/{pid}/?x=1", 301)  # Django's APPEND_SLASH

    @app.get("/api/projects/<int:pid>/")
    def project(pid: int) -> Any:
        seen.append((request.full_path, request.headers.get("Authorization")))
        return {"id": pid}

    @app.get("/api/away")
    def away() -> Any:
        return redirect("http://127.0.0.1:1/api/x", 302)

    server = _Server(app)
    try:
        f = fetcher_for(server.url)
        assert f.api_get("/api/projects/3") == {"id": 3}
        assert seen == [("/api/projects/3?", f"Token {LEGACY}"), ("/api/projects/3/?x=1", f"Token {LEGACY}")]
        with pytest.raises(HTTPStatusError, match="away from Label Studio"):
            f.api_get("/api/away")
        with pytest.raises(InvalidURLError):
            f.api_get("/data/upload/1/a.png")
    finally:
        server.close()
