"""Package installation of ``scripts/install_photos.py``: download and extract a Debian package
(:func:`fetch`), the pool's ``manifest.json`` (load, save, up to date) and
:func:`install_package`, which selects, converts and writes one package's photos.

Imported by the script, which puts the repository root and this folder on ``sys.path``.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from typing import Callable, Dict, List, Optional, Tuple

from training.photos import MANIFEST, MANIFEST_FORMAT, split_of

from photos_convert import convert
from photos_formats import Copyright
from photos_rules import WEIGHTS, _group_of, excluded, rules_fingerprint
from photos_sources import SOURCES, Source


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
