"""Bulk pre-annotation (``safire preannotate``) against the real Label Studio 1.23.2 of the suite.

A project of 300 tasks (``multi_source.xml`` with ``safire_sources="2"`` and ``safire_grid="6"`` so
every readable image gets regions and a partition stays fast): 40 uploaded images (one of them a
truncated PNG) and 260 local files (two of them not images, one missing), forged and authentic,
160-240 px. ``safire preannotate`` (Ray Data, one worker) is killed with SIGKILL (its whole session:
the driver, Ray's servers and workers) once part of the predictions are in, then resumed with two
workers. Afterwards:

* every readable task has exactly one prediction, of the backend's model version, and the
  unreadable ones none;
* every prediction's regions are pixel for pixel the backend's own answer for that image
  (``POST /predict`` with the image inline), so bulk and "Retrieve Predictions" agree;
* the manifest accounts for all 300 tasks (uploaded, already predicted by the killed run, skipped
  with their reasons).

Then the backend's ``POST /preannotate/<project>`` pre-annotates a second project as a background job
visible under ``GET /jobs/<project>``, and a second call finds nothing left to do.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Set

import numpy as np
import pytest
import requests
from PIL import Image

from .harness import REPO, safire_command
from .runlog import RUN, Timer, record, wait_until
from .scenario import label_map, read_config

pytestmark = pytest.mark.e2e

N_UPLOAD, N_LOCAL = 40, 260


def _image(rng: np.random.Generator, forged: bool) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(160, 241, 2))
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(60, 190, 3)
    img = base + 30 * np.sin(6 * xx + rng.uniform(0, 6))[..., None] * np.cos(4 * yy)[..., None]
    img = img + rng.normal(0, 2.0, img.shape)
    if forged:  # a pasted patch with its own colour and noise level
        ph, pw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
        y0, x0 = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        img[y0:y0 + ph, x0:x0 + pw] = rng.uniform(40, 220, 3) + rng.normal(0, 25.0, (ph, pw, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _session_pids(sid: int) -> List[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of stat: the session id
                out.append(int(d))
    return out


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the command's process group, then anything else of its session (Ray's workers have
    groups of their own), by their ids."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = _session_pids(proc.pid)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"processes of the killed run still alive: {_session_pids(proc.pid)}")


@dataclasses.dataclass
class BulkProject:
    id: int
    cfg: Any
    images: Dict[int, Path]  # readable task -> image file
    bad: Set[int]  # unreadable tasks


def _make_project(stack, title: str, n_upload: int, n_local: int, folder: str, seed: int,
                  bad_local: int = 0, missing_local: int = 0, bad_upload: int = 0) -> BulkProject:
    client = stack.client
    cfg = read_config("multi_source.xml", sources="2")
    cfg = dataclasses.replace(cfg, xml=cfg.xml.replace('safire_grid="16"', 'safire_grid="6"'))
    pid = int(client.post("/api/projects", {"title": title, "label_config": cfg.xml})["id"])
    rng = np.random.default_rng(seed)
    img_dir = stack.files / folder
    img_dir.mkdir(parents=True, exist_ok=True)
    by_name: Dict[str, Path] = {}
    bad_names: Set[str] = set()
    for i in range(n_upload):
        path = img_dir / f"up_{i:03d}.png"
        data = _png(_image(rng, forged=i % 3 != 0))
        if i < bad_upload:
            data = data[:120]  # a truncated PNG
            bad_names.add(path.name)
        path.write_bytes(data)
        with open(path, "rb") as f:
            r = client.request("POST", f"/api/projects/{pid}/import",
                               files={"file": (path.name, f, "image/png")}).json()
        assert r["task_count"] == 1, r
        by_name[path.name] = path
    payload = []
    if n_local:
        client.post("/api/storages/localfiles", {"project": pid, "path": str(img_dir), "title": "bulk images",
                                                 "use_blob_urls": True})
        rel = img_dir.relative_to(stack.files).as_posix()
        for i in range(n_local):
            path = img_dir / f"lf_{i:03d}.png"
            if i < bad_local:
                path.write_bytes(b"this is not an image\n" * 10)
                bad_names.add(path.name)
            elif i < bad_local + missing_local:
                bad_names.add(path.name)  # never written: Label Studio answers 404
            else:
                path.write_bytes(_png(_image(rng, forged=i % 3 != 0)))
            by_name[path.name] = path
            payload.append({"image": f"/data/local-files/?d={rel}/{path.name}"})
        r = client.post(f"/api/projects/{pid}/import", payload)
        assert r["task_count"] == n_local, r
    images, bad = {}, set()
    page = 1
    while True:
        out = client.get("/api/tasks", params={"project": pid, "page_size": 500, "page": page})
        tasks = out["tasks"] if isinstance(out, dict) else out
        for t in tasks:
            url = t["data"]["image"]
            name = url.rsplit("/", 1)[-1]
            name = name.split("-", 1)[1] if url.startswith("/data/upload/") else name
            assert name in by_name, url
            if name in bad_names:
                bad.add(int(t["id"]))
            else:
                images[int(t["id"])] = by_name[name]
        if len(tasks) < 500:
            break
        page += 1
    assert len(images) + len(bad) == n_upload + n_local
    return BulkProject(pid, cfg, images, bad)


def _version(stack) -> str:
    return str(stack.backend.get("/health")["model_version"])


def _predictions_by_task(client, pid: int) -> Dict[int, List[Dict[str, Any]]]:
    preds = client.get("/api/predictions", params={"project": pid})
    if isinstance(preds, dict):
        preds = preds.get("results", [])
    out: Dict[int, List[Dict[str, Any]]] = defaultdict(list)
    for p in preds:
        out[int(p["task"])].append(p)
    return out


def _count(client, pid: int, version: str) -> int:
    return int(client.get(f"/api/projects/{pid}/model-versions").get(version, 0))


def _uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def bulk_project(stack) -> BulkProject:
    with Timer(f"preannotate: set-up ({N_UPLOAD} uploads + {N_LOCAL} local files)"):
        return _make_project(stack, "safire e2e bulk", N_UPLOAD, N_LOCAL, "bulk", seed=77,
                             bad_local=2, missing_local=1, bad_upload=1)


def _command(stack, proj: BulkProject, state: Path, workers: int) -> List[str]:
    return [str(safire_command()), "preannotate", "--url", stack.ls.url, "--api-key", stack.client.pat,
            "--project", str(proj.id), "--engine", "ray", "--workers", str(workers), "--chunk-size", "20",
            "--state", str(state)]


def test_preannotate_killed_and_resumed_is_exact(stack, bulk_project):
    client, proj = stack.client, bulk_project
    version = _version(stack)
    state = stack.work / "bulk-state"
    env = stack.backend.env()  # the backend's settings: same model dir, partition, limits
    log1 = stack.artifacts / "preannotate-run1.log"
    t0 = time.monotonic()
    with open(log1, "wb") as log:
        proc = subprocess.Popen(_command(stack, proj, state, workers=1), env=env, cwd=str(REPO),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or _count(client, proj.id, version) >= 60, 600, poll=0.3,
                   what="the first 60 predictions of the first run")
        assert proc.poll() is None, f"the run ended before it could be killed:\n{log1.read_text()[-3000:]}"
    finally:
        _kill_session(proc)
    record("timings", "preannotate: run 1 until killed", round(time.monotonic() - t0, 1))
    after_kill = _predictions_by_task(client, proj.id)
    n_killed = sum(len(v) for v in after_kill.values())
    assert 60 <= n_killed < len(proj.images), n_killed
    assert all(len(v) == 1 for v in after_kill.values())
    RUN["notes"].append(f"preannotate: killed with {n_killed} of {len(proj.images)} predictions uploaded")

    with Timer("preannotate: run 2 (resume, 2 Ray workers)"):
        run2 = subprocess.run(_command(stack, proj, state, workers=2), env=env, cwd=str(REPO),
                              capture_output=True, text=True, timeout=1200, start_new_session=True)
    (stack.artifacts / "preannotate-run2.log").write_text(run2.stdout + run2.stderr)
    assert run2.returncode == 0, f"resume failed ({run2.returncode}):\n{run2.stdout}\n{run2.stderr[-4000:]}"
    manifest = json.loads((state / "manifest.json").read_text())
    (stack.artifacts / "preannotate-manifest.json").write_text(json.dumps(manifest, indent=1))
    total = len(proj.images) + len(proj.bad)
    assert manifest["listed"] == manifest["accounted"] == total, manifest
    assert manifest["model_version"] == version
    assert {t["id"] for t in manifest["skipped_tasks"]} == proj.bad, manifest["skipped_tasks"]
    assert set(manifest["skipped"]) <= {"unreadable_image", "not_found"}, manifest["skipped"]
    assert manifest["uploaded"] + manifest["already_predicted"] == len(proj.images)
    assert manifest["already_predicted"] == n_killed
    assert manifest["already_predicted_by_earlier_run"] >= n_killed - 20  # at most one chunk not yet journaled
    assert manifest["upload_failed"] == 0
    record("scores", "preannotate manifest", {k: manifest[k] for k in (
        "listed", "uploaded", "already_predicted", "already_predicted_by_earlier_run", "skipped")})
    record("scores", "preannotate run 2 tasks/s (2 Ray workers, incl. Ray start)", manifest["tasks_per_second"])

    preds = _predictions_by_task(client, proj.id)
    for tid in proj.images:
        got = preds.get(tid, [])
        assert [p["model_version"] for p in got] == [version], f"task {tid}: {[p['model_version'] for p in got]}"
    assert not any(preds.get(tid) for tid in proj.bad), "an unreadable task got a prediction"

    # the backend's own answer for every image (inline, so nothing is downloaded): identical regions
    with Timer(f"preannotate: backend inline reference ({len(proj.images)} tasks)"):
        ids = sorted(proj.images)
        for i in range(0, len(ids), 50):
            part = ids[i:i + 50]
            body = {"tasks": [{"id": t, "data": {"image": _uri(proj.images[t])}} for t in part],
                    "project": f"{proj.id}.0", "label_config": proj.cfg.xml}
            answers = stack.backend.post("/predict", body)["results"]
            for tid, ref in zip(part, answers):
                stored = preds[tid][0]
                h, w = np.asarray(Image.open(proj.images[tid])).shape[:2]
                a = label_map(stored["result"], proj.cfg, h, w)
                b = label_map(ref["result"], proj.cfg, h, w)
                assert np.array_equal(a, b), f"task {tid}: the bulk prediction differs from the backend's answer"
                assert stored["score"] == pytest.approx(ref["score"], abs=1e-6)
                assert any(r["type"] == "brushlabels" for r in stored["result"])


def test_backend_route_preannotates_a_project_in_the_background(stack):
    client = stack.client
    with Timer("preannotate route: set-up (12 local files)"):
        proj = _make_project(stack, "safire e2e bulk route", 0, 12, "bulk-route", seed=5)
    version = _version(stack)

    def start(body: Dict[str, Any]) -> str:
        r = requests.post(f"{stack.backend.url}/preannotate/{proj.id}", json=body, timeout=60)
        assert r.status_code == 202, r.text
        return r.json()["job"]

    def finished(job_id: str) -> Any:
        job = stack.backend.get(f"/jobs/{proj.id}")
        return job if job.get("id") == job_id and job.get("state") in ("succeeded", "failed") else None

    progress_seen: List[Dict[str, Any]] = []
    with Timer("preannotate route: POST /preannotate (Ray, 1 worker) -> job done"):
        job_id = start({"workers": 1})

        def done_or_progress() -> Any:
            job = stack.backend.get(f"/jobs/{proj.id}")
            if job.get("state") == "running" and "done" in (job.get("progress") or {}):
                progress_seen.append(job["progress"])
            return finished(job_id)

        job = wait_until(done_or_progress, 600, poll=0.3, what="the preannotate job")
    RUN["notes"].append(f"preannotate route: {len(progress_seen)} progress views while running, last "
                        f"{progress_seen[-1] if progress_seen else None}")
    assert job["kind"] == "preannotate" and job["state"] == "succeeded", job
    assert job["version"] == version
    assert job["progress"]["listed"] == 12 and job["progress"]["uploaded"] == 12, job["progress"]
    text = json.dumps(job)
    assert stack.ls.url not in text and str(stack.work) not in text and stack.client.pat not in text
    preds = _predictions_by_task(client, proj.id)
    assert sorted(preds) == sorted(proj.images) and all(len(v) == 1 for v in preds.values())
    # again: nothing left to do (the local engine: no Ray)
    job_id = start({"engine": "local"})
    job = wait_until(lambda: finished(job_id), 300, poll=0.5, what="the second preannotate job")
    assert job["state"] == "succeeded" and job["progress"]["already_predicted"] == 12, job
    assert job["progress"]["uploaded"] == 0
    assert all(len(v) == 1 for v in _predictions_by_task(client, proj.id).values())
