"""safire robustness (degradations and the table/plot) and safire evaluate --report (the HTML folder).

Tiny random-weights models on a 4-image dataset written here; nothing long.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import toy_forgery
from training.robustness import (
    DEFAULT_LEVELS,
    SOCIAL_QUALITY,
    Level,
    jpeg_bytes,
    jpeg_quality,
    levels_from,
    social_bytes,
    social_size,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """4 toy images (1 authentic, 2 and 3 sources) in the dataset layout (images/ + sources/)."""
    root = tmp_path_factory.mktemp("ds")
    (root / "images").mkdir()
    (root / "sources").mkdir()
    for i, k in enumerate((1, 2, 3, 2)):
        item = toy_forgery(10 + i, 64, k)
        Image.fromarray(item.image).save(root / "images" / f"s{i}.png")
        Image.fromarray(item.labels).save(root / "sources" / f"s{i}.png")
    return root


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory):
    from safire.build import build_safire
    from safire.checkpoint import save_checkpoint

    torch.manual_seed(0)
    m = build_safire("micro")
    path = tmp_path_factory.mktemp("ck") / "micro.pt"
    save_checkpoint(m, path, variant="micro", config=m.config, model_version="micro-report-test")
    return str(path)


def _img(h=90, w=120, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# degradations produce what they claim
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", DEFAULT_LEVELS["jpeg"] + [75, 30])
def test_jpeg_levels_carry_the_claimed_quality(q):
    data = jpeg_bytes(_img(), int(q))
    assert jpeg_quality(data) == int(q)
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG" and im.size == (120, 90)
    out, labels = Level("jpeg", q).apply(_img(), np.zeros((90, 120), np.uint8))
    assert out.shape == (90, 120, 3) and out.dtype == np.uint8 and labels.shape == (90, 120)
    if q < 100:
        assert not np.array_equal(out, _img())  # the round trip changed pixels


@pytest.mark.parametrize("f", DEFAULT_LEVELS["resize"])
def test_resize_levels_scale_image_and_truth(f):
    labels = np.zeros((90, 120), np.uint8)
    labels[30:60, 40:80] = 1
    out, lab = Level("resize", f).apply(_img(), labels)
    assert out.shape == (round(90 * f), round(120 * f), 3) and lab.shape == out.shape[:2]
    assert set(np.unique(lab)) == {0, 1}  # nearest: no new label values


def test_social_chain_downscales_long_images_to_1600_and_recompresses_at_75():
    big = _img(1200, 2000, seed=1)
    data = social_bytes(big)
    im = Image.open(io.BytesIO(data))
    assert im.size == (1600, 960) and jpeg_quality(data) == SOCIAL_QUALITY == 75
    small = _img(500, 700, seed=2)
    data = social_bytes(small)
    assert Image.open(io.BytesIO(data)).size == (700, 500) and jpeg_quality(data) == 75
    out, lab = Level("social").apply(big, np.zeros((1200, 2000), np.uint8))
    assert out.shape == (960, 1600, 3) and lab.shape == (960, 1600)
    assert social_size(1600, 900) == (1600, 900) and social_size(3200, 1000) == (1600, 500)


def test_blur_and_noise_levels():
    img = _img()
    b1, _ = Level("blur", 1.0).apply(img, np.zeros((90, 120), np.uint8))
    b2, _ = Level("blur", 2.0).apply(img, np.zeros((90, 120), np.uint8))
    assert img.std() > b1.std() > b2.std()  # stronger blur, smoother image
    flat = np.full((200, 200, 3), 128, np.uint8)
    n, _ = Level("noise", 5.0).apply(flat, np.zeros((200, 200), np.uint8), seed=3)
    assert abs((n.astype(float) - 128).std() - 5.0) < 0.2
    n2, _ = Level("noise", 5.0).apply(flat, np.zeros((200, 200), np.uint8), seed=3)
    assert np.array_equal(n, n2)  # seeded
    names = [lv.name for lv in levels_from([100, 50], [0.5], [1], [2])]
    assert names == ["clean", "jpeg 100", "jpeg 50", "resize 0.5", "blur 1", "noise 2", "social"]


# ------------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------------


def test_robustness_command_writes_table_plot_and_examples(dataset, micro_checkpoint, tmp_path, capsys):
    from ml_backend.cli import main

    out = tmp_path / "rob"
    rc = main(["robustness", "--data", str(dataset), "--out", str(out), "--checkpoint", micro_checkpoint,
               "--limit", "3", "--jpeg", "90,50", "--resize", "0.5", "--blur", "", "--noise", "3", "--grid", "4"])
    assert rc == 0
    table = (out / "robustness.md").read_text()
    for name in ("clean", "jpeg 90", "jpeg 50", "resize 0.5", "noise 3", "social"):
        assert f"| {name} | 3 |" in table
    assert "blur" not in table and "micro-report-test" in table
    for col in ("pmIoU, K given", "ARI, K given", "binary F1 @0.5", "binary F1 best", "image AUC"):
        assert col in table
    data = json.loads((out / "robustness.json").read_text())
    assert [lv["level"] for lv in data["levels"]][:2] == ["clean", "jpeg 90"] and data["images"] == 3
    assert data["weights_sha256"] and "--limit" in data["command"]
    png = Image.open(out / "robustness.png")
    assert png.format == "PNG" and png.width > 600
    ex = Image.open(out / "examples" / "resize_0.5.png")
    assert ex.size == (32, 32)  # the first image (64 x 64) at half size
    assert "pmIoU" in capsys.readouterr().out


def test_evaluate_report_folder_holds_every_file_it_links(dataset, micro_checkpoint, tmp_path):
    from training.evaluate import main

    out = tmp_path / "report"
    assert main(["--data", str(dataset), "--checkpoint", micro_checkpoint, "--grid", "4",
                 "--report", str(out)]) == 0
    page = (out / "index.html").read_text()
    links = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)
    assert "roc.png" in links and "f1_threshold.png" in links
    gallery = [x for x in links if x.startswith("gallery/")]
    assert len(gallery) == 4
    for link in links:
        assert not re.match(r"^[a-z]+://|^/", link), "the folder must open from disk: relative links only"
        assert (out / link).is_file(), link
    for link in links:
        Image.open(out / link).verify()
    results = json.loads((out / "results.json").read_text())
    fails = [r["failure"] for r in results["per_image"]]
    order = [int(Path(x).stem) for x in gallery]
    assert [fails[i] for i in order] == sorted(fails, reverse=True)  # worst first
    assert all(len(r["f1_curve"]) == len(results["thresholds"]) for r in results["per_image"] if r["k_true"] >= 2)
    assert "micro-report-test" in page and "sha256" in page
    assert "<table>" in page and "Image-level detection" in page
