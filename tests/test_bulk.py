"""``safire preannotate`` (ml_backend.bulk): offline runs, resume, exactness of uploads, the backend's
``POST /preannotate/<project>``, and one Ray Data run (local Ray on 127.0.0.1, stopped at the end).

The Label Studio side of online runs (listing, import, resume after a kill) is tested against the real
Label Studio 1.23.2 in ``tests/e2e/test_preannotate.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Set

import numpy as np
import pytest
from PIL import Image

from ml_backend import bulk, bulk_io, bulk_state
from ml_backend.lsclient import LabelStudioError
from ml_backend.rle import decode_rle
from ml_backend.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CONFIG = (ROOT / "label_config" / "multi_source.xml").read_text().replace('safire_grid="16"', 'safire_grid="6"')


def _png(seed: int, size: int = 80) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(128, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    y, x = rng.integers(0, size // 2, 2)
    img[y:y + size // 3, x:x + size // 3] = rng.integers(0, 255, (size // 3, size // 3, 3))  # a noisy patch
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture
def export(tmp_path) -> Path:
    tasks = [{"id": 10 + i, "data": {"image": _uri(_png(i))}, "annotations": []} for i in range(4)]
    tasks.append({"id": 20, "data": {"image": _uri(b"not an image at all")}})  # unreadable
    tasks.append({"id": 21, "data": {"photo": "x"}})  # no image key
    p = tmp_path / "export.json"
    p.write_text(json.dumps(tasks))
    return p


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "SAFIRE_THREADS": "1", "SAFIRE_CACHE_MB": "0"})


def _opts(export: Path, tmp_path: Path, **kw: Any) -> bulk.Options:
    return bulk.Options(mode="offline", export_path=str(export), label_config=CONFIG, out=str(tmp_path / "out.json"),
                        engine="local", progress=False, **kw)


def _masks(pred: Dict[str, Any]) -> Dict[str, np.ndarray]:
    out = {}
    for r in pred["result"]:
        if r["type"] == "brushlabels":
            out[r["value"]["brushlabels"][0]] = decode_rle(r["value"]["rle"], r["original_height"], r["original_width"])
    return out


def test_offline_run_writes_importable_tasks_and_accounts_for_every_task(export, tmp_path, settings):
    m = bulk.run(_opts(export, tmp_path), settings)
    assert m.listed == 6 and m.accounted == 6 and m.finished
    assert m.uploaded == 4 and m.skipped == {"unreadable_image": 1, "bad_task": 1}
    assert sorted(t["id"] for t in m.skipped_tasks) == [20, 21]
    out = json.loads((tmp_path / "out.json").read_text())
    assert len(out) == 6 and [len(t["predictions"]) for t in out] == [1, 1, 1, 1, 0, 0]
    for t in out[:4]:
        p = t["predictions"][0]
        assert set(p) >= {"result", "score", "model_version"} and "provenance" not in p
        assert p["model_version"] == m.model_version and p["result"]
        assert all("id" not in t for t in out)  # Label Studio creates new tasks from an import
    manifest = json.loads((tmp_path / "out.json.state" / "manifest.json").read_text())
    assert manifest["accounted"] == manifest["listed"] == 6


def test_bulk_predictions_equal_the_backends_answer(export, tmp_path, settings):
    """The same regions as POST /predict of the backend with the same settings (its own code path)."""
    from ml_backend.app import create_app

    bulk.run(_opts(export, tmp_path), settings)
    out = json.loads((tmp_path / "out.json").read_text())
    tasks = json.loads(export.read_text())[:4]
    app = create_app(settings, jobs=object())
    r = app.test_client().post("/predict", json={"tasks": tasks, "project": "7.1", "label_config": CONFIG})
    assert r.status_code == 200
    for mine, theirs in zip(out[:4], r.get_json()["results"]):
        a, b = _masks(mine["predictions"][0]), _masks(theirs)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        assert mine["predictions"][0]["score"] == pytest.approx(theirs["score"])
        assert 0 <= theirs["uncertainty"] <= 1 and mine["predictions"][0]["uncertainty"] == pytest.approx(theirs["uncertainty"])
        assert mine["predictions"][0]["model_version"] == theirs["model_version"]
        # the provenance record the backend attaches is there too
        meta = mine["predictions"][0]["result"][0]["meta"]["safire_provenance"]
        assert meta["kind"] == "preannotation" and meta["image_sha256"]


def test_offline_resume_after_an_interruption_never_redoes_a_task(export, tmp_path, settings):
    first = bulk.run(_opts(export, tmp_path, limit=2, chunk=1), settings)  # "killed" after 2 outcomes
    assert first.listed == 2
    journal = (tmp_path / "out.json.state" / "journal.jsonl").read_text().splitlines()
    done = {json.loads(line)["id"] for line in journal if json.loads(line)["status"] == "written"}
    assert done == {10, 11}
    second = bulk.run(_opts(export, tmp_path), settings)
    assert second.listed == 6 and second.accounted == 6
    assert second.already_predicted == second.already_predicted_by_earlier_run == 2
    assert second.uploaded == 2
    out = json.loads((tmp_path / "out.json").read_text())
    assert [len(t["predictions"]) for t in out] == [1, 1, 1, 1, 0, 0]


def test_one_run_per_state_folder(tmp_path):
    state = bulk_state.State(tmp_path / "s")
    try:
        with pytest.raises(bulk.BulkError, match="another"):
            bulk_state.State(tmp_path / "s")
    finally:
        state.close()
    bulk_state.State(tmp_path / "s").close()


def test_shard_ranges_cover_every_id_once():
    ranges = bulk_io.shard_ranges(5, 1003, 7)
    ids = [i for a, b in ranges for i in range(a + 1, b)]
    assert ids == list(range(5, 1004))
    assert bulk_io.shard_ranges(0, 0, 4) == []


# ------------------------------------------------------------------------------------------------
# the upload side with a fake Label Studio client: recheck, retries, overwrite
# ------------------------------------------------------------------------------------------------


class FakeLS:
    def __init__(self, version: str) -> None:
        self.version = version
        self.preds: Dict[int, List[Dict[str, Any]]] = {i: [] for i in range(1, 9)}
        self.next_id = 1
        self.fail_after_import = 0  # imports that succeed but whose answer is "lost"
        self.imports = 0

    def tasks_page(self, project, ids=None, page_size=100, **kw):
        return [{"id": i, "predictions_model_versions": ",".join(p["model_version"] for p in self.preds[i])}
                for i in ids if i in self.preds], len(ids)

    def versions_of(self, t):
        return [v for v in t["predictions_model_versions"].split(",") if v]

    def list_predictions(self, task_id=None, **kw):
        return list(self.preds[task_id])

    def delete_prediction(self, pid):
        for lst in self.preds.values():
            lst[:] = [p for p in lst if p["id"] != pid]

    def import_predictions(self, project, preds):
        self.imports += 1
        for p in preds:
            self.preds[p["task"]].append({"id": self.next_id, "model_version": p["model_version"]})
            self.next_id += 1
        if self.fail_after_import > 0:
            self.fail_after_import -= 1
            e = LabelStudioError("read timed out")
            e.retryable = True
            raise e
        return len(preds)


def _sink(tmp_path, ls: FakeLS, overwrite: bool = False):
    m = bulk_state.Manifest(mode="online", model_version=ls.version, project="1", run_id="r")
    state = bulk_state.State(tmp_path / "state")
    sink = bulk_io.Sink(m, state, bulk_state.Progress(8, enabled=False), client=ls, project=1, chunk=3,
                        overwrite=overwrite, log=lambda s: None)
    return m, state, sink


def _outcome(i: int, version: str) -> Dict[str, Any]:
    return {"id": i, "status": "predicted", "prediction": {"result": [], "score": 0.5, "model_version": version}}


def test_upload_rechecks_label_studio_so_no_task_gets_two_predictions_of_a_version(tmp_path, monkeypatch):
    monkeypatch.setattr("ml_backend.lsclient.time.sleep", lambda s: None)
    ls = FakeLS("v1")
    ls.preds[2].append({"id": 100, "model_version": "v1"})  # a user's Retrieve Predictions meanwhile
    ls.fail_after_import = 1  # the first import lands but its answer is lost: the retry must not repeat it
    m, state, sink = _sink(tmp_path, ls)
    for i in (1, 2, 3, 4):
        sink.add(_outcome(i, "v1"))
    sink.flush()
    state.close()
    assert all(len([p for p in ls.preds[i] if p["model_version"] == "v1"]) == 1 for i in (1, 2, 3, 4))
    assert m.accounted == m.listed == 4 and m.upload_failed == 0


def test_overwrite_replaces_existing_predictions(tmp_path):
    ls = FakeLS("v2")
    ls.preds[1] += [{"id": 100, "model_version": "v1"}, {"id": 101, "model_version": "v2"}]
    m, state, sink = _sink(tmp_path, ls, overwrite=True)
    sink.add(_outcome(1, "v2"))
    sink.flush()
    state.close()
    assert [p["model_version"] for p in ls.preds[1]] == ["v2"] and ls.preds[1][0]["id"] not in (100, 101)
    assert m.uploaded == 1


def test_selection_rules():
    t = {"id": 5}
    assert bulk_io.select(t, ["v0"], "v1", False) == "predict"
    assert bulk_io.select(t, ["v0", "v1"], "v1", False) == "has_version"
    assert bulk_io.select(t, ["v1"], "v1", True) == "predict"
    assert bulk_io.select(t, ["v1"], "v1", True, {5}) == "done_earlier"


# ------------------------------------------------------------------------------------------------
# the backend route and the import path
# ------------------------------------------------------------------------------------------------


def test_backend_route_starts_a_background_job_shown_under_jobs(tmp_path, monkeypatch):
    from ml_backend import jobs as J
    from ml_backend.app import create_app

    started: List[List[str]] = []

    class FakeProc:
        pid = 0

        def poll(self) -> None:
            return None

    monkeypatch.setattr(J.subprocess, "Popen", lambda args, **kw: started.append(args) or FakeProc())
    monkeypatch.setattr(J, "pid_alive", lambda pid: True)
    s = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "LABEL_STUDIO_URL": "http://127.0.0.1:9",
                           "LABEL_STUDIO_API_KEY": "k", "SAFIRE_MAX_JOBS": "2",
                           "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"})
    app = create_app(s)
    c = app.test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    assert c.post("/preannotate/3", json={}).status_code == 401  # control endpoints need the configured auth
    assert c.post("/preannotate/3", data="{}", headers=auth).status_code == 415  # JSON only
    for bad in ({"engine": "spark"}, {"workers": 0}, {"workers": "2"}, {"all": True}, {"chunk_size": 10**6}):
        assert c.post("/preannotate/3", json=bad, headers=auth).status_code == 400, bad
    for bad in ("0", "x", "3.5", "..%2F3"):
        assert c.post(f"/preannotate/{bad}", json={}, headers=auth).status_code in (400, 404), bad
    r = c.post("/preannotate/3", json={"engine": "local", "workers": 1}, headers=auth)
    assert r.status_code == 202, r.get_json()
    assert started and started[0][1:3] == ["-m", "ml_backend.bulk"] and started[0][3] == "--job"
    view = c.get("/jobs/3", headers=auth).get_json()
    assert view["kind"] == "preannotate" and view["state"] == "queued"
    text = json.dumps(view)
    assert "127.0.0.1:9" not in text and str(tmp_path) not in text and "label_config" not in view
    rec = J.read_json(next((tmp_path / "models" / "3" / "jobs").glob("*.json")))
    assert rec["preannotate"]["engine"] == "local" and "api_key" not in json.dumps(rec)
    # one bulk job per project; a retraining job of the same project may run beside it
    assert c.post("/preannotate/3", json={}, headers=auth).get_json()["result"].get("already_running")
    app2 = create_app(dataclasses.replace(s, label_studio_api_key=""))
    assert app2.test_client().post("/preannotate/3", json={}, headers=auth).status_code == 503


def test_the_backend_never_imports_ray():
    code = ("import sys; import ml_backend.app, ml_backend.bulk, ml_backend.serve, ml_backend.jobs; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# ------------------------------------------------------------------------------------------------
# Ray Data: one real run
# ------------------------------------------------------------------------------------------------


def _descendants(root: int) -> Set[int]:
    parents: Dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                parents[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        for c, pp in parents.items():
            if pp == p and c not in out:
                out.add(c)
                todo.append(c)
    return out


def _listening(pids: Set[int]) -> List[str]:
    """Local addresses of the TCP sockets the processes listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                out.append(f[1].rsplit(":", 1)[0])
    return out


@pytest.mark.slow
def test_ray_engine_runs_on_loopback_only_and_stops_ray(export, tmp_path, settings):
    pytest.importorskip("ray")
    seen: Dict[str, Any] = {}

    def check(progress: Dict[str, Any]) -> None:
        if "addresses" not in seen:
            seen["addresses"] = _listening(_descendants(os.getpid()))

    opts = _opts(export, tmp_path, workers=1)
    opts.engine = "ray"
    m = bulk.run(opts, settings, progress_callback=check)
    assert m.listed == 6 and m.accounted == 6 and m.uploaded == 4
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    assert seen.get("addresses"), "no listening socket of Ray's processes was seen"
    assert set(seen["addresses"]) <= loopback, seen["addresses"]
    import ray

    assert not ray.is_initialized()
    # same predictions as the local engine
    ray_out = json.loads((tmp_path / "out.json").read_text())
    local = bulk.run(_opts(export, tmp_path, state_dir=str(tmp_path / "s2")), settings)
    assert local.uploaded == 4
    local_out = json.loads((tmp_path / "out.json").read_text())
    for a, b in zip(ray_out[:4], local_out[:4]):
        ma, mb = _masks(a["predictions"][0]), _masks(b["predictions"][0])
        assert ma.keys() == mb.keys() and all(np.array_equal(ma[k], mb[k]) for k in ma)
