"""``safire preannotate``: pre-annotate a whole Label Studio project in bulk, resumably.

    safire preannotate --url URL --api-key KEY --project ID [--workers N] [--all --overwrite]
    safire preannotate --from-export EXPORT.json --label-config CONFIG.xml --out PREDICTIONS.json

Online, the project's tasks are listed page by page (``GET /api/tasks``, keyset pages on the task
id, split into id ranges that list in parallel), every task without a prediction of the current
model version is predicted by the backend's own code (:meth:`ml_backend.backend.Backend.preannotate`:
the same fetcher with the server's limits and allow-list, the same partition settings from the label
config and ``SAFIRE_SOURCES/GRID/SEED``, the same model version, the same provenance), and the
predictions go back in chunks with ``POST /api/projects/<id>/import/predictions`` (retries with
backoff). Offline (``--from-export``), the export's tasks are predicted and written with their
predictions as a JSON file Label Studio imports (``POST /api/projects/<id>/import``).

Engines: ``--engine ray`` (default) runs the tasks through Ray Data (``map_batches`` with one model per
actor, streaming with backpressure; a local run starts Ray itself on 127.0.0.1, ``--ray-address``
joins a cluster; :mod:`ml_backend.bulk_ray`), ``--engine local`` runs them in this process (no Ray).
Ray is imported only by the Ray engine, never by the backend.

Resumable and exact: Label Studio is the record of what is done. A task is selected only if none of
its predictions has the current model version, and a chunk's tasks are checked again right before
the upload (so a run killed at any point, a retried upload whose answer was lost, or a user's
"Retrieve Predictions" meanwhile never give a task a second prediction of one version). Label
Studio inserts one upload in one transaction. A journal (``STATE/journal.jsonl``) records uploads
and skips; ``STATE/manifest.json`` accounts for every listed task: ``uploaded``, ``already_predicted``
(of which ``by_earlier_run``), ``skipped`` by reason (unreadable image, too large, fetch error, ...)
and ``upload_failed``. One bad image never stops the run. One run per state folder at a time (a lock).

``--overwrite`` deletes a selected task's existing predictions (every version) before its new one is
imported; ``--all`` (which needs ``--overwrite``) selects tasks that already have a prediction of the
current version too (a resumed ``--all`` run skips what this state's journal already uploaded).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

__all__ = ["BulkError", "Manifest", "TaskPredictor", "list_shard", "main", "run", "shard_ranges"]

DEFAULT_CHUNK = 100  # predictions per import request
DEFAULT_PAGE = 500  # tasks per listing request
SKIP_REASONS = ("unreadable_image", "too_large", "not_found", "fetch_error", "bad_task", "internal_error")


class BulkError(RuntimeError):
    """The run cannot start or go on (configuration, Label Studio refuses, lock held, ...)."""


# ------------------------------------------------------------------------------------------------
# one task -> one outcome (runs where the model is: this process or a Ray actor)
# ------------------------------------------------------------------------------------------------


def _skip_reason(e: BaseException) -> str:
    from safire.io import ImageLoadError

    from .fetch import FetchError, TooLargeError

    if isinstance(e, TooLargeError):
        return "too_large"
    if isinstance(e, ImageLoadError):
        text = str(e).lower()
        return "too_large" if ("too large" in text or "above" in text or "pixels" in text) else "unreadable_image"
    if isinstance(e, FetchError):
        return "not_found" if e.reason == "not_found" else "fetch_error"
    if isinstance(e, ValueError):
        return "bad_task"
    return "internal_error"


class TaskPredictor:
    """The backend's pre-annotation of one task, outside the HTTP server: one model per process.

    ``job`` (plain data, so it can travel to Ray actors): ``settings`` (the fields of
    :class:`ml_backend.settings.Settings`), ``project``, ``label_config`` (XML), ``model_version``
    (the version the run was planned for: a worker whose project model differs refuses to start),
    ``explain_base`` (the backend's URL for the records' ``explain_url``, optional).

    Called with a Ray Data batch (``{"id", "task", "action"}`` columns) it returns the outcomes as
    columns (``id``, ``status``, ``reason``, ``message``, ``prediction`` JSON, ``seconds``); rows whose
    action is not ``predict`` pass through without computing anything.
    """

    def __init__(self, job: Mapping[str, Any]) -> None:
        import torch

        from .backend import Backend
        from .runtime import parse_config
        from .models import ModelRegistry
        from .settings import Settings

        settings = Settings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in job["settings"].items()})
        torch.set_num_threads(max(1, int(settings.threads)))
        registry = ModelRegistry(settings.model_dir, base_checkpoint=settings.checkpoint, device=settings.device,
                                 cache_bytes=0, base_variant=settings.variant)
        self.backend = Backend(settings, registry)  # no job manager: it is created on first use only
        self.project = job.get("project")
        self.xml = job["label_config"]
        self.spec = parse_config(self.xml)
        self.loaded = self.backend.model(self.project)
        want = job.get("model_version")
        if want is not None and str(self.loaded.version) != str(want):
            raise BulkError(f"project {self.project} is now served by model version {self.loaded.version}, the run "
                            f"was planned for {want}: start it again")
        self.explain_base = job.get("explain_base")

    @property
    def version(self) -> str:
        return str(self.loaded.version)

    def predict(self, task: Mapping[str, Any]) -> Dict[str, Any]:
        """``{"id", "status": "predicted"|"skipped", "reason", "message", "prediction", "seconds"}``."""
        t0 = time.perf_counter()
        tid = task.get("id") if isinstance(task, Mapping) else None
        try:
            if not isinstance(task, Mapping):
                raise ValueError("task is not a JSON object")
            pred = self.backend.preannotate(task, self.spec, self.xml, self.loaded, project=self.project,
                                            explain_base=self.explain_base)
            pred.pop("provenance", None)  # Label Studio keeps result/score/model_version; the record is in the regions
            return {"id": tid, "status": "predicted", "reason": "", "message": "", "prediction": pred,
                    "seconds": time.perf_counter() - t0}
        except Exception as e:  # one bad image never stops the run
            from .fetch import log_text

            reason = _skip_reason(e)
            msg = log_text(f"{type(e).__name__}: {e}", 400)
            return {"id": tid, "status": "skipped", "reason": reason, "message": msg, "prediction": None,
                    "seconds": time.perf_counter() - t0}

    def __call__(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        import numpy as np

        out: Dict[str, List[Any]] = {k: [] for k in ("id", "status", "reason", "message", "prediction", "seconds")}
        for tid, task_json, action in zip(batch["id"], batch["task"], batch["action"]):
            if action == "predict":
                o = self.predict(json.loads(task_json))
                o["id"] = int(tid)
            else:
                o = {"id": int(tid), "status": str(action), "reason": "", "message": "", "prediction": None,
                     "seconds": 0.0}
            for k in out:
                v = o[k]
                out[k].append(json.dumps(v, separators=(",", ":")) if k == "prediction" and v is not None else
                              ("" if v is None else v))
        return {"id": np.asarray(out["id"], dtype=np.int64), "status": np.asarray(out["status"], dtype=object),
                "reason": np.asarray(out["reason"], dtype=object), "message": np.asarray(out["message"], dtype=object),
                "prediction": np.asarray(out["prediction"], dtype=object),
                "seconds": np.asarray(out["seconds"], dtype=np.float64)}


# ------------------------------------------------------------------------------------------------
# listing and selection
# ------------------------------------------------------------------------------------------------


def shard_ranges(min_id: int, max_id: int, shards: int) -> List[Tuple[int, int]]:
    """``(after, before)`` id ranges (exclusive bounds) covering ``min_id..max_id`` in ``shards`` parts."""
    if max_id < min_id or min_id <= 0:
        return []
    span = max(1, math.ceil((max_id - min_id + 1) / max(1, shards)))
    out = []
    lo = min_id
    while lo <= max_id:
        hi = min(max_id + 1, lo + span)
        out.append((lo - 1, hi))
        lo = hi
    return out


def _client(conn: Mapping[str, Any]) -> Any:
    from .lsclient import LabelStudioClient
    from .settings import download_settings

    s = conn["settings"]
    download = download_settings({}, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in s.items()
                                        if k in ("allowed_hosts", "allowed_networks", "fetch_timeout",
                                                 "max_image_bytes", "max_pixels")})
    return LabelStudioClient(s["label_studio_url"], s["label_studio_api_key"], download=download,
                             timeout=float(conn.get("api_timeout", 120)))


def select(task: Mapping[str, Any], versions: Sequence[str], version: str, select_all: bool,
           journal_uploaded: Optional[set] = None) -> str:
    """``predict`` or why not: ``has_version`` (a prediction of ``version`` exists), ``done_earlier``
    (``--all``: this state's journal uploaded it already)."""
    if select_all:
        if journal_uploaded and int(task["id"]) in journal_uploaded:
            return "done_earlier"
        return "predict"
    return "has_version" if version in versions else "predict"


def list_shard(conn: Mapping[str, Any], after: int, before: int) -> List[Dict[str, Any]]:
    """Rows ``{"id", "task" (JSON), "action"}`` for every task of the project with ``after < id < before``."""
    client = _client(conn)
    from .lsclient import with_retries

    rows = []
    project = int(conn["project"])
    cursor = after
    page_size = int(conn.get("page_size", DEFAULT_PAGE))
    uploaded = set(conn.get("journal_uploaded") or ())
    while True:
        page, _ = with_retries(lambda: client.tasks_page(project, after=cursor, before=before, page_size=page_size),
                               what="listing tasks")
        for t in page:
            versions = client.versions_of(t)
            action = select(t, versions, conn["model_version"], bool(conn.get("select_all")), uploaded)
            task = {"id": t["id"], "data": t.get("data"), "meta": t.get("meta") or {}, "project": project}
            rows.append({"id": int(t["id"]), "task": json.dumps(task, separators=(",", ":")), "action": action})
        if len(page) < page_size:
            return rows
        cursor = int(page[-1]["id"])


# ------------------------------------------------------------------------------------------------
# state: lock, journal, manifest
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Manifest:
    """What a run did with every listed task (``listed`` = the sum of the other counts)."""

    mode: str
    model_version: str
    project: Optional[str] = None
    run_id: str = ""
    listed: int = 0
    predicted: int = 0
    uploaded: int = 0
    already_predicted: int = 0
    already_predicted_by_earlier_run: int = 0
    skipped: Dict[str, int] = dataclasses.field(default_factory=dict)
    upload_failed: int = 0
    skipped_tasks: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    first_result_seconds: Optional[float] = None  # start-up: model(s) loaded, Ray started, first page listed
    engine: str = ""
    workers: int = 0
    finished: bool = False
    error: Optional[str] = None

    @property
    def accounted(self) -> int:
        return self.uploaded + self.already_predicted + sum(self.skipped.values()) + self.upload_failed

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["accounted"] = self.accounted
        d["tasks_per_second"] = round(self.listed / self.seconds, 3) if self.seconds > 0 else None
        warm = self.seconds - (self.first_result_seconds or 0.0)
        d["tasks_per_second_after_start"] = round((self.listed - 1) / warm, 3) if self.listed > 1 and warm > 0 else None
        return d

    def summary(self) -> str:
        sk = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"{self.listed} tasks listed: {self.uploaded} predicted and {'uploaded' if self.mode == 'online' else 'written'}, "
                f"{self.already_predicted} already had a prediction of {self.model_version} "
                f"({self.already_predicted_by_earlier_run} from an earlier run), skipped: {sk}, "
                f"upload failed: {self.upload_failed}; {self.seconds:.1f} s")


class State:
    """``STATE/lock`` (one run at a time), ``STATE/journal.jsonl`` (what earlier runs did) and
    ``STATE/manifest.json``."""

    def __init__(self, folder: os.PathLike) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_f = open(self.dir / "lock", "a+")
        try:
            fcntl.flock(self._lock_f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_f.close()
            raise BulkError(f"another safire preannotate run holds {self.dir / 'lock'}") from None
        self.journal_path = self.dir / "journal.jsonl"
        self._journal = open(self.journal_path, "a", encoding="utf-8")

    def read_journal(self, version: str) -> Tuple[set, Dict[int, Dict[str, Any]]]:
        """(task ids uploaded for ``version``, offline predictions by task key) from earlier runs."""
        uploaded: set = set()
        offline: Dict[int, Dict[str, Any]] = {}
        try:
            with open(self.journal_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # a line cut by a kill
                    if rec.get("version") != version:
                        continue
                    if rec.get("status") == "uploaded":
                        uploaded.add(int(rec["id"]))
                    elif rec.get("status") == "written" and isinstance(rec.get("prediction"), dict):
                        offline[int(rec["id"])] = rec["prediction"]
        except FileNotFoundError:
            pass
        return uploaded, offline

    def log(self, records: Iterable[Mapping[str, Any]]) -> None:
        for rec in records:
            self._journal.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def write_manifest(self, manifest: Manifest, path: Optional[os.PathLike] = None) -> Path:
        target = Path(path) if path else self.dir / "manifest.json"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(manifest.to_dict(), indent=1))
        os.replace(tmp, target)
        return target

    def close(self) -> None:
        try:
            self._journal.close()
        finally:
            fcntl.flock(self._lock_f, fcntl.LOCK_UN)
            self._lock_f.close()


# ------------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------------


class Progress:
    """A progress bar with tasks/s and ETA on stderr (a line every 10 s when stderr is not a
    terminal), and a callback with the same numbers (the backend's job record)."""

    def __init__(self, total: int, enabled: bool = True, callback: Optional[Callable[[Dict[str, Any]], None]] = None,
                 stream: Any = None, every: float = 0.5) -> None:
        self.total = max(0, int(total))
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.callback = callback
        self.every = every if self.tty else 10.0
        self.t0 = time.monotonic()
        self._last = 0.0
        self._last_cb = 0.0
        self.done = 0
        self.work_done = 0  # tasks that needed computing (for the rate)
        self.work_total: Optional[int] = None

    def stats(self, m: Manifest) -> Dict[str, Any]:
        el = max(1e-6, time.monotonic() - self.t0)
        rate = self.done / el
        eta = (self.total - self.done) / rate if rate > 0 and self.total >= self.done else None
        return {"stage": "predicting", "total": self.total, "done": self.done, "predicted": m.predicted,
                "uploaded": m.uploaded, "already_predicted": m.already_predicted,
                "skipped": sum(m.skipped.values()), "upload_failed": m.upload_failed,
                "tasks_per_s": round(rate, 3), "eta_s": round(eta, 1) if eta is not None else None,
                "elapsed_s": round(el, 1)}

    def update(self, m: Manifest, force: bool = False) -> None:
        now = time.monotonic()
        if self.callback and (force or now - self._last_cb >= 1.0):
            self._last_cb = now
            try:
                self.callback(self.stats(m))
            except Exception:  # progress reporting never stops the run
                pass
        if not self.enabled or (not force and now - self._last < self.every):
            return
        self._last = now
        s = self.stats(m)
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(28 * frac) + "." * (28 - int(28 * frac))
        eta = "--:--" if s["eta_s"] is None else time.strftime("%H:%M:%S", time.gmtime(s["eta_s"]))
        line = (f"[{bar}] {self.done}/{self.total} {100 * frac:5.1f}% {s['tasks_per_s']:.2f} tasks/s ETA {eta} | "
                f"new {m.uploaded} had {m.already_predicted} skipped {s['skipped']}")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self, m: Manifest) -> None:
        self.update(m, force=True)
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------------------------
# the sink: outcomes -> uploads (online) or the output file (offline), journal, manifest
# ------------------------------------------------------------------------------------------------


class Sink:
    """Takes outcomes as they arrive (any order), uploads predictions in chunks, keeps the books."""

    def __init__(self, manifest: Manifest, state: State, progress: Progress, *, client: Any = None,
                 project: Optional[int] = None, chunk: int = DEFAULT_CHUNK, overwrite: bool = False,
                 earlier: Optional[set] = None, offline: Optional[Dict[int, Dict[str, Any]]] = None,
                 log: Callable[[str], None] = lambda s: print(s, file=sys.stderr), t0: Optional[float] = None) -> None:
        self.m, self.state, self.progress = manifest, state, progress
        self.client, self.project, self.chunk = client, project, max(1, int(chunk))
        self.overwrite = overwrite
        self.earlier = earlier or set()
        self.offline = offline  # task key -> prediction (offline mode; earlier runs' included)
        self.buffer: List[Dict[str, Any]] = []
        self.log = log
        self.t0 = t0 if t0 is not None else time.monotonic()

    def add(self, o: Mapping[str, Any]) -> None:
        m = self.m
        if m.first_result_seconds is None:
            m.first_result_seconds = round(time.monotonic() - self.t0, 2)
        m.listed += 1
        self.progress.done += 1
        tid = int(o["id"])
        status = o["status"]
        if status in ("has_version", "done_earlier"):
            m.already_predicted += 1
            if tid in self.earlier:
                m.already_predicted_by_earlier_run += 1
        elif status == "skipped":
            reason = o.get("reason") or "internal_error"
            m.skipped[reason] = m.skipped.get(reason, 0) + 1
            m.skipped_tasks.append({"id": tid, "reason": reason, "message": o.get("message") or ""})
            self.state.log([{"id": tid, "status": "skipped", "reason": reason, "version": m.model_version,
                             "run": m.run_id, "t": round(time.time(), 3)}])
        elif status == "predicted":
            m.predicted += 1
            pred = o["prediction"]
            if isinstance(pred, str):
                pred = json.loads(pred)
            self.buffer.append({"id": tid, "prediction": pred})
            if len(self.buffer) >= self.chunk:
                self.flush()
        else:
            raise BulkError(f"task {tid}: unknown outcome {status!r}")
        self.progress.update(m)

    def flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        if self.offline is not None:
            for b in batch:
                self.offline[b["id"]] = b["prediction"]
            self.state.log([{"id": b["id"], "status": "written", "version": self.m.model_version, "run": self.m.run_id,
                             "prediction": b["prediction"]} for b in batch])
            self.m.uploaded += len(batch)
            return
        from .lsclient import LabelStudioError, with_retries

        def attempt() -> None:
            nonlocal batch
            # Label Studio is the record: drop what got a prediction of this version meanwhile (an
            # earlier attempt whose answer was lost, another run, a user's Retrieve Predictions)
            page, _ = self.client.tasks_page(self.project, ids=[b["id"] for b in batch], page_size=len(batch) + 10)
            has = {int(t["id"]) for t in page if self.m.model_version in self.client.versions_of(t)}
            gone = {b["id"] for b in batch} - {int(t["id"]) for t in page}
            if has and not self.overwrite:
                self.m.already_predicted += len(has)  # predicted here, not uploaded
                batch = [b for b in batch if b["id"] not in has]
            if gone:  # deleted from the project meanwhile: an upload with them would be refused whole
                self.m.skipped["task_deleted"] = self.m.skipped.get("task_deleted", 0) + len(gone)
                self.m.skipped_tasks += [{"id": i, "reason": "task_deleted", "message": ""} for i in sorted(gone)]
                batch = [b for b in batch if b["id"] not in gone]
            if not batch:
                return
            if self.overwrite:
                for b in batch:
                    for p in self.client.list_predictions(task_id=b["id"]):
                        self.client.delete_prediction(int(p["id"]))
            self.client.import_predictions(self.project, [{"task": b["id"], **b["prediction"]} for b in batch])
            self.state.log([{"id": b["id"], "status": "uploaded", "version": self.m.model_version,
                             "run": self.m.run_id, "t": round(time.time(), 3)} for b in batch])
            self.m.uploaded += len(batch)
            batch = []

        try:
            with_retries(attempt, attempts=6, log=self.log, what=f"upload of {len(batch)} predictions")
        except LabelStudioError as e:
            self.m.upload_failed += len(batch)
            self.log(f"upload of {len(batch)} predictions failed: {e}")
            self.m.error = f"upload failed: {e}"


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    """Everything a run needs besides the settings (the command line's options)."""

    mode: str = "online"  # online | offline
    project: Optional[int] = None
    export_path: Optional[str] = None
    label_config_path: Optional[str] = None
    label_config: Optional[str] = None
    out: Optional[str] = None
    state_dir: Optional[str] = None
    manifest_path: Optional[str] = None
    select_all: bool = False
    overwrite: bool = False
    engine: str = "ray"
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    ray_address: Optional[str] = None
    object_store_mb: int = 512
    batch_size: int = 1
    chunk: int = DEFAULT_CHUNK
    page_size: int = DEFAULT_PAGE
    shards: int = 0  # 0: 4 per worker
    explain_base: Optional[str] = None
    progress: bool = True
    limit: int = 0  # stop after this many outcomes (0: no limit): sample runs, tests


def _settings_dict(settings: Any) -> Dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(settings, f.name), tuple) else v)
            for f in dataclasses.fields(settings)}


def run(opts: Options, settings: Any, *, progress_callback: Optional[Callable[[Dict[str, Any]], None]] = None,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Manifest:
    """Plan, predict, upload (or write) and account for every task; the manifest."""
    from .runtime import parse_config
    from .label_config import LabelConfigError

    t_start = time.monotonic()
    online = opts.mode == "online"
    client = None
    export_tasks: List[Dict[str, Any]] = []
    if online:
        if opts.project is None:
            raise BulkError("--project is needed (or --from-export for an offline run)")
        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise BulkError("an online run needs --url and --api-key (or LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY)")
        conn0 = {"settings": _settings_dict(settings)}
        client = _client(conn0)
        xml = opts.label_config
        if xml is None and opts.label_config_path:
            xml = Path(opts.label_config_path).read_text(encoding="utf-8")
        if xml is None:
            xml = client.get_project(int(opts.project)).get("label_config")
    else:
        if not opts.export_path or not opts.out:
            raise BulkError("an offline run needs --from-export EXPORT.json and --out PREDICTIONS.json")
        xml = opts.label_config or (Path(opts.label_config_path).read_text(encoding="utf-8")
                                    if opts.label_config_path else None)
        if not xml:
            raise BulkError("an offline run needs --label-config CONFIG.xml (the project's labeling config)")
        with open(opts.export_path, encoding="utf-8") as f:
            export_tasks = json.load(f)
        if isinstance(export_tasks, dict):
            export_tasks = [export_tasks]
        if not isinstance(export_tasks, list):
            raise BulkError("the export must be a JSON list of tasks (exportType=JSON)")
    if not isinstance(xml, str) or not xml.strip():
        raise BulkError("the project has no label config")
    try:
        spec = parse_config(xml)
    except LabelConfigError as e:
        raise BulkError(str(e)) from None
    project_key = str(opts.project) if opts.project is not None else None

    # the model version the run is for (what the backend serves this project now)
    if opts.select_all and not opts.overwrite and online:
        raise BulkError("--all would give tasks that already have a prediction of the current model version a "
                        "second one: add --overwrite (replace their predictions)")
    probe = TaskPredictor({"settings": _settings_dict(settings), "project": project_key, "label_config": xml,
                           "explain_base": opts.explain_base})
    over = probe.backend.check_tuning(spec, xml)
    if over:
        raise BulkError("the label config goes beyond this server's caps: " + "; ".join(over))
    version = probe.version
    job = {"settings": _settings_dict(settings), "project": project_key, "label_config": xml,
           "model_version": version, "explain_base": opts.explain_base}

    state_dir = opts.state_dir or (f"{opts.out}.state" if not online else
                                   os.path.join(".safire-preannotate", f"project-{opts.project}"))
    state = State(state_dir)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    manifest = Manifest(mode=opts.mode, model_version=version, project=project_key, run_id=run_id,
                        engine=opts.engine, workers=opts.workers)
    try:
        uploaded_before, offline_preds = state.read_journal(version)
        if online:
            lo, hi, total = client.task_id_range(int(opts.project))
            shards = shard_ranges(lo, hi, opts.shards or max(4, 4 * opts.workers))
            conn = {"settings": _settings_dict(settings), "project": int(opts.project), "model_version": version,
                    "select_all": opts.select_all, "page_size": opts.page_size,
                    "journal_uploaded": sorted(uploaded_before) if opts.select_all else []}
        else:
            total = len(export_tasks)
            shards, conn = [], {}
        progress = Progress(total, enabled=opts.progress, callback=progress_callback)
        sink = Sink(manifest, state, progress, client=client, project=opts.project, chunk=opts.chunk,
                    overwrite=opts.overwrite, earlier=uploaded_before | set(offline_preds),
                    offline=dict(offline_preds) if not online else None, log=log, t0=t_start)
        log(f"safire preannotate: {'project ' + str(opts.project) if online else opts.export_path}, {total} tasks, "
            f"model version {version}, engine {opts.engine} ({opts.workers} worker(s)), state {state.dir}")

        if online:
            def rows() -> Iterator[Dict[str, Any]]:
                for after, before in shards:
                    yield from list_shard(conn, after, before)
        else:
            def rows() -> Iterator[Dict[str, Any]]:
                for i, t in enumerate(export_tasks):
                    key = _task_key(t, i)
                    task = dict(t) if isinstance(t, dict) else {"data": None}
                    task.setdefault("id", key)
                    yield {"id": key, "task": json.dumps({"id": task.get("id"), "data": task.get("data"),
                                                          "meta": task.get("meta") or {}}, separators=(",", ":")),
                           "action": "done_earlier" if key in offline_preds else "predict"}

        n = 0
        if opts.engine == "local":
            for row in rows():
                if row["action"] == "predict":
                    o = probe.predict(json.loads(row["task"]))
                    o["id"] = row["id"]
                else:
                    o = {"id": row["id"], "status": row["action"]}
                sink.add(o)
                n += 1
                if opts.limit and n >= opts.limit:
                    break
        elif opts.engine == "ray":
            del probe  # the actors load their own models
            from .bulk_ray import run_ray

            for o in run_ray(job, opts, shards=shards, conn=conn, rows=None if online else list(rows())):
                sink.add(o)
                n += 1
                if opts.limit and n >= opts.limit:
                    break
        else:
            raise BulkError(f"unknown engine {opts.engine!r}: ray or local")
        sink.flush()
        if not opts.limit and online and manifest.listed != total:
            log(f"note: {manifest.listed} tasks listed, the project had {total} when the run started "
                "(tasks added or deleted meanwhile)")
        if not online:
            _write_offline(opts.out, export_tasks, sink.offline or {})
        manifest.finished = manifest.upload_failed == 0
        progress.close(manifest)
    except BaseException as e:
        manifest.error = manifest.error or f"{type(e).__name__}: {e}"
        raise
    finally:
        manifest.seconds = round(time.monotonic() - t_start, 2)
        try:
            state.write_manifest(manifest)
            if opts.manifest_path:
                state.write_manifest(manifest, opts.manifest_path)
        finally:
            state.close()
    return manifest


def _task_key(task: Any, index: int) -> int:
    tid = task.get("id") if isinstance(task, dict) else None
    return int(tid) if isinstance(tid, int) and not isinstance(tid, bool) else -(index + 1)


def _write_offline(out: str, tasks: Sequence[Any], preds: Mapping[int, Dict[str, Any]]) -> None:
    """The export's tasks with their new predictions, as Label Studio imports them."""
    rows = []
    for i, t in enumerate(tasks):
        if not isinstance(t, dict):
            continue
        row: Dict[str, Any] = {"data": t.get("data")}
        if t.get("meta"):
            row["meta"] = t["meta"]
        anns = [a for a in (t.get("annotations") or []) if isinstance(a, dict)]
        if anns:
            row["annotations"] = [{k: a[k] for k in ("result", "was_cancelled", "ground_truth", "lead_time")
                                   if k in a} for a in anns]
        pred = preds.get(_task_key(t, i))
        row["predictions"] = [pred] if pred else []
        rows.append(row)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, target)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="safire preannotate",
        description="Pre-annotate a whole Label Studio project with SAFIRE, in bulk and resumably: the same "
                    "predictions as the backend's Retrieve Predictions, imported through Label Studio's API. "
                    "Settings (SAFIRE_CHECKPOINT, MODEL_DIR, SAFIRE_SOURCES/GRID/SEED, SAFIRE_ALLOWED_HOSTS, "
                    "limits, ...) come from the same environment variables as the backend's.")
    src = p.add_argument_group("online (a Label Studio project)")
    src.add_argument("--url", default=None, help="Label Studio base URL (default $LABEL_STUDIO_URL)")
    src.add_argument("--api-key", default=None, help="personal access token or legacy token (default "
                                                     "$LABEL_STUDIO_API_KEY; prefer the variable: other users "
                                                     "of the machine can read command lines)")
    src.add_argument("--project", type=int, help="project id")
    off = p.add_argument_group("offline (a Label Studio export)")
    off.add_argument("--from-export", metavar="EXPORT.json", help="tasks of a JSON export instead of a live project")
    off.add_argument("--label-config", metavar="CONFIG.xml",
                     help="the project's labeling config (needed offline; online: default the project's)")
    off.add_argument("--out", metavar="PREDICTIONS.json", help="offline: tasks with their predictions, for import")
    sel = p.add_argument_group("selection")
    sel.add_argument("--all", dest="select_all", action="store_true",
                     help="also tasks that already have a prediction of the current model version (needs --overwrite)")
    sel.add_argument("--overwrite", action="store_true",
                     help="delete a task's existing predictions (every version) before importing its new one")
    eng = p.add_argument_group("engine")
    eng.add_argument("--engine", choices=("ray", "local"), default="ray",
                     help="ray: Ray Data actors (default); local: in this process, no Ray")
    eng.add_argument("--workers", type=int, default=1, help="model workers (Ray actors), one model each")
    eng.add_argument("--cpus-per-worker", type=float, default=1.0)
    eng.add_argument("--gpus-per-worker", type=float, default=0.0,
                     help="GPUs per Ray actor (with SAFIRE_DEVICE=cuda), e.g. 1 or 0.5")
    eng.add_argument("--ray-address", help="join a running Ray cluster (ray start --head ...) instead of starting "
                                           "a local one on 127.0.0.1")
    eng.add_argument("--object-store-mb", type=int, default=512, help="object store of a local Ray (MiB)")
    eng.add_argument("--batch-size", type=int, default=1, help="tasks per map_batches call")
    eng.add_argument("--shards", type=int, default=0, help="task-id ranges listed in parallel (default 4 per worker)")
    io_ = p.add_argument_group("upload and state")
    io_.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="predictions per import request")
    io_.add_argument("--page-size", type=int, default=DEFAULT_PAGE, help="tasks per listing request")
    io_.add_argument("--state", help="state folder: lock, journal, manifest (default "
                                     ".safire-preannotate/project-ID, or OUT.state offline)")
    io_.add_argument("--manifest", help="also write the manifest here")
    io_.add_argument("--backend-url", help="the backend's URL, for the explain_url of the provenance records")
    io_.add_argument("--limit", type=int, default=0,
                     help="stop after N tasks (a sample run to measure the cost per image; resume later)")
    io_.add_argument("--no-progress", action="store_true")
    return p


def _env_settings() -> Any:
    """The backend's settings from the environment (same model, partition, limits), without the
    server-only checks (a command line tool listens on nothing)."""
    from .settings import Settings

    drop = ("HOST", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "ML_SERVER_BASIC_AUTH_USER", "ML_SERVER_BASIC_AUTH_PASS")
    return Settings.from_env({k: v for k, v in os.environ.items() if k not in drop})


def job_main(path: str) -> int:
    """``python -m ml_backend.bulk --job MODEL_DIR/<p>/jobs/<id>.json``: the backend's background job
    (``POST /preannotate/<project>``); progress and the manifest's counts go into the job record."""
    from .retrain import JobRecord

    job = JobRecord(Path(path))
    job.update(state="running", started=time.time(), pid=os.getpid())
    rec = job.rec
    print(f"preannotate job {rec['id']} for project {rec['project']} started (pid {os.getpid()})", flush=True)
    manifest: Optional[Manifest] = None
    try:
        settings = dataclasses.replace(_env_settings(), model_dir=str(rec.get("model_dir") or _env_settings().model_dir))
        o = rec.get("preannotate") or {}
        opts = Options(mode="online", project=int(rec["project"]), label_config=rec.get("label_config") or None,
                       state_dir=rec.get("state_dir"), select_all=bool(o.get("all")), overwrite=bool(o.get("overwrite")),
                       engine=str(o.get("engine") or "ray"), workers=int(o.get("workers") or 1),
                       chunk=int(o.get("chunk_size") or DEFAULT_CHUNK), explain_base=o.get("explain_base"),
                       progress=True)
        manifest = run(opts, settings, progress_callback=lambda p: job.progress(**p),
                       log=lambda s: print(s, flush=True))
    except BaseException as e:  # noqa: BLE001 - the record must say why, whatever happened
        import traceback

        traceback.print_exc()
        job.update(state="failed", finished=time.time(), error=f"{type(e).__name__}: {e}",
                   progress={**job.rec.get("progress", {}), "stage": "failed"})
        return 1
    counts = {"listed": manifest.listed, "uploaded": manifest.uploaded, "already_predicted": manifest.already_predicted,
              "skipped": sum(manifest.skipped.values()), "skipped_by_reason": dict(manifest.skipped),
              "upload_failed": manifest.upload_failed}
    job.update(state="succeeded" if manifest.finished else "failed", finished=time.time(),
               version=manifest.model_version, error=manifest.error,
               progress={**job.rec.get("progress", {}), **counts, "stage": "done" if manifest.finished else "failed"})
    print(manifest.summary(), flush=True)
    return 0 if manifest.finished else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .settings import SettingsError

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "--job":
        return job_main(argv[1])
    args = build_parser().parse_args(argv)
    try:
        settings = _env_settings()
    except SettingsError as e:
        print(f"safire preannotate: {e}", file=sys.stderr)
        return 2
    offline = bool(args.from_export)
    over: Dict[str, Any] = {}
    if args.url:
        over["label_studio_url"] = args.url.rstrip("/")
    if args.api_key:
        over["label_studio_api_key"] = args.api_key
    if over:
        settings = dataclasses.replace(settings, **over)
    opts = Options(mode="offline" if offline else "online", project=args.project, export_path=args.from_export,
                   label_config_path=args.label_config, out=args.out, state_dir=args.state,
                   manifest_path=args.manifest, select_all=args.select_all, overwrite=args.overwrite,
                   engine=args.engine, workers=max(1, args.workers), cpus_per_worker=args.cpus_per_worker,
                   gpus_per_worker=args.gpus_per_worker, ray_address=args.ray_address,
                   object_store_mb=args.object_store_mb, batch_size=max(1, args.batch_size), chunk=args.chunk_size,
                   page_size=args.page_size, shards=args.shards, explain_base=args.backend_url,
                   progress=not args.no_progress, limit=max(0, args.limit))
    try:
        manifest = run(opts, settings)
    except BulkError as e:
        print(f"safire preannotate: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # Label Studio errors, config errors
        print(f"safire preannotate: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(manifest.summary())
    return 0 if manifest.finished else 1


if __name__ == "__main__":
    sys.exit(main())
