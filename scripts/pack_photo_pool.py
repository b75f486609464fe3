#!/usr/bin/env python3
"""Pack one split of the installed photo pool into a small folder to carry to a training machine.

    python scripts/pack_photo_pool.py OUT_DIR [--split train] [--max-side 1280] [--quality 92]

The installed pool (``make photos``, about 340 MB of PNG) is too big to ship to a machine that cannot
install it itself (a GPU box with no network). This writes the split's hosts as JPEG (long side at
most ``--max-side``, quality ``--quality``: a camera-like compression history, which the synthetic
generator then overwrites with its own per-source traces), its cut-outs as RGBA PNG (same size
limit), copies of the bundled scikit-image photos of the split (``bundled/``, used when that
machine's scikit-image lacks a file), and a manifest of the same format restricted to the split,
sizes and scales updated. Point ``SAFIRE_PHOTO_DIR`` at OUT_DIR there. Only the named split is
written, so a packed training pool cannot leak held-out photos.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from training.photos import (BUNDLED_COPY_DIR, MANIFEST, PHOTO_SPECS, _package_dir,  # noqa: E402
                             photo_dir, read_manifest, split_of)


def pack(out: str, split: str, max_side: int, quality: int) -> dict:
    src = photo_dir()
    man = read_manifest(src)
    if man is None:
        raise SystemExit(f"no photo pool installed in {src} (run `make photos`)")
    os.makedirs(os.path.join(out, BUNDLED_COPY_DIR), exist_ok=True)
    photos, total = [], 0
    for e in man["photos"]:
        if split_of(e.get("group") or e["name"]) != split:
            continue
        with Image.open(os.path.join(src, e["file"])) as im:
            im.load()
            w, h = im.size
            f = min(1.0, max_side / max(w, h))
            if f < 1.0:
                im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS)
            e = dict(e, width=im.size[0], height=im.size[1], scale=float(e.get("scale", 1.0)) * f)
            if e.get("kind", "host") == "cutout":
                name = os.path.splitext(e["file"])[0] + ".png"
                im.convert("RGBA").save(os.path.join(out, name), optimize=True)
            else:
                name = os.path.splitext(e["file"])[0] + ".jpg"
                im.convert("L" if e.get("grey") else "RGB").save(os.path.join(out, name), quality=quality)
                e["stored"] = f"JPEG q{quality}, long side <= {max_side} (packed)"
        e["file"] = name
        total += os.path.getsize(os.path.join(out, name))
        photos.append(e)
    for s in PHOTO_SPECS:
        if s.split == split:
            shutil.copy2(os.path.join(_package_dir(s.package), s.filename),
                         os.path.join(out, BUNDLED_COPY_DIR, s.filename))
            total += os.path.getsize(os.path.join(out, BUNDLED_COPY_DIR, s.filename))
    packed = dict(man, photos=photos, packed={"split": split, "max_side": max_side, "quality": quality})
    with open(os.path.join(out, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(packed, f, indent=1)
    return {"photos": len(photos), "bytes": total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--max-side", type=int, default=1280)
    p.add_argument("--quality", type=int, default=92)
    a = p.parse_args(argv)
    r = pack(a.out, a.split, a.max_side, a.quality)
    print(f"packed {r['photos']} photos of split {a.split!r} into {a.out}: {r['bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
