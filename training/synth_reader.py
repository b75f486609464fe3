"""Synthetic samples generated on demand: a dataset reader with no files behind it.

``open_dataset("synth:train?n=200000&seed=7&sources=1-4&authentic=0.2&size=320-640")`` returns a
:class:`SynthReader`; item ``i`` is ``training.synth.generate_sample(i, seed, K_i, pool)`` for the
photo split named after ``synth:`` (``train`` never sees held-out photos). Generation runs in the
DataLoader workers, so ``--workers N`` spreads it over N cores: this is how the GPU recipe
(``scripts/train_native_gpu.sh``) feeds a GPU without writing a dataset first. Items are a
deterministic function of the spec and the index, like ``safire synth`` output.
"""

from __future__ import annotations

from typing import Dict, Tuple
from urllib.parse import parse_qs

from .datasets import DatasetError, Item

PREFIX = "synth:"


def parse_spec(spec: str) -> Dict:
    """``synth:SPLIT?n=N&seed=S&sources=A-B&authentic=F&size=LO-HI`` -> keyword dict."""
    if not spec.startswith(PREFIX):
        raise DatasetError(f"not a synth spec: {spec!r}")
    body = spec[len(PREFIX):]
    split, _, query = body.partition("?")
    q = {k: v[-1] for k, v in parse_qs(query, strict_parsing=bool(query)).items()}
    unknown = set(q) - {"n", "seed", "sources", "authentic", "size"}
    if unknown:
        raise DatasetError(f"unknown synth spec keys {sorted(unknown)} in {spec!r}")

    def rng2(text: str) -> Tuple[int, int]:
        a, _, b = text.partition("-")
        return int(a), int(b or a)

    try:
        return {
            "split": split or "train",
            "n": int(q.get("n", 100000)),
            "seed": int(q.get("seed", 0)),
            "sources": rng2(q.get("sources", "1-4")),
            "authentic_fraction": float(q["authentic"]) if "authentic" in q else 0.2,
            "size_range": rng2(q.get("size", "320-640")),
        }
    except ValueError as e:
        raise DatasetError(f"bad synth spec {spec!r}: {e}") from None


class SynthReader:
    """``n`` synthetic items generated on demand (see the module docstring)."""

    def __init__(self, split: str = "train", n: int = 100000, seed: int = 0, sources: Tuple[int, int] = (1, 4),
                 authentic_fraction: float = 0.2, size_range: Tuple[int, int] = (320, 640)) -> None:
        if n < 1:
            raise DatasetError("a synth reader needs n >= 1")
        self.split, self.n, self.seed = split, int(n), int(seed)
        self.sources, self.authentic_fraction, self.size_range = tuple(sources), authentic_fraction, tuple(size_range)
        self._pool = None  # loaded lazily, once per (worker) process

    @classmethod
    def from_spec(cls, spec: str) -> "SynthReader":
        return cls(**parse_spec(spec))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Item:
        from .photos import PhotoPool
        from .synth import choose_num_sources, generate_sample

        if not 0 <= i < self.n:
            raise IndexError(i)
        if self._pool is None:
            self._pool = PhotoPool.load(self.split)
        k = choose_num_sources(self.seed, i, self.sources[0], self.sources[1], self.authentic_fraction)
        s = generate_sample(i, self.seed, k, self._pool, self.size_range, split=self.split)
        return Item(name=s.name, image=s.image, labels=s.sources, num_sources=s.num_sources, meta=s.meta)

    def __getstate__(self):  # DataLoader workers load their own photo pool
        d = dict(self.__dict__)
        d["_pool"] = None
        return d
