"""``make screenshots``: Label Studio + the backend as in the e2e suite, then the labeling page in
headless Chromium, saved to docs/screenshots/ (palette PNGs under 300 KB).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--sources 2|auto]

* ``preannotation.png``: a 2-source synthetic image pre-annotated by the backend ("Retrieve
  Predictions"), shown in the labeling page with its predicted source regions.
* ``click.png``: a 3-source image without pre-annotation; Auto-Annotation on, the smart keypoint tool
  with label "Source 2", one click inside that source: Label Studio shows the backend's suggestion.

Needs Chromium from Debian (``apt-get install -y chromium``; the script says so if it is missing;
``SAFIRE_CHROMIUM`` points to another binary) and ``playwright`` (installed on first use into the
Label Studio venv; its own browser download is not used). ``--sources`` sets the label config's
``safire_sources`` (default 2, so the picture has regions even from a model that would call the image
authentic; ``auto`` is the shipped value). Logs: the printed work dir (kept with ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO))

from harness import PASSWORD, USERNAME, Backend, HarnessError, LabelStudio, ls_venv  # noqa: E402
from scenario import interior_point, make_samples, read_config  # noqa: E402

PLAYWRIGHT = "playwright==1.65.2"
MAX_BYTES = 300 * 1024


def find_chromium() -> str:
    for cand in (os.environ.get("SAFIRE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise SystemExit("screenshots: Chromium is not installed. On Debian/Ubuntu run:\n"
                     "    apt-get update && apt-get install -y chromium\n"
                     "or set SAFIRE_CHROMIUM to a Chromium/Chrome binary.")


def ensure_playwright(python: Path) -> None:
    ok = subprocess.run([str(python), "-c", "import playwright.sync_api"], capture_output=True).returncode == 0
    if ok:
        return
    print(f"screenshots: installing {PLAYWRIGHT} into {python.parent.parent} (Python package only)", flush=True)
    run = subprocess.run([str(python), "-m", "pip", "install", "--quiet", PLAYWRIGHT], capture_output=True, text=True)
    if run.returncode != 0:
        err = "\n".join(x for x in run.stderr.splitlines() if "is ignored: it is neither" not in x)
        raise SystemExit(f"screenshots: pip could not install {PLAYWRIGHT}:\n{err[-2000:]}")


def landscape_samples(folder: Path, k: int, start: int, want: int = 1):
    """Synthetic samples with ``k`` sources that are wider than tall (they fit the labeling view)."""
    out, i = [], start
    while len(out) < want:
        (s,) = make_samples(folder, [k], start=i, size_range=(300, 384))
        if s.width >= 1.2 * s.height:
            out.append(s)
        else:
            s.image_path.unlink()
        i += 1
        if i - start > 200:
            raise SystemExit("screenshots: no landscape sample found")
    return out


def shrink_png(src: Path, dst: Path) -> int:
    """Palette PNG (fewer colours until it is below MAX_BYTES); returns its size."""
    from PIL import Image

    im = Image.open(src).convert("RGB")
    for colours in (192, 128, 96, 64):
        im.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
        if dst.stat().st_size <= MAX_BYTES:
            break
    return dst.stat().st_size


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/screenshots.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    p.add_argument("--sources", default="2", help='safire_sources of the label config (default 2; "auto")')
    p.add_argument("--viewport", default="1440x1000")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    args = p.parse_args(argv)
    chromium = find_chromium()
    ls_python = ls_venv() / "bin" / "python"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="safire-shots-"))
    print(f"screenshots: work dir {work}", flush=True)
    ls = LabelStudio(work, work / "files", work / "label-studio.log")
    backend = None
    try:
        ls.start()  # installs Label Studio first if needed
        ensure_playwright(ls_python)
        client = ls.client()
        backend = Backend(ls.url, client.pat, work / "models", work / "backend.log").start()
        cfg = read_config("multi_source.xml", sources=args.sources)
        shots_dir = work / "files" / "shots"
        (two,) = landscape_samples(shots_dir, 2, start=40)
        (three,) = landscape_samples(shots_dir, 3, start=60)

        def project(title: str, sample, **extra):
            pid = client.post("/api/projects", {"title": title, "label_config": cfg.xml, **extra})["id"]
            with open(sample.image_path, "rb") as f:
                client.request("POST", f"/api/projects/{pid}/import",
                               files={"file": (sample.image_path.name, f, "image/png")})
            client.post("/api/ml", {"url": backend.url, "project": pid, "title": "SAFIRE", "is_interactive": True})
            (task,) = client.get("/api/tasks", params={"project": pid})["tasks"]
            return pid, task["id"]

        pre_pid, pre_tid = project("SAFIRE pre-annotation", two)
        client.post("/api/dm/actions", {"selectedItems": {"all": True, "excluded": []}, "project": pre_pid},
                    params={"id": "retrieve_tasks_predictions", "project": pre_pid})
        (pred,) = client.get("/api/predictions", params={"task": pre_tid})
        labels = [r["value"]["brushlabels"][0] for r in pred["result"]]
        if not labels:
            raise SystemExit("screenshots: the model found a single source (an empty pre-annotation); "
                             "run with --sources 2 to force two sources")
        # no pre-annotation in the click project: its task shows only what the click brings
        click_pid, click_tid = project("SAFIRE click", three, show_collab_predictions=False)
        px, py = interior_point(three.sources == 1)

        w, h = (int(v) for v in args.viewport.lower().split("x"))
        spec = {"url": ls.url, "username": USERNAME, "password": PASSWORD, "chromium": chromium,
                "viewport": [w, h], "profile": str(work / "chromium-profile"),
                "shots": [{"kind": "preannotation", "project": pre_pid, "task": pre_tid, "labels": labels,
                           "path": str(work / "preannotation-raw.png")},
                          {"kind": "click", "project": click_pid, "task": click_tid, "label": cfg.keypoint_labels[1],
                           "point": [px, py], "image_size": [three.width, three.height],
                           "path": str(work / "click-raw.png")}]}
        spec_path = work / "browser.json"
        spec_path.write_text(json.dumps(spec))
        run = subprocess.run([str(ls_python), str(REPO / "scripts" / "labelstudio_browser.py"), str(spec_path)],
                             text=True, capture_output=True, timeout=900)
        (work / "browser.log").write_text(run.stdout + run.stderr)
        if run.returncode != 0:
            raise SystemExit(f"screenshots: the browser step failed:\n{(run.stdout + run.stderr)[-3000:]}")
        for name in ("preannotation", "click"):
            size = shrink_png(work / f"{name}-raw.png", out / f"{name}.png")
            print(f"screenshots: {out / (name + '.png')} ({size // 1024} KB)", flush=True)
        return 0
    except HarnessError as e:
        print(f"screenshots: {e}", file=sys.stderr)
        return 1
    finally:
        if backend is not None:
            backend.stop()
        ls.stop()
        if args.keep:
            print(f"screenshots: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
