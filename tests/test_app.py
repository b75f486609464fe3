"""The Flask backend end to end (test client), with payloads shaped like Label Studio 1.23.2's.

The requests come from tests/fixtures/labelstudio-1.23.2-backend-requests.jsonl (real requests
captured from Label Studio 1.23.2, copied from the shared fixtures); images are served by a local
fake Label Studio over HTTP (tests/test_fetch.py); the model is a random-weights ``micro``
checkpoint; the job manager is a fake.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch

from ml_backend.app import create_app, project_key
from ml_backend.models import ModelRegistry
from ml_backend.rle import decode_rle
from ml_backend.settings import SETTINGS, Settings, SettingsError, settings_table_markdown
from test_fetch import LEGACY, FakeLabelStudioMedia, closed_port, png_bytes

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
MULTI = open(os.path.join(ROOT, "label_config", "multi_source.xml")).read()


def load_fixtures() -> List[Dict[str, Any]]:
    with open(os.path.join(HERE, "fixtures", "labelstudio-1.23.2-backend-requests.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


FIXTURES = load_fixtures()
FIXTURE_CONFIG = next(r for r in FIXTURES if r.get("action") == "START_TRAINING")["body"]["project"]["label_config"]


def predict_body(req: Dict[str, Any], config: str = FIXTURE_CONFIG) -> Dict[str, Any]:
    """A /predict body as Label Studio 1.23.2 sends it, from a captured fixture line."""
    return {"tasks": req["tasks"], "project": f"{req['project_id']}.1795310459", "label_config": config,
            "params": {**req["params_other"], "context": req["context"]}}


def webhook_body(req: Dict[str, Any]) -> Dict[str, Any]:
    return {"action": req["action"], **req["body"]}


BATCH = next(r for r in FIXTURES if r.get("endpoint") == "/predict" and r["context"] is None and len(r["tasks"]) == 2)
CLICK = next(r for r in FIXTURES if r.get("endpoint") == "/predict" and r["context"] and not r["tasks"][0]["predictions"])
CLICK_WITH_PREDICTIONS = next(r for r in FIXTURES if r.get("endpoint") == "/predict" and r["context"]
                              and r["tasks"][0]["predictions"])


class FakeJobs:
    def __init__(self, delay: float = 0.0) -> None:
        self.calls: List[tuple] = []
        self.delay = delay
        self.records: Dict[str, Dict[str, Any]] = {}
        self.event = threading.Event()

    def submit(self, project: str, reason: str = "", label_config: Optional[str] = None) -> Dict[str, Any]:
        time.sleep(self.delay)
        self.calls.append((project, reason, label_config))
        rec = {"id": f"job-{len(self.calls)}", "project": project, "state": "queued", "reason": reason,
               "progress": {"stage": "queued"}, "label_config": label_config}
        self.records[project] = rec
        self.event.set()
        return rec

    def get(self, project: str) -> Optional[Dict[str, Any]]:
        return self.records.get(project)

    def list(self) -> List[Dict[str, Any]]:
        return list(self.records.values())


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """As in production (SAFIRE_THREADS=1): under CPU contention one thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safire.build import build_safire
    from safire.checkpoint import save_checkpoint

    torch.manual_seed(0)
    m = build_safire("micro")
    path = tmp_path_factory.mktemp("ckpt") / "micro.pt"
    save_checkpoint(m, path, variant="micro", config=m.config, model_version="micro-test")
    return str(path)


@pytest.fixture(scope="module")
def ls():
    server = FakeLabelStudioMedia()
    server.files["/data/upload/1/8e5f7079-test2.jpg"] = png_bytes(480, 640, seed=1, fmt="JPEG")
    server.files["/data/upload/1/df4da783-test1.png"] = png_bytes(240, 320, seed=2)
    for name in ("e9caab99-test4.png", "de8494ee-test5.png"):
        server.files[f"/data/upload/1/{name}"] = png_bytes(240, 320, seed=4)
    server.files["/data/upload/1/corrupt.png"] = b"\x89PNG\r\n\x1a\n-not-really-a-png"
    server.files["/data/upload/1/huge.png"] = png_bytes(300, 400, seed=6)
    yield server
    server.close()


@pytest.fixture(scope="module")
def registry(checkpoint, tmp_path_factory):
    return ModelRegistry(tmp_path_factory.mktemp("models"), base_checkpoint=checkpoint, cache_bytes=64 * 2**20)


def make_settings(ls_url: str, checkpoint: str, **env: str) -> Settings:
    base = {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": LEGACY, "SAFIRE_CHECKPOINT": checkpoint,
            "SAFIRE_GRID": "4", "SAFIRE_FETCH_TIMEOUT": "2", "SAFIRE_COMPUTE_SLOTS": "2"}
    base.update(env)
    return Settings.from_env(base)


@pytest.fixture
def make_client(ls, checkpoint, registry):
    def make(jobs: Any = None, registry_: Any = None, **env: str):
        jobs = jobs if jobs is not None else FakeJobs()
        app = create_app(make_settings(ls.url, checkpoint, **env), registry=registry_ or registry, jobs=jobs)
        client = app.test_client()
        client.jobs = jobs
        client.backend = app.extensions["safire"]
        return client

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def decode_region(region: Dict[str, Any]) -> np.ndarray:
    return decode_rle(region["value"]["rle"], region["original_height"], region["original_width"])


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------


def test_settings_defaults_match_declarations():
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env({})
    assert (s.port, s.host, s.workers, s.threads, s.device) == (9090, "127.0.0.1", 1, 1, "cpu")
    assert (s.cache_mb, s.cache_ttl) == (512, 3600)
    assert (s.sources, s.grid, s.seed, s.start_training_each_n_updates) == ("auto", 16, 0, 0)
    assert s.max_image_bytes == 50 * 2**20 and s.max_pixels == 40_000_000 and s.fetch_timeout == 10
    assert s.train_trainable == "adapter+decoder" and s.model_dir == "./models"


def test_settings_validation_lists_every_problem_and_hides_secrets():
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"PORT": "http", "SAFIRE_SOURCES": "99", "LABEL_STUDIO_URL": "localhost:8080",
                           "SAFIRE_THREADS": "0", "BASIC_AUTH_USER": "u", "SAFIRE_TRAIN_TRAINABLE": "head"})
    msg = str(e.value)
    for name in ("PORT", "SAFIRE_SOURCES", "LABEL_STUDIO_URL", "SAFIRE_THREADS", "BASIC_AUTH_PASS",
                 "SAFIRE_TRAIN_TRAINABLE"):
        assert name in msg
    s = Settings.from_env({"LABEL_STUDIO_HOST": "http://ls:8080/", "LABEL_STUDIO_ACCESS_TOKEN": "sekrit",
                           "SAFIRE_ALLOWED_HOSTS": "a.example, https://b.example:9000/x", "SAFIRE_SOURCES": "3",
                           "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p4ss"})
    assert s.label_studio_url == "http://ls:8080" and s.label_studio_api_key == "sekrit"
    assert s.allowed_hosts == ("a.example", "b.example:9000") and s.sources == 3
    assert "sekrit" not in repr(s) and "p4ss" not in repr(s)
    assert s.summary()["label_studio_api_key"] == "<set>"


def test_settings_table_lists_every_variable():
    table = settings_table_markdown()
    for spec in SETTINGS:
        assert f"`{spec.env}`" in table
    for name in ("LABEL_STUDIO_URL", "SAFIRE_THREADS", "START_TRAINING_EACH_N_UPDATES", "LOCAL_FILES_DOCUMENT_ROOT"):
        assert name in table


def test_project_key():
    assert project_key("1.1795310459") == "1"
    assert project_key(12) == "12" and project_key({"id": 3}) == "3"
    assert project_key(None) is None and project_key("") is None


# ------------------------------------------------------------------------------------------------
# health and setup
# ------------------------------------------------------------------------------------------------


def test_health(client):
    for path in ("/health", "/"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.json["status"] == "UP" and r.json["model_class"] == "SafireBackend"
        assert r.json["model_version"] == "micro-test"


def test_setup_returns_model_version_fast(client):
    body = {"project": "1.1795310459", "schema": FIXTURE_CONFIG, "hostname": "http://localhost:8080",
            "access_token": "legacy", "extra_params": {"a": 1}}
    t0 = time.perf_counter()
    r = client.post("/setup", json=body)
    assert time.perf_counter() - t0 < 0.5
    assert r.status_code == 200 and r.json["model_version"] == "micro-test"


@pytest.mark.parametrize("schema, needle", [
    ("<View><Image name='image' value='$image'/></View>", "no <BrushLabels>"),
    ("<View>", "malformed XML"),
    ('<?xml version="1.0"?>' + FIXTURE_CONFIG, "XML declaration"),
    (FIXTURE_CONFIG.replace('<Label value="Tampered" smart="true"', '<Label value="Spliced" smart="true"'),
     "must be identical"),
])
def test_setup_rejects_bad_configs_with_reasons(client, schema, needle):
    r = client.post("/setup", json={"project": "1.1", "schema": schema})
    assert r.status_code == 400
    assert needle in r.json["message"] and r.json["problems"]


def test_setup_without_schema_is_400(client):
    r = client.post("/setup", json={"project": "1.1"})
    assert r.status_code == 400 and "schema" in r.json["message"]


# ------------------------------------------------------------------------------------------------
# pre-annotation
# ------------------------------------------------------------------------------------------------


def test_batch_preannotation_fixture(client):
    # the captured batch, with the captured config asking for two sources (no authentic gate), so
    # every task gets its "Tampered" region and the checks below run on real regions
    config = FIXTURE_CONFIG.replace('<BrushLabels name="mask" toName="image">',
                                    '<BrushLabels name="mask" toName="image" safire_sources="2">')
    assert config != FIXTURE_CONFIG
    r = client.post("/predict", json=predict_body(BATCH, config))
    assert r.status_code == 200
    results = r.json["results"]
    assert len(results) == 2
    sizes = [(480, 640), (240, 320)]
    for res, size in zip(results, sizes):
        assert set(res) >= {"result", "score", "model_version"} and "error" not in res
        assert res["model_version"] == "micro-test" and 0 <= res["score"] <= 1
        assert len(res["result"]) == 1, "binary mode: one region, the union of the non-host sources"
        for region in res["result"]:
            assert region["from_name"] == "mask" and region["to_name"] == "image"
            assert region["value"]["brushlabels"] == ["Tampered"] and region["type"] == "brushlabels"
            assert (region["original_height"], region["original_width"]) == size
            mask = decode_region(region)
            assert mask.shape == size and set(np.unique(mask)) == {0, 255}
            assert 0 < region["score"] <= 1


def test_prediction_score_setting_switches_what_label_studio_sorts_by(make_client):
    """SAFIRE_PREDICTION_SCORE=uncertainty: the stored ``score`` is the uncertainty; the forgery
    score stays in the provenance record, and every pre-annotation has ``uncertainty``."""
    forgery = make_client().post("/predict", json=predict_body(BATCH)).json["results"]
    unsure = make_client(SAFIRE_PREDICTION_SCORE="uncertainty").post("/predict", json=predict_body(BATCH)).json["results"]
    assert len(forgery) == len(unsure) == 2
    for f, u in zip(forgery, unsure):
        assert "error" not in f and "error" not in u
        assert 0 <= f["uncertainty"] <= 1 and u["uncertainty"] == pytest.approx(f["uncertainty"])
        assert f["score"] == pytest.approx(f["provenance"]["score"])
        assert u["score"] == pytest.approx(u["uncertainty"])
        assert u["provenance"]["score"] == pytest.approx(f["provenance"]["score"])
        assert u["provenance"]["uncertainty"] == pytest.approx(u["uncertainty"])
        assert (f["provenance"]["prediction_score"], u["provenance"]["prediction_score"]) == ("forgery", "uncertainty")
    assert any(abs(f["score"] - f["uncertainty"]) > 1e-3 for f in forgery), "the two scores must differ to tell them apart"


def test_one_bad_task_in_three_gives_one_empty_prediction(client, caplog):
    config = MULTI.replace('safire_sources="auto"', 'safire_sources="2"')
    tasks = [{"id": 11, "data": {"image": "/data/upload/1/df4da783-test1.png"}},
             {"id": 12, "data": {"image": "/data/upload/1/missing.png"}},
             {"id": 13, "data": {"image": "/data/upload/1/8e5f7079-test2.jpg"}}]
    with caplog.at_level("WARNING", logger="safire.backend"):
        r = client.post("/predict", json={"tasks": tasks, "project": "1.1795310459", "label_config": config,
                                          "params": {"login": None, "password": None, "context": None}})
    assert r.status_code == 200
    good1, bad, good2 = r.json["results"]
    assert bad["result"] == [] and bad["score"] == 0 and bad["model_version"] == "micro-test"
    assert "404" in bad["error"]
    for good, (h, w) in ((good1, (240, 320)), (good2, (480, 640))):
        assert good["result"], "a good task gets regions"
        assert good["result"][0]["value"]["brushlabels"] == ["Source 1 (host)"]
        assert all(decode_region(reg).shape == (h, w) for reg in good["result"])
    assert any("task 12" in rec.getMessage() for rec in caplog.records)


def test_exif_rotated_jpeg_is_predicted_in_the_orientation_label_studio_shows(client, ls):
    """Browsers (so Label Studio's editor) apply EXIF orientation; masks must be in that frame."""
    import io

    from PIL import Image

    raw = Image.fromarray(np.random.default_rng(3).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 320x240, shown rotated by 90 degrees: 240 wide, 320 high
    buf = io.BytesIO()
    raw.save(buf, "JPEG", exif=exif)
    ls.files["/data/upload/1/rotated-exif6.jpg"] = buf.getvalue()
    config = MULTI.replace('safire_sources="auto"', 'safire_sources="2"')
    r = client.post("/predict", json={"tasks": [{"id": 21, "data": {"image": "/data/upload/1/rotated-exif6.jpg"}}],
                                      "project": "1.1795310459", "label_config": config, "params": {"context": None}})
    (res,) = r.json["results"]
    assert res["result"] and "error" not in res
    for region in res["result"]:
        assert (region["original_width"], region["original_height"]) == (240, 320)


def test_predict_empty_tasks_and_bad_tasks_field(client):
    r = client.post("/predict", json={"tasks": [], "label_config": FIXTURE_CONFIG, "project": "1.1"})
    assert r.status_code == 200 and r.json["results"] == []
    r = client.post("/predict", json={"tasks": "nope", "label_config": FIXTURE_CONFIG})
    assert r.status_code == 400 and "tasks" in r.json["message"]
    r = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}]})
    assert r.status_code == 400 and "label_config" in r.json["message"]
    r = client.post("/predict", json={"tasks": [{"id": 1}], "label_config": "<View/>", "project": "9.1"})
    assert r.status_code == 400 and r.json["problems"]


def test_predict_uses_config_remembered_from_setup(client):
    client.post("/setup", json={"project": "7.1795310459", "schema": FIXTURE_CONFIG})
    r = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "/data/upload/1/df4da783-test1.png"}}],
                                      "project": "7.1795310459"})
    assert r.status_code == 200 and len(r.json["results"]) == 1 and "error" not in r.json["results"][0]


@pytest.mark.parametrize("url, env, needle", [
    ("/data/upload/1/corrupt.png", {}, "cannot decode"),
    ("/data/upload/1/huge.png", {"SAFIRE_MAX_PIXELS": "50000"}, "SAFIRE_MAX_PIXELS"),
    ("/data/upload/1/huge.png", {"SAFIRE_MAX_IMAGE_BYTES": "4096"}, "SAFIRE_MAX_IMAGE_BYTES"),
    ("http://images.example.invalid/x.png", {}, "not allowed"),
    ("/data/local-files/?d=../etc/passwd", {"LOCAL_FILES_SERVING_ENABLED": "true"}, "'..'"),
])
def test_bad_images_give_empty_predictions(make_client, tmp_path, url, env, needle):
    if "LOCAL_FILES_SERVING_ENABLED" in env:
        env = {**env, "LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path)}
    client = make_client(**env)
    r = client.post("/predict", json={"tasks": [{"id": 5, "data": {"image": url}}], "project": "1.1",
                                      "label_config": FIXTURE_CONFIG, "params": {"context": None}})
    assert r.status_code == 200
    (res,) = r.json["results"]
    assert res["result"] == [] and res["score"] == 0 and needle in res["error"]


def test_unreachable_label_studio(ls, checkpoint, registry):
    settings = make_settings(f"http://127.0.0.1:{closed_port()}", checkpoint)
    client = create_app(settings, registry=registry, jobs=FakeJobs()).test_client()
    r = client.post("/predict", json=predict_body(BATCH))
    assert r.status_code == 200
    for res in r.json["results"]:
        assert res["result"] == [] and "LABEL_STUDIO_URL" in res["error"]


# ------------------------------------------------------------------------------------------------
# interactive
# ------------------------------------------------------------------------------------------------


def test_interactive_click_fixture(client):
    body = predict_body(CLICK)
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    (res,) = r.json["results"]
    assert res["model_version"] == "micro-test" and "error" not in res
    for region in res["result"]:
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Tampered"]
        assert decode_region(region).shape == (240, 320)
    # the second click on the same image reuses the cached embedding
    counters = client.backend.metrics.snapshot()["counters"]
    before = counters.get("click_embedding_cached", 0)
    assert client.post("/predict", json=body).status_code == 200
    assert client.backend.metrics.snapshot()["counters"]["click_embedding_cached"] == before + 1


def test_interactive_click_with_existing_predictions_fixture(client):
    r = client.post("/predict", json=predict_body(CLICK_WITH_PREDICTIONS))
    assert r.status_code == 200 and len(r.json["results"]) == 1 and "error" not in r.json["results"][0]


def _kp(x, y, label, positive=True):
    return {"original_width": 320, "original_height": 240, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
            "is_positive": positive, "id": f"k{x}{y}", "from_name": "click", "to_name": "image",
            "type": "keypointlabels", "origin": "manual"}


def test_interactive_negative_points_and_rectangle(client, monkeypatch):
    seen = {}
    backend = client.backend
    real = backend.registry.base.predictor.predict

    def spy(points, labels, box=None, embedding=None):
        seen.update(points=points, labels=labels, box=box)
        return real(points, labels, box=box, embedding=embedding)

    monkeypatch.setattr(backend.registry.base.predictor, "predict", spy)
    task = {"id": 4, "data": {"image": "/data/upload/1/e9caab99-test4.png"}, "annotations": [], "drafts": [],
            "predictions": []}
    ctx = {"result": [_kp(50, 50, "Source 3"), _kp(10, 10, "Source 3", positive=False),
                      _kp(90, 90, "Source 3", positive=False)]}
    r = client.post("/predict", json={"tasks": [task], "project": "1.1", "label_config": MULTI,
                                      "params": {"context": ctx}})
    assert r.status_code == 200
    assert seen["labels"].tolist() == [1, 0, 0]
    np.testing.assert_allclose(seen["points"][0], [160, 120])
    for region in r.json["results"][0]["result"]:
        assert region["value"]["brushlabels"] == ["Source 3"] and region["from_name"] == "source"
    rect = {"original_width": 320, "original_height": 240, "image_rotation": 0,
            "value": {"x": 25, "y": 25, "width": 50, "height": 50, "rotation": 0, "rectanglelabels": ["Source 2"]},
            "is_positive": True, "id": "r1", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "origin": "manual"}
    r = client.post("/predict", json={"tasks": [task], "project": "1.1", "label_config": MULTI,
                                      "params": {"context": {"result": [rect]}}})
    assert r.status_code == 200
    assert seen["points"] is None and seen["box"] == pytest.approx((80, 60, 240, 180))
    for region in r.json["results"][0]["result"]:
        assert region["value"]["brushlabels"] == ["Source 2"]


def test_interactive_context_without_prompts_gives_empty_result(client):
    task = {"id": 4, "data": {"image": "/data/upload/1/e9caab99-test4.png"}}
    brush = {"type": "brushlabels", "from_name": "mask", "to_name": "image", "value": {"brushlabels": ["Tampered"]}}
    r = client.post("/predict", json={"tasks": [task], "project": "1.1", "label_config": FIXTURE_CONFIG,
                                      "params": {"context": {"result": [brush]}}})
    assert r.status_code == 200 and r.json["results"][0]["result"] == []


# ------------------------------------------------------------------------------------------------
# webhook and jobs
# ------------------------------------------------------------------------------------------------


def test_start_training_submits_a_job_fast(client):
    req = next(r for r in FIXTURES if r.get("action") == "START_TRAINING")
    t0 = time.perf_counter()
    r = client.post("/webhook", json=webhook_body(req))
    assert time.perf_counter() - t0 < 0.1
    assert r.status_code == 201 and r.json["status"] == "ok" and r.json["job"] == "job-1"
    assert "label_config" not in r.json["result"]
    assert client.jobs.calls == [("1", "START_TRAINING", FIXTURE_CONFIG)]


def test_annotations_trigger_training_every_n_and_cancelled_are_ignored(make_client):
    client = make_client(START_TRAINING_EACH_N_UPDATES="2")
    created = next(r for r in FIXTURES if r.get("action") == "ANNOTATION_CREATED"
                   and not r["body"]["annotation"]["was_cancelled"])
    updated = next(r for r in FIXTURES if r.get("action") == "ANNOTATION_UPDATED")
    cancelled = next(r for r in FIXTURES if r.get("action") == "ANNOTATION_CREATED"
                     and r["body"]["annotation"]["was_cancelled"])
    r = client.post("/webhook", json=webhook_body(cancelled))
    assert r.status_code == 200 and r.json["status"] == "ignored"
    r = client.post("/webhook", json=webhook_body(created))
    assert r.status_code == 201 and r.json["updates"] == 1
    assert client.jobs.calls == []
    r = client.post("/webhook", json=webhook_body(cancelled))
    assert r.json["status"] == "ignored"
    r = client.post("/webhook", json=webhook_body(updated))
    assert r.status_code == 201 and r.json["training"] == "submitted"
    assert client.jobs.event.wait(5)
    assert client.jobs.calls[0][:2] == ("1", "2 annotation updates")
    client.post("/webhook", json=webhook_body(created))
    time.sleep(0.05)
    assert len(client.jobs.calls) == 1  # 3 updates: next job at 4


def test_webhook_answers_fast_even_when_submit_is_slow(make_client):
    client = make_client(jobs=FakeJobs(delay=0.5), START_TRAINING_EACH_N_UPDATES="1")
    created = next(r for r in FIXTURES if r.get("action") == "ANNOTATION_CREATED"
                   and not r["body"]["annotation"]["was_cancelled"])
    t0 = time.perf_counter()
    r = client.post("/webhook", json=webhook_body(created))
    assert time.perf_counter() - t0 < 0.1
    assert r.status_code == 201
    assert client.jobs.event.wait(5)


def test_webhook_other_events_and_errors(client):
    r = client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 1}})
    assert r.status_code == 200 and r.json["status"] == "Unknown event"
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {}})
    assert r.status_code == 400
    r = client.post("/webhook", data="not json", content_type="application/json")
    assert r.status_code == 400 and r.json["error"] == "Bad Request"
    assert client.jobs.calls == []


def test_jobs_and_versions_endpoints(client):
    assert client.get("/jobs").json == {"jobs": []}
    r = client.get("/jobs/1")
    assert r.status_code == 404 and "project 1" in r.json["message"]
    req = next(r for r in FIXTURES if r.get("action") == "START_TRAINING")
    client.post("/webhook", json=webhook_body(req))
    job = client.get("/jobs/1").json
    assert job["state"] == "queued" and job["project"] == "1" and "label_config" not in job
    assert [j["id"] for j in client.get("/jobs").json["jobs"]] == ["job-1"]
    v = client.get("/versions/1").json
    assert v["project"] == "1" and v["current"] == "micro-test" and v["versions"] == []
    assert client.get("/versions/..").status_code == 400


def test_a_candidate_is_promoted_by_request_and_rolled_back(client, registry, checkpoint):
    from ml_backend.models import publish_version

    publish_version(registry.model_dir, "77", "77-a", checkpoint, {"status": "published"})
    publish_version(registry.model_dir, "77", "77-b", checkpoint, {"status": "candidate",
                    "decision": {"outcome": "candidate", "reason": "not better"}}, make_current=False)
    listed = {v["version"]: v["status"] for v in client.get("/versions/77").json["versions"]}
    assert listed == {"77-a": "current", "77-b": "candidate"}
    r = client.post("/versions/77/77-b/promote")
    assert r.status_code == 200 and r.json == {"project": "77", "current": "77-b", "replaced": "77-a"}
    listed = {v["version"]: v["status"] for v in client.get("/versions/77").json["versions"]}
    assert listed == {"77-a": "previous", "77-b": "current"}
    assert registry.get("77").version == "77-b"
    assert client.post("/versions/77/77-a/promote").json["current"] == "77-a"  # rollback
    assert client.post("/versions/77/nope/promote").status_code == 404
    assert client.post("/versions/77/bad%20name!/promote").status_code == 400
    assert client.post("/versions/x/77-a/promote").status_code == 400


def test_metrics(client):
    client.get("/health")
    client.post("/predict", json=predict_body(CLICK))
    m = client.get("/metrics").json
    ep = m["endpoints"]["POST /predict"]
    assert ep["count"] >= 1 and {"p50_ms", "p95_ms"} <= set(ep["latency"])
    assert m["models"]["base"] == "micro-test"
    assert {"hits", "misses", "bytes", "max_bytes"} <= set(m["embedding_cache"])
    assert "by_state" in m["jobs"] and m["compute"]["slots"] == 2


# ------------------------------------------------------------------------------------------------
# prewarm
# ------------------------------------------------------------------------------------------------


def test_prewarm_makes_the_first_click_warm(client):
    tasks = [{"id": 21, "data": {"image": "/data/upload/1/de8494ee-test5.png"}}, {"id": 22, "data": {}}]
    r = client.post("/prewarm", json={"project": "1.1795310459", "tasks": tasks, "label_config": FIXTURE_CONFIG})
    assert r.status_code == 202 and r.json["queued"] == 1 and len(r.json["problems"]) == 1
    r2 = client.post("/prewarm", json={"urls": ["/data/upload/1/de8494ee-test5.png"], "project": "1"})
    assert r2.status_code == 202 and r2.json["queued"] + r2.json["already_cached"] == 1
    assert client.backend.wait_prewarm(10)
    before = client.backend.metrics.snapshot()["counters"].get("click_embedding_cached", 0)
    body = predict_body(CLICK)
    body["tasks"] = [{**body["tasks"][0], "id": 21, "data": {"image": "/data/upload/1/de8494ee-test5.png"}}]
    assert client.post("/predict", json=body).status_code == 200
    assert client.backend.metrics.snapshot()["counters"]["click_embedding_cached"] == before + 1
    assert client.post("/prewarm", json={}).status_code == 400
    assert client.post("/prewarm", json={"urls": [1]}).status_code == 400


# ------------------------------------------------------------------------------------------------
# auth and errors
# ------------------------------------------------------------------------------------------------


def test_basic_auth(make_client):
    client = make_client(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret")
    r = client.post("/setup", json={"project": "1.1", "schema": FIXTURE_CONFIG})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert r.json["status"] == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    assert client.post("/setup", json={"project": "1.1", "schema": FIXTURE_CONFIG}, headers=bad).status_code == 401
    assert client.post("/setup", json={"project": "1.1", "schema": FIXTURE_CONFIG}, headers=good).status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=good).status_code == 200
    assert client.get("/health").status_code == 200  # health stays open


def test_json_errors(make_client):
    client = make_client(SAFIRE_MAX_REQUEST_BYTES="2048")
    r = client.get("/nope")
    assert r.status_code == 404 and r.json["error"] == "Not Found"
    r = client.get("/predict")
    assert r.status_code == 405 and "POST" in r.headers["Allow"] and r.json["status"] == 405
    r = client.post("/setup", data="{broken", content_type="application/json")
    assert r.status_code == 400 and "JSON" in r.json["message"]
    r = client.post("/setup", json=[1, 2])
    assert r.status_code == 400 and "object" in r.json["message"]
    r = client.post("/setup", data="", content_type="application/json")
    assert r.status_code == 400 and "empty" in r.json["message"]
    r = client.post("/predict", json={"tasks": [], "pad": "x" * 5000})
    assert r.status_code == 413 and "SAFIRE_MAX_REQUEST_BYTES" in r.json["message"]


class BrokenRegistry:
    def __init__(self, base):
        self.base = base
        self.cache = None

    def get(self, project=None, wait=None):
        raise RuntimeError("secret internal detail")

    def versions(self, project):
        raise RuntimeError("secret internal detail")


def test_500_has_error_id_and_no_traceback(make_client, registry, caplog):
    client = make_client(registry_=BrokenRegistry(registry.base))
    with caplog.at_level("ERROR", logger="safire.backend"):
        r = client.post("/setup", json={"project": "1.1", "schema": FIXTURE_CONFIG})
    assert r.status_code == 500
    assert r.json["error_id"] and "secret" not in r.get_data(as_text=True)
    assert "Traceback" not in r.get_data(as_text=True)
    assert any(r.json["error_id"] in rec.getMessage() for rec in caplog.records)


def test_request_log_line_has_no_body(client, caplog):
    with caplog.at_level("INFO", logger="safire.backend"):
        client.post("/predict", json=predict_body(BATCH))
    lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("POST /predict")]
    assert lines and "tasks=2" in lines[-1] and "ms" in lines[-1]
    assert all("data/upload" not in line and LEGACY not in line for line in lines)


def test_model_loaded_once_per_app(ls, checkpoint, tmp_path, monkeypatch):
    import ml_backend.models as models

    calls = []
    real = models.build_safire

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(models, "build_safire", counting)
    settings = make_settings(ls.url, checkpoint, MODEL_DIR=str(tmp_path / "m"), SAFIRE_THREADS="1")
    client = create_app(settings, jobs=FakeJobs()).test_client()
    for _ in range(3):
        assert client.post("/setup", json={"project": "1.1", "schema": FIXTURE_CONFIG}).status_code == 200
    assert client.post("/predict", json=predict_body(CLICK)).status_code == 200
    assert len(calls) == 1


def test_job_manager_created_when_not_injected(ls, checkpoint, registry):
    from ml_backend.jobs import JobManager

    app = create_app(make_settings(ls.url, checkpoint), registry=registry)
    assert isinstance(app.extensions["safire"].jobs(), JobManager)
    r = app.test_client().get("/jobs")
    assert r.status_code == 200 and r.json == {"jobs": []}


def test_unavailable_job_manager_gives_503_and_serving_goes_on(ls, checkpoint, registry, monkeypatch):
    import ml_backend.jobs

    def broken(*a, **kw):
        raise ImportError("training extras missing")

    monkeypatch.setattr(ml_backend.jobs, "JobManager", broken)
    client = create_app(make_settings(ls.url, checkpoint), registry=registry).test_client()
    r = client.get("/jobs")
    assert r.status_code == 503 and "retraining is unavailable" in r.json["message"]
    assert "training extras missing" in r.json["message"]
    req = next(x for x in FIXTURES if x.get("action") == "START_TRAINING")
    assert client.post("/webhook", json=webhook_body(req)).status_code == 503
    assert client.post("/predict", json=predict_body(CLICK)).status_code == 200


def test_serve_check_and_options(checkpoint, tmp_path, monkeypatch, capsys):
    import logging

    from ml_backend import serve

    root_level = logging.getLogger().level
    monkeypatch.setenv("SAFIRE_CHECKPOINT", checkpoint)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SAFIRE_THREADS", "1")
    monkeypatch.setenv("PORT", "9090")  # main() writes --port into os.environ; monkeypatch restores it
    try:
        assert serve.main(["--check", "--port", "9191"]) == 0
    finally:
        logging.getLogger().setLevel(root_level)
    out = capsys.readouterr().out
    assert "micro-test" in out and "check OK" in out
    monkeypatch.setenv("SAFIRE_CHECKPOINT", str(tmp_path / "missing.pt"))
    assert serve.main(["--check"]) == 2
    assert "not a file" in capsys.readouterr().err
    monkeypatch.setenv("PORT", "not-a-port")
    assert serve.main(["--check"]) == 2
    opts = serve.gunicorn_options(Settings.from_env({"PORT": "9999", "THREADS": "4", "HOST": "127.0.0.1"}))
    assert opts["bind"] == "127.0.0.1:9999" and opts["worker_class"] == "gthread" and opts["threads"] == 4
    assert opts["timeout"] > 100 and opts["preload_app"] is False


def test_interactive_context_with_empty_result_is_not_a_partition(client):
    task = {"id": 4, "data": {"image": "/data/upload/1/not-there.png"}}  # would 404 if fetched
    r = client.post("/predict", json={"tasks": [task], "project": "1.1", "label_config": FIXTURE_CONFIG,
                                      "params": {"context": {"result": []}}})
    assert r.status_code == 200 and r.json["results"][0]["result"] == []
    assert "404" not in r.json["results"][0]["error"] and "context" in r.json["results"][0]["error"]


def test_large_partitions_keep_per_source_maps_at_a_working_resolution(client, monkeypatch):
    """Above PARTITION_MAP_BYTES the partition runs at a lower resolution and each region is scaled
    to the original size only when it is encoded: masks still match the image Label Studio shows."""
    import importlib

    import ml_backend.backend as A

    P = importlib.import_module("safire.partition")
    seen = []
    real = P.partition

    def spy(predictor, image, num_sources="auto", **kw):
        res = real(predictor, image, num_sources, **kw)
        seen.append((kw.get("out_hw"), res.labels.shape, res.probs.shape))
        return res

    monkeypatch.setattr(P, "partition", spy)
    config = MULTI.replace('safire_sources="auto"', 'safire_sources="3"')
    task = {"id": 41, "data": {"image": "/data/upload/1/8e5f7079-test2.jpg"}}  # 640x480
    body = {"tasks": [task], "project": "1.1795310459", "label_config": config, "params": {"context": None}}
    full = client.post("/predict", json=body).json["results"][0]
    monkeypatch.setattr(A, "PARTITION_MAP_BYTES", 20 * 3 * 120 * 160)  # room for 3 maps of 160x120
    small = client.post("/predict", json=body).json["results"][0]
    (hw_full, lab_full, _), (hw_small, lab_small, probs_small) = seen
    assert hw_full is None and lab_full == (480, 640)
    assert hw_small == lab_small == (120, 160) and probs_small[1:] == (120, 160)
    for res in (full, small):
        assert "error" not in res and res["result"]
        for region in res["result"]:
            assert (region["original_height"], region["original_width"]) == (480, 640)
            assert decode_region(region).shape == (480, 640)
    # the same labels, the same sources, masks that agree up to the coarser boundary
    assert [r["value"]["brushlabels"] for r in small["result"]] == [r["value"]["brushlabels"] for r in full["result"]]
    a = decode_region(full["result"][0]) > 0
    b = decode_region(small["result"][0]) > 0
    assert (a == b).mean() > 0.9


def test_work_hw():
    from ml_backend.runtime import work_hw

    assert work_hw((480, 640), 4) == (480, 640)
    h, w = work_hw((5000, 8000), 16, budget=256 * 2**20)
    assert 20 * 16 * h * w <= 256 * 2**20 and abs(w / h - 1.6) < 0.01
    assert work_hw((3, 100_000), 2, budget=1000) == (1, 25)


def test_binary_projects_use_two_sources_with_the_authentic_gate(client, monkeypatch):
    import importlib

    P = importlib.import_module("safire.partition")  # the module (the package exports a function of that name)

    calls = []
    real = P.partition

    def spy(predictor, image, num_sources="auto", **kw):
        calls.append((num_sources, kw))
        return real(predictor, image, num_sources, **kw)

    monkeypatch.setattr(P, "partition", spy)
    binary = open(os.path.join(ROOT, "label_config", "binary.xml")).read()
    task = {"id": 31, "data": {"image": "/data/upload/1/df4da783-test1.png"}}
    for config, expected in ((binary, (2, True)), (binary.replace('safire_grid="16"', 'safire_grid="4" safire_sources="3"'), (3, None)),
                             (MULTI, ("auto", None))):
        calls.clear()
        r = client.post("/predict", json={"tasks": [task], "project": "1.1795310459", "label_config": config,
                                          "params": {"context": None}})
        assert r.status_code == 200 and "error" not in r.json["results"][0]
        (num_sources, kw), = calls
        assert (num_sources, kw.get("gate_authentic")) == expected
        assert "single_source_threshold" not in kw  # the checkpoint's calibration decides
    # a project's own authentic threshold reaches the partition (multi and binary)
    for config in (MULTI.replace('<BrushLabels ', '<BrushLabels safire_authentic_threshold="0.3" ', 1),
                   binary.replace('safire_grid="16"', 'safire_grid="4" safire_authentic_threshold="0.3"')):
        calls.clear()
        r = client.post("/predict", json={"tasks": [task], "project": "1.1795310459", "label_config": config,
                                          "params": {"context": None}})
        assert r.status_code == 200 and "error" not in r.json["results"][0], r.json
        (num_sources, kw), = calls
        assert kw["single_source_threshold"] == 0.3
