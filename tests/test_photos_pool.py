"""The installed photo pool (``make photos``): split rule, fallback, manifest-driven loading.

Never needs the network or the real installed pool: every test points ``SAFIRE_PHOTO_DIR`` at a
temporary folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys

import numpy as np
import pytest
from PIL import Image

from training import photos as P
from training.photos import PHOTO_SPECS, VAL_PHOTOS, PhotoPool, split_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def photo_dir(tmp_path, monkeypatch):
    d = tmp_path / "photos"
    monkeypatch.setenv("SAFIRE_PHOTO_DIR", str(d))
    monkeypatch.setenv("SAFIRE_PHOTO_POOL", "auto")
    P._warned.clear()
    return d


def _fake_pool(d, names=None):
    """A tiny installed pool: hosts (one grey) and an RGBA cut-out, with a manifest."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = names or [f"fakepkg--photo{i}" for i in range(40)]
    entries = []
    for i, n in enumerate(names):
        img = rng.integers(0, 256, (24 + i % 3, 32, 3), dtype=np.uint8)
        grey = i == 1
        if grey:
            img = np.repeat(img[:, :, :1], 3, axis=2)
        Image.fromarray(img).save(d / f"{n}.png")
        entries.append({"name": n, "file": f"{n}.png", "package": "fakepkg", "version": "1",
                        "path": f"/usr/share/fake/{n}.png", "width": 32, "height": 24 + i % 3,
                        "licence": "CC0-1.0", "kind": "host", "grey": grey, "weight": 1.0,
                        "group": n, "scale": 1.0})
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[5:15, 5:15, 3] = 255
    for j in range(10):
        n = f"fakepkg--cut{j}"
        Image.fromarray(rgba).save(d / f"{n}.png")
        entries.append({"name": n, "file": f"{n}.png", "package": "fakepkg", "version": "1",
                        "path": f"/usr/share/fake/{n}.png", "width": 20, "height": 20,
                        "licence": "GPL-2", "kind": "cutout", "grey": False, "group": n})
    (d / "manifest.json").write_text(json.dumps({"format": 1, "packages": {}, "photos": entries}))
    return entries


def test_split_rule_fixed_and_balanced():
    # the documented rule, pinned: changing it would silently move photos between splits
    assert [split_of(f"n{i}") for i in range(12)] == [
        split_of(f"n{i}") for i in range(12)]
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(20000):
        counts[split_of(f"pkg--photo{i}")] += 1
    assert 0.18 < (counts["val"] + counts["test"]) / 20000 < 0.22
    assert 0.4 < counts["val"] / (counts["val"] + counts["test"]) < 0.6
    import hashlib
    for key in ("plasma-workspace-wallpapers--Path", "opencv-doc--aloe", "x"):
        h = int(hashlib.sha1(key.encode()).hexdigest(), 16)
        want = "train" if h % 5 else ("val" if (h // 5) % 2 == 0 else "test")
        assert split_of(key) == want


def test_fallback_without_manifest(photo_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="training.photos"):
        train = PhotoPool.load("train")
        PhotoPool.load("val")
    assert len([r for r in caplog.records if "make photos" in r.getMessage()]) == 1
    assert set(PhotoPool.load("val").names) == set(VAL_PHOTOS)
    assert set(train.names) == {s.name for s in PHOTO_SPECS} - set(VAL_PHOTOS)
    assert set(PhotoPool.load("heldout").names) == set(VAL_PHOTOS)
    assert len(PhotoPool.load("all")) == len(PHOTO_SPECS)
    assert train.cutouts == []
    with pytest.raises(ValueError):
        PhotoPool.load("test")  # no bundled test photos
    with pytest.raises(ValueError):
        PhotoPool.load("nope")
    with pytest.raises(LookupError):
        train.choose_cutout(np.random.default_rng(0))


def test_forced_modes(photo_dir, monkeypatch):
    _fake_pool(photo_dir)
    monkeypatch.setenv("SAFIRE_PHOTO_POOL", "bundled")
    assert len(PhotoPool.load("all")) == len(PHOTO_SPECS)
    monkeypatch.setenv("SAFIRE_PHOTO_POOL", "installed")
    assert len(PhotoPool.load("all")) == len(PHOTO_SPECS) + 40
    monkeypatch.setenv("SAFIRE_PHOTO_DIR", str(photo_dir / "missing"))
    with pytest.raises(FileNotFoundError):
        PhotoPool.load("train")


def test_manifest_pool_loads_and_splits_are_disjoint(photo_dir):
    entries = _fake_pool(photo_dir)
    hosts = {e["name"] for e in entries if e["kind"] == "host"}
    pools = {s: PhotoPool.load(s) for s in ("train", "val", "test", "heldout", "all")}
    train, val, test, held, everything = (set(pools[s].names) for s in
                                          ("train", "val", "test", "heldout", "all"))
    assert not train & held
    assert val | test == held and not val & test
    assert train | held == everything
    assert everything == hosts | {s.name for s in PHOTO_SPECS}
    assert set(VAL_PHOTOS) <= val
    for n in hosts:
        assert n in (train if split_of(n) == "train" else held)
        assert pools["all"][n].split == split_of(n)
    p = pools["all"]["fakepkg--photo0"]
    assert p.image.dtype == np.uint8 and p.image.shape == (24, 32, 3)
    assert not p.image.flags.writeable and p.spec.source == "installed"
    assert p.spec.licence == "CC0-1.0" and p.kind == "host" and p.alpha is None
    assert p.pil.size == (32, 24)
    g = pools["all"]["fakepkg--photo1"]
    assert g.grey and np.array_equal(g.image[..., 0], g.image[..., 2])
    # cut-outs are never hosts or donors, only in .cutouts, with their mask
    rng = np.random.default_rng(1)
    for _ in range(200):
        assert pools["all"].choose(rng).kind == "host"
    cuts = pools["all"].cutouts
    assert len(cuts) == 10 and all(c.kind == "cutout" for c in cuts)
    c = pools["all"].choose_cutout(rng)
    assert c.alpha.shape == (20, 20) and c.alpha[10, 10] == 255 and c.alpha[0, 0] == 0
    assert c.image.shape == (20, 20, 3)
    assert {c.name for c in pools["train"].cutouts}.isdisjoint(
        {c.name for c in pools["heldout"].cutouts})
    with pytest.raises(ValueError):
        PhotoPool.load("train", names=[next(iter(held))])


def test_group_shares_split(photo_dir):
    entries = _fake_pool(photo_dir, names=["fakepkg--a", "fakepkg--b", "fakepkg--c"])
    man = json.loads((photo_dir / "manifest.json").read_text())
    for e in man["photos"]:
        if e["name"] in ("fakepkg--a", "fakepkg--b", "fakepkg--c"):
            e["group"] = "fakepkg--scene"
    (photo_dir / "manifest.json").write_text(json.dumps(man))
    splits = {p.name: p.split for p in PhotoPool.load("all")}
    assert len({splits[e["name"]] for e in entries[:3]}) == 1
    assert splits["fakepkg--a"] == split_of("fakepkg--scene")


def _script():
    spec = importlib.util.spec_from_file_location(
        "install_photos", os.path.join(ROOT, "scripts", "install_photos.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_install_script_helpers(tmp_path):
    ip = _script()
    assert ip.excluded("opencv-doc--ela_modified")
    assert ip.excluded("opencv-doc--right07") and not ip.excluded("opencv-doc--right")
    # a Qt rcc v3 file with one zlib-compressed and one plain entry
    import struct
    import zlib
    names = b""
    def name(s):
        nonlocal names
        off = len(names)
        names += struct.pack(">HI", len(s), 0) + s.encode("utf-16-be")
        return off
    payload1, payload2 = b"hello" * 10, b"plain"
    comp = struct.pack(">I", len(payload1)) + zlib.compress(payload1)
    data = struct.pack(">I", len(comp)) + comp + struct.pack(">I", len(payload2)) + payload2
    n_dir, n_a, n_b = name("dir"), name("a.webp"), name("b.png")
    node = lambda *f: b"".join(f) + b"\0" * 8  # noqa: E731
    tree = (node(struct.pack(">IHII", 0, 2, 1, 1)) +  # root: 1 child at 1
            node(struct.pack(">IHII", n_dir, 2, 2, 2)) +  # dir: 2 children at 2
            node(struct.pack(">IHHHI", n_a, 1, 0, 0, 0)) +
            node(struct.pack(">IHHHI", n_b, 0, 0, 0, 4 + len(comp))))
    head = 24
    blob = (b"qres" + struct.pack(">IIIII", 3, head, head + len(tree),
                                  head + len(tree) + len(data), 0) + tree + data + names)
    assert ip.read_rcc(blob) == [("/dir/a.webp", payload1), ("/dir/b.png", payload2)]
    # per-file licences from a DEP-5 copyright file: last matching stanza wins
    cr = ip.Copyright("Files: *\nLicense: GPL-3+\n\nFiles: src/x/*\nCopyright: Me\n"
                      "License: CC-BY-SA-4.0\n\nFiles: src/x/y.webp\nLicense: public-domain\n")
    assert cr.lookup("src/x/y.webp") == ("public-domain", "")
    assert cr.lookup("src/x/z.webp") == ("CC-BY-SA-4.0", "Me")
    assert cr.lookup("other") == ("GPL-3+ (package-wide)", "")
    # the flat-colour pre-filter separates a drawing from noise
    flat = Image.new("RGB", (64, 64), (10, 200, 30))
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    assert ip.looks_flat(flat) > 0.9 > 0.2 > ip.looks_flat(noisy)


def test_eet_reader():
    """Enlightenment .edj (Eet v2) files: plain JPEG entries are found by the directory."""
    import io
    import struct
    ip = _script()
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    other = b"not an image"
    name1, name2 = b"edje/images/0\0", b"edje/file\0"
    head = 12 + 2 * 24
    offs = [head, head + len(jpeg), head + len(jpeg) + len(other),
            head + len(jpeg) + len(other) + len(name1)]
    blob = (struct.pack(">Iii", 0x1EE70F42, 2, 0)
            + struct.pack(">6i", offs[0], len(jpeg), len(jpeg), offs[2], len(name1), 0)
            + struct.pack(">6i", offs[1], len(other), len(other), offs[3], len(name2), 0)
            + jpeg + other + name1 + name2)
    assert ip.read_eet_jpegs(blob) == [("edje/images/0", jpeg)]
    with pytest.raises(ValueError):
        ip.read_eet_jpegs(b"qres" + b"\0" * 20)
