"""Benchmark the real ML backend over HTTP: click latency (cold/warm, 1 and N annotators) and
pre-annotation time per task.

    python benchmarks/bench_backend.py                       # 1 and 8 annotators, embedded/tiny model
    python benchmarks/bench_backend.py --quick               # smoke run: micro model, few requests
    python benchmarks/bench_backend.py --annotators 1,4 --cold 3 --warm 10 --preannotate 4 --size 1024x768

What it does:

1. starts a fake Label Studio in this process (127.0.0.1, ephemeral port) serving generated
   images under ``/data/upload/bench/<n>.png`` and checking the API key;
2. starts ``safire serve`` (gunicorn, gthread) in a subprocess on 127.0.0.1 and an ephemeral port,
   with the embedded default model when it exists, else a random-weights checkpoint of
   ``--variant`` (said in the output), and waits for ``/health``;
3. per annotator count A: A threads each click ``--cold`` new images once (cold: fetch + encoder +
   decoder) then click their last image ``--warm`` times (warm: cached embedding, decoder only);
   requests are shaped like Label Studio 1.23.2's interactive ``/predict`` calls;
4. one ``/predict`` without context on ``--preannotate`` new images (seconds per task);
5. prints a table, stops the server it started (SIGTERM to its pid), exits (1 if any request failed).

Every count is bounded and the whole run has a deadline (``--deadline``), so it stops by itself.
The machine's other load matters a lot on small CPUs: run it on a quiet machine for real numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

API_KEY = "bench0123456789abcdef0123456789abcdef0123"
PROJECT = "1.1795310459"
CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="mask" toName="image">
    <Label value="Tampered" background="#FF0000"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Tampered" smart="true" background="#FFaa00"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true">
    <Label value="Tampered" background="#00aaFF"/>
  </RectangleLabels>
</View>"""


# ------------------------------------------------------------------------------------------------
# fake Label Studio
# ------------------------------------------------------------------------------------------------


def make_image(index: int, width: int, height: int) -> bytes:
    """A smooth photo-like host with a pasted noisier rectangle (PNG bytes)."""
    from PIL import Image

    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(60, 190, size=3)
    img = base + 40 * np.sin(6 * xx + rng.uniform(0, 6))[..., None] * np.cos(5 * yy)[..., None]
    img = img + rng.normal(0, 2.0, img.shape)
    h, w = height // 3, width // 3
    y0, x0 = rng.integers(0, height - h), rng.integers(0, width - w)
    img[y0:y0 + h, x0:x0 + w] += rng.normal(0, 20.0, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class FakeLabelStudio:
    def __init__(self, width: int, height: int) -> None:
        from flask import Flask, request
        from werkzeug.serving import make_server

        self.size = (width, height)
        self._images: Dict[int, bytes] = {}
        self._lock = threading.Lock()
        app = Flask("bench-fake-label-studio")

        @app.get("/data/upload/bench/<int:index>.png")
        def image(index: int) -> Any:
            if request.headers.get("Authorization") != f"Token {API_KEY}":
                return {"detail": "unauthorized"}, 401
            return self.image(index), 200, {"Content-Type": "image/png"}

        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines in the report
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True)
        self._thread.start()

    def image(self, index: int) -> bytes:
        with self._lock:
            if index not in self._images:
                self._images[index] = make_image(index, *self.size)
            return self._images[index]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ------------------------------------------------------------------------------------------------
# the server under test
# ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_model(variant: str, workdir: str, force_random: bool) -> Tuple[Optional[str], str]:
    """(checkpoint path or None for the embedded default, description)."""
    from safire.build import DEFAULT_CHECKPOINT, build_safire
    from safire.checkpoint import save_checkpoint

    if DEFAULT_CHECKPOINT.is_file() and not force_random:
        return None, f"embedded default model ({DEFAULT_CHECKPOINT.name})"
    import torch

    torch.manual_seed(0)
    model = build_safire(variant)
    path = os.path.join(workdir, f"{variant}-random.pt")
    save_checkpoint(model, path, variant=variant, config=model.config, model_version=f"{variant}-random-bench")
    why = "requested" if force_random else "the embedded default model is missing"
    return path, f"{variant} with random weights ({why}; latency only, masks are meaningless)"


class Server:
    def __init__(self, env: Dict[str, str], port: int, log_path: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log_path, "wb")
        cmd = [sys.executable, "-m", "ml_backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=os.path.dirname(os.path.dirname(
                                         os.path.abspath(__file__))))
        self.log_path = log_path

    def wait_healthy(self, timeout: float) -> Dict[str, Any]:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}; log:\n{self.tail()}")
            try:
                r = requests.get(self.url + "/health", timeout=1)
                if r.status_code == 200:
                    return r.json()
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not become healthy within {timeout:g} s; log:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # gunicorn master: graceful stop of its workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


# ------------------------------------------------------------------------------------------------
# clients
# ------------------------------------------------------------------------------------------------


def click_body(index: int, click: int, size: Tuple[int, int]) -> Dict[str, Any]:
    rng = np.random.default_rng(1000 * index + click)
    item = {"original_width": size[0], "original_height": size[1], "image_rotation": 0,
            "value": {"x": float(rng.uniform(10, 90)), "y": float(rng.uniform(10, 90)), "width": 0.5,
                      "keypointlabels": ["Tampered"]},
            "is_positive": True, "id": f"k{index}x{click}", "from_name": "kp", "to_name": "image",
            "type": "keypointlabels", "origin": "manual"}
    task = {"id": index, "data": {"image": f"/data/upload/bench/{index}.png"}, "annotations": [], "drafts": [],
            "predictions": [], "project": 1, "allow_skip": True}
    return {"tasks": [task], "project": PROJECT, "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": {"result": [item]}}}


def timed_post(session: Any, url: str, body: Dict[str, Any], timeout: float) -> Tuple[float, Optional[str]]:
    t0 = time.perf_counter()
    try:
        r = session.post(url, json=body, timeout=timeout)
        dt = time.perf_counter() - t0
        if r.status_code != 200:
            return dt, f"HTTP {r.status_code}"
        res = r.json()["results"]
        errors = [x.get("error") for x in res if x.get("error")]
        return dt, errors[0] if errors else None
    except Exception as e:  # noqa: BLE001 - report, do not crash the benchmark
        return time.perf_counter() - t0, f"{type(e).__name__}: {e}"


def run_annotators(url: str, annotators: int, cold: int, warm: int, first_index: int, size: Tuple[int, int],
                   deadline: float) -> Dict[str, Any]:
    import requests

    lat: Dict[str, List[float]] = {"cold": [], "warm": []}
    errors: List[str] = []
    lock = threading.Lock()

    def annotator(a: int) -> None:
        session = requests.Session()
        last = None
        for c in range(cold):
            if time.monotonic() > deadline:
                return
            index = first_index + a * cold + c
            dt, err = timed_post(session, url + "/predict", click_body(index, 0, size), 120)
            last = index
            with lock:
                (errors.append(err) if err else lat["cold"].append(dt))
        for w in range(warm):
            if time.monotonic() > deadline or last is None:
                return
            dt, err = timed_post(session, url + "/predict", click_body(last, w + 1, size), 120)
            with lock:
                (errors.append(err) if err else lat["warm"].append(dt))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(annotators) as pool:
        list(pool.map(annotator, range(annotators)))
    return {"latency": lat, "errors": errors, "wall": time.perf_counter() - t0}


def preannotate(url: str, tasks: int, first_index: int) -> Dict[str, Any]:
    import requests

    body = {"tasks": [{"id": first_index + i, "data": {"image": f"/data/upload/bench/{first_index + i}.png"},
                       "annotations": [], "predictions": [], "project": 1} for i in range(tasks)],
            "project": PROJECT, "label_config": CONFIG, "params": {"login": None, "password": None, "context": None}}
    t0 = time.perf_counter()
    r = requests.post(url + "/predict", json=body, timeout=600)
    dt = time.perf_counter() - t0
    results = r.json().get("results", []) if r.status_code == 200 else []
    errors = [x.get("error") for x in results if x.get("error")]
    if r.status_code != 200:
        errors.append(f"HTTP {r.status_code}")
    regions = sum(len(x.get("result", [])) for x in results)
    return {"seconds": dt, "per_task": dt / max(tasks, 1), "errors": errors, "regions": regions,
            "bytes": len(r.content)}


def pct(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


# ------------------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotators", default="1,8", help="comma list of concurrent annotator counts")
    p.add_argument("--cold", type=int, default=2, help="new images each annotator clicks once")
    p.add_argument("--warm", type=int, default=8, help="clicks per annotator on an already embedded image")
    p.add_argument("--preannotate", type=int, default=3, help="tasks in the pre-annotation request")
    p.add_argument("--size", default="640x480", help="image size WxH")
    p.add_argument("--variant", default="tiny", help="random-weights variant when no embedded model")
    p.add_argument("--random", action="store_true", help="use random weights even if the default model exists")
    p.add_argument("--threads", type=int, default=1, help="SAFIRE_THREADS of the server")
    p.add_argument("--server-threads", type=int, default=8, help="THREADS (gunicorn gthread) of the server")
    p.add_argument("--grid", type=int, default=None, help="SAFIRE_GRID of the server (default: its default)")
    p.add_argument("--deadline", type=float, default=600, help="seconds after which clients stop")
    p.add_argument("--quick", action="store_true", help="smoke run: micro model, 1 and 2 annotators, few requests")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (checkpoint, server log)")
    args = p.parse_args(argv)
    if args.quick:
        args.annotators, args.cold, args.warm, args.preannotate = "1,2", 1, 3, 1
        args.variant, args.random, args.size = "micro", True, "320x240"
    width, height = (int(v) for v in args.size.lower().split("x"))
    counts = [int(v) for v in args.annotators.split(",") if v.strip()]
    deadline = time.monotonic() + args.deadline

    workdir = tempfile.mkdtemp(prefix="safire-bench-")
    checkpoint, model_desc = pick_model(args.variant, workdir, args.random)
    ls = FakeLabelStudio(width, height)
    total_images = sum(a * args.cold for a in counts) + args.preannotate
    for i in range(1, total_images + 1):  # generate up front: not part of any measured latency
        ls.image(i)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAFIRE_", "BASIC_AUTH_", "LABEL_STUDIO_"))}
    env.update({"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": API_KEY, "MODEL_DIR": os.path.join(workdir, "models"),
                "SAFIRE_THREADS": str(args.threads), "THREADS": str(args.server_threads), "WORKERS": "1",
                "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    if checkpoint:
        env["SAFIRE_CHECKPOINT"] = checkpoint
    if args.grid:
        env["SAFIRE_GRID"] = str(args.grid)
    port = free_port()
    server = Server(env, port, os.path.join(workdir, "server.log"))
    rows: List[Dict[str, Any]] = []
    failed = False
    try:
        t0 = time.perf_counter()
        health = server.wait_healthy(120)
        print(f"server: safire serve (gunicorn gthread, 1 worker, {args.server_threads} threads, "
              f"SAFIRE_THREADS={args.threads}) on {server.url}, started in {time.perf_counter() - t0:.1f} s")
        print(f"model: {model_desc}; version {health.get('model_version')}, variant {health.get('variant')}")
        print(f"images: {width}x{height} PNG from a fake Label Studio at {ls.url}; machine: {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f}")
        next_index = 1
        for a in counts:
            res = run_annotators(server.url, a, args.cold, args.warm, next_index, (width, height), deadline)
            next_index += a * args.cold
            for kind in ("cold", "warm"):
                v = res["latency"][kind]
                rows.append({"scenario": f"click {kind}", "annotators": a, "n": len(v),
                             "p50_ms": pct(v, 50), "p95_ms": pct(v, 95),
                             "max_ms": max(v) * 1000 if v else float("nan")})
            rows[-1]["errors"] = len(res["errors"])
            if res["errors"]:
                failed = True
                print(f"  {len(res['errors'])} failed click(s) with {a} annotator(s), e.g.: {res['errors'][0]}")
        if args.preannotate > 0 and time.monotonic() < deadline:
            pre = preannotate(server.url, args.preannotate, next_index)
            rows.append({"scenario": "pre-annotation", "annotators": 1, "n": args.preannotate,
                         "p50_ms": pre["per_task"] * 1000, "p95_ms": float("nan"), "max_ms": pre["seconds"] * 1000,
                         "errors": len(pre["errors"]), "regions": pre["regions"], "bytes": pre["bytes"]})
            if pre["errors"]:
                failed = True
                print(f"  pre-annotation errors, e.g.: {pre['errors'][0]}")
        try:
            import requests

            metrics = requests.get(server.url + "/metrics", timeout=5).json()
        except Exception:  # noqa: BLE001
            metrics = {}
    except Exception as e:  # noqa: BLE001
        print(f"benchmark failed: {e}", file=sys.stderr)
        failed = True
        metrics = {}
    finally:
        server.stop()
        ls.close()
        if failed and not args.keep:
            print(f"server log (last lines):\n{server.tail()}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print("| scenario | annotators | requests | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["scenario"] == "pre-annotation":
            print(f"| pre-annotation ({r['n']} tasks in one request) | 1 | 1 | {r['p50_ms']:.0f} per task | - | "
                  f"{r['max_ms']:.0f} total |")
        else:
            print(f"| {r['scenario']} | {r['annotators']} | {r['n']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                  f"{r['max_ms']:.0f} |")
    stages = metrics.get("stages", {})
    if stages:
        print()
        print("server-side stages (p50 / p95 ms): " + ", ".join(
            f"{k} {v.get('p50_ms', 0):.0f}/{v.get('p95_ms', 0):.0f}" for k, v in stages.items() if v.get("n")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model_desc, "size": [width, height], "rows": rows, "stages": stages}, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
