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

This module holds the run (:func:`run`, :class:`Options`) and the command line; the listing and the
uploads are in :mod:`ml_backend.bulk_io`, the manifest, journal, lock and progress bar in
:mod:`ml_backend.bulk_state`, one task's prediction in :mod:`ml_backend.bulk_worker`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

# the run's parts live in sibling modules (listing and uploads: bulk_io; manifest, journal, lock and
# progress: bulk_state; one task's prediction: bulk_worker); __all__'s names stay importable from here
from .bulk_io import Sink, _client, list_shard, shard_ranges  # noqa: F401 - list_shard re-exported
from .bulk_state import DEFAULT_CHUNK, DEFAULT_PAGE, BulkError, Manifest, Progress, State
from .bulk_worker import TaskPredictor

__all__ = ["BulkError", "Manifest", "TaskPredictor", "list_shard", "main", "run", "shard_ranges"]


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
