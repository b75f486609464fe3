#!/usr/bin/env python3
"""Install the offline photo pool of the synthetic forgery generator (``make photos``).

Downloads Debian packages that ship real photographs with ``apt-get download`` (nothing is
installed), extracts them with ``dpkg-deb -x``, picks the photographs and writes them with a
``manifest.json`` into ``${SAFIRE_PHOTO_DIR:-~/.cache/safire-studio/photos}``;
``training/photos.py`` reads that folder. Nothing is stored in git.

* JPEG / PNG files are kept byte for byte (also the JPEG entries of Enlightenment's ``.edj``
  files); other formats (WebP inside GCompris' Qt ``.rcc``
  resource files) are decoded once and stored as PNG. Photos whose long side exceeds
  ``--max-side`` are downscaled once (Lanczos) and stored as PNG; the manifest records the scale.
* Which files are photographs was decided by eye, from contact sheets (``--sheets DIR`` renders
  them): :data:`EXCLUDE` lists every candidate file that is *not* a usable real photograph
  (drawings, renders, paintings, screenshots, maps, the forged ``ela_modified.jpg``, ...).
  :func:`looks_flat` is only a pre-filter that marks likely drawings on the sheets.
* The held-out split is fixed by a hash of each photo's group (its name unless it is one of
  several views of one scene): see ``training.photos.split_of``.
* Idempotent: a package already in the manifest with the same version and the same selection
  rules is skipped without downloading anything; a run with everything installed takes well under
  a second.

Usage::

    python scripts/install_photos.py                      # install / update everything
    python scripts/install_photos.py --packages mate-backgrounds,lxqt-themes
    python scripts/install_photos.py --write-docs docs/photos.md   # regenerate the photo table
    python scripts/install_photos.py --sheets /tmp/sheets --packages opencv-doc  # review sheets
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training.photos import MANIFEST, MANIFEST_FORMAT, photo_dir, split_of  # noqa: E402

Image.MAX_IMAGE_PIXELS = 64_000_000  # the largest wallpapers are 6028x3391

#: Bump when the selection or conversion logic changes in a way that must redo installed packages.
RULES_VERSION = 4
DEFAULT_MAX_SIDE = 2048


@dataclass
class Candidate:
    """One file of a package that may be a photograph."""

    name: str  # unique and stable: "<package>--<stem>"
    package: str
    path: str  # path inside the package ("/usr/share/...", or "x.rcc:/inner/path" for rcc)
    data: bytes
    kind: str = "host"  # "host" | "cutout"
    licence: str = ""
    copyright: str = ""
    group: str = ""  # views of one scene share a group (and therefore a split)
    weight: float = 1.0


@dataclass
class Source:
    package: str
    find: Callable[[str, "Copyright"], Iterator[Candidate]]
    note: str = ""
    optional: bool = False  # not available on every mirror: skip quietly when missing
    needs: Tuple[str, ...] = ()  # executables the finder needs


# ---------------------------------------------------------------------------------------------
# Exclusions: reviewed by eye on contact sheets (see docs/photos.md). Patterns are fnmatch-style
# and match candidate names. Everything listed here is NOT a usable real photograph.
# ---------------------------------------------------------------------------------------------

def _names(package: str, why: str, *stems: str) -> Dict[str, str]:
    return {f"{package}--{s}": why for s in stems}


RENDER = "render / digital art, not a photograph"
DRAWING = "drawing / graphic, not a photograph"
EXCLUDE: Dict[str, str] = {
    # plasma-workspace-wallpapers: 30 wallpapers, 11 photographs
    **_names("plasma-workspace-wallpapers", RENDER, "Altai", "Canopee", "Cascade", "Cluster",
             "Elarun", "Flow", "FlyingKonqui", "Honeywave", "IceCold", "Kay", "Kokkini",
             "MilkyWay", "Opal", "PastelHills", "Patak", "SafeLanding", "Shell", "Volna"),
    "plasma-workspace-wallpapers--Autumn": "painting",
    # mate-backgrounds: 28 files, 12 photographs
    **_names("mate-backgrounds", RENDER, "Arc-Colors-Transparent-Wallpaper", "Float-into-MATE",
             "Flow", "GreenTraditional", "Gulp", "MATE-Stripes-Dark", "MATE-Stripes-Light",
             "Silk", "Spring", "Stripes", "Ubuntu-Mate-Cold-no-logo", "Ubuntu-Mate-Dark-no-logo",
             "Ubuntu-Mate-Radioactive-no-logo", "Ubuntu-Mate-Warm-no-logo", "Waves"),
    "mate-backgrounds--Elephants": "painting",
    # lomiri-wallpapers*: 21 files, 15 photographs
    **_names("lomiri-wallpapers", RENDER, "lomiri-default-background", "warty-final-ubuntu"),
    "lomiri-wallpapers-16.04--umang_by_Abhishek_Mudgal": RENDER,
    **_names("lomiri-wallpapers-20.04", RENDER, "Fossa_by_Jasper_Roks",
             "Infinite-Sea_by_Aury88", "Painting-Colors_by__herobrine7gamer"),
    # lxqt-themes wallpapers: 24 files, 11 photographs
    **_names("lxqt-themes", RENDER, "kde-plasma", "lxqt-origami-green", "origami-bright-logo",
             "origami-dark", "origami-light", "plasma-logo-bright", "plasma-logo-dark",
             "plasma_arch", "simple_blue_widescreen", "triangles-logo", "triangles", "waves-logo",
             "waves-purple-logo"),
    # tuxpaint-data: the 19 templates and the skyline starter background are all photographs
    # opencv-doc sample data: 150 files, 50 photographs kept
    "opencv-doc--ela_modified": "a deliberately forged image (ELA demo): never a clean host",
    **_names("opencv-doc", RENDER, "Blender_Suzanne1", "Blender_Suzanne2", "WindowsLogo", "blox"),
    **_names("opencv-doc", DRAWING, "HappyFish", "LinuxLogo", "cards", "chessboard",
             "detect_blob", "digits", "ellipses", "gradient", "ml", "notes", "opencv-logo",
             "opencv-logo-white", "pic1", "pic2", "pic3", "pic4", "pic5", "pic6", "templ", "tmpl",
             "mask", "fuzzy-input", "fuzzy-mask1", "fuzzy-mask2", "fuzzy-mask3",
             "ximgproc-peilin_plane", "ximgproc-peilin_shape", "ximgproc-polygonstanfordoutput",
             "imageTextN", "imageTextR"),
    "opencv-doc--shape-data-shape_sample-*": "binary shape mask",
    "opencv-doc--text-scenetext_segmented_word0?_mask": "binary text mask",
    "opencv-doc--text-scenetext_char0?": "tiny crop",
    "opencv-doc--text-scenetext_word0?": "small crop of a word",
    "opencv-doc--aloeGT": "disparity map",
    "opencv-doc--starry_night": "painting",
    "opencv-doc--ximgproc-stanford": "map screenshot",
    **_names("opencv-doc", "synthetic blur / document, not a natural photo", "text_defocus",
             "text_motion", "licenseplate_motion", "pca_test1", "reg-LR_05", "reg-LR_06"),
    # the stereo-calibration series: one chessboard scene 26 times; two kept (left02, left06)
    **_names("opencv-doc", "calibration series: near-duplicates of one scene", "left01",
             "left03", "left04", "left05", "left07", "left08", "left09", "left11", "left12",
             "left13", "left14"),
    "opencv-doc--right[01]?": "calibration series: near-duplicates of one scene",
    # tuxpaint-stamps-default: 779 PNG stamps with alpha; the photographic cut-outs are kept
    "tuxpaint-stamps-default--*cartoon*": DRAWING,
    "tuxpaint-stamps-default--*_mirror": "mirrored copy of another stamp",
    "tuxpaint-stamps-default--symbols-*": DRAWING + " (letters, signs, chess, math, music)",
    "tuxpaint-stamps-default--town-flags-*": DRAWING,
    "tuxpaint-stamps-default--town-roadsigns-*": DRAWING,
    "tuxpaint-stamps-default--clothes-*": DRAWING,
    "tuxpaint-stamps-default--space-planets-*": "planet render / composite",
    **_names("tuxpaint-stamps-default", DRAWING, "animals-insects-bee", "animals-insects-fly",
             "animals-mammals-aquatic-orca", "animals-mammals-aquatic-whale",
             "animals-mammals-echidna", "animals-mammals-hedgehog",
             "animals-mammals-rhino_black", "household-arttools-highlighter",
             "household-dishes-mug", "medical-tooth", "people-body_parts-eye", "food-pizza",
             "seasonal-christmas-Santa", "seasonal-christmas-bow", "seasonal-christmas-candy_cane",
             "seasonal-christmas-hard_candy", "seasonal-christmas-santahat",
             "seasonal-christmas-star", "seasonal-christmas-stocking", "seasonal-christmas-tree",
             "seasonal-christmas-xmas_tp_bulb", "seasonal-easter-bluebird",
             "seasonal-easter-bunny-egg", "seasonal-easter-bunny-head", "seasonal-easter-bunny",
             "seasonal-easter-butterfly", "seasonal-easter-chick-hatched",
             "seasonal-easter-chick-in-egg", "seasonal-easter-chick", "seasonal-easter-daffodil",
             "seasonal-halloween-bat_left", "seasonal-halloween-blackcat",
             "seasonal-halloween-jackolantern_mean", "seasonal-halloween-skull",
             "seasonal-halloween-spider", "seasonal-hanukkah-*", "seasonal-newyears-*",
             "town-monuments-inukshuk-outline", "vehicles-7spoke256",
             "vehicles-emergency-sedan_police", "vehicles-ship-chineseJunk"),
    **_names("tuxpaint-stamps-default", "render / not clearly a photograph",
             "naturalforces-explosion", "naturalforces-fire", "space-voyager2",
             "space-moon-moon_crescent"),
    # enlightenment-data: 23 .edj backgrounds (19 with an embedded JPEG), 14 photographs
    **_names("enlightenment-data", RENDER, "Dunes", "Flat-Fan", "Flat-Stone-Pattern",
             "Sunset-Hills"),
    "enlightenment-data--Paper-Flower": "flat paper texture",
    # gcompris-qt-data: 882 images in 186 .rcc files; 320 pass the automatic checks (opaque,
    # >= 200 px); paintings, drawings and puzzle fragments are excluded here
    "gcompris-qt-data--babyshapes--*": "painting / puzzle fragment",
    "gcompris-qt-data--paintings--*": "painting",
    **_names("gcompris-qt-data", "painting", "details--image-Eglise_dAuvers-sur-Oise_background",
             "details--image-Gogh4_background", "details--image-PortraitOfPereTanguy_background",
             "details--image-Van_Gogh_The_Night_Cafe_background",
             "details--image-VincentVanGogh0012_background",
             "details--image-VincentVanGogh0013_background",
             "details--image-VincentVanGogh0019_background",
             "details--image-VincentVanGoghBridge_background"),
    **_names("gcompris-qt-data", DRAWING, "digital_electricity--texture01",
             "digital_electricity--texture02", "louis-braille--chart",
             "louis-braille--night_printing", "louis-braille--braille_ball"),
}

#: Photos of one scene (stereo pairs, the same object from two positions): one split for all.
GROUPS: Dict[str, str] = {
    **{f"opencv-doc--{n}": "opencv-doc--aero" for n in ("aero1", "aero3")},
    **{f"opencv-doc--{n}": "opencv-doc--aloe" for n in ("aloeL", "aloeR")},
    **{f"opencv-doc--{n}": "opencv-doc--basketball" for n in ("basketball1", "basketball2")},
    **{f"opencv-doc--{n}": "opencv-doc--box" for n in ("box", "box_in_scene")},
    **{f"opencv-doc--{n}": "opencv-doc--graf" for n in ("graf1", "graf3")},
    **{f"opencv-doc--{n}": "opencv-doc--left-right" for n in ("left", "right")},
    **{f"opencv-doc--{n}": "opencv-doc--leuven" for n in ("leuvenA", "leuvenB")},
    **{f"opencv-doc--{n}": "opencv-doc--rubberwhale" for n in ("rubberwhale1", "rubberwhale2")},
    **{f"opencv-doc--{n}": "opencv-doc--calib" for n in ("left02", "left06")},
}

#: Landmarks photographed for several GCompris activities: one group per landmark, in case two
#: activities use the same photograph (cropped differently, so the hash check would miss it).
LANDMARKS = ("eiffel", "tajmahal", "brandenburg", "pyramid", "colosseum", "statueofliberty",
             "mountrushmore", "christtheredeemer", "greatwall", "opera", "chenonceau",
             "neuschwanstein", "victoriamemorial", "minar", "capitol", "louvre", "lemusee")


def _group_of(name: str) -> str:
    if name in GROUPS:
        return GROUPS[name]
    if name.startswith("gcompris-qt-data--"):
        low = name.lower().replace("_", "")
        for key in LANDMARKS:
            if key in low:
                return f"gcompris-qt-data--landmark-{key}"
    return name


#: Relative weights (host/donor probability); default 1.0. Keys are fnmatch patterns.
WEIGHTS: Dict[str, float] = {
    # product shots on a plain white background: real photos, but mostly flat background
    "gcompris-qt-data--categorization--images-tools-*": 0.5,
    "gcompris-qt-data--categorization--images-others-*": 0.5,
    "enlightenment-data--Foggy-Trees": 0.3,  # a real photo, but almost uniform dark fog
    "opencv-doc--left02": 0.3, "opencv-doc--left06": 0.3, "opencv-doc--sudoku": 0.5,
    "lomiri-wallpapers-16.04--analogpattern_by_Peter_Nerlich": 0.5,
}


def excluded(name: str) -> Optional[str]:
    for pat, why in EXCLUDE.items():
        if fnmatch.fnmatchcase(name, pat):
            return why
    return None


# ---------------------------------------------------------------------------------------------
# Debian copyright files (machine-readable format): per-file licence
# ---------------------------------------------------------------------------------------------

class Copyright:
    """``Files:`` stanzas of a DEP-5 copyright file; the last matching stanza wins."""

    def __init__(self, text: str = ""):
        self.stanzas: List[Tuple[List[str], str, str]] = []
        for para in re.split(r"\n\s*\n", text):
            fields: Dict[str, str] = {}
            key = None
            for line in para.splitlines():
                if line[:1] in (" ", "\t") and key:
                    fields[key] += "\n" + line.strip()
                elif ":" in line:
                    key, _, val = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = val.strip()
            if "files" in fields:
                pats = fields["files"].split()
                lic = fields.get("license", "").split("\n")[0].strip()
                cop = fields.get("copyright", "").split("\n")[0].strip()
                url = fields.get("comment", "").split("\n")[0].strip()
                if url.startswith("http"):  # where the file came from (e.g. Wikimedia Commons)
                    cop = f"{cop} ({url})" if cop else url
                self.stanzas.append((pats, lic, cop))

    @classmethod
    def of(cls, root: str, package: str) -> "Copyright":
        p = os.path.join(root, "usr", "share", "doc", package, "copyright")
        if not os.path.isfile(p):
            return cls()
        with open(p, encoding="utf-8", errors="replace") as f:
            return cls(f.read())

    def lookup(self, *paths: str) -> Tuple[str, str]:
        """(licence, copyright) of the first of ``paths`` matched by a stanza other than
        ``*`` (last stanza wins), else of the ``*`` stanza."""
        for path in paths:
            hit = None
            for pats, lic, cop in self.stanzas:
                if any(p != "*" and fnmatch.fnmatchcase(path, p) for p in pats):
                    hit = (lic, cop)
            if hit:
                return hit
        for pats, lic, cop in self.stanzas:
            if "*" in pats:
                return f"{lic} (package-wide)", cop
        return "", ""


# ---------------------------------------------------------------------------------------------
# Qt resource (.rcc) reader: format versions 1-3
# ---------------------------------------------------------------------------------------------

def read_rcc(blob: bytes) -> List[Tuple[str, bytes]]:
    """All files of a Qt binary resource (``rcc -binary``) as ``(path, data)``.

    Layout: ``"qres"``, version, tree / data / names offsets (big-endian uint32; version 3 adds
    a flags word). Tree nodes: name offset (4), flags (2), then for directories child count and
    first child index (4 + 4), for files country + language (2 + 2) and data offset (4); version
    >= 2 appends a 64-bit modification time. Names: length (2), hash (4), UTF-16BE. Data: size
    (4) then the bytes; flag 1 = zlib (``qCompress``: 4-byte big-endian length prefix), flag 4 =
    zstd (decoded when the ``zstandard`` module is available, else skipped).
    """
    if blob[:4] != b"qres":
        raise ValueError("not a Qt rcc file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    if version not in (1, 2, 3):
        raise ValueError(f"unsupported rcc version {version}")
    node = 14 + (8 if version >= 2 else 0)

    def name_at(off: int) -> str:
        (n,) = struct.unpack(">H", blob[names + off:names + off + 2])
        return blob[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    out: List[Tuple[str, bytes]] = []
    stack = [(0, "")]
    while stack:
        idx, prefix = stack.pop()
        p = tree + idx * node
        noff, flags = struct.unpack(">IH", blob[p:p + 6])
        path = prefix + "/" + name_at(noff) if idx else ""
        if flags & 0x02:
            count, first = struct.unpack(">II", blob[p + 6:p + 14])
            stack.extend((c, path) for c in range(first + count - 1, first - 1, -1))
            continue
        (doff,) = struct.unpack(">I", blob[p + 10:p + 14])
        q = data + doff
        (size,) = struct.unpack(">I", blob[q:q + 4])
        payload = blob[q + 4:q + 4 + size]
        if flags & 0x01:
            payload = zlib.decompress(payload[4:])
        elif flags & 0x04:
            try:
                import zstandard  # type: ignore
            except ImportError:
                continue
            payload = zstandard.ZstdDecompressor().decompress(payload)
        out.append((path, payload))
    out.sort()
    return out


# ---------------------------------------------------------------------------------------------
# Finders: candidate files of each package
# ---------------------------------------------------------------------------------------------

def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", s).strip("-")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


IMG_EXT = (".jpg", ".jpeg", ".png", ".webp")


def _files(root: str, sub: str, exts: Sequence[str] = IMG_EXT, recursive: bool = False
           ) -> List[str]:
    base = os.path.join(root, sub)
    pattern = os.path.join(base, "**", "*") if recursive else os.path.join(base, "*")
    return sorted(p for p in glob.glob(pattern, recursive=recursive)
                  if os.path.isfile(p) and p.lower().endswith(tuple(exts)))


def _rel(root: str, path: str) -> str:
    return "/" + os.path.relpath(path, root)


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def find_plasma(root: str, cr: Copyright) -> Iterator[Candidate]:
    pkg = "plasma-workspace-wallpapers"
    for wdir in sorted(glob.glob(os.path.join(root, "usr/share/wallpapers/*/"))):
        wname = os.path.basename(os.path.dirname(wdir))
        imgs = _files(wdir, "contents/images")

        def area(p: str) -> Tuple[int, int]:
            m = re.match(r"(\d+)x(\d+)", _stem(p))
            w, h = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
            return (w >= h, w * h)  # the largest landscape version

        if not imgs:
            continue
        best = max(imgs, key=area)
        lic, cop = cr.lookup("*")
        meta = os.path.join(wdir, "metadata.json")
        if os.path.isfile(meta):
            with open(meta, encoding="utf-8") as f:
                kp = json.load(f).get("KPlugin", {})
            if kp.get("License"):
                lic = f"{kp['License']} (metadata.json; Debian copyright: {lic})"
            authors = ", ".join(a.get("Name", "") for a in kp.get("Authors", []))
            if authors:
                cop = authors
        yield Candidate(f"{pkg}--{_slug(wname)}", pkg, _rel(root, best), _read(best),
                        licence=lic, copyright=cop)


def find_mate(root: str, cr: Copyright) -> Iterator[Candidate]:
    pkg = "mate-backgrounds"
    by_stem: Dict[str, List[str]] = {}
    for p in _files(root, "usr/share/backgrounds/mate", recursive=True):
        stem = re.sub(r"_\d+x\d+$", "", _stem(p))  # Elephants_3840x2160 -> Elephants
        by_stem.setdefault(stem, []).append(p)
    for stem, paths in sorted(by_stem.items()):
        best = max(paths, key=lambda p: os.path.getsize(p))
        sub = os.path.relpath(best, os.path.join(root, "usr/share/backgrounds/mate"))
        lic, cop = cr.lookup(sub, os.path.join(os.path.dirname(sub), stem + ".jpg"))
        yield Candidate(f"{pkg}--{_slug(stem)}", pkg, _rel(root, best), _read(best),
                        licence=lic, copyright=cop)


def _find_lomiri(pkg: str, series: str) -> Callable[[str, Copyright], Iterator[Candidate]]:
    def find(root: str, cr: Copyright) -> Iterator[Candidate]:
        for p in _files(root, "usr/share/backgrounds"):
            base = os.path.basename(p)
            lic, cop = cr.lookup(f"{series}/{base}", base)
            yield Candidate(f"{pkg}--{_slug(_stem(p))}", pkg, _rel(root, p), _read(p),
                            licence=lic, copyright=cop)
    return find


def find_lxqt(root: str, cr: Copyright) -> Iterator[Candidate]:
    pkg = "lxqt-themes"
    for p in _files(root, "usr/share/lxqt/wallpapers"):
        lic, cop = cr.lookup(f"wallpapers/{os.path.basename(p)}", "graphics/x")
        yield Candidate(f"{pkg}--{_slug(_stem(p))}", pkg, _rel(root, p), _read(p),
                        licence=lic, copyright=cop)


def find_tuxpaint_data(root: str, cr: Copyright) -> Iterator[Candidate]:
    pkg = "tuxpaint-data"
    lic, cop = cr.lookup("*")
    for sub in ("usr/share/tuxpaint/templates", "usr/share/tuxpaint/starters"):
        for p in _files(root, sub, (".jpg", ".jpeg", ".png")):
            if "starters" in sub and not p.lower().endswith((".jpg", ".jpeg")):
                continue  # starter PNGs are line drawings and frames
            yield Candidate(f"{pkg}--{_slug(_stem(p))}", pkg, _rel(root, p), _read(p),
                            licence=lic, copyright=cop)


OPENCV_DIRS = ("data", "ximgproc", "fuzzy", "reg", "hfs/data", "alphamat/input_images",
               "dnn_superres", "text", "shape/data/shape_sample", "dpm/data", "viz/data",
               "dnn_objdetect/data")


def find_opencv(root: str, cr: Copyright) -> Iterator[Candidate]:
    pkg = "opencv-doc"
    ex = os.path.join(root, "usr/share/doc/opencv-doc/examples")
    seen = set()
    for sub in OPENCV_DIRS:
        for p in _files(ex, sub, (".jpg", ".jpeg", ".png")):
            stem = _slug(_stem(p))
            name = f"{pkg}--{stem}" if sub == "data" else f"{pkg}--{_slug(sub)}-{stem}"
            if name in seen:
                continue
            seen.add(name)
            lic, cop = cr.lookup("samples/" + sub + "/" + os.path.basename(p))
            yield Candidate(name, pkg, _rel(root, p), _read(p), licence=lic, copyright=cop)


def find_stamps(root: str, cr: Copyright) -> Iterator[Candidate]:
    pkg = "tuxpaint-stamps-default"
    base = os.path.join(root, "usr/share/tuxpaint/stamps")
    lic, cop = cr.lookup("*")
    for p in _files(base, "", (".png",), recursive=True):
        rel = os.path.relpath(p, base)
        name = f"{pkg}--{_slug(os.path.splitext(rel)[0].replace('/', '-'))}"
        yield Candidate(name, pkg, _rel(root, p), _read(p), kind="cutout", licence=lic,
                        copyright=cop)


def find_gcompris(root: str, cr: Copyright) -> Iterator[Candidate]:
    pkg = "gcompris-qt-data"
    seen: Dict[str, int] = {}
    for rcc in sorted(glob.glob(os.path.join(root, "usr/share/gcompris-qt/rcc/*.rcc"))):
        try:
            entries = read_rcc(_read(rcc))
        except ValueError:
            continue
        for inner, data in entries:
            if not inner.lower().endswith((".webp", ".jpg", ".jpeg", ".png")):
                continue
            src = inner[len("/gcompris/"):] if inner.startswith("/gcompris/") else inner.lstrip("/")
            parts = src.split("/")
            # src/activities/<activity>/resource/.../<file> -> <activity>--<rest>
            if len(parts) > 3 and parts[0] == "src" and parts[1] == "activities":
                rest = [q for q in parts[3:] if q not in ("resource",)]
                key = parts[2] + "--" + "-".join(os.path.splitext("/".join(rest))[0].split("/"))
            else:
                key = "-".join(os.path.splitext(src)[0].split("/"))
            name = f"{pkg}--{_slug(key)}"
            if name in seen:  # the same file packed into two activities' rcc files
                continue
            seen[name] = 1
            # debian/copyright names the source files (.jpg/.png/.svg), packed as .webp
            base = os.path.splitext(src)[0]
            lic, cop = cr.lookup(src, *(base + e for e in (".jpg", ".jpeg", ".png", ".JPG",
                                                           ".svg", ".svgz", ".webp")))
            yield Candidate(name, pkg, _rel(root, rcc) + ":" + inner, data, licence=lic,
                            copyright=cop)


def read_eet_jpegs(blob: bytes) -> List[Tuple[str, bytes]]:
    """The plain-JPEG entries of an Eet file (what Edje ``.edj`` themes are): ``(key, data)``.

    Eet v2 layout (magic ``0x1ee70f42``): entry count, dictionary count, then per entry six
    big-endian int32: offset, size, data size, name offset, name size, flags. Images stored
    "lossy" without alpha are plain JPEG streams (``FF D8``) in uncompressed entries; other
    entries (lossless or compressed images, scripts, ...) are ignored.
    """
    if len(blob) < 12 or struct.unpack(">I", blob[:4])[0] != 0x1EE70F42:
        raise ValueError("not an Eet v2 file")
    n, _ = struct.unpack(">ii", blob[4:12])
    out = []
    for i in range(n):
        off, size, dsize, noff, nsize, flags = struct.unpack(">6i", blob[12 + 24 * i:36 + 24 * i])
        data = blob[off:off + size]
        if size == dsize and data[:3] == b"\xff\xd8\xff":
            out.append((blob[noff:noff + nsize].rstrip(b"\0").decode("utf-8", "replace"), data))
    return out


def find_enlightenment(root: str, cr: Copyright) -> Iterator[Candidate]:
    """Wallpapers inside Edje ``.edj`` (Eet) files: the largest embedded JPEG of each (read
    directly; ``edje_decc`` is not needed)."""
    pkg = "enlightenment-data"
    lic, cop = cr.lookup("*")
    for edj in sorted(glob.glob(os.path.join(root, "usr/share/enlightenment/data/backgrounds/*.edj"))):
        try:
            jpegs = read_eet_jpegs(_read(edj))
        except (ValueError, struct.error):
            continue
        best, best_px = None, 0
        for key, data in jpegs:
            try:
                w, h = Image.open(io.BytesIO(data)).size
            except Exception:  # noqa: BLE001
                continue
            if w * h > best_px:
                best, best_px = (key, data), w * h
        if best:
            yield Candidate(f"{pkg}--{_slug(_stem(edj))}", pkg, _rel(root, edj) + ":" + best[0],
                            best[1], licence=lic, copyright=cop)


SOURCES: Tuple[Source, ...] = (
    Source("plasma-workspace-wallpapers", find_plasma, "KDE Plasma wallpapers"),
    Source("mate-backgrounds", find_mate, "MATE desktop backgrounds"),
    Source("lomiri-wallpapers", _find_lomiri("lomiri-wallpapers", ""), optional=True),
    Source("lomiri-wallpapers-16.04", _find_lomiri("lomiri-wallpapers-16.04", "16.04"),
           optional=True),
    Source("lomiri-wallpapers-20.04", _find_lomiri("lomiri-wallpapers-20.04", "20.04"),
           optional=True),
    Source("lxqt-themes", find_lxqt, "LXQt wallpapers"),
    Source("tuxpaint-data", find_tuxpaint_data, "Tux Paint templates"),
    Source("opencv-doc", find_opencv, "OpenCV sample data"),
    Source("tuxpaint-stamps-default", find_stamps, "Tux Paint stamps (photo cut-outs)"),
    Source("gcompris-qt-data", find_gcompris, "GCompris activity images (WebP in Qt .rcc)"),
    Source("enlightenment-data", find_enlightenment, "Enlightenment wallpapers (JPEG in .edj)"),
)
DEFAULT_PACKAGES = tuple(s.package for s in SOURCES)


# ---------------------------------------------------------------------------------------------
# Image checks and conversion
# ---------------------------------------------------------------------------------------------

def looks_flat(im: Image.Image) -> float:
    """Pre-filter score in [0, 1]: the share of a 128-px thumbnail covered by its 8 most common
    colours (quantised to 4 bits per channel). Drawings and renders score high, photos low.
    Only marks sheets for review; the decision is the by-eye :data:`EXCLUDE` list."""
    t = im.convert("RGBA").copy()
    t.thumbnail((128, 128), Image.Resampling.NEAREST)
    a = np.asarray(t)
    keep = a[..., 3] > 127
    if keep.sum() < 16:
        return 1.0
    q = (a[..., :3][keep] >> 4).astype(np.int32)
    codes = q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]
    counts = np.sort(np.bincount(codes))[::-1]
    return float(counts[:8].sum() / counts.sum())


def is_grey(im: Image.Image) -> bool:
    if im.mode in ("L", "LA", "1", "I", "I;16"):
        return True
    t = im.convert("RGB").copy()
    t.thumbnail((256, 256))
    a = np.asarray(t).astype(np.int16)
    return bool(np.percentile(np.abs(a[..., 0] - a[..., 1]) + np.abs(a[..., 1] - a[..., 2]), 99)
                <= 6)


def dhash(im: Image.Image) -> int:
    g = np.asarray(im.convert("L").resize((17, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def _alpha_ok(im: Image.Image) -> bool:
    """A cut-out needs a real mask: some transparent and a fair amount of opaque pixels."""
    if "A" not in im.getbands() and "transparency" not in im.info:
        return False
    a = np.asarray(im.convert("RGBA"))[..., 3]
    return bool((a < 16).mean() > 0.02 and (a > 240).mean() > 0.05)


@dataclass
class Stored:
    entry: Dict
    data: bytes
    ext: str


def convert(c: Candidate, max_side: int) -> Tuple[Optional[Stored], str]:
    """Decode-check a candidate and produce the bytes to store, or ``(None, why)``."""
    try:
        im = Image.open(io.BytesIO(c.data))
        im.load()
    except Exception as e:  # noqa: BLE001 - any undecodable file is just skipped
        return None, f"undecodable ({type(e).__name__})"
    fmt = im.format
    w0, h0 = im.size
    if c.kind == "cutout":
        if not _alpha_ok(im):
            return None, "no usable alpha mask"
        if im.mode != "RGBA":
            im = im.convert("RGBA")
    elif im.mode not in ("RGB", "L"):
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            a = np.asarray(im.convert("RGBA"))[..., 3]
            if (a < 250).mean() > 0.01:  # a few soft edge pixels are flattened away
                return None, "host with transparency"
        im = im.convert("RGB")
    if max(w0, h0) < (200 if c.kind == "host" else 64):
        return None, f"too small ({w0}x{h0})"
    scale = 1.0
    if max(w0, h0) > max_side:
        scale = max_side / max(w0, h0)
        im = im.resize((max(1, round(w0 * scale)), max(1, round(h0 * scale))),
                       Image.Resampling.LANCZOS)
    keep = scale == 1.0 and fmt in ("JPEG", "PNG") and (
        c.kind == "cutout" or Image.open(io.BytesIO(c.data)).mode in ("RGB", "L"))
    if keep:
        data, ext = c.data, (".jpg" if fmt == "JPEG" else ".png")
    else:
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=4)
        data, ext = buf.getvalue(), ".png"
    w, h = im.size
    entry = {
        "name": c.name, "package": c.package, "path": c.path, "width": w, "height": h,
        "orig_width": w0, "orig_height": h0, "scale": round(scale, 6), "format": fmt,
        "stored": "original bytes" if keep else "decoded to PNG",
        "licence": c.licence, "copyright": c.copyright, "kind": c.kind,
        "grey": is_grey(im), "group": c.group or c.name, "weight": c.weight,
        "flat": round(looks_flat(im), 3), "dhash": f"{dhash(im):064x}",
    }
    return Stored(entry, data, ext), ""


# ---------------------------------------------------------------------------------------------
# Packages: download, extract
# ---------------------------------------------------------------------------------------------

def candidate_version(package: str) -> Optional[str]:
    r = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True)
    m = re.search(r"Candidate:\s*(\S+)", r.stdout)
    if not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def fetch(package: str, workdir: str, deb_dir: Optional[str]) -> Tuple[str, str]:
    """Download (or reuse from ``deb_dir``) and extract ``package``; returns (root, version)."""
    ddir = deb_dir or workdir
    os.makedirs(ddir, exist_ok=True)
    version = candidate_version(package)
    debs = sorted(glob.glob(os.path.join(ddir, f"{package}_*.deb")))
    deb = None
    for d in debs:
        r = subprocess.run(["dpkg-deb", "-f", d, "Version"], capture_output=True, text=True)
        if r.returncode == 0 and (version is None or r.stdout.strip() == version):
            deb = d
    if deb is None:
        r = subprocess.run(["apt-get", "download", "-q", package], cwd=ddir, capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(f"apt-get download {package} failed: {r.stderr.strip()[-300:]}"
                               " (run `apt-get update` first?)")
        debs = sorted(glob.glob(os.path.join(ddir, f"{package}_*.deb")), key=os.path.getmtime)
        deb = debs[-1]
    version = subprocess.run(["dpkg-deb", "-f", deb, "Version"], capture_output=True,
                             text=True, check=True).stdout.strip()
    root = os.path.join(workdir, "x-" + package)
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return root, version


def rules_fingerprint(package: str, max_side: int) -> str:
    rules = sorted((k, v) for k, v in EXCLUDE.items() if k.startswith(package + "--"))
    groups = sorted((k, v) for k, v in GROUPS.items() if k.startswith(package + "--"))
    groups.append(("landmarks", ",".join(LANDMARKS)))
    weights = sorted((k, v) for k, v in WEIGHTS.items() if k.startswith(package + "--"))
    blob = json.dumps([RULES_VERSION, max_side, rules, groups, weights])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------

def load_manifest(dest: str) -> Dict:
    p = os.path.join(dest, MANIFEST)
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            man = json.load(f)
        if man.get("format") == MANIFEST_FORMAT:
            return man
    return {"format": MANIFEST_FORMAT, "packages": {}, "photos": []}


def save_manifest(dest: str, man: Dict) -> None:
    order = {s.package: i for i, s in enumerate(SOURCES)}
    man["photos"].sort(key=lambda e: (order.get(e["package"], 99), e["name"]))
    counts: Dict[str, int] = {}
    for e in man["photos"]:
        e["split"] = split_of(e["group"])
        k = f"{e['kind']}/{e['split']}"
        counts[k] = counts.get(k, 0) + 1
    man["counts"] = dict(sorted(counts.items()))
    man["split_rule"] = ("training.photos.split_of(group): sha1(group) mod 5 == 0 -> held out; "
                         "then (sha1 // 5) mod 2 == 0 -> val, else test")
    tmp = os.path.join(dest, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(man, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, os.path.join(dest, MANIFEST))


def up_to_date(man: Dict, dest: str, package: str, max_side: int) -> bool:
    info = man["packages"].get(package)
    if not info or info.get("rules") != rules_fingerprint(package, max_side):
        return False
    return all(os.path.isfile(os.path.join(dest, e["file"]))
               for e in man["photos"] if e["package"] == package)


def install_package(src: Source, dest: str, man: Dict, workdir: str, deb_dir: Optional[str],
                    max_side: int, log: Callable[[str], None]) -> None:
    t0 = time.time()
    for exe in src.needs:
        if shutil.which(exe) is None:
            raise RuntimeError(f"{src.package} needs {exe!r}")
    root, version = fetch(src.package, workdir, deb_dir)
    cr = Copyright.of(root, src.package)
    old = {e["name"]: e for e in man["photos"] if e["package"] == src.package}
    others = [e for e in man["photos"] if e["package"] != src.package]
    hashes = [(int(e["dhash"], 16), e["width"] / e["height"], e["name"]) for e in others
              if e.get("dhash")]
    new: List[Dict] = []
    skipped: Dict[str, str] = {}
    for c in src.find(root, cr):
        why = excluded(c.name)
        if why:
            skipped[c.name] = "excluded: " + why
            continue
        c.group = _group_of(c.name)
        c.weight = next((w for pat, w in WEIGHTS.items() if fnmatch.fnmatchcase(c.name, pat)),
                        c.weight)
        st, why = convert(c, max_side)
        if st is None:
            skipped[c.name] = why
            continue
        h = int(st.entry["dhash"], 16)
        ar = st.entry["width"] / st.entry["height"]
        dup = next((n for hh, a, n in hashes
                    if bin(hh ^ h).count("1") <= 8 and abs(a / ar - 1) < 0.03), None)
        if dup:
            skipped[c.name] = f"near-duplicate of {dup}"
            continue
        hashes.append((h, ar, c.name))
        fname = c.name + st.ext
        st.entry["file"] = fname
        st.entry["version"] = version
        st.entry["sha1"] = hashlib.sha1(st.data).hexdigest()
        path = os.path.join(dest, fname)
        prev = old.get(c.name)
        if not (prev and prev.get("sha1") == st.entry["sha1"] and os.path.isfile(path)):
            with open(path + ".tmp", "wb") as f:
                f.write(st.data)
            os.replace(path + ".tmp", path)
        new.append(st.entry)
    keep_files = {e["file"] for e in new}
    for e in old.values():  # files of photos that are no longer selected
        if e["file"] not in keep_files:
            try:
                os.remove(os.path.join(dest, e["file"]))
            except FileNotFoundError:
                pass
    man["photos"] = others + new
    man["packages"][src.package] = {
        "version": version, "rules": rules_fingerprint(src.package, max_side),
        "photos": len(new), "skipped": dict(sorted(skipped.items())),
        "seconds": round(time.time() - t0, 1),
    }
    save_manifest(dest, man)
    shutil.rmtree(root, ignore_errors=True)
    kinds: Dict[str, int] = {}
    for e in new:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    log(f"{src.package} {version}: {len(new)} photos {kinds}, {len(skipped)} skipped, "
        f"{time.time() - t0:.0f}s")


# ---------------------------------------------------------------------------------------------
# Review sheets and docs
# ---------------------------------------------------------------------------------------------

def contact_sheets(src: Source, out: str, workdir: str, deb_dir: Optional[str],
                   show_excluded: bool, per_sheet: int = 48, cols: int = 8, cell: int = 200
                   ) -> None:
    """PNG grids of all candidates of a package (index, flat score, name) for review."""
    root, _ = fetch(src.package, workdir, deb_dir)
    cr = Copyright.of(root, src.package)
    cands = [c for c in src.find(root, cr) if show_excluded or not excluded(c.name)]
    # only what the automatic checks would keep (decodable, big enough, usable alpha, ...)
    cands = [c for c in cands if convert(c, 256)[0] is not None]
    os.makedirs(out, exist_ok=True)
    index = []
    for s in range(0, len(cands), per_sheet):
        chunk = cands[s:s + per_sheet]
        rows = (len(chunk) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * cell, rows * (cell + 24)), (40, 40, 40))
        d = ImageDraw.Draw(sheet)
        for i, c in enumerate(chunk):
            x, y = (i % cols) * cell, (i // cols) * (cell + 24)
            label = f"{s + i} ?"
            try:
                im = Image.open(io.BytesIO(c.data))
                im.load()
                flat = looks_flat(im)
                w, h = im.size
                bg = Image.new("RGBA", im.size, (255, 0, 255, 255))  # magenta = transparent
                im = Image.alpha_composite(bg, im.convert("RGBA")).convert("RGB")
                im.thumbnail((cell - 4, cell - 4))
                sheet.paste(im, (x + 2, y + 2))
                label = f"{s + i} {w}x{h} f{flat:.2f}" + (" X" if excluded(c.name) else "")
                if flat > 0.5:
                    d.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(255, 0, 0), width=2)
            except Exception:  # noqa: BLE001
                pass
            d.text((x + 3, y + cell + 1), label, fill=(255, 255, 0))
            d.text((x + 3, y + cell + 11), c.name.split("--", 1)[1][-32:], fill=(200, 200, 200))
            index.append(f"{s + i}\t{c.name}\t{c.path}")
        sheet.save(os.path.join(out, f"{src.package}_{s // per_sheet:02d}.png"))
    with open(os.path.join(out, f"{src.package}.tsv"), "w") as f:
        f.write("\n".join(index) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    print(f"{src.package}: {len(cands)} candidates -> {out}")


DOC_START = "<!-- photo-table:start (generated by scripts/install_photos.py --write-docs) -->"
DOC_END = "<!-- photo-table:end -->"


def docs_table(man: Dict) -> str:
    photos = man["photos"]
    lines = [DOC_START, ""]
    total: Dict[str, int] = {}
    for e in photos:
        total[(e["package"], e["kind"], e["split"])] = total.get(
            (e["package"], e["kind"], e["split"]), 0) + 1
    lines += ["| package | version | kind | train | val | test | total |", "|---|---|---|---|---|---|---|"]
    for pkg, info in man["packages"].items():
        for kind in ("host", "cutout"):
            n = [total.get((pkg, kind, s), 0) for s in ("train", "val", "test")]
            if sum(n):
                lines.append(f"| {pkg} | {info['version']} | {kind} | {n[0]} | {n[1]} | {n[2]} "
                             f"| {sum(n)} |")
    for kind in ("host", "cutout"):
        n = [sum(v for (p, k, s), v in total.items() if k == kind and s == sp)
             for sp in ("train", "val", "test")]
        lines.append(f"| **all installed** | | {kind} | {n[0]} | {n[1]} | {n[2]} | {sum(n)} |")
    hosts = [e for e in photos if e["kind"] == "host"]
    cuts = [e for e in photos if e["kind"] == "cutout"]
    dec = sum(e["width"] * e["height"] * 3 for e in hosts) + sum(
        e["width"] * e["height"] * 4 for e in cuts)
    lines += ["", f"{len(hosts)} host photos and {len(cuts)} cut-outs; decoded in memory "
              f"{dec / 1e9:.2f} GB for the whole pool (hosts {sum(e['width'] * e['height'] * 3 for e in hosts) / 1e9:.2f} GB)."]
    lines += ["", "Every installed photo (size = stored size; `*` = downscaled once at install):",
              "", "| name | package | file in package | size (WxH) | licence | kind | grey | split |",
              "|---|---|---|---|---|---|---|---|"]
    for e in photos:
        star = "*" if e.get("scale", 1.0) != 1.0 else ""
        lic = e["licence"].replace("|", "/")
        path = e["path"].replace("|", "/").replace("/usr/share/gcompris-qt/rcc/", "").replace(
            ":/gcompris/src/activities/", ":…/")
        lines.append(f"| {e['name'].split('--', 1)[1]} | {e['package']} | `{path}` | "
                     f"{e['width']}x{e['height']}{star} | {lic} | {e['kind']} | "
                     f"{'grey' if e['grey'] else ''} | {e['split']} |")
    lines += ["", DOC_END]
    return "\n".join(lines)


def write_docs(man: Dict, path: str) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    table = docs_table(man)
    if DOC_START in text and DOC_END in text:
        a = text.index(DOC_START)
        b = text.index(DOC_END) + len(DOC_END)
        text = text[:a] + table + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", default=None, help="photo folder (default: $SAFIRE_PHOTO_DIR or "
                    "~/.cache/safire-studio/photos)")
    ap.add_argument("--packages", default=None,
                    help=f"comma-separated subset (default: {','.join(DEFAULT_PACKAGES)})")
    ap.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                    help="downscale photos whose long side exceeds this, once (default %(default)s)")
    ap.add_argument("--deb-dir", default=None,
                    help="keep downloaded .deb files here and reuse them (default: a temp dir)")
    ap.add_argument("--force", action="store_true", help="redo packages that are up to date")
    ap.add_argument("--write-docs", metavar="MD", default=None,
                    help="after installing, regenerate the photo table in this markdown file")
    ap.add_argument("--docs-only", action="store_true",
                    help="with --write-docs: only regenerate the table from the manifest")
    ap.add_argument("--sheets", metavar="DIR", default=None,
                    help="write review contact sheets of the candidates instead of installing")
    ap.add_argument("--sheets-all", action="store_true",
                    help="with --sheets: include candidates already in EXCLUDE")
    args = ap.parse_args(argv)

    dest = os.path.abspath(os.path.expanduser(args.dest)) if args.dest else photo_dir()
    pkgs = args.packages.split(",") if args.packages else list(DEFAULT_PACKAGES)
    by_pkg = {s.package: s for s in SOURCES}
    unknown = [p for p in pkgs if p not in by_pkg]
    if unknown:
        ap.error(f"unknown packages {unknown}; known: {', '.join(by_pkg)}")

    def log(msg: str) -> None:
        print(f"[photos] {msg}", flush=True)

    if args.docs_only:
        if not args.write_docs:
            ap.error("--docs-only needs --write-docs")
        write_docs(load_manifest(dest), args.write_docs)
        log(f"wrote the photo table to {args.write_docs}")
        return 0

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="safire-photos-") as work:
        if args.sheets:
            for p in pkgs:
                contact_sheets(by_pkg[p], args.sheets, work, args.deb_dir, args.sheets_all)
            return 0
        os.makedirs(dest, exist_ok=True)
        man = load_manifest(dest)
        todo = [p for p in pkgs if args.force or not up_to_date(man, dest, p, args.max_side)]
        if not todo:
            log(f"up to date: {len(man['photos'])} photos in {dest} {man.get('counts', {})}")
        failed = []
        for p in todo:
            try:
                install_package(by_pkg[p], dest, man, work, args.deb_dir, args.max_side, log)
            except (RuntimeError, subprocess.CalledProcessError) as e:
                failed.append(p)
                log(f"{p}: {'skipped' if by_pkg[p].optional else 'FAILED'}: {e}")
        if todo:
            size = sum(os.path.getsize(os.path.join(dest, e["file"])) for e in man["photos"])
            log(f"{len(man['photos'])} photos in {dest} ({size / 1e6:.0f} MB) "
                f"{man.get('counts', {})}, {time.time() - t0:.0f}s")
    if args.write_docs:
        write_docs(man, args.write_docs)
        log(f"wrote the photo table to {args.write_docs}")
    return 1 if any(not by_pkg[p].optional for p in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
