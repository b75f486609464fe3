"""training.repeat: every index once per epoch, and each item generated once per epoch when the
DataLoader deals batches to its workers in turn."""

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from training.repeat import RepeatBatchOrder, RepeatReader


class CountingReader:
    """Item k -> (k, how many times this process has computed item k)."""

    def __init__(self, n):
        self.n, self.calls = n, collections.Counter()

    def __len__(self):
        return self.n

    def __getitem__(self, k):
        self.calls[k] += 1
        return k, self.calls[k]


@pytest.mark.parametrize("n,repeat,batch,workers", [(40, 3, 4, 2), (37, 2, 5, 3), (10, 1, 4, 1), (64, 4, 8, 0)])
def test_order_is_a_permutation(n, repeat, batch, workers):
    order = list(RepeatBatchOrder(n * repeat, repeat, batch, workers, seed=1))
    assert sorted(order) == list(range(n * repeat))
    s2 = RepeatBatchOrder(n * repeat, repeat, batch, workers, seed=1)
    s2.set_epoch(1)
    assert list(s2) != order and sorted(s2) == sorted(order)


def test_reader_maps_and_caches():
    base = CountingReader(5)
    r = RepeatReader(base, 3, cache_size=2)
    assert len(r) == 15
    assert [r[i][0] for i in range(15)] == [i // 3 for i in range(15)]
    assert base.calls == {k: 1 for k in range(5)} and r.hits == 10 and r.misses == 5
    with pytest.raises(IndexError):
        r[15]


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_each_item_generated_once_per_epoch_with_workers(workers):
    n, repeat, batch = 48, 4, 4
    reader = RepeatReader(CountingReader(n), repeat, cache_size=batch)
    sampler = RepeatBatchOrder(len(reader), repeat, batch, workers, seed=3)
    loader = DataLoader(reader, batch_size=batch, sampler=sampler, num_workers=workers,
                        collate_fn=lambda b: b)
    seen = collections.Counter()
    for b in loader:
        for key, count in b:
            assert count == 1, f"item {key} was generated {count} times"
            seen[key] += 1
    assert seen == {k: repeat for k in range(n)}


def test_training_rng_differs_between_uses():
    from training.prompt_data import PromptSampleConfig, PromptTrainingSet

    class Img:
        def __init__(self, k):
            rng = np.random.default_rng(k)
            self.image = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
            self.labels = np.zeros((96, 96), np.uint8)
            self.labels[:, 48:] = 1

    class R:
        def __len__(self):
            return 2

        def __getitem__(self, k):
            return Img(k)

    cfg = PromptSampleConfig(img_size=64, mask_size=16, embed_size=4, native=True)
    ts = PromptTrainingSet(RepeatReader(R(), 2), cfg)
    a, b = ts[0], ts[1]  # two uses of item 0
    assert not (torch.equal(a["image"], b["image"]) and torch.equal(a["points"], b["points"]))
