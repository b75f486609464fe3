"""Tests of the synthetic multi-source forgery generator and its photo pool."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import training.synth as synth
from training.photos import PHOTO_SPECS, VAL_PHOTOS, Photo, PhotoPool, PhotoSpec
from training.synth import (
    HELD_OUT_MANIPULATIONS,
    MANIPULATIONS,
    SHAPES,
    SYNTH_VERSION,
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
    # the default mix has every kind but the held-out ones (the retraining benchmark's family)
    assert roles == set(MANIPULATIONS) - set(HELD_OUT_MANIPULATIONS)
    assert HELD_OUT_MANIPULATIONS and all(MANIPULATIONS[k] == 0.0 for k in HELD_OUT_MANIPULATIONS)


def test_exemplar_fill_copies_real_pixels_from_outside_the_hole():
    from training.synth_fill import plan_fill, render_fill

    rng = np.random.default_rng(3)
    comp = rng.integers(0, 256, (96, 128, 3)).astype(np.float32)
    hole = np.zeros((40, 48), bool)
    hole[8:32, 10:40] = True
    rect = (20, 30, 60, 78)
    fill, trace = plan_fill(np.random.default_rng(4))
    guide = np.full((40, 48, 3), 128.0, np.float32)
    out = render_fill(comp, rect, hole, fill, guide)
    assert out.shape == (40, 48, 3) and trace[0]["op"] == "geom"
    np.testing.assert_array_equal(out[~hole], guide[~hole])  # only the hole changes
    full = np.zeros(comp.shape[:2], bool)
    full[20:60, 30:78] = hole
    outside = {tuple(v) for v in comp[~full]}
    filled = out[hole]
    assert not np.all(filled == 128.0)
    assert all(tuple(v) in outside for v in filled)  # random pixels: a match means a copy


def test_recolour_keeps_luminance_and_rotates_chroma():
    from training.synth_recolour import plan_recolour, render_recolour

    rng = np.random.default_rng(5)
    patch = rng.uniform(20, 230, (24, 32, 3)).astype(np.float32)
    edit, trace = plan_recolour(np.random.default_rng(6), mono=False)
    assert 30 <= abs(edit["angle"]) <= 180 and trace[0]["op"] == "recolour"
    out = render_recolour(patch, edit)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(out @ luma, patch @ luma + edit["lightness"], atol=1e-3)
    chroma = lambda a: np.stack([(a[..., 2] - a @ luma) * 0.564, (a[..., 0] - a @ luma) * 0.713], -1)
    c0, c1 = chroma(patch).reshape(-1, 2), chroma(out).reshape(-1, 2)
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), edit["saturation"] * np.linalg.norm(c0, axis=1),
                               rtol=1e-3, atol=1e-2)
    ang = np.degrees(np.arctan2(c1[:, 1], c1[:, 0]) - np.arctan2(c0[:, 1], c0[:, 0]))
    assert np.allclose((ang - edit["angle"] + 180) % 360 - 180, 0, atol=0.05)
    # a grey host gets a tone curve, the same on every channel
    g_edit, _ = plan_recolour(np.random.default_rng(7), mono=True)
    grey = np.repeat(patch[..., :1], 3, axis=2)
    g = render_recolour(grey, g_edit)
    assert np.array_equal(g[..., 0], g[..., 2]) and not np.allclose(g, grey)


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


# ---------------------------------------------------------------------------------------------
# v2: object-shaped regions, camera traces, global chains
# ---------------------------------------------------------------------------------------------


def _check_layout(s):
    """The invariants of the sources mask and its metadata."""
    H, W = s.sources.shape
    assert s.image.shape == (H, W, 3) and (s.meta["height"], s.meta["width"]) == (H, W)
    assert np.unique(s.sources).tolist() == list(range(s.num_sources))
    areas = np.bincount(s.sources.ravel(), minlength=s.num_sources) / float(H * W)
    assert np.all(areas[:-1] >= areas[1:]) and s.meta["sources"][0]["role"] == "host"
    for i, src in enumerate(s.meta["sources"]):
        assert abs(src["area"] - areas[i]) < 1e-5
    json.dumps(s.meta)


def test_version_and_segment_shapes_without_cutouts(train_pool):
    assert SYNTH_VERSION == 2 and not train_pool.cutouts  # the suite uses the bundled photos
    kinds, moved = set(), 0
    for i in range(16):
        s = generate_sample(i, 21, 4, train_pool, SMALL)
        assert s.meta["generator"] == "training.synth v2"
        _check_layout(s)
        for src in s.meta["sources"][1:]:
            shp = src["shape"]
            kinds.add(shp["kind"])
            assert shp["kind"] != "cutout"  # none installed: no cut-out shapes
            if shp["kind"] == "segment":
                assert shp["method"] in ("felzenszwalb", "slic") and shp["segments"] >= 1
                if src["role"] == "copy-move":  # a real segment of the host, moved
                    moved += 1
                    assert src["geom"]["object"] and shp["move"]["scale"] > 0
    assert "segment" in kinds and kinds & set(SHAPES)  # geometric shapes stay in the mix
    assert moved


def test_segments_follow_image_edges():
    """On a host with one clear object, a segment region placed on it is that object."""
    H, W = 160, 200
    yy, xx = np.mgrid[0:H, 0:W]
    disc = np.hypot(yy - 80, xx - 110) < 42
    noise = np.random.default_rng(0).normal(0, 3, (H, W, 3))
    img = (np.where(disc[..., None], [200.0, 60.0, 50.0], [90.0, 110.0, 120.0])
           + 10 * np.sin(xx / 9.0)[..., None] + noise).astype(np.float32)
    ious, methods = [], set()
    for k in range(24):
        r = synth._rng(0, k, 2)
        seg = synth._Segments(img, r)
        res = seg.region(r, H, W, [60, 90, 100, 130], float(disc.mean()))
        assert res is not None
        m, info = res
        methods.add(info["method"])
        ious.append((m & disc).sum() / (m | disc).sum())
    assert methods == {"felzenszwalb", "slic"}
    # the first segment is drawn near the box centre, sometimes just outside the object
    assert np.mean(np.array(ious) > 0.85) >= 0.75


def _cutout_pool(base: PhotoPool) -> PhotoPool:
    """The bundled photos plus one synthetic photo cut-out (a soft-edged blob on chelsea)."""
    img = np.ascontiguousarray(base["chelsea"].image[60:180, 100:260])
    yy, xx = np.mgrid[0:120, 0:160]
    r = np.hypot((yy - 60) / 50.0, (xx - 80) / 70.0) + 0.15 * np.sin(5 * np.arctan2(yy - 60, xx - 80))
    alpha = np.clip((1.0 - r) * 3000, 0, 255).astype(np.uint8)  # a soft edge of ~1 px
    spec = PhotoSpec("fake_cutout", "test", "fake.png", "test", kind="cutout")
    return PhotoPool(base.photos, split="train",
                     cutouts=[Photo("fake_cutout", img, spec, alpha=alpha)])


def test_cutout_splices_paste_the_alpha(train_pool):
    from PIL import Image

    pool = _cutout_pool(train_pool)
    n = 0
    for i in range(6):
        s = generate_sample(i, 3, 2, pool, (160, 224), manipulations={"splicing": 1.0},
                            object_shapes={"splicing": (1.0, 0.0)})
        _check_layout(s)
        src = s.meta["sources"][1]
        if src["shape"]["kind"] != "cutout":  # too big for this image: geometric fallback
            continue
        n += 1
        assert src["photo"] == "fake_cutout" and "fake_cutout" in s.meta["photos"]
        assert src["paste"]["alpha"] == "cutout"
        # the region is the cut-out's alpha (>= 128), scaled into its box
        y0, x0, y1, x1 = src["shape"]["box"]
        alpha = pool.cutouts[0].alpha
        ys, xs = np.nonzero(alpha >= 128)
        alpha = alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        want = np.asarray(Image.fromarray(alpha).resize((x1 - x0, y1 - y0), Image.BILINEAR)) >= 128
        if src["shape"]["flip"]:
            want = want[:, ::-1]
        got = s.sources[y0:y1, x0:x1] == 1
        assert (got & want).sum() / (got | want).sum() > 0.9
        assert not s.sources[:y0].any() and not s.sources[y1:].any()
    assert n >= 4
    # cut-outs also serve as shapes of the other manipulations
    s = generate_sample(0, 3, 2, pool, (160, 224), manipulations={"removal": 1.0},
                        object_shapes={"removal": (1.0, 0.0)})
    assert s.meta["sources"][1]["shape"]["kind"] == "cutout"
    assert s.meta["photos"] == [s.meta["photo"]]  # a shape only: no pixels of the cut-out


def test_camera_histories_have_sensor_traces(batch):
    ops = [op for s in batch for src in s.meta["sources"] for op in src["history"]]
    kinds = {op["op"] for op in ops}
    assert {"cfa", "prnu", "sharpen", "noise", "jpeg"} <= kinds
    assert any("channel_gains" in op for op in ops if op["op"] == "noise")
    for op in ops:
        if op["op"] == "cfa":
            assert op["pattern"] in ("RGGB", "GRBG", "GBRG", "BGGR")
            assert op["method"] in ("bilinear", "edge")


@pytest.mark.parametrize("method", ["bilinear", "edge"])
def test_cfa_keeps_sampled_sites(method):
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (12, 10, 3)).astype(np.float32)
    out = synth._cfa(a, "GRBG", method, (1, 0))  # origin (1, 0): red on even rows, odd columns
    rows, cols = np.arange(12)[:, None] + 1, np.arange(10)[None, :]
    red = (rows % 2 == 0) & (cols % 2 == 1)
    blue = (rows % 2 == 1) & (cols % 2 == 0)
    green = ~(red | blue)
    np.testing.assert_allclose(out[..., 0][red], a[..., 0][red], atol=1e-3)
    np.testing.assert_allclose(out[..., 1][green], a[..., 1][green], atol=1e-3)
    np.testing.assert_allclose(out[..., 2][blue], a[..., 2][blue], atol=1e-3)
    flat = np.full((8, 8, 3), [50.0, 120.0, 200.0], dtype=np.float32)
    np.testing.assert_allclose(synth._cfa(flat, "RGGB", method, (0, 0)), flat, atol=1e-3)


def test_global_chains(train_pool):
    chains = {}
    for i in range(40):
        s = generate_sample(i, 6, 1, train_pool, SMALL, difficulty="hard")
        chains.setdefault(s.meta["global_chain"], []).append(s.meta["global_post"])
    assert {"social", "double-jpeg", "basic"} <= set(chains)
    for post in chains["social"]:
        assert post[-1]["op"] == "jpeg" and 70 <= post[-1]["quality"] <= 85
        assert all(op["op"] != "resize" for op in post)  # small images are not downscaled
    for post in chains["double-jpeg"]:
        assert [op["op"] for op in post] == ["jpeg", "jpeg"]


def test_social_chain_downscales_large_images_and_masks(train_pool, monkeypatch):
    import training.synth_post as synth_post  # the chain reads its constants there

    monkeypatch.setattr(synth_post, "SOCIAL_MAX_SIDE", 100)
    monkeypatch.setattr(synth_post, "_CHAIN_P", {d: (1.0, 0.0) for d in synth.DIFFICULTIES})
    for i in range(4):
        s = generate_sample(i, 2, 3, train_pool, (120, 160))
        assert s.meta["global_chain"] == "social"
        assert max(s.image.shape[:2]) == 100 and "resize" in [o["op"] for o in s.meta["global_post"]]
        assert max(s.meta["size_before_post"]) > 100
        _check_layout(s)


def test_manipulations_option_parses_and_refuses_unknown_kinds():
    import argparse

    from training.synth import parse_manipulations

    assert parse_manipulations("exemplar-fill=1, splicing=0.5") == {"exemplar-fill": 1.0, "splicing": 0.5}
    assert parse_manipulations("exemplar-fill") == {"exemplar-fill": 1.0}
    for bad in ("warp=1", "splicing=x", "splicing=-1", "splicing=0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_manipulations(bad)
