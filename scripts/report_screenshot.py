"""Screenshot of an evaluation report page (``safire evaluate --report DIR``) in headless Chromium.

    .venv/bin/python scripts/report_screenshot.py DIR/index.html docs/screenshots/report.png
        [--width 1280] [--height 2000]

Opens the page from disk (``file://``, as an analyst would) with Debian's ``chromium``
(``apt-get install -y chromium``; ``SAFIRE_CHROMIUM`` points to another binary) and saves the top
``--height`` pixels as a palette PNG (what ``make report`` does for the README).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--allow-file-access-from-files"]


def find_chromium() -> str:
    for cand in (os.environ.get("SAFIRE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise SystemExit("report_screenshot: Chromium is not installed. On Debian/Ubuntu run:\n"
                     "    apt-get update && apt-get install -y chromium\n"
                     "or set SAFIRE_CHROMIUM to a Chromium/Chrome binary.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page", help="the report's index.html")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2000)
    p.add_argument("--colors", type=int, default=256, help="palette size of the PNG (0: keep RGB)")
    args = p.parse_args(argv)
    page = Path(args.page).resolve()
    if not page.is_file():
        raise SystemExit(f"report_screenshot: {page} does not exist")
    chromium = find_chromium()
    with tempfile.TemporaryDirectory(prefix="safire-shot-") as tmp:
        shot = Path(tmp) / "shot.png"
        cmd = [chromium, *FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size={args.width},{args.height}",
               f"--screenshot={shot}", "--virtual-time-budget=5000", page.as_uri()]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if not shot.is_file():
            raise SystemExit(f"report_screenshot: Chromium wrote no screenshot (exit {run.returncode}):\n"
                             f"{run.stderr[-2000:]}")
        from PIL import Image

        im = Image.open(shot).convert("RGB")
        if args.colors:
            im = im.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        im.save(args.out, optimize=True)
    print(f"{args.out}: {im.size[0]}x{im.size[1]}, {os.path.getsize(args.out) // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
