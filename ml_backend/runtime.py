"""Server plumbing shared by the routes and :class:`ml_backend.backend.Backend`: the compute gate
(clicks before background work), per-key locks, request metrics, and the small pure helpers that
parse request values (project ids, label configs) and shape job records for the API.

Nothing here touches the model or Label Studio; every function is pure or thread-safe.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import Counter, defaultdict, deque
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
from werkzeug.exceptions import BadRequest

from .fetch import log_text
from .label_config import LabelConfigError, LabelConfigSpec, parse_label_config

_PROJECT_ID = re.compile(r"^\s*([1-9][0-9]{0,17})(?:\.[0-9]{1,20})?\s*$")
PARTITION_MAP_BYTES = 256 * 2**20  # per-source maps of one partition (about 20 bytes per source and pixel)
_JOB_FIELDS = ("id", "kind", "project", "reason", "state", "created", "started", "finished", "progress", "error",
               "version", "parent_version", "already_running", "outcome", "decision", "metrics", "fit", "data")



# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------


def project_key(value: Any) -> Optional[str]:
    """``"12.1795310459"`` / ``12`` / ``{"id": 12}`` -> ``"12"``; None or empty -> None.

    Raises:
        BadRequest: anything else (project ids are Label Studio's positive integers).
    """
    if isinstance(value, Mapping):
        value = value.get("id")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        m = _PROJECT_ID.match(str(value))
        if m:
            return m.group(1)
    raise BadRequest(f"invalid project id {log_text(value, 40)}: Label Studio project ids are positive integers")


def work_hw(orig_hw: Tuple[int, int], max_sources: int, budget: int = PARTITION_MAP_BYTES) -> Tuple[int, int]:
    """Resolution at which a partition keeps its per-source maps: the original size when K float32
    maps (about 20 bytes per source and pixel with the combine step's temporaries) fit ``budget``,
    else the largest size of the same aspect ratio that does."""
    h, w = int(orig_hw[0]), int(orig_hw[1])
    limit = max(1, budget // (20 * max(2, int(max_sources))))
    if h * w <= limit:
        return h, w
    f = math.sqrt(limit / (h * w))
    wh, ww = max(1, int(h * f)), max(1, int(w * f))
    return wh, max(1, min(ww, limit // wh))  # a very thin image: the short side stays >= 1


def embedding_key(url: str) -> str:
    return "url:" + hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@lru_cache(maxsize=128)
def _parse_cached(xml: str) -> LabelConfigSpec:
    return parse_label_config(xml)


def parse_config(xml: Any) -> LabelConfigSpec:
    """:func:`parse_label_config` with a cache (Label Studio re-sends the same config every round)."""
    if not isinstance(xml, str):
        raise LabelConfigError(["the label config is missing or not a string"])
    return _parse_cached(xml)


def config_size_problem(xml: Any, limit: int) -> Optional[str]:
    if isinstance(xml, str) and len(xml) > limit // 4 and len(xml.encode("utf-8", "surrogatepass")) > limit:
        return (f"the label config is {len(xml.encode('utf-8', 'surrogatepass'))} bytes, above "
                f"SAFIRE_MAX_LABEL_CONFIG_BYTES ({limit})")
    return None


def _explicit(xml: str, attr: str) -> bool:
    return re.search(rf"\b{attr}\s*=", xml, re.IGNORECASE) is not None


class PriorityGate:
    """At most ``slots`` model computations at once; high-priority waiters (clicks) go first."""

    def __init__(self, slots: int) -> None:
        self.slots = max(1, int(slots))
        self._cond = threading.Condition()
        self._free = self.slots
        self._waiting = [0, 0]  # low, high

    @contextmanager
    def __call__(self, high: bool) -> Iterator[None]:
        with self._cond:
            self._waiting[high] += 1
            try:
                while self._free <= 0 or (not high and self._waiting[1] > 0):
                    self._cond.wait()
            finally:
                self._waiting[high] -= 1
            self._free -= 1
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()

    def stats(self) -> Dict[str, int]:
        with self._cond:
            return {"slots": self.slots, "busy": self.slots - self._free,
                    "waiting_clicks": self._waiting[1], "waiting_background": self._waiting[0]}


class KeyedLocks:
    """One lock per key, created on demand and dropped when unused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: Dict[str, List[Any]] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        with self._lock:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    self._locks.pop(key, None)


class Metrics:
    """Thread-safe request counters and latency samples per endpoint."""

    def __init__(self, samples: int = 2048) -> None:
        self._lock = threading.Lock()
        self._samples = samples
        self.started = time.time()
        self.requests: Dict[str, Counter] = defaultdict(Counter)
        self.latency: Dict[str, Deque[float]] = defaultdict(lambda: deque(maxlen=self._samples))
        self.counters: Counter = Counter()
        self.stage_latency: Dict[str, Deque[float]] = defaultdict(lambda: deque(maxlen=self._samples))

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[endpoint][str(status)] += 1
            self.latency[endpoint].append(seconds)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def stage(self, name: str, seconds: float) -> None:
        with self._lock:
            self.stage_latency[name].append(seconds)

    @staticmethod
    def _summary(samples: Deque[float]) -> Dict[str, Any]:
        if not samples:
            return {"n": 0}
        a = np.asarray(samples, dtype=np.float64) * 1000
        return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 1),
                "p95_ms": round(float(np.percentile(a, 95)), 1), "max_ms": round(float(a.max()), 1)}

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            endpoints = {}
            for ep, counts in sorted(self.requests.items()):
                endpoints[ep] = {"count": int(sum(counts.values())), "by_status": dict(counts),
                                 "latency": self._summary(self.latency[ep])}
            return {"uptime_seconds": round(time.time() - self.started, 1), "endpoints": endpoints,
                    "counters": dict(self.counters),
                    "stages": {k: self._summary(v) for k, v in sorted(self.stage_latency.items())}}


_URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")
_PATH_RE = re.compile(r"(?<![\w/])/(?:[\w.@+-]+/)+[\w.@+-]*")


def _scrub(text: str) -> str:
    """A job error message without URLs or file system paths (they stay in the job's log)."""
    return _PATH_RE.sub("<path>", _URL_RE.sub("<url>", text))


def _job_view(rec: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """What the API shows of a job record: state and progress, never paths, URLs or the config."""
    if rec is None:
        return None
    out = {k: rec[k] for k in _JOB_FIELDS if k in rec}
    if isinstance(out.get("error"), str):
        out["error"] = _scrub(out["error"])[:500]
    if isinstance(out.get("progress"), Mapping):
        out["progress"] = {k: v for k, v in out["progress"].items() if not isinstance(v, str) or k == "stage"}
    return out
