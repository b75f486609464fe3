"""Provenance of predictions (safire predict, the backend, export) and the /explain panel.

Tiny random-weights models only; the backend tests reuse the fixtures of tests/test_app.py (a
micro checkpoint, a fake Label Studio serving the images over HTTP).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ml_backend.export import ProvenanceIndex, export_dataset, load_provenance
from ml_backend.label_config import parse_label_config
from ml_backend.predictions import attach_provenance, find_provenance, partition_to_prediction
from ml_backend.rle import encode_rle
from safire.provenance import SCHEMA, build_provenance, check_image, provenance_summary, sha256_bytes, sha256_file
from test_app import (  # noqa: F401  (pytest fixtures)
    BATCH,
    FIXTURE_CONFIG,
    MULTI,
    checkpoint,
    ls,
    make_client,
    one_torch_thread,
    predict_body,
    registry,
)

ROOT = Path(__file__).resolve().parents[1]
TWO_SOURCES = FIXTURE_CONFIG.replace('<BrushLabels name="mask" toName="image">',
                                     '<BrushLabels name="mask" toName="image" safire_sources="2">')
WITH_TEXTAREA = TWO_SOURCES.replace("</View>", '  <TextArea name="safire_provenance" toName="image"/>\n</View>')


def served(ls, url: str) -> bytes:
    return ls.files[url]


# ------------------------------------------------------------------------------------------------
# the record
# ------------------------------------------------------------------------------------------------


def test_hashes_are_sha256sum_of_the_exact_bytes(tmp_path, checkpoint):
    data = b"\x89PNG not really, but bytes are bytes"
    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    f = tmp_path / "x.bin"
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()
    f.write_bytes(data + b"!")  # a changed file is hashed again (size/mtime in the cache key)
    assert sha256_file(f) == hashlib.sha256(data + b"!").hexdigest()

    from safire.build import build_safire

    model = build_safire(checkpoint=checkpoint)
    rec = build_provenance(model=model, image_bytes=data, image_size=(30, 40), sources_requested="auto",
                           sources_found=2, grid=4, seed=3, timings={"total": 0.12345678})
    assert rec["schema"] == SCHEMA
    assert rec["image_sha256"] == hashlib.sha256(data).hexdigest() and rec["image_bytes"] == len(data)
    assert rec["weights_sha256"] == hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    assert rec["weights_file"] == os.path.basename(checkpoint)  # never a directory
    assert rec["model_version"] == "micro-test" and rec["model_variant"] == "micro"
    assert (rec["image_height"], rec["image_width"], rec["grid"], rec["seed"]) == (30, 40, 4, 3)
    assert rec["preprocessing"]["resize"] == "squash" and rec["preprocessing"]["model_input"] == 64
    assert set(rec["library"]) >= {"safire_studio", "torch", "numpy", "python"}
    assert rec["timings"] == {"total": 0.1235}
    json.dumps(rec)  # JSON-able as is
    assert check_image(rec, data) == "match" and check_image(rec, data + b"x") == "changed"
    assert check_image(None, data) == "unknown"
    assert hashlib.sha256(data).hexdigest()[:12] in provenance_summary(rec)

    random_model = build_safire("native_micro")
    assert build_provenance(model=random_model, image_bytes=data)["weights_sha256"] is None


def test_attach_and_find_provenance_in_every_place_label_studio_keeps():
    spec = parse_label_config(WITH_TEXTAREA)
    assert spec.provenance_name == "safire_provenance"
    rec = {"schema": SCHEMA, "image_sha256": "ab" * 32, "model_version": "v1", "task_id": 5}

    class Res:  # a two-source partition
        labels = np.zeros((20, 30), np.uint8)
        labels[5:15, 5:15] = 1
        probs = np.stack([(labels == 0), (labels == 1)]).astype(np.float32)
        num_sources, score = 2, 0.8

    pred = attach_provenance(partition_to_prediction(Res(), spec, "v1"), rec, spec)
    brush = [r for r in pred["result"] if r["type"] == "brushlabels"]
    text = [r for r in pred["result"] if r["type"] == "textarea"]
    assert brush and all(r["meta"]["safire_provenance"] == rec for r in brush)
    assert all(r["meta"]["text"][0].startswith("SAFIRE: model v1") for r in brush)
    assert len(text) == 1 and text[0]["from_name"] == "safire_provenance" and text[0]["to_name"] == "image"
    assert json.loads(text[0]["value"]["text"][1]) == rec
    # what Label Studio stores: result, score, model_version (the top-level "provenance" is dropped)
    stored = {"id": 9, "task": 5, "result": pred["result"], "score": pred["score"], "model_version": "v1"}
    assert find_provenance(stored) == rec
    # an annotation made from the prediction keeps the text area even if the regions lose "meta"
    annotation = {"result": [{k: v for k, v in r.items() if k != "meta"} for r in pred["result"]]}
    assert find_provenance(annotation) == rec
    # an authentic image: no region, the text area still carries it
    empty = attach_provenance({"result": [], "score": 0.1, "model_version": "v1"}, rec, spec)
    assert find_provenance({"result": empty["result"]}) == rec
    assert find_provenance({"result": []}) is None and find_provenance(None) is None
    # without the text area only the regions carry it
    plain = parse_label_config(TWO_SOURCES)
    assert plain.provenance_name is None
    pred2 = attach_provenance(partition_to_prediction(Res(), plain, "v1"), rec, plain)
    assert all(r["type"] == "brushlabels" for r in pred2["result"])


# ------------------------------------------------------------------------------------------------
# safire predict
# ------------------------------------------------------------------------------------------------


def test_safire_predict_json_has_provenance(tmp_path, checkpoint):
    from safire.cli import main

    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)).save(img)
    rc = main([str(img), "--out", str(tmp_path / "out"), "--checkpoint", checkpoint, "--grid", "4",
               "--sources", "2", "--quiet", "--seed", "5"])
    assert rc == 0
    rec = json.loads((tmp_path / "out" / "a.json").read_text())
    prov = rec["provenance"]
    assert prov["image_sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    assert prov["image_bytes"] == img.stat().st_size and prov["image_file"] == "a.png"
    assert prov["weights_sha256"] == hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    assert (prov["sources_requested"], prov["sources_found"], prov["grid"], prov["seed"]) == (2, 2, 4, 5)
    assert (prov["image_height"], prov["image_width"]) == (40, 52)
    assert prov["timings"]["load"] >= 0 and prov["timings"]["total"] > 0
    assert rec["model_version"] == prov["model_version"] == "micro-test"
    # the file is what an index of provenance reads
    index = load_provenance([str(tmp_path / "out")])
    assert index.count == 1 and index.lookup({"id": None}, "/data/upload/1/8e5f7079-a.png") == prov


# ------------------------------------------------------------------------------------------------
# the backend
# ------------------------------------------------------------------------------------------------


def test_backend_predictions_carry_provenance_and_log_it(make_client, ls, checkpoint, registry):
    client = make_client()
    r = client.post("/predict", json=predict_body(BATCH, WITH_TEXTAREA))
    assert r.status_code == 200
    weights = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    for task, res in zip(BATCH["tasks"], r.json["results"]):
        prov = res["provenance"]
        url = task["data"]["image"]
        assert prov["image_sha256"] == hashlib.sha256(served(ls, url)).hexdigest()
        assert prov["image_bytes"] == len(served(ls, url))
        assert prov["weights_sha256"] == weights and prov["model_version"] == res["model_version"]
        assert prov["task_id"] == task["id"] and prov["project"] == str(BATCH["project_id"])
        assert prov["sources_requested"] == 2 and prov["sources_found"] == 2 and prov["grid"] == 4
        assert prov["preprocessing"]["exif_transpose"] is True
        assert prov["explain_url"].endswith(f"/explain/{BATCH['project_id']}/{task['id']}")
        assert prov["timings"]["total"] > 0 and "partition" in prov["timings"]
        # what Label Studio keeps of it: the regions' meta and the text area
        stored = {"result": res["result"], "score": res["score"], "model_version": res["model_version"]}
        assert find_provenance(stored) == prov
        assert any(x["type"] == "textarea" for x in res["result"])
    # a second round hits the embedding cache: the hash is still the one of the fetched bytes
    again = client.post("/predict", json=predict_body(BATCH, WITH_TEXTAREA)).json["results"]
    assert [a["provenance"]["image_sha256"] for a in again] == [x["provenance"]["image_sha256"]
                                                                for x in r.json["results"]]
    assert all(a["provenance"]["embedding_cached"] for a in again)
    log = Path(registry.model_dir) / "provenance" / f"{BATCH['project_id']}.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) >= 4 and lines[-1] == again[-1]["provenance"]


def test_explain_returns_the_panel_at_the_image_resolution(make_client, ls):
    client = make_client()
    assert client.post("/predict", json=predict_body(BATCH, TWO_SOURCES)).status_code == 200
    task = BATCH["tasks"][1]  # 320 x 240 PNG
    r = client.get(f"/explain/{BATCH['project_id']}/{task['id']}")
    assert r.status_code == 200 and r.mimetype == "image/png"
    panel = Image.open(io.BytesIO(r.data))
    assert panel.width >= 3 * 320 and panel.height >= 240  # three tiles at full resolution + captions
    for view in ("heatmap", "sources", "overlay"):
        one = Image.open(io.BytesIO(client.get(f"/explain/{BATCH['project_id']}/{task['id']}?view={view}").data))
        assert one.size == (320, 240) and one.mode == "RGB"
    assert client.get(f"/explain/{BATCH['project_id']}/{task['id']}?view=x").status_code == 400
    assert client.get(f"/explain/abc/{task['id']}").status_code == 400
    assert client.get(f"/explain/{BATCH['project_id']}/0").status_code == 400
    assert client.get(f"/explain/{BATCH['project_id']}/1.5").status_code == 400
    # a task this process never pre-annotated: asked from Label Studio, which does not know it
    assert client.get(f"/explain/{BATCH['project_id']}/987654").status_code == 404


def test_explain_needs_the_configured_auth(make_client):
    client = make_client(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret")
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    assert client.get("/explain/1/1").status_code == 401
    assert client.get("/explain/x/1", headers=good).status_code == 400


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------


def _png(seed: int, w: int = 40, h: int = 30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _export_task(tid: int, parent=None, result_extra=()):
    m = np.zeros((30, 40), bool)
    m[5:15, 5:20] = True
    region = {"id": f"r{tid}", "from_name": "source", "to_name": "image", "type": "brushlabels",
              "original_width": 40, "original_height": 30, "image_rotation": 0,
              "value": {"format": "rle", "rle": encode_rle(m), "brushlabels": ["Source 2"]}}
    return {"id": tid, "project": 7, "data": {"image": f"/data/upload/7/abcdef12-img{tid}.png"},
            "predictions": [11 * tid], "annotations": [{"id": tid, "result": [region, *result_extra],
                                                        "was_cancelled": False, "parent_prediction": parent,
                                                        "updated_at": "2026-12-01T00:00:00Z"}]}


def test_export_reports_an_image_that_changed_since_it_was_predicted(tmp_path):
    images = {f"/data/upload/7/abcdef12-img{i}.png": _png(i) for i in (1, 2, 3, 4)}
    recs = {i: {"schema": SCHEMA, "image_sha256": sha256_bytes(images[f"/data/upload/7/abcdef12-img{i}.png"]),
                "model_version": "v1", "task_id": i, "project": "7", "created_at": f"2026-12-01T0{i}:00:00Z"}
            for i in (1, 2, 3)}
    recs[2]["image_sha256"] = sha256_bytes(b"the bytes the model saw")  # task 2's file changed since
    # task 1: record in the annotation (text area); 2 and 3: LS predictions (API); 4: none
    ta = {"id": "t1", "from_name": "safire_provenance", "to_name": "image", "type": "textarea",
          "value": {"text": ["SAFIRE: ...", json.dumps(recs[1])]}}
    tasks = [_export_task(1, result_extra=[ta]), _export_task(2, parent=22), _export_task(3), _export_task(4)]
    predictions = [{"id": 22, "task": 2, "result": [{"type": "brushlabels", "meta": {"safire_provenance": recs[2]}}]},
                   {"id": 33, "task": 3, "result": [{"type": "brushlabels", "meta": {"safire_provenance": recs[3]}}]}]
    (tmp_path / "preds.json").write_text(json.dumps(predictions))
    index = load_provenance([str(tmp_path / "preds.json")])
    man = export_dataset(tasks, str(tmp_path / "ds"), fetch_image=lambda url: images[url], label_config=MULTI,
                         provenance=index)
    assert man.provenance["match"] == 2 and man.provenance["changed"] == 1 and man.provenance["unknown"] == 1
    assert [c["task_id"] for c in man.provenance["changed_samples"]] == [2]
    assert "WARNING: 1 image(s) changed" in man.summary()
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["provenance"]["changed"] == 1
    assert {s["task_id"]: s["provenance"] for s in manifest["samples"]} == \
        {1: "match", 2: "changed", 3: "match", 4: "unknown"}
    meta = {n: json.loads((tmp_path / "ds" / "meta" / f"ls_p7_t{n}.json").read_text()) for n in (1, 2, 3, 4)}
    assert meta[1]["provenance"]["found_in"] == "annotation" and meta[1]["provenance"]["record"] == recs[1]
    assert meta[2]["provenance"]["found_in"] == "provenance_files" and meta[2]["provenance"]["status"] == "changed"
    assert meta[2]["image_sha256"] == sha256_bytes(images["/data/upload/7/abcdef12-img2.png"])
    assert meta[4]["provenance"] == {"status": "unknown", "found_in": None, "record": None}
    # --skip-changed drops it with a reason
    man2 = export_dataset(tasks, str(tmp_path / "ds2"), fetch_image=lambda url: images[url], label_config=MULTI,
                          provenance=index, skip_changed=True)
    assert [s["code"] for s in man2.skipped] == ["image_changed"] and man2.count == 3


def test_provenance_index_reads_the_backend_log_and_matches_by_task(tmp_path):
    rec = {"schema": SCHEMA, "image_sha256": "00" * 32, "task_id": 4, "project": "7",
           "image_url": "http://ls/data/upload/7/abcdef12-img4.png", "created_at": "2026-12-01T00:00:00Z"}
    newer = {**rec, "image_sha256": "11" * 32, "created_at": "2026-12-02T00:00:00Z"}
    (tmp_path / "7.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(newer) + "\n")
    index = load_provenance([str(tmp_path)])
    assert index.count == 2
    assert index.lookup({"id": 4, "project": 7}, None) == newer  # the latest prediction of the task
    assert index.lookup({"id": 99, "project": 7}, "/data/upload/7/ffffffff-img4.png") == newer  # by file name
    assert ProvenanceIndex().lookup({"id": 4}, None) is None


def test_clicks_carry_provenance_without_extra_fetches(make_client, ls):
    from test_app import CLICK

    client = make_client()
    body = predict_body(CLICK)
    r = client.post("/predict", json=body)
    assert r.status_code == 200
    res = r.json["results"][0]
    prov = res["provenance"]
    url = CLICK["tasks"][0]["data"]["image"]
    assert prov["kind"] == "click" and prov["image_sha256"] == hashlib.sha256(served(ls, url)).hexdigest()
    assert prov["prompt"]["positive_points"] >= 1 and prov["model_version"] == res["model_version"]
    assert all(reg["meta"]["safire_provenance"] == prov for reg in res["result"])
    assert all(reg["type"] == "brushlabels" for reg in res["result"])  # no text area on clicks
    assert "click (" in res["result"][0]["meta"]["text"][0] if res["result"] else True


def test_bulk_preannotation_function_writes_the_backends_fields(checkpoint):
    from ml_backend.preannotate import preannotate_image
    from safire.build import build_safire

    model = build_safire(checkpoint=checkpoint)
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(7).random((48, 64, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    pred = preannotate_image(model, data, WITH_TEXTAREA, grid=4, extra={"project": "3", "task_id": 41})
    prov = pred["provenance"]
    assert prov["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert prov["weights_sha256"] == hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    assert (prov["kind"], prov["project"], prov["task_id"], prov["grid"]) == ("preannotation", "3", 41, 4)
    assert prov["sources_requested"] == 2 and prov["sources_found"] == 2
    assert find_provenance({"result": pred["result"]}) == prov
    brush = [r for r in pred["result"] if r["type"] == "brushlabels"]
    assert brush and (brush[0]["original_height"], brush[0]["original_width"]) == (48, 64)
    # the backend's pre-annotation records the same keys
    keys = {"schema", "kind", "image_sha256", "image_bytes", "image_height", "image_width", "model_version",
            "model_variant", "weights_sha256", "weights_file", "sources_requested", "sources_found", "grid",
            "seed", "partition", "score", "preprocessing", "library", "device", "timings"}
    assert keys <= set(prov)


def test_evaluate_limit_each_takes_n_images_of_every_folder(tmp_path, checkpoint):
    from conftest import toy_forgery
    from training.evaluate import main

    for name, k in (("a", 1), ("b", 2)):
        (tmp_path / name / "images").mkdir(parents=True)
        (tmp_path / name / "sources").mkdir()
        for i in range(3):
            item = toy_forgery(i, 48, k)
            Image.fromarray(item.image).save(tmp_path / name / "images" / f"x{i}.png")
            Image.fromarray(item.labels).save(tmp_path / name / "sources" / f"x{i}.png")
    out = tmp_path / "r.json"
    assert main(["--data", str(tmp_path / "a"), str(tmp_path / "b"), "--limit-each", "2", "--grid", "4",
                 "--checkpoint", checkpoint, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["per_image"]
    assert [r["k_true"] for r in rows] == [1, 1, 2, 2]


def test_export_of_a_live_project_reads_the_predictions_provenance(tmp_path, capsys):
    """--project: the JSON export lists prediction ids only; the records come from /api/predictions/."""
    import threading

    from flask import Flask, abort, jsonify, request
    from werkzeug.serving import make_server

    from ml_backend.export import main as export_main
    from test_export import EXPORT_FIXTURE, FIXTURE_CONFIG as EXPORT_CONFIG, png_bytes

    tasks = json.loads(EXPORT_FIXTURE.read_text())
    image = png_bytes(640, 480)
    recs = {"seen": {"schema": SCHEMA, "image_sha256": sha256_bytes(image), "task_id": 1, "project": "1",
                     "model_version": "v1", "created_at": "2026-12-01T00:00:00Z"}}
    app = Flask("fake-ls-predictions")
    asked = []

    @app.get("/api/projects/<int:pid>/export")
    def export(pid):
        return jsonify(tasks)

    @app.get("/api/projects/<int:pid>")
    def project(pid):
        return jsonify({"id": pid, "label_config": EXPORT_CONFIG})

    @app.get("/api/predictions/")
    def predictions():
        asked.append(dict(request.args))
        return jsonify([{"id": 1, "task": 1, "model_version": "v1", "score": 0.5,
                         "result": [{"type": "brushlabels", "meta": {"safire_provenance": recs["seen"]}}]}])

    @app.get("/data/upload/1/<path:fname>")
    def media(fname):
        if request.headers.get("Authorization") != "Token t0k":
            abort(401)
        return image, 200, {"Content-Type": "image/png"}

    server = make_server("127.0.0.1", 0, app, threaded=True)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        out = tmp_path / "live"
        rc = export_main(["--project", "1", "--url", url, "--api-key", "t0k", "--out", str(out), "--val-fraction", "0"])
        assert rc == 0, capsys.readouterr().err
        assert asked == [{"project": "1"}]
        man = json.loads((out / "manifest.json").read_text())
        assert man["provenance"]["match"] == 1 and man["samples"][0]["provenance"] == "match"
        # the same image re-uploaded with other bytes: reported, and skipped on request
        recs["seen"] = {**recs["seen"], "image_sha256": sha256_bytes(b"other bytes")}
        rc = export_main(["--project", "1", "--url", url, "--api-key", "t0k", "--out", str(tmp_path / "l2"),
                          "--val-fraction", "0"])
        assert rc == 0 and "WARNING: 1 image(s) changed" in capsys.readouterr().out
        rc = export_main(["--project", "1", "--url", url, "--api-key", "t0k", "--out", str(tmp_path / "l3"),
                          "--val-fraction", "0", "--skip-changed"])
        assert rc == 1  # nothing left to export
        assert json.loads((tmp_path / "l3" / "manifest.json").read_text())["skipped"][0]["code"] == "image_changed"
    finally:
        server.shutdown()
        th.join(5)
