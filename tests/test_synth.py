"""Tests of the synthetic multi-source forgery generator and its photo pool."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from training.photos import PHOTO_SPECS, VAL_PHOTOS, PhotoPool
from training.synth import (
    MANIPULATIONS,
    choose_num_sources,
    generate_sample,
    main,
    sample_name,
    write_dataset,
)

SMALL = (96, 160)


@pytest.fixture(scope="module")
def train_pool() -> PhotoPool:
    return PhotoPool.load("train")


@pytest.fixture(scope="module")
def val_pool() -> PhotoPool:
    return PhotoPool.load("val")


@pytest.fixture(scope="module")
def batch(train_pool):
    return [generate_sample(i, 11, 1 + i % 4, train_pool, SMALL) for i in range(32)]


def _same(a, b) -> bool:
    return (a.image.tobytes() == b.image.tobytes() and a.sources.tobytes() == b.sources.tobytes()
            and json.dumps(a.meta, sort_keys=True) == json.dumps(b.meta, sort_keys=True))


def test_photo_pool_split_disjoint():
    train, val, everything = (PhotoPool.load(s) for s in ("train", "val", "all"))
    assert set(val.names) == set(VAL_PHOTOS)
    assert not set(train.names) & set(val.names)
    assert set(train.names) | set(val.names) == set(everything.names)
    assert len(everything) == len(PHOTO_SPECS)
    for p in everything:
        assert p.image.dtype == np.uint8 and p.image.ndim == 3 and p.image.shape[2] == 3
        assert p.spec.licence
    with pytest.raises(ValueError):
        PhotoPool.load("test")


def test_deterministic(train_pool):
    a = generate_sample(5, 123, 3, train_pool)
    b = generate_sample(5, 123, 3, PhotoPool.load("train"))
    assert _same(a, b)
    c = generate_sample(5, 124, 3, train_pool)
    assert a.image.tobytes() != c.image.tobytes()


def test_order_independent(train_pool):
    idx = [0, 1, 2, 3, 4, 5]
    fwd = {i: generate_sample(i, 9, 2 + i % 3, train_pool, SMALL) for i in idx}
    generate_sample(77, 1, 4, train_pool, SMALL)  # unrelated work in between
    rev = {i: generate_sample(i, 9, 2 + i % 3, train_pool, SMALL) for i in reversed(idx)}
    for i in idx:
        assert _same(fwd[i], rev[i])


def test_masks_match_metadata(batch):
    for s in batch:
        H, W = s.sources.shape
        assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
        assert s.sources.dtype == np.uint8
        assert SMALL[0] <= H <= SMALL[1] and SMALL[0] <= W <= SMALL[1]
        labels = np.unique(s.sources)
        assert len(labels) == s.num_sources == s.meta["num_sources"]
        assert labels.tolist() == list(range(s.num_sources))
        areas = np.bincount(s.sources.ravel(), minlength=s.num_sources) / float(H * W)
        assert len(s.meta["sources"]) == s.num_sources
        for i, src in enumerate(s.meta["sources"]):
            assert src["index"] == i
            assert abs(src["area"] - areas[i]) < 1e-5
            assert areas[i] >= 0.0099  # no vanishing sources after overlaps
            assert "history" in src and "role" in src
        assert np.all(areas[:-1] >= areas[1:])  # decreasing area
        assert s.meta["sources"][0]["role"] == "host"
        assert all(src["role"] in MANIPULATIONS for src in s.meta["sources"][1:])
        assert s.meta["height"] == H and s.meta["width"] == W
        assert s.meta["authentic"] == (s.num_sources == 1)
        assert s.meta["name"] == sample_name("train", s.meta["index"])
        json.dumps(s.meta)  # serialisable


def test_authentic_samples(train_pool, batch):
    auth = [s for s in batch if s.num_sources == 1]
    assert auth
    for s in auth:
        assert not s.sources.any()
        assert [x["role"] for x in s.meta["sources"]] == ["host"]
        assert s.meta["sources"][0]["area"] == 1.0
    # authentic images get the same kinds of global post-processing as forged ones
    posts = {op["op"] for i in range(40)
             for op in generate_sample(i, 3, 1, train_pool, SMALL).meta["global_post"]}
    assert {"jpeg", "noise", "resample"} <= posts


def test_every_manipulation_appears(train_pool):
    roles = set()
    for i in range(30):
        s = generate_sample(i, 5, 4, train_pool, SMALL)
        roles.update(x["role"] for x in s.meta["sources"][1:])
    assert roles == set(MANIPULATIONS)


def test_manipulation_selection(train_pool):
    for kind in MANIPULATIONS:
        s = generate_sample(1, 2, 3, train_pool, SMALL, manipulations={kind: 1.0})
        assert {x["role"] for x in s.meta["sources"][1:]} == {kind}
        assert len(np.unique(s.sources)) == 3
    with pytest.raises(ValueError):
        generate_sample(1, 2, 2, train_pool, SMALL, manipulations={"warp": 1.0})


def test_train_val_photos_disjoint(train_pool, val_pool, batch):
    for s in batch:
        assert not set(s.meta["photos"]) & set(VAL_PHOTOS)
        assert s.meta["split"] == "train"
    for i in range(12):
        s = generate_sample(i, 4, 1 + i % 4, val_pool, SMALL)
        assert set(s.meta["photos"]) <= set(VAL_PHOTOS)
        assert s.meta["split"] == "val" and s.meta["name"].startswith("syn_val_")


def test_bad_arguments(train_pool):
    with pytest.raises(ValueError):
        generate_sample(0, 0, 0, train_pool)
    with pytest.raises(ValueError):
        generate_sample(0, -1, 2, train_pool)
    with pytest.raises(ValueError):
        generate_sample(0, 0, 2, train_pool, difficulty="impossible")


def test_choose_num_sources():
    ks = [choose_num_sources(0, i, 1, 4) for i in range(400)]
    assert set(ks) == {1, 2, 3, 4}
    ks = [choose_num_sources(0, i, 1, 4, authentic_fraction=0.25) for i in range(400)]
    assert 60 < ks.count(1) < 140 and set(ks) == {1, 2, 3, 4}
    assert {choose_num_sources(0, i, 2, 3, authentic_fraction=0.0) for i in range(50)} == {2, 3}
    assert {choose_num_sources(0, i, 3, 3) for i in range(20)} == {3}
    assert choose_num_sources(5, 17, 1, 4) == choose_num_sources(5, 17, 1, 4)


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im)


def test_cli_writes_documented_layout(tmp_path, capsys):
    out = str(tmp_path / "ds")
    rc = main(["--out", out, "--n", "6", "--sources", "1-3", "--authentic-fraction", "0.3",
               "--seed", "3", "--size-min", "96", "--size-max", "144"])
    assert rc == 0
    assert "[synth]" in capsys.readouterr().err  # progress on stderr
    man = json.load(open(os.path.join(out, "manifest.json")))
    assert man["format"] == "safire-dataset" and man["version"] == 1 and man["count"] == 6
    assert sum(man["num_sources_histogram"].values()) == 6
    assert man["skipped"] == [] and man["labels"][0] == "host"
    lines = open(os.path.join(out, "list.txt")).read().splitlines()
    blines = open(os.path.join(out, "list_binary.txt")).read().splitlines()
    benco = json.load(open(os.path.join(out, "imdl_benco.json")))
    names = open(os.path.join(out, "splits", "train.txt")).read().split()
    assert len(lines) == len(blines) == len(benco) == len(names) == 6
    hist = {}
    for i, (ln, bl, bj, name) in enumerate(zip(lines, blines, benco, names)):
        assert name == sample_name("train", i)
        meta = json.load(open(os.path.join(out, "meta", name + ".json")))
        k = meta["num_sources"]
        hist[str(k)] = hist.get(str(k), 0) + 1
        img = _read(os.path.join(out, "images", name + ".png"))
        src = _read(os.path.join(out, "sources", name + ".png"))
        sms = _read(os.path.join(out, "masks_safirems", name + ".png"))
        binm = _read(os.path.join(out, "masks_binary", name + ".png"))
        assert img.shape == src.shape + (3,) and src.shape == sms.shape == binm.shape
        assert len(np.unique(src)) == k
        np.testing.assert_array_equal(sms, src * 50)
        np.testing.assert_array_equal(binm, np.where(src >= 1, 255, 0))
        assert ln.split(",")[0] == bl.split(",")[0] == bj[0] == f"images/{name}.png"
        if k == 1:
            assert ln.endswith(",None") and bl.endswith(",None") and bj[1] == "Negative"
        else:
            assert ln.split(",")[1] == f"masks_safirems/{name}.png"
            assert bl.split(",")[1] == f"masks_binary/{name}.png" == bj[1]
        # the written sample is exactly generate_sample's output
        s = generate_sample(i, 3, k, PhotoPool.load("train"), (96, 144))
        np.testing.assert_array_equal(img, s.image)
        np.testing.assert_array_equal(src, s.sources)
    assert hist == man["num_sources_histogram"]
    # refuses to overwrite silently
    assert main(["--out", out, "--n", "2", "--quiet"]) == 2


def test_parallel_equals_serial(tmp_path):
    kw = dict(seed=8, sources=(2, 4), size_range=(96, 128), progress=False)
    a = write_dataset(str(tmp_path / "a"), 4, workers=1, **kw)
    b = write_dataset(str(tmp_path / "b"), 4, workers=2, **kw)
    assert a["num_sources_histogram"] == b["num_sources_histogram"]
    for sub in ("images", "sources"):
        for fn in sorted(os.listdir(tmp_path / "a" / sub)):
            np.testing.assert_array_equal(_read(tmp_path / "a" / sub / fn),
                                          _read(tmp_path / "b" / sub / fn))


def test_cli_rejects_bad_sources(tmp_path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--sources", "0-9"])
