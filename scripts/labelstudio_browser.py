"""Drive Label Studio's labeling page in headless Chromium and take screenshots (Playwright).

    <ls-venv>/bin/python scripts/labelstudio_browser.py SPEC.json

Run by ``scripts/screenshots.py`` with the Label Studio venv's Python (where ``playwright`` is
installed; its own browser download is never used: Chromium is the Debian package). SPEC::

    {"url": "http://127.0.0.1:PORT", "username": ..., "password": ..., "chromium": "/usr/bin/chromium",
     "viewport": [1440, 1000], "profile": "/tmp/...",
     "shots": [{"kind": "preannotation", "project": 1, "task": 1, "path": "raw1.png", "labels": [...]},
               {"kind": "click", "project": 2, "task": 2, "path": "raw2.png", "label": "Source 2",
                "point": [x, y], "image_size": [w, h]}]}

A "preannotation" shot opens the task and waits until the predicted regions are listed; a "click" shot
turns on Auto-Annotation, picks the smart keypoint tool and the label, clicks the image at ``point``
(image pixels) and waits for Label Studio to show the backend's suggestion.
"""

from __future__ import annotations

import json
import sys
import time

from playwright.sync_api import sync_playwright

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def login(page, spec) -> None:
    page.goto(f"{spec['url']}/user/login/")
    page.fill("input[name=email]", spec["username"])
    page.fill("input[name=password]", spec["password"])
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    if "/user/login" in page.url:
        raise SystemExit("login to Label Studio failed")


def open_task(page, spec, shot) -> None:
    page.goto(f"{spec['url']}/projects/{shot['project']}/data?task={shot['task']}")
    page.wait_for_load_state("networkidle")
    page.wait_for_function("() => { const i = document.querySelector('img[alt=image]');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=60000)
    time.sleep(1.0)


def preannotation(page, spec, shot) -> None:
    open_task(page, spec, shot)
    for label in shot["labels"]:  # the Regions panel lists every predicted region
        page.locator("[class*=lsf-outliner], [class*=outliner]").get_by_text(label, exact=True).first.wait_for(
            timeout=60000)
    page.mouse.move(5, 5)
    time.sleep(1.0)
    page.screenshot(path=shot["path"])


def click(page, spec, shot) -> None:
    open_task(page, spec, shot)
    page.get_by_text("Auto-Annotation", exact=True).click()
    time.sleep(0.5)
    # the smart tools sit in a collapsed group of the toolbar: select the keypoint tool directly
    page.evaluate("() => document.querySelector('[aria-label=key-point-tool]').click()")
    time.sleep(0.3)
    # the label rows are BrushLabels, KeyPointLabels, RectangleLabels: pick the keypoint row's label
    page.get_by_text(shot["label"], exact=True).nth(1).click()
    time.sleep(0.3)
    box = page.locator("img[alt=image]").bounding_box()
    w, h = shot["image_size"]
    x, y = shot["point"]
    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h)
    page.get_by_text("suggestions").first.wait_for(timeout=120000)
    page.mouse.move(5, 5)
    time.sleep(1.5)
    page.screenshot(path=shot["path"])


def main(argv) -> int:
    spec = json.loads(open(argv[1]).read())
    with sync_playwright() as p:
        # a persistent context on a fresh, empty profile folder (--user-data-dir) that the caller removes
        ctx = p.chromium.launch_persistent_context(
            spec["profile"], executable_path=spec["chromium"], headless=True, args=FLAGS,
            viewport={"width": spec["viewport"][0], "height": spec["viewport"][1]})
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.set_default_timeout(60000)
        login(page, spec)
        for shot in spec["shots"]:
            {"preannotation": preannotation, "click": click}[shot["kind"]](page, spec, shot)
            print(f"shot {shot['kind']}: {shot['path']}", flush=True)
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
