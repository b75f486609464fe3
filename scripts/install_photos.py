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

The code is split into modules beside this script (imported with this folder on ``sys.path``):
``photos_rules.py`` (the selection rules), ``photos_formats.py`` (copyright, rcc and Eet readers),
``photos_sources.py`` (the per-package finders), ``photos_convert.py`` (image checks and
conversion), ``photos_packages.py`` (download, manifest, install) and ``photos_review.py``
(contact sheets, the docs table).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# the photos_*.py modules beside this script
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from training.photos import photo_dir  # noqa: E402

Image.MAX_IMAGE_PIXELS = 64_000_000  # the largest wallpapers are 6028x3391

DEFAULT_MAX_SIDE = 2048

# the rest of the script, in its modules; every name stays importable from here, as before the split
from photos_convert import Stored, convert, dhash, is_grey, looks_flat  # noqa: E402
from photos_formats import Copyright, read_eet_jpegs, read_rcc  # noqa: E402
from photos_packages import (  # noqa: E402
    candidate_version,
    fetch,
    install_package,
    load_manifest,
    save_manifest,
    up_to_date,
)
from photos_review import DOC_END, DOC_START, contact_sheets, docs_table, write_docs  # noqa: E402
from photos_rules import (  # noqa: E402
    DRAWING,
    EXCLUDE,
    GROUPS,
    LANDMARKS,
    RENDER,
    RULES_VERSION,
    WEIGHTS,
    excluded,
    rules_fingerprint,
)
from photos_sources import (  # noqa: E402
    DEFAULT_PACKAGES,
    IMG_EXT,
    OPENCV_DIRS,
    SOURCES,
    Candidate,
    Source,
    find_enlightenment,
    find_gcompris,
    find_lxqt,
    find_mate,
    find_opencv,
    find_plasma,
    find_stamps,
    find_tuxpaint_data,
)

_REEXPORTED = (Stored, convert, dhash, is_grey, looks_flat, Copyright, read_eet_jpegs, read_rcc,
               candidate_version, fetch, save_manifest, DOC_END, DOC_START, docs_table, DRAWING,
               EXCLUDE, GROUPS, LANDMARKS, RENDER, RULES_VERSION, WEIGHTS, excluded,
               rules_fingerprint, IMG_EXT, OPENCV_DIRS, Candidate, Source, find_enlightenment,
               find_gcompris, find_lxqt, find_mate, find_opencv, find_plasma, find_stamps,
               find_tuxpaint_data)


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
