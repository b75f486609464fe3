"""The books of a ``safire preannotate`` run: its error, defaults, the manifest (what happened to every
listed task), the state folder (``STATE/lock`` for one run at a time, ``STATE/journal.jsonl`` of
uploads and skips, ``STATE/manifest.json``) and the progress bar.

Imported by every other ``bulk*`` module; imports none of them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

DEFAULT_CHUNK = 100  # predictions per import request
DEFAULT_PAGE = 500  # tasks per listing request
SKIP_REASONS = ("unreadable_image", "too_large", "not_found", "fetch_error", "bad_task", "internal_error")


class BulkError(RuntimeError):
    """The run cannot start or go on (configuration, Label Studio refuses, lock held, ...)."""


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
