"""Tests for ml_backend.export (``safire export``)."""

from __future__ import annotations

import copy
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_backend.export import (
    ExportError,
    ExportRules,
    ImageFetchError,
    LabelStudioClient,
    LocalImageResolver,
    export_dataset,
    main,
    select_annotation,
)
from ml_backend.rle import encode_rle

ROOT = Path(__file__).resolve().parents[1]
MULTI_XML = (ROOT / "label_config" / "multi_source.xml").read_text()
BINARY_XML = (ROOT / "label_config" / "binary.xml").read_text()
EXPORT_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "labelstudio-1.23.2-export.json"
FIXTURE_CONFIG = """<View>
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

W, H = 40, 30


# ----------------------------------------------------------------------------- helpers


def png_bytes(w: int = W, h: int = H, color=(120, 130, 140)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def rect(y0, y1, x0, x1, h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def brush(mask, label, rid, from_name="source", fmt="rle", h=None, w=None):
    h = mask.shape[0] if h is None else h
    w = mask.shape[1] if w is None else w
    value = {"rle": encode_rle(mask), "brushlabels": [label] if label else []}
    if fmt is not None:
        value["format"] = fmt
    return {"id": rid, "from_name": from_name, "to_name": "image", "type": "brushlabels",
            "original_width": w, "original_height": h, "image_rotation": 0, "value": value}


def choice(name, values, rid="c1"):
    return {"id": rid, "from_name": name, "to_name": "image", "type": "choices",
            "value": {"choices": list(values)}}


def keypoint(label, rid="k1", from_name="click"):
    return {"id": rid, "from_name": from_name, "to_name": "image", "type": "keypointlabels",
            "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": 50.0, "y": 50.0, "width": 0.5, "keypointlabels": [label]}}


def ann(result, aid=1, cancelled=False, gt=False, updated="2026-11-22T01:00:00Z"):
    return {"id": aid, "result": result, "was_cancelled": cancelled, "ground_truth": gt,
            "created_at": updated, "updated_at": updated, "completed_by": 1}


def task(tid, annotations, image=None):
    return {"id": tid, "project": 7, "data": {"image": image or f"/data/upload/7/img{tid}.png"},
            "annotations": annotations}


class FakeImages:
    """fetch_image stand-in: serves PNGs of W x H, records calls, fails for 'missing'."""

    def __init__(self, sizes=None):
        self.calls = []
        self.sizes = sizes or {}

    def __call__(self, url):
        self.calls.append(url)
        if "missing" in url:
            raise ImageFetchError(f"{url}: HTTP 404")
        return png_bytes(*self.sizes.get(url, (W, H)))


def load(path) -> np.ndarray:
    return np.array(Image.open(path))


def read_manifest(out) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


# ----------------------------------------------------------------------------- fixture export


def test_fixture_export(tmp_path):
    tasks = json.loads(EXPORT_FIXTURE.read_text())
    fetch = FakeImages(sizes={"/data/upload/1/8e5f7079-test2.jpg": (640, 480)})
    out = tmp_path / "ds"
    man = export_dataset(tasks, str(out), fetch, label_config=FIXTURE_CONFIG, val_fraction=0)
    assert man.count == 1 and man.total == 1 and man.skipped == []
    assert fetch.calls == ["/data/upload/1/8e5f7079-test2.jpg"]
    name = "ls_p1_t1"
    src = load(out / "sources" / f"{name}.png")
    assert src.shape == (480, 640) and src.dtype == np.uint8
    expected = np.zeros((480, 640), np.uint8)
    expected[100:200, 150:300] = 1
    np.testing.assert_array_equal(src, expected)
    np.testing.assert_array_equal(load(out / "masks_binary" / f"{name}.png"), expected * 255)
    np.testing.assert_array_equal(load(out / "masks_safirems" / f"{name}.png"), expected * 50)
    assert (out / "images" / f"{name}.png").read_bytes() == png_bytes(640, 480)  # kept verbatim
    meta = json.loads((out / "meta" / f"{name}.json").read_text())
    assert meta["num_sources"] == 2 and meta["authentic"] is False
    assert meta["task_id"] == 1 and meta["annotation_id"] == 1 and meta["split"] == "train"
    assert meta["sources"][1]["label"] == "Tampered" and meta["sources"][1]["role"] == "forged"
    assert meta["sources"][1]["area"] == pytest.approx(15000 / (640 * 480), abs=1e-6)
    assert meta["ignored_results"] == {"keypointlabels": 1}
    assert (out / "list.txt").read_text() == f"images/{name}.png,masks_safirems/{name}.png\n"
    assert (out / "list_binary.txt").read_text() == f"images/{name}.png,masks_binary/{name}.png\n"
    assert json.loads((out / "imdl_benco.json").read_text()) == [[f"images/{name}.png", f"masks_binary/{name}.png"]]
    assert (out / "splits" / "train.txt").read_text() == f"{name}\n"
    m = read_manifest(out)
    assert m["format"] == "safire-dataset" and m["version"] == 1 and m["count"] == 1
    assert m["num_sources_histogram"] == {"2": 1} and m["labels"] == ["Tampered"]
    assert m["mode"] == "binary" and m["skipped"] == [] and m["total_tasks"] == 1

    # Same result without a config: labels are inferred from the export
    out2 = tmp_path / "ds2"
    man2 = export_dataset(tasks, str(out2), fetch, val_fraction=0)
    assert man2.mode == "binary" and man2.labels == ["Tampered"]
    np.testing.assert_array_equal(load(out2 / "sources" / f"{name}.png"), expected)


# ----------------------------------------------------------------------------- multi-source rules


def multi_task(tid, result, **kw):
    return task(tid, [ann(result, **kw)])


def test_overlap_last_region_wins_and_unlabelled_is_host(tmp_path):
    a = rect(5, 20, 5, 20)  # Source 2: 225 px
    b = rect(10, 25, 12, 30)  # Source 3: 270 px, overlaps a
    result = [brush(a, "Source 2", "r1"), brush(b, "Source 3", "r2")]
    man = export_dataset([multi_task(1, result)], str(tmp_path), FakeImages(), label_config=MULTI_XML)
    src = load(tmp_path / "sources" / "ls_p7_t1.png")
    # host (unpainted) is largest -> 0; Source 3 (270 px, wins the overlap) -> 1; Source 2 rest -> 2
    assert set(np.unique(src)) == {0, 1, 2}
    assert (src[b] == 1).all()
    assert (src[a & ~b] == 2).all()
    assert (src[~(a | b)] == 0).all()
    meta = json.loads((tmp_path / "meta" / "ls_p7_t1.json").read_text())
    assert [s["label"] for s in meta["sources"]] == ["Source 1 (host)", "Source 3", "Source 2"]
    assert meta["sources"][0]["role"] == "host"
    assert meta["sources"][0]["unlabelled_area"] == pytest.approx((~(a | b)).mean(), abs=1e-6)
    assert man.num_sources_histogram == {"3": 1}
    safirems = load(tmp_path / "masks_safirems" / "ls_p7_t1.png")
    np.testing.assert_array_equal(safirems, src * 50)
    np.testing.assert_array_equal(load(tmp_path / "masks_binary" / "ls_p7_t1.png"), (src >= 1) * 255)


def test_overlap_highest_label_wins(tmp_path):
    a = rect(5, 20, 5, 20)
    b = rect(10, 25, 12, 30)
    # Source 3 drawn first, Source 2 later: "last" gives the overlap to Source 2,
    # "highest" to Source 3 (later in the config).
    result = [brush(b, "Source 3", "r2"), brush(a, "Source 2", "r1")]
    for overlap, winner in (("last", "Source 2"), ("highest", "Source 3")):
        out = tmp_path / overlap
        export_dataset([multi_task(1, result)], str(out), FakeImages(), label_config=MULTI_XML,
                       rules=ExportRules(overlap=overlap))
        src = load(out / "sources" / "ls_p7_t1.png")
        meta = json.loads((out / "meta" / "ls_p7_t1.json").read_text())
        label_of = {s["index"]: s["label"] for s in meta["sources"]}
        assert label_of[int(src[12, 15])] == winner


def test_reindex_by_area_makes_largest_source_zero(tmp_path):
    big = rect(0, 30, 0, 30)  # Source 2 covers 75 % of the image
    small = rect(0, 5, 35, 40)  # Source 4: 25 px
    result = [brush(big, "Source 2", "r1"), brush(small, "Source 4", "r2")]
    export_dataset([multi_task(3, result)], str(tmp_path), FakeImages(), label_config=MULTI_XML)
    src = load(tmp_path / "sources" / "ls_p7_t3.png")
    meta = json.loads((tmp_path / "meta" / "ls_p7_t3.json").read_text())
    assert [s["label"] for s in meta["sources"]] == ["Source 2", "Source 1 (host)", "Source 4"]
    assert meta["sources"][0]["role"] == "host"  # by convention the largest source
    assert (src[big] == 0).all() and (src[small] == 2).all() and (src[~(big | small)] == 1).all()
    assert sum(s["area"] for s in meta["sources"]) == pytest.approx(1.0)


def test_unlabelled_ignore_rule(tmp_path):
    a = rect(5, 20, 5, 20)
    h = rect(0, 30, 25, 40)
    result = [brush(a, "Source 2", "r1"), brush(h, "Source 1 (host)", "r0")]
    export_dataset([multi_task(1, result)], str(tmp_path), FakeImages(), label_config=MULTI_XML,
                   rules=ExportRules(unlabelled="ignore"))
    src = load(tmp_path / "sources" / "ls_p7_t1.png")
    rest = ~(a | h)
    assert (src[rest] == 255).all()
    assert (src[h] == 0).all() and (src[a] == 1).all()  # host 450 px > Source 2 225 px
    assert (load(tmp_path / "masks_safirems" / "ls_p7_t1.png")[rest] == 0).all()
    assert (load(tmp_path / "masks_binary" / "ls_p7_t1.png")[rest] == 0).all()
    meta = json.loads((tmp_path / "meta" / "ls_p7_t1.json").read_text())
    assert meta["ignored_area"] == pytest.approx(rest.mean(), abs=1e-6)
    assert meta["num_sources"] == 2


def test_per_region_manipulation_and_missing_format(tmp_path):
    a = rect(5, 20, 5, 20)
    region = brush(a, "Source 2", "r1", fmt=None)  # no value.format: still RLE
    result = [region, choice("manipulation", ["splicing"], rid="r1"), keypoint("Source 2")]
    export_dataset([multi_task(1, result)], str(tmp_path), FakeImages(), label_config=MULTI_XML)
    meta = json.loads((tmp_path / "meta" / "ls_p7_t1.json").read_text())
    assert meta["sources"][1]["manipulation"] == "splicing"
    assert meta["ignored_results"] == {"keypointlabels": 1}
    assert meta["verdict"] is None


def test_unknown_labels_and_region_formats_are_reported(tmp_path):
    a = rect(5, 20, 5, 20)
    weird = brush(a, "Source 2", "r9")
    weird["value"]["format"] = "contour"
    result = [brush(a, "Source 9", "r1"), weird]
    man = export_dataset([multi_task(1, result)], str(tmp_path), FakeImages(), label_config=MULTI_XML)
    assert man.count == 0
    sk = man.skipped[0]
    assert sk["code"] == "empty" and "Source 9" in sk["reason"]


# ----------------------------------------------------------------------------- selection rules


def test_select_annotation_rules():
    old = ann([], aid=1, updated="2026-01-01T00:00:00Z")
    new = ann([], aid=2, updated="2026-02-01T00:00:00Z")
    cancelled_newest = ann([], aid=3, cancelled=True, updated="2026-03-01T00:00:00Z")
    gt_old = ann([], aid=4, gt=True, updated="2025-01-01T00:00:00Z")
    assert select_annotation(task(1, [old, new, cancelled_newest]))[0]["id"] == 2
    assert select_annotation(task(1, [old, new, gt_old]))[0]["id"] == 4
    assert select_annotation(task(1, [old, new, gt_old]), prefer_ground_truth=False)[0]["id"] == 2
    assert select_annotation(task(1, [old]))[1] == "only"


def test_cancelled_multiple_missing_and_empty_tasks(tmp_path):
    a = rect(5, 20, 5, 20)
    b = rect(0, 10, 30, 40)
    tasks = [
        task(1, []),  # no annotations
        task(2, [ann([], cancelled=True), ann([], aid=5, cancelled=True)]),  # all cancelled
        task(3, [ann([brush(a, "Source 2", "r1")], aid=6, updated="2026-01-01T00:00:00Z"),
                 ann([brush(b, "Source 3", "r1")], aid=7, updated="2026-02-01T00:00:00Z"),
                 ann([], aid=8, cancelled=True, updated="2026-03-01T00:00:00Z")]),
        task(4, [ann([brush(a, "Source 2", "r1")])], image="/data/upload/7/missing.png"),
        task(5, [ann([])]),  # submitted with nothing painted, no verdict
        task(6, [ann([brush(a, "Source 2", "r1")], aid=9, gt=True, updated="2025-01-01T00:00:00Z"),
                 ann([brush(b, "Source 3", "r1")], aid=10, updated="2026-02-01T00:00:00Z")]),
        {"id": 7, "project": 7, "data": {}, "annotations": [ann([brush(a, "Source 2", "r1")])]},
    ]
    man = export_dataset(tasks, str(tmp_path), FakeImages(), label_config=MULTI_XML)
    codes = {s["id"]: s["code"] for s in man.skipped}
    assert codes == {1: "no_annotations", 2: "cancelled", 4: "image_error", 5: "empty", 7: "no_image_url"}
    reasons = {s["id"]: s["reason"] for s in man.skipped}
    assert "HTTP 404" in reasons[4] and "2 annotation(s) cancelled" in reasons[2]
    assert man.count + len(man.skipped) == man.total == 7
    assert {s["task_id"] for s in man.samples} == {3, 6}
    m3 = json.loads((tmp_path / "meta" / "ls_p7_t3.json").read_text())
    assert m3["annotation_id"] == 7 and m3["annotation_selected"] == "most_recent"
    assert m3["sources"][1]["label"] == "Source 3"
    m6 = json.loads((tmp_path / "meta" / "ls_p7_t6.json").read_text())
    assert m6["annotation_id"] == 9 and m6["annotation_selected"] == "ground_truth"
    mj = read_manifest(tmp_path)
    assert mj["count"] == 2 and mj["total_tasks"] == 7 and len(mj["skipped"]) == 5
    assert mj["skipped_by_code"]["cancelled"] == 1


def test_size_mismatch_and_rotation_and_bad_rle(tmp_path):
    a = rect(5, 20, 5, 20)
    rotated = brush(a, "Source 2", "r1")
    rotated["image_rotation"] = 90
    bad = brush(a, "Source 2", "r1")
    bad["value"]["rle"] = bad["value"]["rle"][:10]
    tasks = [
        task(1, [ann([brush(rect(0, 5, 0, 5, h=50, w=60), "Source 2", "r1")])]),
        task(2, [ann([rotated])]),
        task(3, [ann([bad])]),
    ]
    man = export_dataset(tasks, str(tmp_path), FakeImages(), label_config=MULTI_XML)
    assert {s["id"]: s["code"] for s in man.skipped} == {1: "size_mismatch", 2: "rotated", 3: "bad_rle"}
    assert "60x50" in man.skipped[0]["reason"] and "40x30" in man.skipped[0]["reason"]


# ----------------------------------------------------------------------------- authentic samples


def test_authentic_samples(tmp_path):
    forged = rect(5, 20, 5, 20)
    tasks = [
        task(1, [ann([choice("verdict", ["authentic"])])]),  # authentic by choice
        task(2, [ann([brush(forged, "Forged", "r1", from_name="forgery")])]),  # forged
        task(3, [ann([brush(forged, "Authentic", "r1", from_name="forgery")])]),  # painted authentic
        task(4, [ann([choice("verdict", ["forged"])])]),  # says forged, nothing painted
        task(5, [ann([brush(forged, "Forged", "r1", from_name="forgery"),
                      choice("verdict", ["authentic"], rid="v")])]),  # contradiction
        task(6, [ann([brush(forged, "Forged", "r1", from_name="forgery"),
                      brush(rect(0, 30, 0, 40), "Authentic", "r2", from_name="forgery")])]),
        task(7, [ann([brush(forged, "Authentic", "r1", from_name="forgery"),
                      choice("verdict", ["forged"], rid="v")])]),  # says forged, paints authentic
    ]
    man = export_dataset(tasks, str(tmp_path), FakeImages(), label_config=BINARY_XML, val_fraction=0)
    assert {s["id"]: s["code"] for s in man.skipped} == {4: "empty", 5: "conflict", 7: "conflict"}
    assert "marked forged" in man.skipped[0]["reason"]
    hist = man.num_sources_histogram
    assert hist == {"1": 2, "2": 2}
    for tid in (1, 3):
        name = f"ls_p7_t{tid}"
        assert (load(tmp_path / "sources" / f"{name}.png") == 0).all()
        assert json.loads((tmp_path / "meta" / f"{name}.json").read_text())["authentic"] is True
    # forged wins over an overlapping Authentic region in binary mode
    src6 = load(tmp_path / "sources" / "ls_p7_t6.png")
    np.testing.assert_array_equal(src6, forged.astype(np.uint8))
    lines = (tmp_path / "list.txt").read_text().splitlines()
    assert "images/ls_p7_t1.png,None" in lines
    assert "images/ls_p7_t2.png,masks_safirems/ls_p7_t2.png" in lines
    benco = json.loads((tmp_path / "imdl_benco.json").read_text())
    assert ["images/ls_p7_t1.png", "Negative"] in benco
    assert read_manifest(tmp_path)["authentic"] == 2


def test_empty_is_authentic_rule_and_multi_verdict(tmp_path):
    tasks = [task(1, [ann([])]), task(2, [ann([choice("verdict", ["authentic"])])])]
    man = export_dataset(tasks, str(tmp_path / "a"), FakeImages(), label_config=MULTI_XML)
    assert [s["id"] for s in man.skipped] == [1] and man.samples[0]["num_sources"] == 1
    man = export_dataset(tasks, str(tmp_path / "b"), FakeImages(), label_config=MULTI_XML,
                         rules=ExportRules(empty_is_authentic=True))
    assert man.count == 2 and man.skipped == []


# ----------------------------------------------------------------------------- images


def jpeg_with_orientation(w, h, orientation) -> bytes:
    im = Image.new("RGB", (w, h), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def test_exif_orientation(tmp_path):
    raw = jpeg_with_orientation(W, H, 6)  # stored 40x30, displayed 30x40
    m_disp = rect(0, 10, 0, 5, h=W, w=H)  # drawn on the displayed (rotated) image
    m_raw = rect(0, 10, 0, 5)
    tasks = [task(1, [ann([brush(m_disp, "Source 2", "r1")])]),
             task(2, [ann([brush(m_raw, "Source 2", "r1")])])]
    man = export_dataset(tasks, str(tmp_path), lambda url: raw, label_config=MULTI_XML)
    assert man.count == 2
    im1 = Image.open(tmp_path / "images" / "ls_p7_t1.png")  # re-encoded upright as PNG
    assert im1.size == (H, W) and im1.format == "PNG"
    assert load(tmp_path / "sources" / "ls_p7_t1.png").shape == (W, H)
    assert (tmp_path / "images" / "ls_p7_t2.jpg").read_bytes() == raw  # kept verbatim
    assert json.loads((tmp_path / "meta" / "ls_p7_t1.json").read_text())["image_reencoded"] is True


def test_other_formats_are_reencoded_and_task_id_is_passed(tmp_path):
    buf = io.BytesIO()
    Image.new("RGBA", (W, H)).save(buf, format="WEBP")
    seen = []

    def fetch(url, task_id=None):
        seen.append((url, task_id))
        return buf.getvalue()

    man = export_dataset([task(11, [ann([brush(rect(1, 5, 1, 5), "Forged", "r1", from_name="forgery")])])],
                         str(tmp_path), fetch, label_config=BINARY_XML)
    assert man.count == 1 and seen == [("/data/upload/7/img11.png", 11)]
    im = Image.open(tmp_path / "images" / "ls_p7_t11.png")
    assert im.format == "PNG" and im.mode == "RGB"


def test_local_image_resolver(tmp_path):
    (tmp_path / "upload" / "1").mkdir(parents=True)
    (tmp_path / "upload" / "1" / "8e5f7079-a.jpg").write_bytes(b"A")
    (tmp_path / "b.png").write_bytes(b"B")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "c.png").write_bytes(b"C")
    r = LocalImageResolver(str(tmp_path))
    assert r("/data/upload/1/8e5f7079-a.jpg") == b"A"
    assert r("/data/upload/3/1234abcd-b.png") == b"B"  # LS upload prefix stripped
    assert r("/data/local-files/?d=photos/c.png") == b"C"
    assert r("http://example.com/x/photos/c.png") == b"C"
    with pytest.raises(ImageFetchError):
        r("/data/upload/1/nope.jpg")
    outside = tmp_path.parent / "secret.png"
    outside.write_bytes(b"S")
    with pytest.raises(ImageFetchError):
        r("/data/local-files/?d=../secret.png")


# ----------------------------------------------------------------------------- manifest, splits, CLI


def many_tasks(n):
    return [task(i, [ann([brush(rect(2, 10, 2, 10 + i % 5), "Source 2", "r1")])]) for i in range(1, n + 1)]


def test_splits_are_exact_and_deterministic(tmp_path):
    tasks = many_tasks(20) + [task(99, [])]
    m1 = export_dataset(tasks, str(tmp_path / "a"), FakeImages(), label_config=MULTI_XML,
                        val_fraction=0.25, seed=3)
    m2 = export_dataset(tasks, str(tmp_path / "b"), FakeImages(), label_config=MULTI_XML,
                        val_fraction=0.25, seed=3)
    assert m1.splits == {"train": 15, "val": 5}
    val1 = (tmp_path / "a" / "splits" / "val.txt").read_text()
    assert val1 == (tmp_path / "b" / "splits" / "val.txt").read_text()
    train = (tmp_path / "a" / "splits" / "train.txt").read_text().split()
    assert set(train).isdisjoint(val1.split()) and len(train) + len(val1.split()) == 20
    assert m1.count + len(m1.skipped) == m1.total == 21
    assert [s["split"] for s in m1.samples] == [s["split"] for s in m2.samples]


def test_refuses_to_overwrite_without_flag(tmp_path):
    tasks = many_tasks(2)
    export_dataset(tasks, str(tmp_path), FakeImages(), label_config=MULTI_XML)
    with pytest.raises(ExportError, match="already holds a dataset"):
        export_dataset(tasks, str(tmp_path), FakeImages(), label_config=MULTI_XML)
    man = export_dataset(tasks[:1], str(tmp_path), FakeImages(), label_config=MULTI_XML, overwrite=True)
    assert man.count == 1 and len(list((tmp_path / "sources").iterdir())) == 1
    with pytest.raises(ExportError):
        export_dataset(tasks, str(tmp_path / "x"), None)
    with pytest.raises(ExportError):
        export_dataset(tasks, str(tmp_path / "y"), FakeImages(), rules=ExportRules(unlabelled="nope"))


def test_cli_with_local_images(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "test2.jpg").write_bytes(png_bytes(640, 480))
    config = tmp_path / "config.xml"
    config.write_text(FIXTURE_CONFIG)
    out = tmp_path / "out"
    rc = main([str(EXPORT_FIXTURE), "--out", str(out), "--config", str(config),
               "--images-root", str(images), "--val-fraction", "0.1", "--seed", "0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "exported 1 of 1 tasks" in text
    assert read_manifest(out)["count"] == 1
    # no image source at all -> usage error
    assert main([str(EXPORT_FIXTURE), "--out", str(tmp_path / "o2")]) == 2
    assert "no way to get images" in capsys.readouterr().err
    # nothing exportable -> exit code 1
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([task(1, [])]))
    assert main([str(empty), "--out", str(tmp_path / "o3"), "--images-root", str(images)]) == 1
    # bad config -> error message, exit 2
    bad = tmp_path / "bad.xml"
    bad.write_text('<?xml version="1.0"?>' + FIXTURE_CONFIG)
    assert main([str(EXPORT_FIXTURE), "--out", str(tmp_path / "o4"), "--config", str(bad),
                 "--images-root", str(images)]) == 2
    assert "XML declaration" in capsys.readouterr().err


# ----------------------------------------------------------------------------- live Label Studio (fake)


PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"


@pytest.fixture
def fake_ls():
    """A tiny stand-in for Label Studio 1.23.2 on 127.0.0.1 (export, project, media, PAT refresh)."""
    from flask import Flask, abort, jsonify, request
    from werkzeug.serving import make_server

    tasks = json.loads(EXPORT_FIXTURE.read_text())
    image = png_bytes(640, 480)
    app = Flask("fake-ls")
    seen = []
    good = {"Token legacy-token-123", "Bearer access-xyz"}

    def check():
        auth = request.headers.get("Authorization")
        seen.append((request.path, auth))
        if auth not in good:
            abort(401)

    @app.post("/api/token/refresh/")
    def refresh():
        if (request.get_json() or {}).get("refresh") != PAT:
            abort(401)
        return jsonify({"access": "access-xyz"})

    @app.get("/api/projects/<int:pid>/export")
    def export(pid):
        check()
        assert request.args.get("exportType") == "JSON"
        return jsonify(tasks if pid == 1 else [])

    @app.get("/api/projects/<int:pid>")
    def project(pid):
        check()
        return jsonify({"id": pid, "label_config": FIXTURE_CONFIG})

    @app.get("/data/upload/1/<path:fname>")
    def media(fname):
        check()
        if fname != "8e5f7079-test2.jpg":
            abort(404)
        return image, 200, {"Content-Type": "image/png"}

    server = make_server("127.0.0.1", 0, app, threaded=True)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        th.join(5)


def test_live_project_with_legacy_token(tmp_path, fake_ls, capsys):
    url, seen = fake_ls
    out = tmp_path / "live"
    rc = main(["--project", "1", "--url", url, "--api-key", "legacy-token-123", "--out", str(out),
               "--val-fraction", "0", "--save-export"])
    assert rc == 0, capsys.readouterr().err
    paths = [p for p, _ in seen]
    assert "/api/projects/1/export" in paths and "/api/projects/1" in paths
    assert "/data/upload/1/8e5f7079-test2.jpg" in paths
    assert all(auth == "Token legacy-token-123" for _, auth in seen)
    m = read_manifest(out)
    assert m["count"] == 1 and m["label_config"]["brush"] == "mask"
    assert (out / "labelstudio_export.json").exists()
    src = load(out / "sources" / "ls_p1_t1.png")
    assert src[150, 200] == 1 and src[0, 0] == 0


def test_live_project_with_personal_access_token(tmp_path, fake_ls):
    url, seen = fake_ls
    client = LabelStudioClient(url, PAT)
    assert client.is_pat
    tasks = client.export_tasks(1)
    man = export_dataset(tasks, str(tmp_path), client.fetch_image,
                         label_config=client.get_project(1)["label_config"])
    assert man.count == 1
    assert {auth for _, auth in seen} == {"Bearer access-xyz"}


def test_live_errors(tmp_path, fake_ls, capsys):
    url, seen = fake_ls
    rc = main(["--project", "1", "--url", url, "--api-key", "wrong", "--out", str(tmp_path / "x")])
    assert rc == 2 and "HTTP 401" in capsys.readouterr().err
    client = LabelStudioClient(url, "legacy-token-123")
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        client.fetch_image("/data/upload/1/other.png")
    with pytest.raises(ImageFetchError, match="task id"):
        client.fetch_image("s3://bucket/key.png")
    # real Label Studio 404s local files of a project without a Local Storage (tests/e2e): say so
    with pytest.raises(ImageFetchError, match="HTTP 404.*Local Storage"):
        client.fetch_image("/data/local-files/?d=set/img.png")
    # the export downloads like the backend (one fetch path): a host that is neither Label Studio
    # nor allowed is refused before any request (same server, other host name)
    seen.clear()
    other = url.replace("127.0.0.1", "localhost") + "/data/upload/1/8e5f7079-test2.jpg"
    with pytest.raises(ImageFetchError, match="not allowed"):
        client.fetch_image(other)
    assert seen == []
    # allowed by name, it is fetched without the token (the key goes to Label Studio's host only),
    # and only because its network is allowed too (localhost is not Label Studio's host name)
    from ml_backend.settings import download_settings

    port = url.rsplit(":", 1)[1]
    with pytest.raises(ImageFetchError, match="loopback"):
        LabelStudioClient(url, "legacy-token-123", download=download_settings(
            {}, allowed_hosts=f"localhost:{port}")).fetch_image(other)
    open_client = LabelStudioClient(url, "legacy-token-123", download=download_settings(
        {}, allowed_hosts=f"localhost:{port}", allowed_networks="127.0.0.0/8,::1/128"))
    with pytest.raises(ImageFetchError, match="HTTP 401"):
        open_client.fetch_image(other)
    assert seen == [("/data/upload/1/8e5f7079-test2.jpg", None)]
    with pytest.raises(ImageFetchError, match="task id"):
        client.fetch_image("s3://bucket/key.png", task_id="1/../../api/projects/1/export")
    with pytest.raises(ExportError, match="credentials"):
        LabelStudioClient(url.replace("http://", "http://admin:pw@"), "k")
    assert client.fetch_image(url + "/data/upload/1/8e5f7079-test2.jpg")[:4] == b"\x89PNG"
    with pytest.raises(ExportError):
        LabelStudioClient("localhost:8080", "k")
    # a task whose image 404s is skipped, not fatal
    tasks = json.loads(EXPORT_FIXTURE.read_text())
    t2 = copy.deepcopy(tasks[0])
    t2["id"] = 2
    t2["data"]["image"] = "/data/upload/1/gone.png"
    man = export_dataset(tasks + [t2], str(tmp_path / "y"), client.fetch_image, label_config=FIXTURE_CONFIG)
    assert man.count == 1 and man.skipped[0]["code"] == "image_error"
