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
    assert set(cal) == {"single_source_threshold", "iou_threshold", "image_score"}
    assert cal["image_score"]["kind"] == "logistic" and cal["image_score"]["fitted_on"] == 4
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


def test_calibrate_respects_the_authentic_split_limit(tmp_path):
    """Constructed records: the best-mIoU threshold splits every authentic image, so it must not win."""
    from training.calibrate import plot_curve, search

    # two authentic images (split answers are wrong) and two forged ones (split answers are right)
    recs = [{"k": 1, "one": 1.0, "split": {0.5: (0.9, 2)}}, {"k": 1, "one": 1.0, "split": {0.5: (0.9, 2)}},
            {"k": 2, "one": 0.2, "split": {0.5: (1.0, 2)}}, {"k": 2, "one": 0.2, "split": {0.5: (1.0, 2)}}]
    scores = [0.6, 0.2, 0.8, 0.5]
    res = search(recs, scores, thresholds=(0.1, 0.3, 0.7), ious=(0.5,))
    t = res["table"]
    assert t["0.1/0.5"]["auth_split"] == 1.0 and t["0.1/0.5"]["forged_empty"] == 0.0
    assert t["0.3/0.5"]["auth_split"] == 0.5 and t["0.7/0.5"]["auth_split"] == 0.0
    assert t["0.7/0.5"]["forged_empty"] == 0.5 and abs(t["0.7/0.5"]["miou_forged"] - 0.6) < 1e-9
    assert t["0.3/0.5"]["miou"] > t["0.1/0.5"]["miou"] > t["0.7/0.5"]["miou"]  # splitting scores best...
    assert res["single_source_threshold"] == 0.7 and res["constraint_met"]  # ...but breaks the limit
    loose = search(recs, scores, thresholds=(0.1, 0.3, 0.7), ious=(0.5,), max_auth_split=1.0)
    assert loose["single_source_threshold"] == 0.3
    png = plot_curve(res, str(tmp_path / "curve.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_fitted_score_model_is_stored_and_used(tmp_path):
    """A checkpoint calibrated on authentic and forged images carries a logistic score model, and
    its partition scores are that model's output on the grid statistics."""
    from safire.image_score import logistic_score

    m, path = _checkpoint(tmp_path)
    data = [toy_forgery(i, 64, 1 + i % 2) for i in range(6)]
    res = calibrate(m, data, thresholds=(0.3, 0.7), ious=(0.5,), grid_size=4)
    sm = res["image_score"]
    assert sm["kind"] == "logistic" and sm["fitted_on"] == 6 and len(sm["weights"]) == 2
    assert 0.0 <= res["auc"] <= 1.0 and 0.0 <= res["auc_complementarity"] <= 1.0
    p = SafirePredictor(m, cache_bytes=0)
    plain = partition(p, data[1].image, "auto", grid_size=4)
    fitted = partition(p, data[1].image, "auto", grid_size=4, image_score=sm)
    assert fitted.statistics == plain.statistics
    assert abs(fitted.score - logistic_score(plain.statistics, sm)) < 1e-12
    # complementarity only: no score model
    assert calibrate(m, data, thresholds=(0.5,), ious=(0.5,), grid_size=4, score="complementarity")["image_score"] is None


def test_ship_checkpoint_keeps_weights_and_calibration_and_extends_the_lineage(tmp_path):
    """scripts/ship_checkpoint.py: the parent's lineage plus the new entries, the new version, the
    test metrics; weights and calibration unchanged, and the result loads."""
    import json
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "scripts"))
    from ship_checkpoint import main as ship_main

    m, parent = _checkpoint(tmp_path)
    ck = torch.load(parent, map_location="cpu", weights_only=False)
    ck["meta"].setdefault("provenance", {})["lineage"] = ["stage a: from scratch"]
    torch.save(ck, parent)
    child = tmp_path / "child.pt"
    save_checkpoint(m, child, variant="micro", config=m.config, model_version="micro-run",
                    partition={"single_source_threshold": 0.7, "iou_threshold": 0.4})
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"summary": {"miou_k": 0.61, "image_auc": 0.9, "note": "text is dropped"}}))
    out = tmp_path / "shipped.pt"
    assert ship_main(["--checkpoint", str(child), "--version", "micro-v2", "--lineage", "stage b: continued",
                      "--parent", str(parent), "--metrics", str(ev), "--metrics-on", "4 toys", "--out", str(out)]) == 0
    m2 = build_safire(checkpoint=out)
    meta = m2.meta
    assert meta["model_version"] == "micro-v2"
    assert meta["provenance"]["lineage"] == ["stage a: from scratch", "stage b: continued"]
    assert meta["metrics"] == {"miou_k": 0.61, "image_auc": 0.9} and meta["metrics_on"] == "4 toys"
    assert calibrated_defaults(m2) == {"single_source_threshold": 0.7, "iou_threshold": 0.4}
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
