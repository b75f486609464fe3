"""Where a ``safire preannotate`` run's tasks come from and where its outcomes go.

In: the project's tasks listed in task-id ranges (:func:`shard_ranges`; keyset pages of
``GET /api/tasks``, :func:`list_shard`) and selected (:func:`select`: ``predict``, or why not).
Out: :class:`Sink`, which takes outcomes in any order, uploads predictions in chunks (checking Label
Studio again right before each upload, so no task gets two predictions of one version) or keeps them
for the offline file, and writes the journal and the manifest's counts.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .bulk_state import DEFAULT_CHUNK, DEFAULT_PAGE, BulkError, Manifest, Progress, State



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

