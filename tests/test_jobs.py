"""Retraining end to end with the micro model: queued, runs in its own process, publishes a
version, the registry switches to it; a failing job leaves serving intact."""

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from conftest import toy_forgery
from fake_label_studio import FakeLabelStudio
from ml_backend.jobs import JobManager
from ml_backend.models import ModelRegistry, publish_version
from ml_backend.rle import encode_rle
from safire.build import build_safire
from safire.checkpoint import save_checkpoint

LABELS = ["Source 1 (host)", "Source 2", "Source 3", "Source 4"]


def _task(i, item):
    h, w = item.labels.shape
    result = []
    for s in range(1, int(item.labels.max()) + 1):
        mask = (item.labels == s).astype(np.uint8) * 255
        result.append({"id": f"r{i}_{s}", "from_name": "source", "to_name": "image", "type": "brushlabels",
                       "original_width": w, "original_height": h, "image_rotation": 0,
                       "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": [LABELS[s]]}})
    return {"id": i, "data": {"image": f"/data/upload/1/img{i}.png"},
            "annotations": [{"id": 100 + i, "result": result, "was_cancelled": False,
                             "updated_at": "2026-11-22T10:00:00Z", "ground_truth": False}]}


@pytest.fixture
def base_checkpoint(tmp_path):
    m = build_safire("micro")
    p = tmp_path / "micro.pt"
    save_checkpoint(m, p, variant="micro", config=m.config, model_version="micro-base")
    return str(p)


@pytest.fixture
def fake_ls(monkeypatch):
    with FakeLabelStudio() as ls:
        ls.projects[1] = {"id": 1, "label_config": open("label_config/multi_source.xml").read()}
        tasks = []
        for i in range(6):
            item = toy_forgery(i, 64, 2 + i % 2)
            buf = io.BytesIO()
            Image.fromarray(item.image).save(buf, format="PNG")
            ls.files[f"/data/upload/1/img{i}.png"] = buf.getvalue()
            tasks.append(_task(i, item))
        ls.exports[1] = tasks
        monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls.token)
        monkeypatch.setenv("SAFIRE_TRAIN_STEPS", "3")
        monkeypatch.setenv("SAFIRE_TRAIN_BATCH", "2")
        monkeypatch.setenv("SAFIRE_VAL_FRACTION", "0.34")
        monkeypatch.setenv("SAFIRE_TRAIN_MIN_TASKS", "2")
        monkeypatch.setenv("SAFIRE_TRAIN_REPLAY", "0")
        yield ls


@pytest.mark.slow
def test_retraining_job_publishes_a_version_and_serving_switches(tmp_path, base_checkpoint, fake_ls, monkeypatch):
    monkeypatch.setenv("SAFIRE_TRAIN_MIN_GAIN", "-1")  # any child counts as better: the publishing path
    monkeypatch.setenv("SAFIRE_TRAIN_REPLAY", "0.5")  # and generated composites mixed into training
    registry = ModelRegistry(tmp_path / "models", base_checkpoint, poll_seconds=0)
    jobs = JobManager(registry)
    assert registry.get("1").version == "micro-base"
    t0 = time.perf_counter()
    rec = jobs.submit("1", "START_TRAINING")
    assert time.perf_counter() - t0 < 1.0  # returns at once; the work is in another process
    assert rec["state"] == "queued" and rec["parent_version"] == "micro-base"
    again = jobs.submit("1", "ANNOTATION_CREATED")
    assert again.get("already_running") and again["id"] == rec["id"]  # one job per project
    done = jobs.wait("1", timeout=240)
    assert done["state"] == "succeeded", open(done["log"]).read()[-3000:]
    version = done["version"]
    assert jobs.current_version("1") == version
    served = registry.get("1")
    assert served.version == version and served.model.meta["variant"] == "micro"
    man = json.loads((tmp_path / "models" / "1" / version / "manifest.json").read_text())
    assert man["parent_version"] == "micro-base"
    assert man["data"]["samples"] == 6 and man["data"]["splits"] == {"train": 4, "val": 2}
    assert set(man["metrics"]["before"]) >= {"miou_auto", "ari_auto"} and man["metrics"]["after"]
    assert man["status"] == "published" and man["decision"]["outcome"] == "published"
    # the job record carries the decision and the before/after numbers
    assert done["outcome"] == "published" and done["decision"]["val_images"] == 2
    assert len(done["data"]["val_tasks"]) == 2 and set(done["data"]["val_tasks"]) <= set(range(6))
    assert done["data"]["replay"] == 8  # 4 training tasks at share 0.5 -> 4, raised to the minimum of 8
    assert done["metrics"]["before"]["miou_k"] == done["decision"]["before"]
    assert done["metrics"]["after"]["miou_k"] == done["decision"]["after"]
    # and how well the child learned the tasks it trained on (all 4 here: fewer than the 10 asked)
    fit = done["fit"]
    assert fit["tasks"] == 4 and fit["metric"] == "miou_k" and isinstance(fit["learned"], bool)
    assert fit["gain"] == pytest.approx(fit["after"] - fit["before"], abs=2e-4) and "training tasks" in fit["note"]
    assert man["fit"]["after"] == fit["after"]
    assert registry.versions("1")["versions"][0]["status"] == "current"
    # Other projects still use the base model.
    assert registry.get("2").version == "micro-base"


@pytest.mark.slow
def test_a_child_that_is_not_better_is_kept_as_a_candidate(tmp_path, base_checkpoint, fake_ls, monkeypatch):
    """No child can beat its parent by more than 1.0 pmIoU: it must not replace the serving version."""
    monkeypatch.setenv("SAFIRE_TRAIN_MIN_GAIN", "1.0")
    registry = ModelRegistry(tmp_path / "models", base_checkpoint, poll_seconds=0)
    jobs = JobManager(registry)
    jobs.submit("1")
    done = jobs.wait("1", timeout=240)
    assert done["state"] == "succeeded", open(done["log"]).read()[-3000:]
    assert done["outcome"] == "candidate" and "kept as a candidate" in done["decision"]["reason"]
    assert done["decision"]["before"] is not None and done["decision"]["after"] is not None
    assert jobs.current_version("1") is None and registry.get("1").version == "micro-base"
    listed = registry.versions("1")
    assert listed["current"] == "micro-base"
    (cand,) = listed["versions"]
    assert cand["version"] == done["version"] and cand["status"] == "candidate"
    assert cand["decision"]["outcome"] == "candidate" and cand["metrics"]["after"]


@pytest.mark.slow
def test_too_few_annotations_train_nothing_and_say_so(tmp_path, base_checkpoint, fake_ls, monkeypatch):
    monkeypatch.setenv("SAFIRE_TRAIN_MIN_TASKS", "10")  # the project has 6 annotated tasks
    registry = ModelRegistry(tmp_path / "models", base_checkpoint, poll_seconds=0)
    jobs = JobManager(registry)
    jobs.submit("1")
    done = jobs.wait("1", timeout=120)
    assert done["state"] == "succeeded" and done["outcome"] == "not_enough_data"
    assert "only 6 usable annotated task(s)" in done["decision"]["reason"] and done["version"] is None
    assert registry.versions("1")["versions"] == [] and registry.get("1").version == "micro-base"


def test_training_fit_says_whether_the_child_learned_its_own_tasks():
    from ml_backend.retrain import training_fit

    fit = training_fit({"miou_k": 0.43, "count": 10}, {"miou_k": 0.46, "count": 10})
    assert fit["tasks"] == 10 and fit["gain"] == pytest.approx(0.03) and fit["learned"] is False
    assert "did not learn them" in fit["note"] and "0.430 -> 0.460" in fit["note"]
    fit = training_fit({"miou_k": 0.43, "count": 10}, {"miou_k": 0.61, "count": 10})
    assert fit["learned"] is True and "it learned them" in fit["note"]
    assert training_fit({}, {}) == {}  # not measured (SAFIRE_TRAIN_FIT_TASKS=0)


@pytest.mark.parametrize("before,after,min_gain,outcome", [
    (0.60, 0.50, 0.0, "candidate"),   # worse child
    (0.60, 0.60, 0.0, "candidate"),   # a tie is not better
    (0.60, 0.62, 0.05, "candidate"),  # better, but not by the required margin
    (0.60, 0.70, 0.05, "published"),
])
def test_decide_promotes_only_a_better_child(before, after, min_gain, outcome):
    from ml_backend.retrain import decide

    d = decide({"miou_k": before, "count": 10}, {"miou_k": after, "count": 10}, min_gain)
    assert d.outcome == outcome and d.val_images == 10
    assert d.gain == pytest.approx(after - before, abs=1e-4)
    assert f"{before:.3f} -> {after:.3f}" in d.reason


def test_decide_falls_back_to_keeping_authentic_images_whole_when_validation_has_no_forgery():
    from ml_backend.retrain import decide

    d = decide({"auth_split_rate": 0.5, "count": 2}, {"auth_split_rate": 0.0, "count": 2})
    assert d.metric == "authentic_kept_whole" and d.outcome == "published" and d.gain == 0.5 and d.val_images == 2
    assert decide({"auth_split_rate": 0.0, "count": 1}, {"auth_split_rate": 0.0, "count": 1}).outcome == "candidate"


def test_decide_without_validation_keeps_a_candidate():
    from ml_backend.retrain import decide, too_few

    assert decide({}, {}).outcome == "candidate"
    assert too_few(9, 10).outcome == "not_enough_data" and too_few(10, 10) is None


@pytest.mark.slow
def test_failing_job_leaves_the_serving_model_untouched(tmp_path, base_checkpoint, fake_ls):
    registry = ModelRegistry(tmp_path / "models", base_checkpoint, poll_seconds=0)
    # A previously published version is serving.
    prev = build_safire("micro")
    ck = tmp_path / "prev.pt"
    save_checkpoint(prev, ck, variant="micro", config=prev.config, model_version="v-prev")
    publish_version(tmp_path / "models", "1", "1-prev", ck, {"parent_version": "micro-base"})
    assert registry.get("1").version == "1-prev"
    fake_ls.fail_export = True
    jobs = JobManager(registry)
    jobs.submit("1")
    done = jobs.wait("1", timeout=120)
    assert done["state"] == "failed" and "HTTP 500" in done["error"]
    assert registry.get("1").version == "1-prev"
    assert jobs.current_version("1") == "1-prev"


def test_dead_job_process_is_reported_failed(tmp_path, base_checkpoint):
    registry = ModelRegistry(tmp_path / "models", base_checkpoint)
    jobs = JobManager(registry)
    d = tmp_path / "models" / "7" / "jobs"
    d.mkdir(parents=True)
    (d / "old.json").write_text(json.dumps({"id": "old", "project": "7", "state": "running", "created": 1.0,
                                             "pid": 999999999}))
    rec = jobs.get("7")
    assert rec["state"] == "failed" and "gone" in rec["error"]


def test_publish_is_atomic_and_refuses_duplicates(tmp_path, base_checkpoint):
    publish_version(tmp_path, "3", "v1", base_checkpoint, {"a": 1})
    assert (tmp_path / "3" / "CURRENT").read_text().strip() == "v1"
    assert not [p for p in (tmp_path / "3").iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(FileExistsError):
        publish_version(tmp_path, "3", "v1", base_checkpoint, {})
    with pytest.raises(ValueError):
        publish_version(tmp_path, "../x", "v2", base_checkpoint, {})


def test_broken_published_version_keeps_previous_model(tmp_path, base_checkpoint):
    registry = ModelRegistry(tmp_path / "m", base_checkpoint, poll_seconds=0)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"corrupt")
    publish_version(tmp_path / "m", "4", "broken", bad, {})
    assert registry.get("4").version == "micro-base"
    assert "cannot load" in registry.versions("4")["error"]


def test_a_new_version_loads_in_the_background_when_the_caller_cannot_wait(tmp_path, base_checkpoint, monkeypatch):
    """/setup (3 s budget in Label Studio) gets the serving model at once while a new one loads."""
    import threading

    registry = ModelRegistry(tmp_path / "models", base_checkpoint, poll_seconds=0)
    publish_version(tmp_path / "models", "7", "v1", base_checkpoint, {"version": "v1"})
    release = threading.Event()
    slow_load = registry._load_version

    def gated(project, version):
        release.wait(10)
        return slow_load(project, version)

    monkeypatch.setattr(registry, "_load_version", gated)
    t0 = time.perf_counter()
    assert registry.get("7", wait=0.2).version == "micro-base"  # gives up waiting for the load
    assert time.perf_counter() - t0 < 1.0
    release.set()
    assert registry.get("7").version == "v1"  # a waiting caller gets the new version
    deadline = time.monotonic() + 10
    while registry.get("7", wait=0).version != "v1" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert registry.get("7", wait=0).version == "v1"
    # a quick load within the budget is answered at once
    publish_version(tmp_path / "models", "7", "v2", base_checkpoint, {"version": "v2"})
    assert registry.get("7", wait=5.0).version == "v2"
