"""Background retraining jobs: one per project at a time, in a separate process.

``JobManager.submit`` answers in milliseconds: it writes a job record and starts
``python -m ml_backend.retrain --job JOB.json`` as a child process (its own session, so a crash or a
kill never touches the server). The child exports the project from Label Studio, fine-tunes the
project's current model, evaluates before/after and publishes a new version (``ml_backend.models``).

Job records live in ``MODEL_DIR/<project>/jobs/<id>.json`` (written atomically by whoever changes
them) and survive restarts; the log of each job is next to it (``<id>.log``). A record whose
process has died without finishing is reported as failed. Several server processes (gunicorn
workers) coordinate through lock files: one job per project, and at most ``SAFIRE_MAX_JOBS`` jobs
over all projects (:class:`JobLimitError` above it). Projects are Label Studio's numeric ids.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from .models import ModelRegistry, read_current, safe_name

log = logging.getLogger("safire.jobs")

ACTIVE = ("queued", "running")
JOB_MODULES = {"train": "ml_backend.retrain", "preannotate": "ml_backend.bulk"}  # kind -> process module
_PROJECT_ID = re.compile(r"^[1-9][0-9]{0,17}$")


class JobLimitError(RuntimeError):
    """``SAFIRE_MAX_JOBS`` retraining jobs are running already (HTTP 429 in the backend)."""


def project_id(value: Any) -> str:
    """A Label Studio project id as a canonical digit string; ValueError for anything else."""
    s = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not _PROJECT_ID.match(s):
        raise ValueError("the project id must be a positive integer (Label Studio's project id)")
    return s


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _setting(settings: Any, name: str, env: str, default: Any) -> Any:
    if settings is not None and getattr(settings, name, None) not in (None, ""):
        return getattr(settings, name)
    return os.environ.get(env, default)


def _list_setting(settings: Any, name: str, env: str) -> List[str]:
    v = _setting(settings, name, env, "")
    parts = v.split(",") if isinstance(v, str) else list(v or ())
    return [str(p).strip() for p in parts if str(p).strip()]


class JobManager:
    """Queues and tracks retraining jobs.

    Args:
        registry: the server's :class:`ModelRegistry` (gives MODEL_DIR and each project's current
            model, which becomes the parent of the new version).
        settings: the server settings (Label Studio URL, training knobs); environment variables
            are read for whatever it does not define.
    """

    def __init__(self, registry: ModelRegistry, settings: Any = None) -> None:
        self.registry = registry
        if settings is None:
            from .settings import Settings, SettingsError

            try:
                settings = Settings.from_env()
            except SettingsError:  # the raw environment variables are read instead
                settings = None
        self.settings = settings
        self.model_dir = registry.model_dir
        self._procs: Dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # -- files --------------------------------------------------------------------------------------
    def _jobs_dir(self, project: str) -> Path:
        d = self.model_dir / safe_name(project, "project") / "jobs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @contextmanager
    def _project_lock(self, project: str) -> Iterator[None]:
        with open(self._jobs_dir(project) / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def _global_lock(self) -> Iterator[None]:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with open(self.model_dir / ".jobs.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @property
    def max_jobs(self) -> int:
        return max(1, int(_setting(self.settings, "max_jobs", "SAFIRE_MAX_JOBS", 1)))

    def active(self) -> List[Dict[str, Any]]:
        """The queued or running jobs of every project."""
        return [r for r in self.list() if r.get("state") in ACTIVE]

    def _records(self, project: str) -> List[Dict[str, Any]]:
        out = []
        for p in self._jobs_dir(project).glob("*.json"):
            rec = read_json(p)
            if rec:
                out.append(self._refresh(rec, p))
        return sorted(out, key=lambda r: r.get("created", 0))

    def _refresh(self, rec: Dict[str, Any], path: Path) -> Dict[str, Any]:
        """Mark a record failed if its process is gone without a final state."""
        if rec.get("state") in ACTIVE:
            proc = self._procs.get(rec["id"])
            code = proc.poll() if proc is not None else None
            dead = (proc is not None and code is not None) or (proc is None and not pid_alive(rec.get("pid")))
            if dead and time.time() - rec.get("created", 0) > 2:
                latest = read_json(path) or rec  # the child may have finished in the meantime
                if latest.get("state") in ACTIVE:
                    latest["state"] = "failed"
                    latest["finished"] = time.time()
                    latest["error"] = latest.get("error") or (
                        f"the job process exited unexpectedly (exit code {code})" if code is not None
                        else "the job process is gone (server restarted or process killed)")
                    write_json_atomic(path, latest)
                return latest
        return rec

    # -- API ------------------------------------------------------------------------------------------
    def submit(self, project: Any, reason: str = "START_TRAINING", label_config: Optional[str] = None,
               kind: str = "train", options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Queue a job for ``project`` and start it; returns the job record at once.

        ``kind``: ``train`` (retraining, ``python -m ml_backend.retrain``) or ``preannotate`` (bulk
        pre-annotation of the whole project, ``python -m ml_backend.bulk --job``, with ``options``:
        engine, workers, all, overwrite, chunk_size, explain_base). One job of each kind per project
        at a time; ``SAFIRE_MAX_JOBS`` counts both kinds.

        Raises:
            ValueError: ``project`` is not a Label Studio project id (a positive integer).
            JobLimitError: ``SAFIRE_MAX_JOBS`` jobs of other projects are queued or running.
        """
        project = project_id(project)
        if kind not in JOB_MODULES:
            raise ValueError(f"unknown job kind {kind!r}")
        with self._lock, self._global_lock(), self._project_lock(project):
            for rec in reversed(self._records(project)):
                if rec.get("state") in ACTIVE and rec.get("kind", "train") == kind:
                    return {**rec, "already_running": True}
            running = self.active()
            if len(running) >= self.max_jobs:
                raise JobLimitError(
                    f"{len(running)} job(s) already running (SAFIRE_MAX_JOBS={self.max_jobs}): "
                    "try again when one has finished (GET /jobs)")
            job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            jobs_dir = self._jobs_dir(project)
            current = self.registry.get(project)
            s = self.settings
            rec: Dict[str, Any] = {
                "id": job_id,
                "kind": kind,
                "project": project,
                "reason": reason,
                "state": "queued",
                "created": time.time(),
                "started": None,
                "finished": None,
                "progress": {"stage": "queued"},
                "error": None,
                "version": None,
                "parent_version": current.version,
                "parent_checkpoint": current.path,
                "parent_variant": current.model.meta.get("variant"),
                "model_dir": str(self.model_dir),
                "label_studio_url": _setting(s, "label_studio_url", "LABEL_STUDIO_URL", ""),
                "label_config": label_config,
                # the download rules of the server, so the job fetches images exactly like it (no secrets)
                "fetch": {
                    "allowed_hosts": _list_setting(s, "allowed_hosts", "SAFIRE_ALLOWED_HOSTS"),
                    "allowed_networks": _list_setting(s, "allowed_networks", "SAFIRE_ALLOWED_NETWORKS"),
                    "max_image_bytes": int(_setting(s, "max_image_bytes", "SAFIRE_MAX_IMAGE_BYTES", 50 * 2**20)),
                    "max_pixels": int(_setting(s, "max_pixels", "SAFIRE_MAX_PIXELS", 40_000_000)),
                    "fetch_timeout": float(_setting(s, "fetch_timeout", "SAFIRE_FETCH_TIMEOUT", 10.0)),
                },
                "log": str(jobs_dir / f"{job_id}.log"),
                "train": {
                    "steps": int(_setting(s, "train_steps", "SAFIRE_TRAIN_STEPS", 300)),
                    "batch_size": int(_setting(s, "train_batch", "SAFIRE_TRAIN_BATCH", 4)),
                    "trainable": str(_setting(s, "train_trainable", "SAFIRE_TRAIN_TRAINABLE", "adapter+decoder")),
                    "lr": float(_setting(s, "train_lr", "SAFIRE_TRAIN_LR", 1e-4)),
                    "val_fraction": float(_setting(s, "val_fraction", "SAFIRE_VAL_FRACTION", 0.2)),
                    "device": str(_setting(s, "device", "SAFIRE_DEVICE", "cpu")),
                    "threads": int(_setting(s, "train_threads", "SAFIRE_TRAIN_THREADS", 1)),
                    "min_tasks": int(_setting(s, "train_min_tasks", "SAFIRE_TRAIN_MIN_TASKS", 10)),
                    "min_gain": float(_setting(s, "train_min_gain", "SAFIRE_TRAIN_MIN_GAIN", 0.0)),
                    "replay": float(_setting(s, "train_replay", "SAFIRE_TRAIN_REPLAY", 0.5)),
                    "fit_tasks": int(_setting(s, "train_fit_tasks", "SAFIRE_TRAIN_FIT_TASKS", 10)),
                },
            }
            if kind == "preannotate":
                rec["preannotate"] = dict(options or {})
                rec["state_dir"] = str(self.model_dir / safe_name(project, "project") / "preannotate")
            path = jobs_dir / f"{job_id}.json"
            write_json_atomic(path, rec)
            env = dict(os.environ)
            env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
            logf = open(rec["log"], "ab")
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", JOB_MODULES[kind], "--job", str(path)],
                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]),
                )
            except OSError as e:
                rec.update(state="failed", error=f"cannot start the job process: {e}", finished=time.time())
                write_json_atomic(path, rec)
                return rec
            finally:
                logf.close()
            self._procs[job_id] = proc
            rec["pid"] = proc.pid
            latest = read_json(path) or {}
            if latest.get("state", "queued") == "queued":
                write_json_atomic(path, {**rec, **{k: v for k, v in latest.items() if k not in ("pid",)}, "pid": proc.pid})
            log.info("project %s: queued %s job %s (%s), pid %d", project, kind, job_id, reason, proc.pid)
            return rec

    def get(self, project: Any) -> Optional[Dict[str, Any]]:
        """The latest job of ``project`` (None if it never trained)."""
        recs = self._records(project_id(project))
        return recs[-1] if recs else None

    def list(self) -> List[Dict[str, Any]]:
        out = []
        if self.model_dir.is_dir():
            for pdir in sorted(self.model_dir.iterdir()):
                if pdir.is_dir() and not pdir.name.startswith(".") and (pdir / "jobs").is_dir():
                    out.extend(self._records(pdir.name))
        return out

    def wait(self, project: Any, timeout: float = 600.0, poll: float = 0.2) -> Dict[str, Any]:
        """Block until the latest job of ``project`` ends (tests, CLI)."""
        deadline = time.monotonic() + timeout
        while True:
            rec = self.get(project)
            if rec is None or rec.get("state") not in ACTIVE:
                return rec or {}
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {rec['id']} still {rec['state']} after {timeout} s")
            time.sleep(poll)

    def current_version(self, project: Any) -> Optional[str]:
        return read_current(self.model_dir, safe_name(project, "project"))
