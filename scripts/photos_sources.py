"""The packages ``scripts/install_photos.py`` takes photos from: the :class:`Candidate` and
:class:`Source` records, one finder per package (candidate files, with their licence) and the
:data:`SOURCES` table.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

from PIL import Image

from photos_formats import Copyright, read_eet_jpegs, read_rcc


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
