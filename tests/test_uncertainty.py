"""The partition's uncertainty (tasks worth labelling next) and SAFIRE_PREDICTION_SCORE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml_backend.label_config import parse_label_config
from ml_backend.predictions import partition_to_prediction
from ml_backend.settings import Settings, SettingsError
from safire.partition import (GridOutput, margin_uncertainty, partition, partition_from_grid,
                              partition_uncertainty, prompt_disagreement)
from safire.predictor import SafirePredictor
from test_partition import MASK, S, make_gt, oracle_grid
from test_predictions import BINARY, MULTI, make_partition


def _logits(masks):
    """Boolean masks (N x h x w) -> logits +-6."""
    return torch.tensor(np.where(np.asarray(masks), 6.0, -6.0), dtype=torch.float32)


def conflicting_grid(gt, seed=0, share=0.6):
    """Like the oracle, but ``share`` of the prompts answer a random rectangle instead of their
    source: a model whose prompts contradict each other."""
    grid, emb = oracle_grid(gt, seed=seed)
    rng = np.random.default_rng(seed + 100)
    logits = grid.logits.clone()
    for i in np.flatnonzero(rng.random(len(logits)) < share):
        y0, x0 = rng.integers(0, MASK // 2, 2)
        h, w = rng.integers(4, MASK // 2, 2)
        m = np.zeros((MASK, MASK), bool)
        m[y0:y0 + h, x0:x0 + w] = True
        logits[i] = _logits(m[None])[0]
    return GridOutput(logits, grid.scores, grid.points), emb


# ------------------------------------------------------------------------------------------------
# the parts
# ------------------------------------------------------------------------------------------------


def test_prompt_disagreement_is_one_minus_the_mean_iou_with_the_winner():
    full = np.ones((8, 8), bool)
    half = np.zeros((8, 8), bool)
    half[:, :4] = True
    quarter = np.zeros((8, 8), bool)
    quarter[:4, :4] = True
    lo = _logits([full, full, half, quarter])
    one = np.zeros(4, np.int64)
    # IoUs with the winner (prompt 0): 1, 1, 0.5, 0.25
    assert prompt_disagreement(lo, one, np.array([0])) == pytest.approx(1 - (1 + 1 + 0.5 + 0.25) / 4)
    assert prompt_disagreement(lo[:2], one[:2], np.array([0])) == 0.0
    # two sources, each answered exactly by its members: no disagreement
    other = ~half
    lo2 = _logits([half, half, other, other])
    assert prompt_disagreement(lo2, np.array([0, 0, 1, 1]), np.array([0, 2])) == 0.0
    # the same masks put in one source: half of them contradict the winner (IoU 0)
    assert prompt_disagreement(lo2, np.zeros(4, np.int64), np.array([0])) == pytest.approx(0.5)


def test_prompt_disagreement_dropped_and_empty_prompts():
    half = np.zeros((8, 8), bool)
    half[:, :4] = True
    empty = np.zeros((8, 8), bool)
    lo = _logits([half, half, ~half, empty])
    # prompt 2's source was dropped (-1): it is compared with the winner it overlaps most (IoU 0
    # here); the empty prompt 3 takes no part
    assert prompt_disagreement(lo, np.array([0, 0, -1, -1]), np.array([0])) == pytest.approx(1 / 3)
    # ... and with the winner it overlaps most when one exists
    lo_b = _logits([half, ~half, ~half, empty])
    assert prompt_disagreement(lo_b, np.array([0, -1, 1, -1]), np.array([0, 2])) == 0.0
    # no mask at all, or no winner: as unsure as it gets
    assert prompt_disagreement(_logits([empty, empty]), np.array([-1, -1]), np.array([], np.int64)) == 1.0
    assert prompt_disagreement(_logits([empty, empty]), np.array([0, 0]), np.array([0])) == 1.0


def test_prompt_disagreement_resizes_large_masks_and_crops_padding():
    big = np.zeros((3, 256, 256), bool)
    big[:, :, :128] = True
    big[2, :, :] = True  # the third prompt covers the whole frame
    d = prompt_disagreement(_logits(big), np.zeros(3, np.int64), np.array([0]), size=64)
    assert d == pytest.approx(1 - (1 + 1 + 0.5) / 3, abs=0.01)
    # the padding right of column 128 is not image: cropped away, all three masks agree
    assert prompt_disagreement(_logits(big), np.zeros(3, np.int64), np.array([0]), crop=(256, 128)) == 0.0


def test_margin_term_peaks_at_the_threshold():
    assert margin_uncertainty(0.6, 0.6) == 1.0
    assert margin_uncertainty(0.0, 0.6) == 0.0 and margin_uncertainty(1.0, 0.6) == 0.0
    assert margin_uncertainty(0.3, 0.6) == pytest.approx(0.5) and margin_uncertainty(0.8, 0.6) == pytest.approx(0.5)
    below = [margin_uncertainty(s, 0.5) for s in np.linspace(0, 0.5, 11)]
    above = [margin_uncertainty(s, 0.5) for s in np.linspace(0.5, 1, 11)]
    assert np.all(np.diff(below) > 0) and np.all(np.diff(above) < 0)


def test_combination_is_high_when_either_part_is():
    assert partition_uncertainty(0.0, 0.0, 0.5) == 0.0
    assert partition_uncertainty(0.0, 0.5, 0.5) == 1.0  # score on the threshold
    assert partition_uncertainty(1.0, 0.0, 0.5) == 1.0  # prompts contradict the answer
    assert partition_uncertainty(0.4, 0.25, 0.5) == pytest.approx(1 - 0.6 * 0.5)
    rng = np.random.default_rng(0)
    for d, s, t in rng.random((200, 3)):
        u = partition_uncertainty(d, s, t)
        assert 0.0 <= u <= 1.0 and u >= d - 1e-12 and u >= margin_uncertainty(s, t) - 1e-12


# ------------------------------------------------------------------------------------------------
# on partitions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("mode", ["fixed", "auto"])
def test_agreeing_prompts_give_low_uncertainty_conflicting_ones_high(k, mode):
    gt = make_gt(k) if k > 1 else np.zeros((80, 80), np.uint8)
    sources = "auto" if mode == "auto" else max(k, 2)
    grid, emb = oracle_grid(gt, seed=k)
    clean = partition_from_grid(grid, emb, S, gt.shape, sources, gate_authentic=True)
    assert clean.disagreement < 0.05
    assert 0.0 <= clean.uncertainty < 0.2
    grid_c, emb_c = conflicting_grid(gt, seed=k)
    mixed = partition_from_grid(grid_c, emb_c, S, gt.shape, sources, gate_authentic=True)
    assert 0.0 <= mixed.uncertainty <= 1.0
    assert mixed.disagreement > 0.3 and mixed.uncertainty > clean.uncertainty + 0.25


def test_more_conflict_means_more_uncertainty():
    gt = make_gt(2)
    us = []
    for share in (0.0, 0.2, 0.5, 0.8):
        grid, emb = conflicting_grid(gt, seed=3, share=share)
        us.append(partition_from_grid(grid, emb, S, gt.shape, "auto").uncertainty)
    assert np.all(np.diff(us) > 0), us


def test_a_score_on_the_threshold_is_maximally_uncertain():
    gt = make_gt(3)
    grid, emb = oracle_grid(gt, seed=3)
    res = partition_from_grid(grid, emb, S, gt.shape, "auto")
    on = partition_from_grid(grid, emb, S, gt.shape, "auto", single_source_threshold=res.score)
    assert res.uncertainty < 0.2 and on.uncertainty == pytest.approx(1.0)


def test_partition_reports_uncertainty_end_to_end(micro_model):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    res = partition(SafirePredictor(micro_model), img, "auto", grid_size=6)
    assert 0.0 <= res.disagreement <= res.uncertainty <= 1.0
    assert "uncertainty" in res.timings


def test_native_partition_reports_uncertainty():
    from safire.build import build_safire

    torch.manual_seed(0)
    model = build_safire("native_micro")
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (50, 75, 3), dtype=np.uint8)
    res = partition(SafirePredictor(model), img, 2, grid_size=5)
    assert 0.0 <= res.disagreement <= res.uncertainty <= 1.0


# ------------------------------------------------------------------------------------------------
# predictions and the setting
# ------------------------------------------------------------------------------------------------


def _with_uncertainty(part, u):
    part.uncertainty = u
    return part


@pytest.mark.parametrize("config", [MULTI, BINARY])
def test_prediction_carries_uncertainty_and_the_setting_picks_the_score(config):
    spec = parse_label_config(config)
    for k in (1, 3):
        part = _with_uncertainty(make_partition(k, score=0.8), 0.35)
        forgery = partition_to_prediction(part, spec, "v")
        assert forgery["score"] == pytest.approx(0.8) and forgery["uncertainty"] == pytest.approx(0.35)
        unsure = partition_to_prediction(part, spec, "v", prediction_score="uncertainty")
        assert unsure["score"] == pytest.approx(0.35) and unsure["uncertainty"] == pytest.approx(0.35)
        assert unsure["result"] == [] or len(unsure["result"]) == len(forgery["result"])


def test_prediction_score_must_be_known():
    part = _with_uncertainty(make_partition(2), 0.5)
    with pytest.raises(ValueError, match="prediction_score"):
        partition_to_prediction(part, parse_label_config(MULTI), "v", prediction_score="margin")
    # a partition without an uncertainty cannot be ranked by it
    with pytest.raises(ValueError, match="uncertainty"):
        partition_to_prediction(make_partition(2), parse_label_config(MULTI), "v", prediction_score="uncertainty")
    assert "uncertainty" not in partition_to_prediction(make_partition(2), parse_label_config(MULTI), "v")


def test_setting_parses_and_rejects_unknown_values():
    assert Settings.from_env({}).prediction_score == "forgery"
    assert Settings.from_env({"SAFIRE_PREDICTION_SCORE": " Uncertainty "}).prediction_score == "uncertainty"
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"SAFIRE_PREDICTION_SCORE": "confidence"})
    assert len(e.value.problems) == 1
    assert "SAFIRE_PREDICTION_SCORE='confidence'" in str(e.value) and '"uncertainty"' in str(e.value)


def test_preannotate_image_records_uncertainty(micro_model):
    import io

    from PIL import Image

    from ml_backend.preannotate import preannotate_image

    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buf, format="PNG")
    forgery = preannotate_image(micro_model, buf.getvalue(), MULTI, grid=4)
    unsure = preannotate_image(micro_model, buf.getvalue(), MULTI, grid=4, prediction_score="uncertainty")
    u = forgery["uncertainty"]
    assert 0.0 <= u <= 1.0 and unsure["uncertainty"] == pytest.approx(u)
    assert unsure["score"] == pytest.approx(u) and forgery["score"] == pytest.approx(forgery["provenance"]["score"])
    assert forgery["provenance"]["uncertainty"] == pytest.approx(u)
    assert unsure["provenance"]["prediction_score"] == "uncertainty"
    assert unsure["provenance"]["score"] == pytest.approx(forgery["provenance"]["score"])  # the forgery score is kept



def test_preannotate_image_takes_the_projects_authentic_threshold(micro_model):
    """``safire_authentic_threshold`` on the BrushLabels tag reaches the bulk path's partition: at
    0.01 nothing is declared authentic, at 0.99 (above any score of this untrained model here) all is."""
    import io

    from PIL import Image

    from ml_backend.preannotate import preannotate_image

    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buf, format="PNG")
    found = {}
    for t in ("0.01", "0.99"):
        cfg = MULTI.replace("<BrushLabels ", f'<BrushLabels safire_authentic_threshold="{t}" ', 1)
        pred = preannotate_image(micro_model, buf.getvalue(), cfg, grid=4)
        prov = pred["provenance"]
        assert prov["partition"]["single_source_threshold"] == float(t), prov["partition"]
        found[t] = prov["sources_found"]
        score = prov["score"]
    assert found["0.99"] == 1 or score >= 0.99
