"""Bulk pre-annotation against the synchronous "Retrieve Predictions" path, on one real Label Studio
1.23.2 project, in one run: tasks/s and ratios.

    python benchmarks/bench_preannotate.py                     # 80 tasks of 224x224, grid 16
    python benchmarks/bench_preannotate.py --tasks 40 --size 256 --grid 8 --workers 1,2

What it does (nothing leaves 127.0.0.1):

1. starts Label Studio 1.23.2 and ``safire serve`` with the e2e harness (``tests/e2e/harness.py``:
   the Label Studio venv is installed on first use) in a temporary folder;
2. creates one project (``multi_source.xml``, ``safire_grid`` from ``--grid``) of ``--tasks`` local
   files (synthetic forged/authentic images of ``--size`` px) and connects the backend;
3. **sync**: Data Manager "Retrieve Predictions" on every task (Label Studio sends them all in one
   ``/predict`` and waits for the answer): wall time of the action;
4. deletes the predictions (Data Manager action ``delete_tasks_predictions``), then for each worker
   count of ``--workers``: ``safire preannotate --engine ray --workers N`` on the same project, wall
   time of the command (including starting and stopping Ray), and deletes the predictions again;
5. prints a markdown table (tasks/s, ratio to sync) and stops both servers.

The backend runs with ``SAFIRE_THREADS=1``, each Ray worker with one thread too: the ratios compare
engines, not thread counts. Numbers depend on the machine's other load; the README reports a run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.harness import Backend, LabelStudio, safire_command  # noqa: E402


def _image(rng: np.random.Generator, size: int, forged: bool) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = rng.uniform(60, 190, 3) + 30 * np.sin(6 * xx + rng.uniform(0, 6))[..., None] * np.cos(4 * yy)[..., None]
    img = img + rng.normal(0, 2.0, img.shape)
    if forged:
        p = size // 3
        y0, x0 = rng.integers(0, size - p, 2)
        img[y0:y0 + p, x0:x0 + p] = rng.uniform(40, 220, 3) + rng.normal(0, 25.0, (p, p, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/bench_preannotate.py")
    p.add_argument("--tasks", type=int, default=80)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]

    work = Path(tempfile.mkdtemp(prefix="bench-preannotate-"))
    ls = LabelStudio(work, work / "files", work / "label-studio.log", predict_timeout=3600)
    backend = None
    rows: List[Dict[str, object]] = []
    try:
        ls.start()
        client = ls.client()
        backend = Backend(ls.url, client.pat, work / "models", work / "backend.log",
                          extra_env={"SAFIRE_MAX_TASKS": str(max(100, args.tasks)), "SAFIRE_REQUEST_TIMEOUT": "0"})
        backend.start()
        xml = (REPO / "label_config" / "multi_source.xml").read_text().replace(
            'safire_grid="16"', f'safire_grid="{args.grid}"')
        pid = int(client.post("/api/projects", {"title": "bench preannotate", "label_config": xml})["id"])
        folder = ls.files_root / "bench"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        payload = []
        for i in range(args.tasks):
            buf = io.BytesIO()
            Image.fromarray(_image(rng, args.size, forged=i % 2 == 0)).save(buf, format="PNG", compress_level=1)
            (folder / f"b{i:04d}.png").write_bytes(buf.getvalue())
            payload.append({"image": f"/data/local-files/?d=bench/b{i:04d}.png"})
        client.post("/api/storages/localfiles", {"project": pid, "path": str(folder), "title": "bench",
                                                 "use_blob_urls": True})
        client.post(f"/api/projects/{pid}/import", payload)
        client.post("/api/ml", {"url": backend.url, "project": pid, "title": "safire", "is_interactive": False})
        everything = {"selectedItems": {"all": True, "excluded": []}, "project": pid}

        def predictions() -> int:
            return sum(client.get(f"/api/projects/{pid}/model-versions").values())

        def clear() -> None:
            client.post("/api/dm/actions", everything, params={"id": "delete_tasks_predictions", "project": pid})
            assert predictions() == 0

        t0 = time.monotonic()
        client.post("/api/dm/actions", everything, params={"id": "retrieve_tasks_predictions", "project": pid})
        sync_s = time.monotonic() - t0
        assert predictions() == args.tasks, predictions()
        rows.append({"path": "sync: Retrieve Predictions (one /predict)", "seconds": sync_s})
        for n in workers:
            clear()
            cmd = [str(safire_command()), "preannotate", "--url", ls.url, "--api-key", client.pat, "--project",
                   str(pid), "--engine", "ray", "--workers", str(n), "--state", str(work / f"state-{n}"),
                   "--no-progress"]
            t0 = time.monotonic()
            run = subprocess.run(cmd, env=backend.env(), cwd=str(REPO), capture_output=True, text=True, timeout=7200)
            seconds = time.monotonic() - t0
            if run.returncode != 0:
                print(run.stdout, run.stderr[-3000:], file=sys.stderr)
                return 1
            assert predictions() == args.tasks, predictions()
            man = json.loads((work / f"state-{n}" / "manifest.json").read_text())
            rows.append({"path": f"safire preannotate, Ray, {n} worker(s)", "seconds": seconds,
                         "after_start_tasks_per_s": man.get("tasks_per_second_after_start"),
                         "start_seconds": man.get("first_result_seconds")})
    finally:
        if backend is not None:
            backend.stop()
        ls.stop()
    sync = rows[0]["seconds"]
    print(f"\n{args.tasks} tasks of {args.size}x{args.size} px, safire_grid={args.grid}, "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}\n")
    print("| path | seconds (wall) | tasks/s (wall) | vs sync | start-up s | tasks/s after start-up | vs sync |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["tasks_per_s"] = args.tasks / r["seconds"]
        r["ratio"] = sync / r["seconds"]
        after = r.get("after_start_tasks_per_s")
        extra = (f"{r['start_seconds']:.1f} | {after:.2f} | {after / rows[0]['tasks_per_s']:.2f}x" if after else "- | - | -")
        print(f"| {r['path']} | {r['seconds']:.1f} | {r['tasks_per_s']:.2f} | {r['ratio']:.2f}x | {extra} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
