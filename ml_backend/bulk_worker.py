"""One task -> one outcome, where the model is (this process or a Ray actor).

:class:`TaskPredictor` runs the backend's own pre-annotation
(:meth:`ml_backend.backend.Backend.preannotate`) outside the HTTP server, one model per process, and
turns a failure into a skip reason (:data:`ml_backend.bulk_state.SKIP_REASONS`) instead of stopping
the run.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Mapping

from .bulk_state import BulkError



def _skip_reason(e: BaseException) -> str:
    from safire.io import ImageLoadError

    from .fetch_errors import FetchError, TooLargeError

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
            from .fetch_errors import log_text

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

