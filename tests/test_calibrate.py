"""Calibrated automatic-mode settings travel with the weights and are used by the partition."""

import numpy as np
import torch

from conftest import toy_forgery
from safire.build import build_safire
from safire.checkpoint import save_checkpoint
from safire.partition import calibrated_defaults, partition
from safire.predictor import SafirePredictor
from training.calibrate import calibrate, main as calibrate_main


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    m = build_safire("micro")
    path = tmp_path / "m.pt"
    save_checkpoint(m, path, variant="micro", config=m.config, model_version="micro-x")
    return m, path


def test_calibration_is_stored_with_the_weights_and_used(tmp_path, monkeypatch):
    m, path = _checkpoint(tmp_path)
    assert calibrated_defaults(m) == {}
    out = tmp_path / "calibrated.pt"
    data_dir = tmp_path / "data"
    from PIL import Image

    (data_dir / "images").mkdir(parents=True)
    (data_dir / "sources").mkdir()
    for i in range(4):
        it = toy_forgery(i, 64, 1 + i % 2)
        Image.fromarray(it.image).save(data_dir / "images" / f"s{i}.png")
        Image.fromarray(it.labels).save(data_dir / "sources" / f"s{i}.png")
    assert calibrate_main(["--checkpoint", str(path), "--data", str(data_dir), "--out", str(out), "--grid", "4"]) == 0
    m2 = build_safire(checkpoint=out)
    cal = calibrated_defaults(m2)
    assert set(cal) == {"single_source_threshold", "iou_threshold"}
    assert m2.meta["model_version"] == "micro-x" and m2.meta["partition"]["calibration_images"] == 4
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    # partition() takes the stored values unless told otherwise
    seen = {}
    import importlib

    P = importlib.import_module("safire.partition")  # the module (the package exports a function of that name)

    real = P.partition_from_grid

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(P, "partition_from_grid", spy)
    img = toy_forgery(9, 64, 2).image
    partition(SafirePredictor(m2, cache_bytes=0), img, "auto", grid_size=4)
    assert seen["single_source_threshold"] == cal["single_source_threshold"]
    partition(SafirePredictor(m2, cache_bytes=0), img, "auto", grid_size=4, single_source_threshold=0.99)
    assert seen["single_source_threshold"] == 0.99


def test_calibrate_picks_the_best_pair_of_its_table():
    torch.manual_seed(0)
    m = build_safire("micro")
    data = [toy_forgery(i, 64, 1 + i % 3) for i in range(3)]
    res = calibrate(m, data, thresholds=(0.3, 0.7), ious=(0.4, 0.6), grid_size=4, max_auth_split=1.0)
    best = max(v["miou"] for v in res["table"].values())
    assert res["miou"] == best and len(res["table"]) == 4 and res["constraint_met"]
    assert res["table"][f"{res['single_source_threshold']}/{res['iou_threshold']}"]["miou"] == best
    assert 0.0 <= best <= 1.0 and np.isfinite(best)


def test_calibrate_respects_the_authentic_split_limit(monkeypatch, tmp_path):
    """Constructed table: the best-mIoU pair splits every authentic image, so it must not win."""
    import importlib

    C = importlib.import_module("training.calibrate")

    class Res:
        def __init__(self, k, labels):
            self.num_sources, self.labels = k, labels

    def fake(grid, emb, S, hw, mode, seed, single_source_threshold, iou_threshold):
        gt = fake.gt
        authentic = len(np.unique(gt)) == 1
        if single_source_threshold < 0.5:  # low threshold: everything split, forged ones perfect
            return Res(2, gt if not authentic else (np.arange(gt.size).reshape(gt.shape) % 2).astype(np.uint8))
        return Res(1 if authentic else 2, gt if not authentic else np.zeros_like(gt))

    real_embed = C.SafirePredictor.embed

    def embed(self, image, key=None):
        fake.gt = fake.items[id(image)]
        return real_embed(self, image, key)

    data = [toy_forgery(i, 64, 1 + i % 2) for i in range(4)]
    fake.items = {id(it.image): np.asarray(it.labels) for it in data}
    monkeypatch.setattr(C, "partition_from_grid", fake)
    monkeypatch.setattr(C.SafirePredictor, "embed", embed)
    torch.manual_seed(0)
    res = C.calibrate(build_safire("micro"), data, thresholds=(0.3, 0.7), ious=(0.5,), grid_size=4)
    assert res["table"]["0.3/0.5"]["auth_split"] == 1.0 and res["table"]["0.7/0.5"]["auth_split"] == 0.0
    assert res["single_source_threshold"] == 0.7 and res["constraint_met"]
    png = C.plot_curve(res, str(tmp_path / "curve.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
