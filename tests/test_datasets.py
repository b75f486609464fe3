"""Tests of the dataset readers (safire layout, SafireMS lists, binary pairs)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from training.datasets import (
    IGNORE,
    BinaryPairsDataset,
    DatasetError,
    SafireDataset,
    SafireMSDataset,
    decode_safirems,
    open_dataset,
    read_image,
)
from training.photos import PhotoPool
from training.synth import generate_sample, write_dataset


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth") / "ds")
    write_dataset(root, 6, seed=21, sources=(1, 4), authentic_fraction=0.3,
                  size_range=(80, 128), progress=False)
    return root


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_roundtrip_synth(synth_dir):
    ds = open_dataset(synth_dir)
    assert isinstance(ds, SafireDataset) and len(ds) == 6
    pool = PhotoPool.load("train")
    for i, item in enumerate(ds):
        s = generate_sample(i, 21, item.num_sources, pool, (80, 128))
        assert item.name == s.name
        np.testing.assert_array_equal(item.image, s.image)
        np.testing.assert_array_equal(item.labels, s.sources)
        assert item.num_sources == s.num_sources == len(np.unique(item.labels))
        assert item.meta["name"] == item.name
        assert item.mask_path.endswith(os.path.join("sources", item.name + ".png"))
        assert item.image.dtype == np.uint8 and item.image.shape[2] == 3
        np.testing.assert_array_equal(item.binary, (s.sources >= 1).astype(np.uint8))
    assert SafireDataset(synth_dir, split="train").names == ds.names
    with pytest.raises(DatasetError, match="split file not found"):
        SafireDataset(synth_dir, split="val")
    with pytest.raises(IndexError):
        ds[6]
    assert ds[-1].name == ds.names[-1]


def test_fallback_masks(synth_dir, tmp_path):
    root = _copy(synth_dir, str(tmp_path / "c"))
    ref = [it.labels for it in SafireDataset(root)]
    shutil.rmtree(os.path.join(root, "sources"))
    for it, lab in zip(SafireDataset(root), ref):  # from masks_safirems (50*i)
        np.testing.assert_array_equal(it.labels, lab)
        assert "masks_safirems" in (it.mask_path or "masks_safirems")
    shutil.rmtree(os.path.join(root, "masks_safirems"))
    for it, lab in zip(SafireDataset(root), ref):  # from masks_binary
        np.testing.assert_array_equal(it.labels, (lab >= 1).astype(np.uint8))


def test_ignore_label_and_no_list(tmp_path):
    root = str(tmp_path / "ds")
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    lab = np.zeros((20, 30), np.uint8)
    lab[:, 10:20] = 1
    lab[:5] = IGNORE
    _png(os.path.join(root, "images", "a.png"), img)
    _png(os.path.join(root, "sources", "a.png"), lab)
    ds = open_dataset(root)  # no manifest, no list.txt: detected by the folder layout
    it = ds[0]
    np.testing.assert_array_equal(it.labels, lab)
    assert it.num_sources == 2
    assert (it.binary[:5] == IGNORE).all()
    # an image without any mask (and no list saying None) is an error
    _png(os.path.join(root, "images", "b.png"), img)
    with pytest.raises(DatasetError, match="no mask for b"):
        SafireDataset(root)[1]


def test_safirems_decoding(tmp_path):
    root = str(tmp_path)
    img = np.full((12, 16, 3), 100, np.uint8)
    mask = np.zeros((12, 16), np.uint8)
    mask[:, 4:8] = 50
    mask[:, 8:12] = 100
    mask[:, 12:] = 150
    _png(os.path.join(root, "ms4_images", "x.png"), img)
    _png(os.path.join(root, "ms4_masks", "x.png"), mask)
    _png(os.path.join(root, "ms4_images", "y.jpg.png"), img)
    with open(os.path.join(root, "Safire_ms4.txt"), "w") as f:
        f.write("ms4_images/x.png,ms4_masks/x.png,extra\n\nms4_images/y.jpg.png,None\n")
    ds = SafireMSDataset(root, "Safire_ms4.txt")
    assert len(ds) == 2
    x, y = ds[0], ds[1]
    assert x.name == "x" and x.num_sources == 4
    np.testing.assert_array_equal(x.labels, mask // 50)
    assert x.meta["extra"] == ["extra"]
    assert y.name == "y.jpg" and y.num_sources == 1 and not y.labels.any()
    assert y.mask_path is None
    ds2 = open_dataset(os.path.join(root, "Safire_ms4.txt"))
    assert isinstance(ds2, SafireMSDataset)
    np.testing.assert_array_equal(ds2[0].labels, mask // 50)
    # 250 -> 5, near values round, strict mode rejects odd values
    np.testing.assert_array_equal(decode_safirems(np.array([[0, 49, 250, 255]], np.uint8)),
                                  [[0, 1, 5, 5]])
    with pytest.raises(DatasetError):
        decode_safirems(np.array([[0, 75]], np.uint8), strict=True)


def test_binary_pairs_and_imdl_benco(tmp_path):
    root = str(tmp_path)
    img = np.zeros((10, 10, 3), np.uint8)
    m = np.zeros((10, 10), np.uint8)
    m[2:5, 2:5] = 255
    m[7, 7] = 60  # below 127 but nonzero
    _png(os.path.join(root, "Tp", "a.jpg"), img)
    _png(os.path.join(root, "Gt", "a.png"), m)
    _png(os.path.join(root, "Au", "b.png"), img[..., 0])  # greyscale image -> RGB
    with open(os.path.join(root, "list.json"), "w") as f:
        json.dump([["Tp/a.jpg", "Gt/a.png"], ["Au/b.png", "Negative"]], f)
    with open(os.path.join(root, "pairs.txt"), "w") as f:
        f.write("Tp/a.jpg,Gt/a.png\nAu/b.png,None\n")
    ds = open_dataset(os.path.join(root, "list.json"))
    assert isinstance(ds, BinaryPairsDataset) and len(ds) == 2
    a, b = ds[0], ds[1]
    assert a.labels.sum() == 9 and a.num_sources == 2
    assert b.num_sources == 1 and not b.labels.any() and b.image.shape == (10, 10, 3)
    nz = BinaryPairsDataset(root, "list.json", nonzero=True)[0]
    assert nz.labels.sum() == 10
    txt = open_dataset(os.path.join(root, "pairs.txt"))
    assert isinstance(txt, BinaryPairsDataset)
    np.testing.assert_array_equal(txt[0].labels, a.labels)
    mem = BinaryPairsDataset(root, [("Tp/a.jpg", "Gt/a.png"), ("Au/b.png", None)])
    np.testing.assert_array_equal(mem[0].labels, a.labels)
    assert mem[1].authentic


def test_errors_name_the_file(tmp_path):
    root = str(tmp_path)
    img = np.zeros((10, 12, 3), np.uint8)
    _png(os.path.join(root, "im", "ok.png"), img)
    _png(os.path.join(root, "gt", "small.png"), np.zeros((5, 6), np.uint8))
    with open(os.path.join(root, "im", "bad.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n this is not really a png")
    pairs = [("im/missing.png", None), ("im/ok.png", "gt/missing.png"),
             ("im/ok.png", "gt/small.png"), ("im/bad.png", None)]
    ds = BinaryPairsDataset(root, pairs)
    with pytest.raises(DatasetError, match="missing.png"):
        ds[0]
    with pytest.raises(DatasetError, match=r"gt/missing\.png"):
        ds[1]
    with pytest.raises(DatasetError, match=r"small\.png.*6x5.*12x10"):
        ds[2]
    with pytest.raises(DatasetError, match=r"bad\.png"):
        ds[3]
    # option: resize the mask with nearest instead
    fixed = BinaryPairsDataset(root, pairs, resize_mismatched=True)[2]
    assert fixed.labels.shape == (10, 12)
    with pytest.raises(DatasetError, match="list file not found"):
        SafireMSDataset(root, "nope.txt")
    with open(os.path.join(root, "broken.json"), "w") as f:
        f.write("[[")
    with pytest.raises(DatasetError, match="broken.json"):
        open_dataset(os.path.join(root, "broken.json"))
    with pytest.raises(DatasetError):
        open_dataset(os.path.join(root, "im"))  # a folder that is no dataset
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(os.path.join(root, "nothing_here"))


def test_safire_dataset_corrupt_and_mismatch(synth_dir, tmp_path):
    root = _copy(synth_dir, str(tmp_path / "c"))
    ds = SafireDataset(root)
    name = ds.names[0]
    with open(os.path.join(root, "images", name + ".png"), "wb") as f:
        f.write(os.urandom(64))
    with pytest.raises(DatasetError, match=name):
        ds[0]
    name1 = ds.names[1]
    _png(os.path.join(root, "sources", name1 + ".png"), np.zeros((7, 9), np.uint8))
    with pytest.raises(DatasetError, match="nearest"):
        ds[1]
    fixed = SafireDataset(root, resize_mismatched=True)[1]
    assert fixed.labels.shape == fixed.image.shape[:2]
    os.remove(os.path.join(root, "images", ds.names[2] + ".png"))
    with pytest.raises(DatasetError, match="image file not found"):
        ds[2]


def test_image_modes(tmp_path):
    p = str(tmp_path / "rgba.png")
    Image.fromarray(np.full((4, 5, 4), 200, np.uint8)).save(p)
    assert read_image(p).shape == (4, 5, 3)
    p16 = str(tmp_path / "g16.png")
    Image.fromarray(np.full((4, 5), 65535, np.uint16)).save(p16)
    a = read_image(p16)
    assert a.shape == (4, 5, 3) and a.dtype == np.uint8 and a.max() == 255
    pp = str(tmp_path / "pal.png")
    Image.fromarray(np.full((4, 5, 3), 30, np.uint8)).convert("P").save(pp)
    assert read_image(pp).shape == (4, 5, 3)
