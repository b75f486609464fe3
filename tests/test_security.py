"""Attacks on a running backend (docs/security.md), all on loopback.

A real ``safire serve`` process (``tests/security_server.py``: the Flask server of ``--dev``, basic
auth on, a random-weights ``tiny`` model) is attacked through HTTP, next to a fake Label Studio, a
fake storage bucket and a fake "metadata" server (every hit on it is a successful SSRF). Names like
``rebind.test`` resolve through a hosts table inside the server process, and any connection attempt
to a link-local or metadata address trips a wire there (nothing ever connects to 169.254.169.254).
Each attack must fail with a clear error and leave serving intact. The server's peak RSS is read
from ``/proc/<pid>/status`` (VmHWM, reset through ``/proc/<pid>/clear_refs`` before each case).

The last part checks the same protections in process with Flask's test client (cheap cases).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
import requests
from flask import Flask, Response, jsonify, redirect, request
from PIL import Image

from test_fetch import LEGACY, _Server, png_bytes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
USER, PASSWORD = "labelstudio", "s3cret-for-tests"
AUTH = (USER, PASSWORD)
MARK = "FAKE-LOG-LINE"
MB = 2**20

# documented bounds (docs/security.md, "Memory"): a request's peak RSS above the idle server
# process is at most PER_PIXEL_BYTES per image pixel plus SLACK_MB (the partition's per-source maps,
# ml_backend.runtime.PARTITION_MAP_BYTES, and the rest); for a 40 MP image that is under 1 GiB.
BOUND_40MP_MB = 1024
PER_PIXEL_BYTES = 16
SLACK_MB = 320


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sources_config(k: int, sources: Any, grid: int = 8) -> str:
    labels = "".join(f'<Label value="Source {i + 1}{" (host)" if i == 0 else ""}"/>' for i in range(k))
    return (f'<View><Image name="image" value="$image"/><BrushLabels name="source" toName="image" '
            f'safire_sources="{sources}" safire_grid="{grid}">{labels}</BrushLabels></View>')


BINARY = open(os.path.join(ROOT, "label_config", "binary.xml")).read()


# ------------------------------------------------------------------------------------------------
# the fake servers
# ------------------------------------------------------------------------------------------------


class Hits:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: List[Tuple[str, str, Optional[str]]] = []  # (path, query, Authorization)

    def add(self) -> None:
        with self.lock:
            self.items.append((request.path, request.query_string.decode(), request.headers.get("Authorization")))

    def paths(self) -> List[str]:
        with self.lock:
            return [p for p, _, _ in self.items]

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


class Stage:
    """Fake Label Studio, storage bucket and metadata server on 127.0.0.1."""

    def __init__(self) -> None:
        self.image = png_bytes(96, 128, seed=7)
        self.meta_hits, self.cloud_hits, self.ls_hits = Hits(), Hits(), Hits()
        self.big: Dict[str, bytes] = {}

        meta = Flask("fake-metadata")

        @meta.route("/", defaults={"path": ""})
        @meta.route("/<path:path>")
        def meta_any(path: str) -> Any:
            self.meta_hits.add()
            return self.image, 200, {"Content-Type": "image/png"}  # an SSRF that succeeds would "work"

        self.meta = _Server(meta)

        cloud = Flask("fake-bucket")

        @cloud.get("/bucket/<name>")
        def bucket(name: str) -> Any:
            self.cloud_hits.add()
            if name == "chain.png":  # a second hop off Label Studio: to the metadata server
                return redirect(f"{self.meta.url}/latest/meta-data/iam", 302)
            return self.image, 200, {"Content-Type": "image/png"}

        self.cloud = _Server(cloud)

        ls = Flask("fake-label-studio")

        def authorized() -> bool:
            return request.headers.get("Authorization") == f"Token {LEGACY}"

        @ls.get("/data/upload/<path:name>")
        def upload(name: str) -> Any:
            self.ls_hits.add()
            if not authorized():
                return jsonify(detail="Authentication credentials were not provided."), 401
            targets = {
                "redirect-meta.png": f"{self.meta.url}/latest/meta-data/iam",
                "redirect-imds.png": "http://169.254.169.254/latest/meta-data/",
                "redirect-rebind.png": f"http://rebind.test:{self.meta.port}/x.png",
                "redirect-creds.png": f"http://admin:pw@127.0.0.1:{self.ls.port}/data/upload/1/a.png",
            }
            if name.split("/")[-1] in targets:
                return redirect(targets[name.split("/")[-1]], 302)
            if name in self.big:
                return Response(self.big[name], mimetype="image/png")
            return self.image, 200, {"Content-Type": "image/png"}

        @ls.get("/tasks/<path:tid>/presign/")
        def presign(tid: str) -> Any:
            self.ls_hits.add()
            if not authorized():
                return jsonify(detail="no"), 401
            uri = base64.urlsafe_b64decode(request.args["fileuri"]).decode()
            name = uri.split("/")[-1]
            if name == "imds.png":
                return redirect("http://169.254.169.254/latest/meta-data/", 303)
            if name == "rebind.png":
                return redirect(f"http://rebind.test:{self.meta.port}/x.png", 303)
            return redirect(f"{self.cloud.url}/bucket/{name}?X-Amz-Signature=secret", 303)

        @ls.route("/api/<path:rest>", methods=["GET", "POST"])
        def api(rest: str) -> Any:
            self.ls_hits.add()
            if not authorized():
                return jsonify(detail="no"), 401
            if rest.endswith("/export"):
                return jsonify([])  # a retraining job's export: nothing to train on
            return jsonify({"secret": "an authenticated API answer"})

        self.ls = _Server(ls)

    def close(self) -> None:
        for s in (self.ls, self.cloud, self.meta):
            s.close()


# ------------------------------------------------------------------------------------------------
# the backend process
# ------------------------------------------------------------------------------------------------


class Backend:
    def __init__(self, stage: Stage, workdir: str, checkpoint: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = os.path.join(workdir, "backend.stderr")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LABEL_STUDIO_", "SAFIRE_", "BASIC_AUTH_", "ML_SERVER_", "LOCAL_FILES_"))
               and k not in ("HOST", "PORT", "MODEL_DIR", "WORKERS", "THREADS", "LOG_LEVEL")}
        env.update({
            "PYTHONPATH": ROOT, "HOST": "127.0.0.1", "PORT": str(self.port), "MODEL_DIR": os.path.join(workdir, "models"),
            "LABEL_STUDIO_URL": stage.ls.url, "LABEL_STUDIO_API_KEY": LEGACY,
            "BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD,
            "SAFIRE_CHECKPOINT": checkpoint, "SAFIRE_THREADS": "1", "SAFIRE_COMPUTE_SLOTS": "1",
            "SAFIRE_CACHE_MB": "32", "SAFIRE_MAX_SOURCES": "16", "SAFIRE_MAX_JOBS": "1", "SAFIRE_FETCH_TIMEOUT": "5",
            "SAFIRE_TRAIN_STEPS": "1", "SAFIRE_TRAIN_THREADS": "1", "LOG_LEVEL": "INFO", "OMP_NUM_THREADS": "1",
            # names the administrator "allowed"; the hosts table below makes them resolve to
            # loopback and to the metadata address (DNS rebinding)
            "SAFIRE_ALLOWED_HOSTS": f"rebind.test:{stage.meta.port},meta.test",
            "SAFIRE_TEST_RESOLVE": json.dumps({"rebind.test": ["127.0.0.1"], "meta.test": ["169.254.169.254"]}),
        })
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "security_server.py"), "--dev"],
                                     env=env, cwd=ROOT, stdout=self._err, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("backend did not start:\n" + self.log()[-3000:])
            time.sleep(0.3)

    # -- HTTP
    def post(self, path: str, body: Any, auth: bool = True, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, auth=AUTH if auth else None, timeout=300, **kw)

    def get(self, path: str, auth: bool = True, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, auth=AUTH if auth else None, timeout=60, **kw)

    def predict(self, tasks: List[Dict[str, Any]], config: str = BINARY, project: str = "1.1795310459") -> List[Dict[str, Any]]:
        r = self.post("/predict", {"tasks": tasks, "project": project, "label_config": config,
                                   "params": {"login": None, "password": None, "context": None}})
        assert r.status_code == 200, r.text
        return r.json()["results"]

    # -- process
    def log(self) -> str:
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def status(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        assert m, field
        return int(m.group(1)) * 1024

    def reset_peak(self) -> None:
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._err.close()


@pytest.fixture(scope="module")
def stage():
    s = Stage()
    yield s
    s.close()


@pytest.fixture(scope="module")
def backend(stage, tmp_path_factory):
    import torch

    from safire.build import build_safire
    from safire.checkpoint import save_checkpoint

    work = tmp_path_factory.mktemp("security")
    torch.manual_seed(0)
    model = build_safire("tiny", use_default=False)  # the architecture of the embedded tiny model
    ckpt = str(work / "tiny.pt")
    save_checkpoint(model, ckpt, variant="tiny", config=model.config, model_version="tiny-security-test")
    b = Backend(stage, str(work), ckpt)
    yield b
    b.close()


_intact = iter(range(10**6))


def assert_intact(backend: Backend, stage: Stage) -> None:
    """Serving still works after an attack: health, and a real prediction of a new upload (fetched
    from Label Studio with the key, decoded, encoded, partitioned)."""
    assert requests.get(backend.url + "/health", timeout=10).json()["status"] == "UP"
    (res,) = backend.predict([{"id": 1, "data": {"image": f"/data/upload/1/intact-{next(_intact)}.png"}}],
                             config=sources_config(2, 2, grid=4))
    assert "error" not in res and res["model_version"] == "tiny-security-test", res
    assert backend.proc.poll() is None


def refused(res: Dict[str, Any], *needles: str) -> None:
    assert res["result"] == [] and res["score"] == 0, res
    assert any(n in res["error"] for n in needles), res["error"]


# ------------------------------------------------------------------------------------------------
# SSRF
# ------------------------------------------------------------------------------------------------


def test_direct_ssrf_is_refused_before_any_connection(backend, stage):
    stage.meta_hits.clear()
    cases = [
        (f"http://127.0.0.1:{stage.meta.port}/latest/meta-data/iam", "not allowed"),
        ("http://169.254.169.254/latest/meta-data/", "not allowed"),
        ("http://[::ffff:169.254.169.254]/latest/meta-data/", "not allowed"),
        ("http://localhost:%d/x.png" % stage.meta.port, "not allowed"),
        # names the administrator allowed, resolving to loopback / to the metadata address
        (f"http://rebind.test:{stage.meta.port}/x.png", "loopback address"),
        ("http://meta.test/latest/meta-data/", "metadata address"),
    ]
    results = backend.predict([{"id": 10 + i, "data": {"image": u}} for i, (u, _) in enumerate(cases)])
    for res, (_, needle) in zip(results, cases):
        refused(res, needle)
    assert stage.meta_hits.paths() == []
    assert "SECURITY-TEST: connect attempted" not in backend.log()
    assert_intact(backend, stage)


def test_redirected_ssrf_is_refused_at_every_hop(backend, stage):
    stage.meta_hits.clear()
    stage.ls_hits.clear()
    names = ["redirect-meta.png", "redirect-imds.png", "redirect-rebind.png"]
    results = backend.predict([{"id": 20 + i, "data": {"image": f"/data/upload/1/{n}"}} for i, n in enumerate(names)])
    refused(results[0], "redirected")
    refused(results[1], "redirected")
    refused(results[2], "loopback address")  # an allowed name, re-resolved to 127.0.0.1
    # Label Studio was asked (with the key), the redirect targets never were
    assert {p for p in stage.ls_hits.paths()} == {f"/data/upload/1/{n}" for n in names}
    assert stage.meta_hits.paths() == []
    assert "SECURITY-TEST: connect attempted" not in backend.log()
    assert_intact(backend, stage)


def test_presign_hop_may_leave_label_studio_once_and_only_to_allowed_addresses(backend, stage):
    stage.meta_hits.clear()
    stage.cloud_hits.clear()
    tasks = [{"id": 31, "data": {"image": "s3://bucket/ok.png"}},       # the legitimate case
             {"id": 32, "data": {"image": "s3://bucket/chain.png"}},    # storage redirects again
             {"id": 33, "data": {"image": "s3://bucket/imds.png"}},     # presigned to the metadata address
             {"id": 34, "data": {"image": "s3://bucket/rebind.png"}}]   # presigned to a name on loopback
    ok, chain, imds, rebind = backend.predict(tasks, config=sources_config(2, 2, grid=4))
    assert "error" not in ok, ok
    assert [p for p in stage.cloud_hits.paths()] == ["/bucket/ok.png", "/bucket/chain.png"]
    refused(chain, "redirected")
    refused(imds, "metadata address")
    refused(rebind, "loopback address")
    assert stage.meta_hits.paths() == []
    # the bucket never saw the API key
    assert all(auth is None for _, _, auth in stage.cloud_hits.items)
    assert "SECURITY-TEST: connect attempted" not in backend.log()


def test_task_id_and_path_injection_never_reach_label_studio_api(backend, stage):
    stage.ls_hits.clear()
    evil_ids = ["1/../../api/projects/1/export?exportType=JSON&", "1?x=", "-1", "1.5", "", True, {"id": 1}, "１"]
    tasks = [{"id": tid, "data": {"image": "s3://bucket/inject.png"}} for tid in evil_ids]
    for res in backend.predict(tasks, config=sources_config(2, 2, grid=4)):
        refused(res, "task id", "needs the task id")
    paths = ["/data/upload/../../api/projects/1/export", "/data/upload/%2e%2e/%2e%2e/api/projects/1/export",
             "/api/projects/1/export", "//api/projects/1", f"{stage.ls.url}/api/projects/1/export",
             f"{stage.ls.url}/data/upload/..%2f..%2fapi/projects/1"]
    for res in backend.predict([{"id": 40 + i, "data": {"image": p}} for i, p in enumerate(paths)]):
        refused(res, "'..' segments", "REST API", "no scheme")
    assert stage.ls_hits.paths() == []  # not a single request reached Label Studio
    assert_intact(backend, stage)


def test_credentials_in_urls_are_refused_and_never_shown(backend, stage, tmp_path):
    stage.ls_hits.clear()
    url = stage.ls.url.replace("http://", "http://admin:hunter2@") + "/data/upload/1/a.png"
    direct, redirected = backend.predict([{"id": 51, "data": {"image": url}},
                                          {"id": 52, "data": {"image": "/data/upload/1/redirect-creds.png"}}])
    refused(direct, "credentials")
    refused(redirected, "credentials")
    assert "hunter2" not in json.dumps([direct, redirected]) and "hunter2" not in backend.log()
    assert all(not (auth or "").startswith("Basic") for _, _, auth in stage.ls_hits.items)
    # a configured URL with credentials: the server refuses to start and does not echo them
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "BASIC_AUTH_", "HOST"))},
           "PYTHONPATH": ROOT, "LABEL_STUDIO_URL": "http://admin:hunter2@127.0.0.1:8080", "MODEL_DIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "ml_backend.serve", "--check"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "credentials" in p.stderr
    assert "hunter2" not in p.stdout + p.stderr


# ------------------------------------------------------------------------------------------------
# control endpoints
# ------------------------------------------------------------------------------------------------


def test_control_endpoints_need_authentication(backend, stage):
    calls = [("POST", "/webhook", {"action": "START_TRAINING", "project": {"id": 1}}), ("GET", "/jobs", None),
             ("GET", "/jobs/1", None), ("GET", "/versions/1", None), ("GET", "/metrics", None),
             ("POST", "/prewarm", {"urls": ["/data/upload/1/a.png"]}),
             ("POST", "/setup", {"project": "1.1", "schema": BINARY}),
             ("POST", "/predict", {"tasks": [], "label_config": BINARY}), ("GET", "/static/x", None),
             ("GET", "/explain/1/1", None)]
    for method, path, body in calls:
        r = requests.request(method, backend.url + path, json=body, timeout=10)
        assert r.status_code == 401, (path, r.status_code)
        assert r.headers["WWW-Authenticate"].startswith("Basic") and r.json()["status"] == 401
        r = requests.request(method, backend.url + path, json=body, auth=(USER, "wrong"), timeout=10)
        assert r.status_code == 401
    assert requests.get(backend.url + "/health", timeout=10).status_code == 200  # Label Studio checks it
    # no static file route, with or without credentials
    for path in ("/static/x", "/static/../README.md", "/static/app.py"):
        r = backend.get(path)
        assert r.status_code == 404 and r.json()["error"] == "Not Found"
    assert_intact(backend, stage)


def test_server_refuses_to_listen_beyond_loopback_without_auth(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BASIC_AUTH_", "ML_SERVER_", "SAFIRE_", "HOST"))}
    env = {**base, "PYTHONPATH": ROOT, "HOST": "0.0.0.0", "MODEL_DIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "ml_backend.serve", "--check"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "BASIC_AUTH_USER" in p.stderr and "SAFIRE_ALLOW_UNAUTHENTICATED" in p.stderr
    # the gunicorn config file says the same and does not start either
    p = subprocess.run([sys.executable, "-c", "import ml_backend.gunicorn_conf"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "BASIC_AUTH_USER" in p.stderr


def test_job_storm_starts_at_most_max_jobs_processes(backend, stage):
    n = 12
    bodies = [{"action": "START_TRAINING", "project": {"id": 100 + i, "label_config": BINARY}} for i in range(n)]
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda b: backend.post("/webhook", b), bodies))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 1 and codes.count(429) == n - 1, codes
    assert all("SAFIRE_MAX_JOBS" in r.json()["message"] for r in answers if r.status_code == 429)
    # the same project again: the running job, not a new one
    started = next(r.json() for r in answers if r.status_code == 201)
    again = backend.post("/webhook", bodies[int(started["result"]["project"]) - 100])
    assert again.status_code == 201 and again.json()["job"] == started["job"]
    # non-numeric project ids never become jobs
    for bad in ("abc", "1/../../etc", "-3", "1e3", 1.5, True, "99999999999999999999"):
        r = backend.post("/webhook", {"action": "START_TRAINING", "project": {"id": bad}})
        assert r.status_code == 400 and "project id" in r.json()["message"], (bad, r.text)
    jobs = backend.get("/jobs").json()["jobs"]
    assert len(jobs) == 1
    # job views: state and progress, no paths, no URLs, no config
    text = json.dumps(jobs)
    for secret in ("/", "http", "label_config", "model_dir", '"log"', LEGACY):
        assert secret not in text, (secret, text)
    pid = jobs[0]["project"]
    deadline = time.monotonic() + 180
    while backend.get(f"/jobs/{pid}").json()["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.5)
    assert backend.get(f"/jobs/{pid}").json()["state"] == "failed"  # the fake export is empty
    metrics = backend.get("/metrics").json()
    assert metrics["counters"]["jobs_refused_limit"] >= n - 1
    assert_intact(backend, stage)


def test_oversized_label_configs_are_refused_and_not_kept(backend, stage):
    before = backend.get("/metrics").json()["label_configs"]
    big = BINARY.replace("<View>", "<View>" + "<!--" + "x" * (1024 * 1024) + "-->", 1)
    r = backend.post("/setup", {"project": "5.1", "schema": big})
    assert r.status_code == 400 and "SAFIRE_MAX_LABEL_CONFIG_BYTES" in r.json()["message"]
    r = backend.post("/predict", {"tasks": [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}], "project": "5.1",
                                  "label_config": big})
    assert r.status_code == 400 and "SAFIRE_MAX_LABEL_CONFIG_BYTES" in r.json()["message"]
    huge = BINARY.replace("<View>", "<View>" + "<!--" + "x" * (8 * MB) + "-->", 1)
    rss0 = backend.status("VmRSS")
    for i in range(10):
        r = backend.post("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 200 + i, "label_config": huge},
                                      "annotation": {"project": 200 + i, "result": [{"x": 1}], "was_cancelled": False}})
        assert r.status_code == 400 and "SAFIRE_MAX_LABEL_CONFIG_BYTES" in r.json()["message"]
    after = backend.get("/metrics").json()["label_configs"]
    assert after == before
    assert backend.status("VmRSS") - rss0 < 64 * MB  # nothing kept (the old server grew ~12 MiB per webhook)
    assert_intact(backend, stage)


def test_log_lines_cannot_be_forged(backend, stage):
    tid = f"7\n{MARK} task 8: all good\r\x1b[2J"
    (res,) = backend.predict([{"id": tid, "data": {"image": "/data/upload/1/none.png\nFAKE"}}])
    assert res["result"] == []
    backend.get(f"/jobs/1%0A{MARK}%20forged")
    backend.post("/webhook", {"action": f"X\n{MARK}", "project": {"id": 1}})
    time.sleep(0.3)
    lines = backend.log().splitlines()
    assert not any(line.startswith(MARK) for line in lines)
    assert any("\\n" + MARK in line for line in lines)  # the value was logged, escaped
    assert "\x1b[2J" not in backend.log()
    assert_intact(backend, stage)


# ------------------------------------------------------------------------------------------------
# memory: peak RSS of the server process
# ------------------------------------------------------------------------------------------------


def png16(h: int, w: int) -> bytes:
    """A 16-bit greyscale PNG (a smooth ramp: a few KB on disk, h*w*2 bytes decoded)."""
    ramp = (np.arange(w, dtype=np.uint32) * 65535 // max(1, w - 1)).astype(np.uint16)
    arr = np.broadcast_to(ramp, (h, w)).copy()
    arr[h // 3: h // 2, w // 4: w // 2] ^= 0x5555  # a "spliced" block
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=1)
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I;16")
    return buf.getvalue()


def rgb_png(h: int, w: int) -> bytes:
    """A smooth RGB PNG with a few rectangles (compresses well; h*w*3 bytes decoded)."""
    img = Image.new("RGB", (w, h), (90, 120, 150))
    rng = np.random.default_rng(3)
    for i in range(6):
        x, y = int(rng.integers(0, w * 3 // 4)), int(rng.integers(0, h * 3 // 4))
        img.paste(tuple(int(v) for v in rng.integers(0, 255, 3)), (x, y, x + w // 5, y + h // 5))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def peak_during(backend: Backend, stage: Stage, name: str, data: bytes, config: str) -> Tuple[int, int, Dict[str, Any]]:
    """(peak RSS, idle RSS before, the prediction) for one pre-annotation of ``data``."""
    stage_key = f"1/{name}"
    stage.big[stage_key] = data
    try:
        requests.get(backend.url + "/health", timeout=10)
        idle = backend.status("VmRSS")
        backend.reset_peak()
        (res,) = backend.predict([{"id": 900, "data": {"image": f"/data/upload/{stage_key}"}}], config=config)
        peak = backend.status("VmHWM")
    finally:
        stage.big.pop(stage_key, None)
    return peak, idle, res


def _check(peak: int, idle: int, pixels: int, res: Dict[str, Any], h: int, w: int, label: str) -> None:
    assert "error" not in res, res
    for region in res["result"]:
        assert (region["original_height"], region["original_width"]) == (h, w)
    bound = idle + PER_PIXEL_BYTES * pixels + SLACK_MB * MB
    print(f"\n[memory] {label}: idle {idle / MB:.0f} MiB, peak {peak / MB:.0f} MiB "
          f"(+{(peak - idle) / MB:.0f} MiB, {(peak - idle) / pixels:.1f} B/px), bound {bound / MB:.0f} MiB")
    assert peak <= bound, f"{label}: peak {peak / MB:.0f} MiB above {bound / MB:.0f} MiB"


def test_memory_16bit_png_12mp(backend, stage):
    h, w = 3000, 4000
    data = png16(h, w)
    assert len(data) < 2 * MB  # small on the wire, 24 MB of 16-bit pixels once decoded
    peak, idle, res = peak_during(backend, stage, "ramp16.png", data, sources_config(2, 2, grid=4))
    _check(peak, idle, h * w, res, h, w, "16-bit PNG 12 MP")


def test_memory_14_sources_9mp(backend, stage):
    h, w = 3000, 3000
    peak, idle, res = peak_during(backend, stage, "many.png", rgb_png(h, w), sources_config(16, 14, grid=16))
    _check(peak, idle, h * w, res, h, w, "14 sources, 9 MP")


@pytest.mark.slow
def test_memory_40mp_16bit_and_14_sources_stay_under_1gb(backend, stage):
    h, w = 5000, 8000
    for name, data, config in (("ramp16-40mp.png", png16(h, w), sources_config(2, 2, grid=4)),
                               ("many-40mp.png", rgb_png(h, w), sources_config(16, 14, grid=16))):
        peak, idle, res = peak_during(backend, stage, name, data, config)
        _check(peak, idle, h * w, res, h, w, f"{name} (40 MP)")
        assert peak - idle <= BOUND_40MP_MB * MB, f"{name}: +{(peak - idle) / MB:.0f} MiB above {BOUND_40MP_MB} MiB"
    assert_intact(backend, stage)


def test_too_many_sources_grid_or_tasks_are_400(backend, stage):
    r = backend.post("/setup", {"project": "1.1", "schema": sources_config(16, 16, grid=8).replace(
        'safire_grid="8"', 'safire_grid="64"')})
    assert r.status_code == 400 and "SAFIRE_MAX_GRID" in r.json()["message"]
    tasks = [{"id": i + 1, "data": {"image": "/data/upload/1/a.png"}} for i in range(101)]
    r = backend.post("/predict", {"tasks": tasks, "project": "1.1", "label_config": BINARY})
    assert r.status_code == 400 and "SAFIRE_MAX_TASKS" in r.json()["message"]
    r = backend.post("/prewarm", {"project": "1", "urls": ["/data/upload/1/a.png"] * 101})
    assert r.status_code == 400 and "SAFIRE_MAX_TASKS" in r.json()["message"]
    assert_intact(backend, stage)


# ------------------------------------------------------------------------------------------------
# in process (Flask test client): the same rules, cheap cases
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def micro_registry(tmp_path_factory):
    import torch

    from ml_backend.models import ModelRegistry
    from safire.build import build_safire
    from safire.checkpoint import save_checkpoint

    torch.manual_seed(0)
    m = build_safire("micro", use_default=False)
    d = tmp_path_factory.mktemp("sec-micro")
    save_checkpoint(m, d / "micro.pt", variant="micro", config=m.config, model_version="micro-test")
    return ModelRegistry(d / "models", base_checkpoint=str(d / "micro.pt"), cache_bytes=16 * MB)


def make_client(registry, stage_url: str = "http://127.0.0.1:9", jobs: Any = None, **env: str):
    from ml_backend.app import create_app
    from ml_backend.settings import Settings
    from test_app import FakeJobs

    settings = Settings.from_env({"LABEL_STUDIO_URL": stage_url, "LABEL_STUDIO_API_KEY": LEGACY,
                                  "SAFIRE_GRID": "4", **env})
    app = create_app(settings, registry=registry, jobs=jobs if jobs is not None else FakeJobs())
    return app.test_client()


def test_post_bodies_must_be_json(micro_registry):
    client = make_client(micro_registry)
    body = json.dumps({"action": "START_TRAINING", "project": {"id": 1}})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        r = client.post("/webhook", data=body, content_type=ctype)
        assert r.status_code == 415 and "application/json" in r.json["message"], ctype
    assert client.post("/webhook", data=body, content_type="application/json").status_code == 201


def test_loopback_server_without_auth_answers_only_loopback_host_names(micro_registry):
    client = make_client(micro_registry)
    for host in ("127.0.0.1:9090", "localhost:9090", "[::1]:9090", "localhost"):
        assert client.get("/metrics", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example:9090", "rebind.test", "10.0.0.5:9090", "0.0.0.0:9090"):
        r = client.get("/metrics", headers={"Host": host})
        assert r.status_code == 403 and "loopback" in r.json["message"], host
    # with basic auth (e.g. docker, HOST=0.0.0.0) any host name is fine: the password protects it
    authed = make_client(micro_registry, HOST="0.0.0.0", BASIC_AUTH_USER="u", BASIC_AUTH_PASS="p")
    r = authed.get("/metrics", headers={"Host": "safire:9090",
                                        "Authorization": "Basic " + base64.b64encode(b"u:p").decode()})
    assert r.status_code == 200


def test_project_ids_are_validated_everywhere(micro_registry):
    client = make_client(micro_registry)
    for bad in ("abc", "1/../2", "../../etc", "0", "-1", "1.2.3", "1e3", " ", "x" * 500):
        for method, path, body in (("POST", "/setup", {"project": bad, "schema": BINARY}),
                                   ("POST", "/predict", {"project": bad, "tasks": [], "label_config": BINARY}),
                                   ("POST", "/prewarm", {"project": bad, "urls": ["/data/upload/1/a.png"]}),
                                   ("POST", "/webhook", {"action": "START_TRAINING", "project": {"id": bad}})):
            r = client.open(path, method=method, json=body)
            if bad == " " and path != "/webhook":
                continue  # an empty project is "no project" (the base model)
            assert r.status_code == 400, (path, bad, r.status_code)
    for path in ("/jobs/abc", "/versions/abc", "/jobs/1%2F..", "/versions/..", "/jobs/0"):
        assert client.get(path).status_code in (400, 404), path
    assert client.get("/versions/1").status_code == 200


def test_caps_on_sources_grid_tasks_and_config(micro_registry):
    client = make_client(micro_registry, SAFIRE_MAX_SOURCES="4", SAFIRE_MAX_GRID="8", SAFIRE_MAX_TASKS="3",
                         SAFIRE_MAX_LABEL_CONFIG_BYTES="4096")
    r = client.post("/setup", json={"project": "1.1", "schema": sources_config(8, 6)})
    assert r.status_code == 400 and "SAFIRE_MAX_SOURCES (4)" in r.json["message"]
    r = client.post("/setup", json={"project": "1.1", "schema": sources_config(4, 4, grid=16)})
    assert r.status_code == 400 and "SAFIRE_MAX_GRID (8)" in r.json["message"]
    assert client.post("/setup", json={"project": "1.1", "schema": sources_config(4, 4)}).status_code == 200
    r = client.post("/predict", json={"project": "1.1", "label_config": sources_config(8, 6),
                                      "tasks": [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}]})
    assert r.status_code == 400 and "SAFIRE_MAX_SOURCES" in r.json["message"]
    r = client.post("/predict", json={"project": "1.1", "label_config": BINARY, "tasks": [{"id": i} for i in range(4)]})
    assert r.status_code == 400 and "SAFIRE_MAX_TASKS (3)" in r.json["message"]
    big = BINARY + "<!--" + "x" * 5000 + "-->"
    for path, body in (("/setup", {"project": "1.1", "schema": big}),
                       ("/webhook", {"action": "START_TRAINING", "project": {"id": 1, "label_config": big}})):
        r = client.post(path, json=body)
        assert r.status_code == 400 and "SAFIRE_MAX_LABEL_CONFIG_BYTES (4096)" in r.json["message"]
    from ml_backend.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="SAFIRE_MAX_SOURCES"):
        Settings.from_env({"SAFIRE_SOURCES": "9"})
    with pytest.raises(SettingsError, match="SAFIRE_MAX_GRID"):
        Settings.from_env({"SAFIRE_GRID": "48"})


def test_remembered_configs_are_bounded(micro_registry):
    client = make_client(micro_registry)
    backend = client.application.extensions["safire"]
    config = BINARY + "<!--" + "x" * 100_000 + "-->"
    for pid in range(1, 400):
        backend.remember_config(str(pid), config)
    stats = backend.configs_stats()
    assert stats["bytes"] <= 16 * MB and stats["projects"] < 400


def test_job_views_hold_no_paths_or_urls():
    from ml_backend.runtime import _job_view

    rec = {"id": "j1", "project": "3", "state": "failed", "log": "/data/models/3/jobs/j1.log",
           "model_dir": "/data/models", "label_studio_url": "http://ls:8080", "parent_checkpoint": "/w/m.pt",
           "label_config": "<View/>", "fetch": {"allowed_hosts": ["a"]}, "train": {"steps": 3},
           "progress": {"stage": "failed", "data": {"tasks": 2}, "path": "/tmp/x"},
           "error": "ExportError: GET http://ls:8080/api/projects/3/export failed; see /data/models/3/jobs/j1.log"}
    view = _job_view(rec)
    assert set(view) <= {"id", "project", "reason", "state", "created", "started", "finished", "progress", "error",
                         "version", "parent_version", "already_running"}
    text = json.dumps(view)
    assert "http" not in text and "/data" not in text and "/tmp" not in text and "<View" not in text
    assert "<url>" in view["error"] and "<path>" in view["error"]


def test_jobs_cap_over_all_projects_in_the_job_manager(tmp_path, micro_registry, monkeypatch):
    from ml_backend import jobs as J

    started: List[List[str]] = []

    class FakeProc:
        pid = 0

        def poll(self) -> None:
            return None

    def popen(args, **kw):
        started.append(args)
        return FakeProc()

    monkeypatch.setattr(J.subprocess, "Popen", popen)
    monkeypatch.setattr(J, "pid_alive", lambda pid: True)
    reg = micro_registry
    monkeypatch.setattr(reg, "model_dir", tmp_path / "models")
    manager = J.JobManager(reg, settings=type("S", (), {"max_jobs": 2})())
    manager.submit("1")
    manager.submit("2")
    with pytest.raises(J.JobLimitError, match="SAFIRE_MAX_JOBS=2"):
        manager.submit("3")
    assert manager.submit("1").get("already_running")
    for bad in ("x", "../1", "1/2", "", "0"):
        with pytest.raises(ValueError, match="positive integer"):
            manager.submit(bad)
    assert len(started) == 2
    rec = J.read_json(next((tmp_path / "models" / "1" / "jobs").glob("*.json")))
    assert rec["fetch"]["max_pixels"] > 0 and "api_key" not in json.dumps(rec)
