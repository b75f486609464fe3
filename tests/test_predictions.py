"""Label Studio JSON built from partitions and clicks (pure functions, synthetic inputs)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np
import pytest

from ml_backend.label_config import parse_label_config
from ml_backend.predictions import (
    ClickPrompt,
    ContextError,
    click_to_prediction,
    parse_context,
    partition_to_prediction,
    source_labels,
    task_image_url,
    validate_regions,
)
from ml_backend.rle import decode_rle

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
MULTI = open(os.path.join(ROOT, "label_config", "multi_source.xml")).read()
BINARY = open(os.path.join(ROOT, "label_config", "binary.xml")).read()
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


def fixture_requests():
    with open(os.path.join(HERE, "fixtures", "labelstudio-1.23.2-backend-requests.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class FakePartition:
    labels: np.ndarray
    probs: np.ndarray
    num_sources: int
    score: float


def make_partition(k: int, h: int = 40, w: int = 60, score: float = 0.8) -> FakePartition:
    labels = np.zeros((h, w), np.uint8)
    boxes = [(5, 5, 20, 25), (25, 30, 38, 55), (2, 40, 12, 58), (30, 2, 38, 12)]
    for s in range(1, k):
        y0, x0, y1, x1 = boxes[s - 1]
        labels[y0:y1, x0:x1] = s
    probs = np.full((k, h, w), 0.1 / max(k - 1, 1), np.float32)
    for s in range(k):
        probs[s][labels == s] = 0.9
    return FakePartition(labels, probs, k, score)


def decoded(region):
    return decode_rle(region["value"]["rle"], region["original_height"], region["original_width"])


@pytest.fixture(scope="module")
def sdk_interface():
    li = pytest.importorskip("label_studio_sdk.label_interface")
    return li.LabelInterface


def test_multi_mode_one_region_per_source(sdk_interface):
    spec = parse_label_config(MULTI)
    part = make_partition(3)
    pred = partition_to_prediction(part, spec, "v1")
    assert pred["model_version"] == "v1" and pred["score"] == pytest.approx(0.8)
    labels = [r["value"]["brushlabels"][0] for r in pred["result"]]
    assert labels == ["Source 1 (host)", "Source 2", "Source 3"]
    for k, region in enumerate(pred["result"]):
        assert region["type"] == "brushlabels" and region["from_name"] == "source" and region["to_name"] == "image"
        assert (region["original_width"], region["original_height"], region["image_rotation"]) == (60, 40, 0)
        assert re.fullmatch(r"[A-Za-z0-9]{10}", region["id"])
        assert region["value"]["format"] == "rle"
        mask = decoded(region)
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, part.labels == k)
        assert region["score"] == pytest.approx(0.9, abs=1e-3)
    assert len({r["id"] for r in pred["result"]}) == 3
    assert sdk_interface(MULTI).validate_prediction(pred, return_errors=True) == []
    assert validate_regions(pred, spec) == []


def test_more_sources_than_labels_merge_into_last_label():
    spec = parse_label_config(MULTI)  # 4 labels
    part = make_partition(5)
    assert source_labels(spec, 5) == ["Source 1 (host)", "Source 2", "Source 3", "Source 4", "Source 4"]
    pred = partition_to_prediction(part, spec, "v1")
    assert [r["value"]["brushlabels"][0] for r in pred["result"]] == [
        "Source 1 (host)", "Source 2", "Source 3", "Source 4"]
    last = decoded(pred["result"][-1]) == 255
    np.testing.assert_array_equal(last, np.isin(part.labels, [3, 4]))


def test_host_label_found_by_name_not_position():
    xml = MULTI.replace('<Label value="Source 1 (host)" background="#1E88E5"/>\n    <Label value="Source 2" '
                        'background="#E53935"/>', '<Label value="Source 2" background="#E53935"/>\n    '
                        '<Label value="Source 1 (host)" background="#1E88E5"/>', 1)
    spec = parse_label_config(xml)
    assert spec.brush_labels[0] == "Source 2"
    assert source_labels(spec, 3) == ["Source 1 (host)", "Source 2", "Source 3"]


def test_binary_mode_forged_union_and_authentic_empty(sdk_interface):
    spec = parse_label_config(BINARY)
    part = make_partition(3)
    pred = partition_to_prediction(part, spec, "v2")
    assert len(pred["result"]) == 1
    region = pred["result"][0]
    assert region["value"]["brushlabels"] == ["Forged"] and region["from_name"] == "forgery"
    np.testing.assert_array_equal(decoded(region) == 255, part.labels >= 1)
    assert sdk_interface(BINARY).validate_prediction(pred, return_errors=True) == []
    authentic = partition_to_prediction(make_partition(1, score=0.05), spec, "v2")
    assert authentic == {"result": [], "score": pytest.approx(0.05), "model_version": "v2"}
    # multi mode: an authentic image is one region, the whole image as the host (never empty)
    mspec = parse_label_config(MULTI)
    one = partition_to_prediction(make_partition(1), mspec, "v2")["result"]
    assert len(one) == 1 and one[0]["value"]["brushlabels"] == [mspec.host_label or mspec.brush_labels[0]]
    assert (decoded(one[0]) == 255).all()
    assert partition_to_prediction(make_partition(1), mspec, "v2", include_host=False)["result"] == []


def test_specks_are_removed_before_encoding():
    spec = parse_label_config(BINARY)
    part = make_partition(2)
    part.labels[35, 58] = 1  # a 1-pixel speck
    pred = partition_to_prediction(part, spec, "v")
    mask = decoded(pred["result"][0]) == 255
    assert not mask[35, 58] and mask[10, 10]


def test_include_host_false_skips_host_region():
    pred = partition_to_prediction(make_partition(3), parse_label_config(MULTI), "v", include_host=False)
    assert [r["value"]["brushlabels"][0] for r in pred["result"]] == ["Source 2", "Source 3"]


# ------------------------------------------------------------------------------------------------
# context parsing
# ------------------------------------------------------------------------------------------------


def kp(x, y, label="Tampered", positive=True, where="top", to_name="image"):
    item = {"original_width": 320, "original_height": 240, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
            "id": "k", "from_name": "kp", "to_name": to_name, "type": "keypointlabels", "origin": "manual"}
    if where == "top":
        item["is_positive"] = positive
    elif where == "value":
        item["value"]["positive"] = positive
    return item


def rect(x, y, w, h, label="Tampered", rotation=0, positive=True):
    return {"original_width": 320, "original_height": 240, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]},
            "is_positive": positive, "id": "r", "from_name": "box", "to_name": "image",
            "type": "rectanglelabels", "origin": "manual"}


def test_parse_fixture_keypoint():
    spec = parse_label_config(FIXTURE_CONFIG)
    interactive = [r for r in fixture_requests() if r.get("context")]
    assert interactive
    for req in interactive:
        p = parse_context(req["context"], spec, 320, 240)
        assert p.points.shape == (1, 2) and p.labels.tolist() == [1] and p.box is None
        assert p.label == "Tampered"
    p = parse_context(interactive[-1]["context"], spec)  # size from the item itself
    np.testing.assert_allclose(p.points[0], [160, 120])
    assert (p.width, p.height) == (320, 240)


def test_parse_negative_points_and_polarity_sources():
    spec = parse_label_config(FIXTURE_CONFIG)
    ctx = {"result": [kp(10, 20), kp(50, 50, positive=False), kp(80, 80, positive=False, where="value"),
                      kp(90, 10, where="none")]}
    p = parse_context(ctx, spec, 320, 240)
    assert p.labels.tolist() == [1, 0, 0, 1]
    np.testing.assert_allclose(p.points[0], [32, 48])
    assert p.positive_points.shape == (2, 2)
    # is_positive at the top level wins over value.positive
    item = kp(10, 10, positive=False)
    item["value"]["positive"] = True
    assert parse_context([item], spec, 320, 240).labels.tolist() == [0]


def test_parse_rectangles_and_rotation():
    spec = parse_label_config(FIXTURE_CONFIG)
    p = parse_context({"result": [rect(10, 20, 50, 25)]}, spec, 320, 240)
    assert p.points.shape == (0, 2)
    np.testing.assert_allclose(p.box, (32, 48, 192, 108))
    assert p.kind == "rectanglelabels" and p.label == "Tampered"
    # 90 degrees clockwise about the top-left corner (160, 24): 64x48 px becomes x 112..160, y 24..88
    r = parse_context({"result": [rect(50, 10, 20, 20, rotation=90)]}, spec, 320, 240)
    np.testing.assert_allclose(r.box, (112, 24, 160, 88), atol=1e-6)
    mixed = parse_context({"result": [kp(30, 30), rect(10, 10, 50, 50), rect(0, 0, 5, 5, positive=False)]},
                          spec, 320, 240)
    assert mixed.points.shape == (1, 2) and mixed.box is not None and mixed.box[2] == pytest.approx(192)


def test_parse_label_mapping_and_filters():
    spec = parse_label_config(MULTI)
    p = parse_context([kp(10, 10, label="Source 3")], spec, 100, 100)
    assert p.label == "Source 3"
    assert parse_context([kp(10, 10, label="Unknown")], spec, 100, 100).label == "Source 2"
    bspec = parse_label_config(BINARY)
    assert parse_context([kp(10, 10, label="whatever")], bspec, 100, 100).label == "Forged"
    with pytest.raises(ContextError):
        parse_context({"result": [kp(10, 10, to_name="other_image")]}, spec, 100, 100)
    with pytest.raises(ContextError):
        parse_context({"result": []}, spec, 100, 100)
    with pytest.raises(ContextError):
        parse_context({"result": [{"type": "brushlabels", "value": {}}]}, spec, 100, 100)
    with pytest.raises(ContextError):
        parse_context(None, spec, 100, 100)
    # points outside the image are clipped
    p = parse_context([kp(150, -5)], spec, 100, 100)
    np.testing.assert_allclose(p.points[0], [99, 0])


# ------------------------------------------------------------------------------------------------
# click answers
# ------------------------------------------------------------------------------------------------


@dataclass
class FakeMask:
    prob: np.ndarray
    score: float


def test_click_to_prediction_region_and_label(sdk_interface):
    spec = parse_label_config(FIXTURE_CONFIG)
    prob = np.full((240, 320), 0.05, np.float32)
    prob[50:150, 100:250] = 0.9
    prob[5, 5] = 0.99  # speck far from the click: removed
    prompt = parse_context([kp(50, 40)], spec, 320, 240)
    pred = click_to_prediction(FakeMask(prob, 1.3), prompt, spec, "v9")
    assert pred["model_version"] == "v9" and pred["score"] == 1.0  # clipped
    (region,) = pred["result"]
    assert region["value"]["brushlabels"] == ["Tampered"] and region["from_name"] == "mask"
    mask = decoded(region) == 255
    assert mask[100, 200] and not mask[5, 5] and mask.sum() == 100 * 150
    assert region["score"] == pytest.approx(0.9, abs=1e-4)
    assert sdk_interface(FIXTURE_CONFIG).validate_prediction(pred, return_errors=True) == []


def test_click_keeps_small_component_under_the_click():
    spec = parse_label_config(FIXTURE_CONFIG)  # min_area 0.001 of 320x240 = 77 pixels
    prob = np.zeros((240, 320), np.float32)
    prob[100:105, 100:105] = 0.8  # 25 pixels: a speck, but clicked
    prompt = ClickPrompt(np.array([[102.0, 102.0]], np.float32), np.array([1]), None, "Tampered", 320, 240)
    pred = click_to_prediction(FakeMask(prob, 0.5), prompt, spec, "v")
    assert (decoded(pred["result"][0]) == 255).sum() == 25
    empty = click_to_prediction(FakeMask(np.zeros((240, 320), np.float32), 0.2), prompt, spec, "v")
    assert empty == {"result": [], "score": pytest.approx(0.2), "model_version": "v"}


def test_click_threshold_from_config():
    xml = FIXTURE_CONFIG.replace('<BrushLabels name="mask" toName="image">',
                                 '<BrushLabels name="mask" toName="image" safire_threshold="0.8">')
    spec = parse_label_config(xml)
    prob = np.zeros((240, 320), np.float32)
    prob[:, :160] = 0.7
    prob[:, 160:] = 0.9
    prompt = parse_context([kp(75, 50)], spec, 320, 240)
    mask = decoded(click_to_prediction(FakeMask(prob, 0.5), prompt, spec, "v")["result"][0]) == 255
    assert not mask[:, :160].any() and mask[:, 160:].all()


def test_task_image_url_errors_are_readable():
    spec = parse_label_config(FIXTURE_CONFIG)
    assert task_image_url({"data": {"image": " /data/upload/1/a.png "}}, spec) == "/data/upload/1/a.png"
    with pytest.raises(ValueError, match="'image'.*keys: img"):
        task_image_url({"data": {"img": "x"}}, spec)
    with pytest.raises(ValueError, match="data"):
        task_image_url({"id": 1}, spec)
