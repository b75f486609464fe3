"""A thread-safe LRU cache capped in bytes, with optional TTL and single-flight computation.

Used for image embeddings: concurrent first requests for the same key compute the value once; the
others wait for it. Values must report their size through ``size_of`` (default: tensors' bytes).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Optional, Tuple, TypeVar

import torch

V = TypeVar("V")


def tensor_bytes(value: Any) -> int:
    """Bytes held by a tensor, or by the tensors in a dataclass / tuple / dict (recursively)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if hasattr(value, "__dataclass_fields__"):
        return sum(tensor_bytes(getattr(value, f)) for f in value.__dataclass_fields__)
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    entries: int = 0
    bytes: int = 0
    max_bytes: int = 0


class _Pending:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: Optional[BaseException] = None


class LRUCache(Generic[V]):
    """LRU by bytes. ``max_bytes <= 0`` disables storing (values are still computed once per call)."""

    def __init__(self, max_bytes: int, ttl_seconds: Optional[float] = None,
                 size_of: Callable[[Any], int] = tensor_bytes) -> None:
        self.max_bytes = int(max_bytes)
        self.ttl = ttl_seconds if ttl_seconds and ttl_seconds > 0 else None
        self.size_of = size_of
        self._lock = threading.Lock()
        self._items: "OrderedDict[str, Tuple[V, int, float]]" = OrderedDict()
        self._pending: Dict[str, _Pending] = {}
        self._bytes = 0
        self._stats = CacheStats(max_bytes=self.max_bytes)

    def _expired(self, stamp: float) -> bool:
        return self.ttl is not None and time.monotonic() - stamp > self.ttl

    def get(self, key: str) -> Optional[V]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if self._expired(item[2]):
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return item[0]

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def _drop(self, key: str) -> None:
        _, size, _ = self._items.pop(key)
        self._bytes -= size

    def put(self, key: str, value: V) -> None:
        size = self.size_of(value)
        with self._lock:
            if key in self._items:
                self._drop(key)
            if size > self.max_bytes:
                return
            self._items[key] = (value, size, time.monotonic())
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                oldest = next(iter(self._items))
                self._drop(oldest)
                self._stats.evictions += 1

    def get_or_compute(self, key: str, compute: Callable[[], V]) -> Tuple[V, bool]:
        """Return ``(value, was_cached)``; concurrent callers of one missing key compute it once."""
        with self._lock:
            item = self._items.get(key)
            if item is not None and not self._expired(item[2]):
                self._items.move_to_end(key)
                self._stats.hits += 1
                return item[0], True
            if item is not None:
                self._drop(key)
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = _Pending()
                self._stats.misses += 1
            else:
                self._stats.hits += 1
        if not owner:
            pending.event.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value, True
        try:
            value = compute()
            pending.value = value
            self.put(key, value)
            return value, False
        except BaseException as e:
            pending.error = e
            raise
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.event.set()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            s = CacheStats(**vars(self._stats))
            s.entries = len(self._items)
            s.bytes = self._bytes
            return s
