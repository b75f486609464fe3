"""Use each (expensive) training image for several crops: a reader wrapper and the batch order that
makes it cheap.

Generating one synthetic composite costs about 0.12 s of one CPU core, while the native model's
forward and backward pass on a 256-384 px crop costs well under a millisecond on a GPU: a GPU run fed
by freshly generated composites waits on the CPU almost all the time. ``--repeat R`` serves every
composite ``R`` times, each time as a different random crop with different point prompts (the
training set's randomness is keyed by the item index, and the ``R`` uses have different indices),
so the same CPU work feeds ``R`` times as many samples.

:class:`RepeatReader` maps index ``i`` to item ``i // R`` of the wrapped reader and keeps the last
``cache_size`` items in a per-process cache. :class:`RepeatBatchOrder` orders the indices so that
the ``R`` uses of a group of ``batch_size`` items fall into ``R`` batches that the DataLoader hands
to the same worker (it deals batches to its workers in turn: batch ``b`` goes to worker
``b % workers``), so each item is generated once per epoch. The groups are visited in a seeded random
order per epoch. Any other order stays correct, only slower (cache misses regenerate the item).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class RepeatReader:
    """``repeat`` uses of each item of ``reader``: ``len = len(reader) * repeat``; item ``i`` is
    ``reader[i // repeat]``, cached (``cache_size`` items, least recently used dropped)."""

    def __init__(self, reader: Sequence[Any], repeat: int, cache_size: int = 64) -> None:
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        self.reader, self.repeat, self.cache_size = reader, int(repeat), max(1, int(cache_size))
        self._cache: "OrderedDict[int, Any]" = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.reader) * self.repeat

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self):
            raise IndexError(i)
        key = i // self.repeat
        item = self._cache.get(key)
        if item is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return item
        self.misses += 1
        item = self.reader[key]
        self._cache[key] = item
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return item

    def __getstate__(self):  # each DataLoader worker starts with an empty cache
        d = dict(self.__dict__)
        d["_cache"] = OrderedDict()
        return d


class RepeatBatchOrder(Sampler):
    """Index order over a :class:`RepeatReader` of ``num_items`` (already multiplied by
    ``repeat``) indices for a DataLoader with ``batch_size`` and ``workers``.

    Batch ``b`` (worker ``w = b % W``, that worker's round ``r = b // W``) holds use ``r % R`` of
    item group ``(r // R) * W + w`` (``batch_size`` items, from a seeded permutation of the items).
    Every index appears exactly once per epoch.
    """

    def __init__(self, num_items: int, repeat: int, batch_size: int, workers: int, seed: int = 0) -> None:
        if repeat < 1 or batch_size < 1:
            raise ValueError("repeat and batch_size must be >= 1")
        self.repeat, self.batch_size, self.workers = int(repeat), int(batch_size), max(1, int(workers))
        self.num_base = int(num_items) // self.repeat
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_base * self.repeat

    def __iter__(self) -> Iterator[int]:
        R, B, W = self.repeat, self.batch_size, self.workers
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_base)
        groups = -(-self.num_base // B)
        supers = -(-groups // W)  # a "super round": W groups, each used R times
        for s in range(supers):
            for rep in range(R):
                for w in range(W):
                    g = s * W + w
                    if g >= groups:
                        continue
                    for base in perm[g * B:(g + 1) * B]:
                        yield int(base) * R + rep
