"""Fixtures of the end-to-end suite: a real Label Studio 1.23.2 plus ``safire serve`` for the session.

``SAFIRE_E2E=0`` skips the suite (reported as skipped, with the reason). Otherwise a failure to
install or start Label Studio fails the suite loudly: it never skips by itself.

Both servers' logs, the job logs, the exports and ``summary.json`` (timings and scores) are kept in
``SAFIRE_E2E_ARTIFACTS`` (default ``tests/e2e/artifacts/run-<time>``, git-ignored; the last 5 runs are
kept). The data directory lives in a temp dir removed at the end (``SAFIRE_E2E_KEEP=1`` keeps it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .harness import Backend, LabelStudio, LSClient
from .runlog import RUN, Timer, record

HERE = Path(__file__).resolve().parent
KEEP_RUNS = 5


def _enabled() -> bool:
    return os.environ.get("SAFIRE_E2E", "1").strip().lower() not in ("0", "false", "no", "off")


def pytest_collection_modifyitems(config, items):
    # e2e tests last (unit-test failures show up first), and skipped as a whole with SAFIRE_E2E=0
    e2e = [i for i in items if i.get_closest_marker("e2e")]
    if not e2e:
        return
    items[:] = [i for i in items if not i.get_closest_marker("e2e")] + e2e
    if not _enabled():
        skip = pytest.mark.skip(reason="SAFIRE_E2E=0: end-to-end tests against a real Label Studio disabled")
        for item in e2e:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if RUN["t0"] is None:
        return
    if RUN["total"] is None:
        RUN["total"] = round(time.monotonic() - RUN["t0"], 1)
    tr = terminalreporter
    tr.section("safire e2e (Label Studio 1.23.2)")
    tr.write_line(f"e2e suite total: {RUN['total']:.1f} s")
    for k, v in RUN["timings"].items():
        tr.write_line(f"  {k:<56} {v:>7.1f} s")
    for k, v in RUN["scores"].items():
        tr.write_line(f"  {k:<56} {v}")
    for n in RUN["notes"]:
        tr.write_line(f"  note: {n}")
    if RUN["artifacts"]:
        tr.write_line(f"logs and artifacts: {RUN['artifacts']}")
        try:
            Path(RUN["artifacts"], "summary.json").write_text(json.dumps(
                {k: RUN[k] for k in ("total", "timings", "scores", "notes")}, indent=1, default=str))
        except OSError:
            pass


def _artifacts_dir() -> Path:
    base = os.environ.get("SAFIRE_E2E_ARTIFACTS")
    if base:
        d = Path(base)
    else:
        root = HERE / "artifacts"
        root.mkdir(exist_ok=True)
        for old in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("run-"))[:-(KEEP_RUNS - 1)]:
            shutil.rmtree(old, ignore_errors=True)
        d = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass
class Stack:
    ls: LabelStudio
    client: LSClient
    backend: Backend
    work: Path
    files: Path
    artifacts: Path


TRAIN_ENV = {
    # small fine-tuning jobs so "Start Training" finishes in a minute or two on one CPU thread
    "SAFIRE_TRAIN_STEPS": os.environ.get("SAFIRE_E2E_TRAIN_STEPS", "6"),
    "SAFIRE_TRAIN_BATCH": "2",
    "SAFIRE_VAL_FRACTION": "0.2",
    # the 5-task project is below the default SAFIRE_TRAIN_MIN_TASKS (10); a 6-step job is not
    # expected to beat its parent, so the e2e run forces publication to exercise the serving
    # switch (the promotion rule: tests/test_jobs.py; its effect: benchmarks/bench_retrain.py)
    "SAFIRE_TRAIN_MIN_TASKS": "4",
    "SAFIRE_TRAIN_MIN_GAIN": "-1",
    "THREADS": "4",
}


@pytest.fixture(scope="session")
def stack():
    RUN["t0"] = time.monotonic()
    artifacts = _artifacts_dir()
    RUN["artifacts"] = str(artifacts)
    work = Path(tempfile.mkdtemp(prefix="safire-e2e-"))
    files = work / "files"
    ls = LabelStudio(work, files, artifacts / "label-studio.log")
    backend = None
    try:
        with Timer("label studio install (if needed) + start"):
            ls.start()
        record("timings", "label studio start (server only)", round(ls.timings["start"], 1))
        RUN["notes"].append("Label Studio database: " + ("copied from the migrated template"
                                                         if ls.used_template else "fresh (migrations ran)"))
        with Timer("login + personal access token"):
            client = ls.client()
        backend = Backend(ls.url, client.pat, work / "models", artifacts / "backend.log", extra_env=TRAIN_ENV)
        with Timer("backend start (safire serve)"):
            backend.start()
        yield Stack(ls, client, backend, work, files, artifacts)
    finally:
        if backend is not None:
            for log in (work / "models").glob("*/jobs/*.log"):
                shutil.copy(log, artifacts / f"job-{log.parent.parent.name}-{log.name}")
            backend.stop()
        ls.stop()
        RUN["total"] = round(time.monotonic() - RUN["t0"], 1)
        if os.environ.get("SAFIRE_E2E_KEEP", "").strip() in ("1", "true", "yes"):
            RUN["notes"].append(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

