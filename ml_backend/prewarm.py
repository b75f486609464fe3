"""Prewarming: compute image embeddings ahead of the annotator (``POST /prewarm``), in one
background thread, so that the first click on a task finds its embedding cached.

A bounded queue (:data:`PREWARM_QUEUE` items) holds ``(project, url, task id)``; an image already
cached or already queued is not queued again; a full queue skips the rest and says how many. The
worker computes embeddings at low priority (clicks and pre-annotations go first through the
backend's :class:`~ml_backend.runtime.PriorityGate`); a failed fetch or decode is counted and
logged, never raised.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from safire.io import ImageLoadError

from .fetch import FetchError, display_url, log_text

log = logging.getLogger("safire.backend")

PREWARM_QUEUE = 1000


class Prewarmer:
    """The prewarm queue and its worker thread, for one :class:`~ml_backend.backend.Backend`.

    It uses the backend's ``model(project)``, ``embedding(loaded, url, task_id, high)``,
    ``cached_embedding(predictor, key)``, ``image_key(url)`` and ``metrics``.
    """

    def __init__(self, backend: Any, maxsize: int = PREWARM_QUEUE) -> None:
        self.backend = backend
        self.queue: "queue.Queue[Tuple[Optional[str], str, Any, str]]" = queue.Queue(maxsize)
        self._pending: set = set()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def pending(self) -> int:
        """Items waiting in the queue (not counting the one being computed)."""
        return self.queue.qsize()

    def submit(self, project: Optional[str], items: List[Tuple[str, Any]]) -> Dict[str, Any]:
        """Queue ``(url, task_id)`` items of ``project``; returns the counts the route answers."""
        b = self.backend
        loaded = b.model(project)
        queued = cached = skipped = 0
        for url, task_id in items:
            key = b.image_key(url)
            pkey = f"{project}|{key}"
            if b.cached_embedding(loaded.predictor, key) is not None:
                cached += 1
                continue
            with self._lock:
                if pkey in self._pending:
                    cached += 1
                    continue
                try:
                    self.queue.put_nowait((project, url, task_id, pkey))
                except queue.Full:
                    skipped += 1
                    continue
                self._pending.add(pkey)
                queued += 1
        if queued:
            self._ensure_worker()
        b.metrics.count("prewarm_queued", queued)
        return {"queued": queued, "already_cached": cached, "skipped_queue_full": skipped,
                "pending": self.queue.qsize()}

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="safire-prewarm", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        b = self.backend
        while True:
            project, url, task_id, pkey = self.queue.get()
            try:
                loaded = b.model(project)
                b.embedding(loaded, url, task_id, high=False)
                b.metrics.count("prewarm_done")
            except (FetchError, ImageLoadError) as e:
                b.metrics.count("prewarm_failed")
                log.warning("prewarm of %s (task %s) failed: %s", display_url(url), log_text(task_id),
                            log_text(str(e), 500))
            except Exception:
                b.metrics.count("prewarm_failed")
                log.exception("prewarm of %s (task %s) failed", display_url(url), log_text(task_id))
            finally:
                with self._lock:
                    self._pending.discard(pkey)
                self.queue.task_done()

    def wait(self, timeout: float = 30.0) -> bool:
        """Block until nothing is pending (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.01)
        return False
