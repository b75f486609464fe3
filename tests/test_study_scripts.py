"""scripts/plot_training_curve.py (log parsing and the figure's series: stages end to end, branches
from the last stage's end, test stars, baseline lines) and scripts/grid_oracle_study.py."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location(
        "plot_training_curve", os.path.join(ROOT, "scripts", "plot_training_curve.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _log(path, steps, vals):
    lines = ["resume: nothing to resume"]
    for s, aass in steps:
        lines.append(f"step {s}/1000000 lr=0.0001 images_per_s=4.6 aass={aass} conf=0.04 total=0.4 r2r=10.5")
    for s, miou in vals:
        lines.append(f"val @ {s}: miou_k={miou} ari_k=0.3 image_auc=0.75 auth_split_rate=0.0000")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_parse_reads_steps_and_validation(tmp_path):
    mod = _script()
    log = _log(tmp_path / "a.log", [(25, 0.41), (50, 0.40)], [(50, 0.45)])
    steps, vals = mod.parse(log)
    assert steps == [(25, (0.41, 10.5)), (50, (0.40, 10.5))]
    assert vals[0][0] == 50 and vals[0][1]["miou_k"] == pytest.approx(0.45)
    assert vals[0][1]["image_auc"] == pytest.approx(0.75)


def test_figure_lays_stages_end_to_end(tmp_path, monkeypatch):
    mod = _script()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = _log(tmp_path / "a.log", [(10, 0.5), (20, 0.45)], [(20, 0.40)])
    b = _log(tmp_path / "b.log", [(10, 0.44), (20, 0.42)], [(20, 0.43)])
    test = tmp_path / "test.json"
    test.write_text(json.dumps({"summary": {"miou_k": 0.47}}))
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"summary": {"miou_k": 0.432, "ari_k": 0.311, "image_auc": 0.73}}))
    figs = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda self, *a, **k: figs.append(self))
    out = str(tmp_path / "curve.png")
    assert mod.main(["--stage", f"a:{a}:8", "--stage", f"b:{b}:64", "--baseline", f"start model:{base}",
                     "--test", f"start:{test}", "--test", f"b:{test}", "--out", out]) == 0
    ax1, ax2 = figs[0].axes
    losses = {l.get_label(): l for l in ax1.get_lines()}
    # stage b starts where stage a ended (20 steps x 8 samples) and counts 64 samples per step
    assert list(losses["stage a: AASS loss"].get_xdata()) == [80, 160]
    assert list(losses["stage b: AASS loss"].get_xdata()) == [160 + 640, 160 + 1280]
    lines = {l.get_label(): l for l in ax2.get_lines()}
    assert list(lines["stage b: val miou_k"].get_ydata()) == [pytest.approx(0.43)]
    # the test stars: one at the start, one at stage b's end
    assert list(lines["start: test miou_k 0.470"].get_xdata()) == [0]
    assert list(lines["b: test miou_k 0.470"].get_xdata()) == [160 + 1280]
    # the baseline's validation numbers are horizontal lines
    assert list(lines["start model: val miou_k 0.432"].get_ydata()) == [0.432, 0.432]
    assert "start model: val image_auc 0.730" in lines


def test_grid_oracle_study_bounds(tmp_path):
    """scripts/grid_oracle_study.py on a toy forgery with the tiny native model: every variant is
    measured and a pmIoU in [0, 1]; the winner of a cluster is its most confident member."""
    import numpy as np
    import torch

    from conftest import toy_forgery
    from safire.build import build_safire
    from safire.predictor import SafirePredictor

    spec = importlib.util.spec_from_file_location(
        "grid_oracle_study", os.path.join(ROOT, "scripts", "grid_oracle_study.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    predictor = SafirePredictor(build_safire("native_micro"), cache_bytes=0)
    item = toy_forgery(3, size=96, num_sources=3)
    row = mod.study_image(predictor, item.image, item.labels, 3, seed=0)
    assert set(mod.VARIANTS) <= set(row)
    for v in mod.VARIANTS:
        assert 0.0 <= row[v] <= 1.0
    assert row["k"] == 3
    clusters = np.array([0, 0, 1, -1, 1])
    assert mod.winners_of(clusters, np.array([0.1, 0.9, 0.5, 0.99, 0.2])).tolist() == [1, 2]
