"""The host side of ``scripts/docker_smoke.sh`` (Python standard library only; no project imports).

    docker_smoke_client.py serve --bind ADDR --port-file F --route URLPATH=FILE ... --log F
        a stand-in for Label Studio's upload server: answers GET URLPATH with FILE, logs each
        request (path, Authorization scheme) as one JSON line
    docker_smoke_client.py wait --container ID --url URL --t0 EPOCH [--docker CMD] [--timeout S]
        polls URL every 0.1 s and the container's own HEALTHCHECK status every 0.5 s; prints
        {"first_health_s", "healthy_s"} (seconds since t0) once Docker says "healthy"; fails if the
        container stops or Docker says "unhealthy"
    docker_smoke_client.py check --url URL --user U --password P --configs X.xml ... --meta META
        --image-path P --corrupt-path P --upload-log F [--expect-device D]
        /setup with each config (and once without credentials: 401), then per config a /predict
        of the forged image, a click inside its second source and a /predict of the corrupt image;
        checks every answer, prints one line per request and a JSON summary
"""

from __future__ import annotations

import argparse
import base64
import http.server
import json
import os
import socketserver
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


class SmokeFailure(Exception):
    pass


def fail(msg: str) -> None:
    raise SmokeFailure(msg)


# ------------------------------------------------------------------------------------------------
# serve: the stand-in for Label Studio's /data/upload/ files
# ------------------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    routes: Dict[str, Path] = {}
    for item in args.route:
        path, _, file = item.partition("=")
        routes[path] = Path(file)
    log_file = open(args.log, "a", buffering=1)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            auth = self.headers.get("Authorization", "")
            log_file.write(json.dumps({"path": self.path, "auth_scheme": auth.split(" ", 1)[0] if auth else None,
                                       "token_ok": auth == f"Token {args.token}" if args.token else None}) + "\n")
            file = routes.get(self.path.split("?", 1)[0])
            if file is None or not file.is_file():
                self.send_error(404)
                return
            data = file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: Any) -> None:  # quiet: the JSON log above is the record
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server((args.bind, 0), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    server.serve_forever()
    return 0


# ------------------------------------------------------------------------------------------------
# wait: the container's HEALTHCHECK
# ------------------------------------------------------------------------------------------------


def _inspect(docker: List[str], container: str) -> Dict[str, Any]:
    out = subprocess.run(docker + ["inspect", "--format", "{{json .State}}", container],
                         capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"docker inspect {container[:12]} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def wait(args: argparse.Namespace) -> int:
    docker = args.docker.split()
    first_health: Optional[float] = None
    deadline = time.time() + args.timeout
    next_inspect = 0.0
    while time.time() < deadline:
        now = time.time()
        if first_health is None:
            try:
                with urllib.request.urlopen(args.url, timeout=1) as r:
                    if r.status == 200:
                        first_health = time.time() - args.t0
                        print(f"  /health 200 after {first_health:.1f} s: {r.read().decode().strip()[:300]}",
                              file=sys.stderr, flush=True)
            except (urllib.error.URLError, OSError):
                pass
        if now >= next_inspect:
            next_inspect = now + 0.5
            state = _inspect(docker, args.container)
            if not state.get("Running"):
                fail(f"the container stopped (exit code {state.get('ExitCode')}) before it was healthy")
            health = (state.get("Health") or {}).get("Status")
            if health is None:
                fail("the image has no HEALTHCHECK")
            if health == "unhealthy":
                log = (state.get("Health") or {}).get("Log") or []
                fail(f"Docker says the container is unhealthy: {log[-1] if log else ''}")
            if health == "healthy":
                healthy = time.time() - args.t0
                print(json.dumps({"first_health_s": round(first_health, 2) if first_health else None,
                                  "healthy_s": round(healthy, 2)}))
                return 0
        time.sleep(0.1)
    fail(f"not healthy after {args.timeout:.0f} s")
    return 1


# ------------------------------------------------------------------------------------------------
# check: the requests Label Studio makes
# ------------------------------------------------------------------------------------------------


def _request(url: str, body: Optional[dict], auth: Optional[Tuple[str, str]], timeout: float = 300
             ) -> Tuple[int, Any, float]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    dt = time.perf_counter() - t
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = raw[:200]
    return status, payload, dt


def _labels(xml: str, tag: str) -> Tuple[str, List[str]]:
    root = ET.fromstring(xml)
    el = next(iter(root.iter(tag)), None)
    if el is None:
        fail(f"the config has no <{tag}>")
    return el.get("name"), [lab.get("value") for lab in el.iter("Label")]


def _one_result(payload: Any, what: str) -> Dict[str, Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list) or len(payload["results"]) != 1:
        fail(f"{what}: expected {{'results': [one prediction]}}, got {str(payload)[:300]}")
    return payload["results"][0]


def _check_regions(res: Dict[str, Any], labels: List[str], size: Tuple[int, int], what: str) -> None:
    """A prediction without error whose regions (if any: how many is the model's business, not the
    image's) are brush RLEs of the image's size with the config's labels."""
    if res.get("error"):
        fail(f"{what}: the prediction has an error: {res['error']}")
    if not isinstance(res.get("score"), (int, float)):
        fail(f"{what}: no numeric score in {str(res)[:300]}")
    regions = res.get("result")
    if not isinstance(regions, list):
        fail(f"{what}: 'result' is not a list in {str(res)[:300]}")
    for r in regions:
        v = r.get("value", {})
        if r.get("type") != "brushlabels" or v.get("format") != "rle" or not v.get("rle"):
            fail(f"{what}: not a brush region with an RLE: {str(r)[:300]}")
        if not set(v.get("brushlabels", [])) <= set(labels):
            fail(f"{what}: label {v.get('brushlabels')} not in the config's {labels}")
        if (r.get("original_width"), r.get("original_height")) != size:
            fail(f"{what}: region size {(r.get('original_width'), r.get('original_height'))} != image {size}")


def check(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    auth = (args.user, args.password)
    meta = json.loads(Path(args.meta).read_text())
    size = (int(meta["width"]), int(meta["height"]))
    timings: Dict[str, float] = {}
    summary: Dict[str, Any] = {"requests": []}

    def log(name: str, status: int, dt: float, note: str) -> None:
        print(f"  {name:<40} {status}  {dt:6.2f} s  {note}", flush=True)
        summary["requests"].append({"name": name, "status": status, "seconds": round(dt, 3), "note": note})
        timings[name] = dt

    status, health, dt = _request(base + "/health", None, None)
    if status != 200 or health.get("status") != "UP":
        fail(f"/health: {status} {health}")
    if args.expect_device and health.get("device") != args.expect_device:
        fail(f"/health says device {health.get('device')!r}, expected {args.expect_device!r}")
    log("GET /health", status, dt, f"model {health.get('model_version')} [{health.get('variant')}, "
        f"{health.get('device')}]")
    summary["model_version"] = health.get("model_version")

    configs = [Path(c) for c in args.configs]
    status, body, dt = _request(base + "/setup", {"project": "1.1700000000", "schema": configs[0].read_text()}, None)
    if status != 401:
        fail(f"/setup without credentials answered {status}, expected 401 (basic auth is off?)")
    log("POST /setup without credentials", status, dt, "refused, as it should be")

    for n, cfg in enumerate(configs, start=1):
        xml = cfg.read_text()
        project = f"{n}.1700000000"
        status, body, dt = _request(base + "/setup", {"project": project, "schema": xml}, auth)
        if status != 200 or not body.get("model_version"):
            fail(f"/setup {cfg.name}: {status} {str(body)[:500]}")
        log(f"POST /setup {cfg.name}", status, dt, f"mode {body.get('mode')}, model {body.get('model_version')}")

        _, brush_labels = _labels(xml, "BrushLabels")
        click_name, click_labels = _labels(xml, "KeyPointLabels")
        task = {"id": 10 * n + 1, "project": n, "data": {"image": args.image_path}}

        status, body, dt = _request(base + "/predict", {"tasks": [task], "project": project, "label_config": xml,
                                                        "params": {"context": None}}, auth)
        res = _one_result(body, f"/predict {cfg.name}") if status == 200 else fail(f"/predict: {status} {body}")
        _check_regions(res, brush_labels, size, f"/predict {cfg.name}")
        found = sorted({lab for r in res["result"] for lab in r["value"]["brushlabels"]})
        log(f"POST /predict {cfg.name}", status, dt,
            f"{len(res['result'])} regions {found}, score {res.get('score')}")

        # a click inside the image's second source (the first one that is not the host)
        label = click_labels[1] if len(click_labels) > 1 else click_labels[0]
        point = {"original_width": size[0], "original_height": size[1], "image_rotation": 0,
                 "value": {"x": meta["click_x"], "y": meta["click_y"], "width": 0.5, "keypointlabels": [label]},
                 "is_positive": True, "id": "smoke1", "from_name": click_name, "to_name": "image",
                 "type": "keypointlabels", "origin": "manual"}
        status, body, dt = _request(base + "/predict", {"tasks": [task], "project": project, "label_config": xml,
                                                        "params": {"context": {"result": [point]}}}, auth)
        res = _one_result(body, f"click {cfg.name}") if status == 200 else fail(f"click: {status} {body}")
        _check_regions(res, [label], size, f"click {cfg.name}")
        log(f"POST /predict click {cfg.name}", status, dt,
            f"{label!r} at ({meta['click_x']:.1f} %, {meta['click_y']:.1f} %): {len(res['result'])} region(s)")

        bad = {"id": 10 * n + 2, "project": n, "data": {"image": args.corrupt_path}}
        status, body, dt = _request(base + "/predict", {"tasks": [bad], "project": project, "label_config": xml,
                                                        "params": {"context": None}}, auth)
        res = _one_result(body, f"corrupt {cfg.name}") if status == 200 else fail(f"corrupt: {status} {body}")
        if res.get("result") != [] or not res.get("error"):
            fail(f"/predict of a corrupt image: expected an empty result with an error, got {str(res)[:300]}")
        log(f"POST /predict corrupt {cfg.name}", status, dt, f"empty result, error: {str(res['error'])[:70]}")

    status, health, dt = _request(base + "/health", None, None)
    if status != 200:
        fail(f"/health after the requests: {status}")
    log("GET /health (after)", status, dt, "still up")

    # the backend fetched the images from the stand-in for Label Studio, with the API token
    seen = [json.loads(line) for line in Path(args.upload_log).read_text().splitlines() if line.strip()]
    paths = {s["path"] for s in seen}
    if args.image_path not in paths or args.corrupt_path not in paths:
        fail(f"the backend did not download both images from the host (saw {sorted(paths)})")
    if not all(s.get("token_ok") for s in seen):
        fail(f"an image download came without the Label Studio token: {seen}")
    print(f"  image downloads from the host: {len(seen)}, each with 'Authorization: Token ...'", flush=True)
    print("SUMMARY " + json.dumps(summary))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--port-file", required=True)
    s.add_argument("--route", action="append", default=[])
    s.add_argument("--log", required=True)
    s.add_argument("--token", default="")
    w = sub.add_parser("wait")
    w.add_argument("--container", required=True)
    w.add_argument("--url", required=True)
    w.add_argument("--t0", type=float, required=True)
    w.add_argument("--docker", default="docker")
    w.add_argument("--timeout", type=float, default=300)
    c = sub.add_parser("check")
    c.add_argument("--url", required=True)
    c.add_argument("--user", required=True)
    c.add_argument("--password", default=os.environ.get("SMOKE_PASSWORD", ""))
    c.add_argument("--configs", nargs="+", required=True)
    c.add_argument("--meta", required=True)
    c.add_argument("--image-path", required=True)
    c.add_argument("--corrupt-path", required=True)
    c.add_argument("--upload-log", required=True)
    c.add_argument("--expect-device", default="")
    args = p.parse_args(argv)
    try:
        return {"serve": serve, "wait": wait, "check": check}[args.cmd](args)
    except SmokeFailure as e:
        print(f"SMOKE FAILED: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
