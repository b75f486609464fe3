"""The e2e suite's own checks, without Label Studio (these run with the unit tests)."""

from __future__ import annotations

import numpy as np
import pytest

from .scenario import (
    Sample,
    annotation_result,
    baseline_pmiou,
    label_map,
    ls_validation_errors,
    parse_floor,
    pmiou,
    read_config,
    same_partition,
    truth_for,
)


def _sample(sources: np.ndarray) -> Sample:
    return Sample("s", None, sources.astype(np.uint8), int(sources.max()) + 1)  # type: ignore[arg-type]


def test_parse_floor():
    assert parse_floor(None, 0.6) == (pytest.approx(0.55), "baseline-0.05 (baseline 0.600)")
    assert parse_floor("baseline", 0.6)[0] == pytest.approx(0.6)
    assert parse_floor("baseline + 0.1", 0.6)[0] == pytest.approx(0.7)
    assert parse_floor("0.42", 0.6)[0] == pytest.approx(0.42)
    with pytest.raises(ValueError, match="SAFIRE_E2E_MIOU_FLOOR"):
        parse_floor("half", 0.6)


def test_same_partition_is_label_permutation_only():
    a = np.array([[0, 0, 1], [2, 2, 1]])
    assert same_partition(a, np.array([[5, 5, 0], [1, 1, 0]]))
    assert not same_partition(a, np.array([[0, 0, 1], [1, 1, 1]]))  # two sources merged
    assert not same_partition(a, np.array([[0, 1, 1], [2, 2, 1]]))  # one pixel moved
    assert not same_partition(a, a.T)


def test_annotation_roundtrip_and_scores():
    src = np.zeros((40, 60), np.uint8)
    src[5:20, 10:30] = 1
    src[25:35, 40:55] = 2
    sample = _sample(src)
    cfg = read_config("multi_source.xml")
    result = annotation_result(cfg, sample)
    assert [r["value"]["brushlabels"] for r in result] == [["Source 2"], ["Source 3"]]
    assert ls_validation_errors({"result": result}, cfg.xml) == []
    pred = label_map(result, cfg, 40, 60)
    assert np.array_equal(pred, src)
    assert pmiou(pred, truth_for(cfg, sample)) == pytest.approx(1.0)
    assert baseline_pmiou(truth_for(cfg, sample)) < 0.5
    # a mask shifted by 5 pixels scores below the exact one
    assert pmiou(np.roll(pred, 5, axis=1), src) < 0.9

    bcfg = read_config("binary.xml")
    bres = annotation_result(bcfg, sample)
    assert [r["value"]["brushlabels"] for r in bres] == [["Forged"]]
    assert np.array_equal(label_map(bres, bcfg, 40, 60), src >= 1)

    authentic = annotation_result(cfg, _sample(np.zeros((8, 8), np.uint8)))
    assert authentic[0]["type"] == "choices" and authentic[0]["value"]["choices"] == ["authentic"]


def test_validation_catches_what_label_studio_would_not_show():
    cfg = read_config("multi_source.xml")
    src = np.zeros((10, 10), np.uint8)
    src[2:5, 2:5] = 1
    (region,) = annotation_result(cfg, _sample(src))
    bad = dict(region, from_name="nope")
    assert ls_validation_errors({"result": [bad]}, cfg.xml)
    wrong_label = dict(region, value=dict(region["value"], brushlabels=["Forged"]))
    assert ls_validation_errors({"result": [wrong_label]}, cfg.xml)


def test_config_override_of_sources():
    cfg = read_config("multi_source.xml", sources="2")
    assert 'safire_sources="2"' in cfg.xml and cfg.keypoint_name == "click" and cfg.rectangle_name == "box"
    with pytest.raises(AssertionError):
        read_config("binary.xml", sources="2")  # binary.xml has no safire_sources to replace
