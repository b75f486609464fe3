"""The on-demand synthetic reader (``synth:SPLIT?...``) used by the GPU recipe."""

import pickle

import numpy as np
import pytest

from training.datasets import DatasetError, open_dataset
from training.synth_reader import SynthReader, parse_spec


def test_spec_parsing_and_defaults():
    d = parse_spec("synth:val?n=12&seed=3&sources=2-3&authentic=0&size=96-128")
    assert d == {"split": "val", "n": 12, "seed": 3, "sources": (2, 3), "authentic_fraction": 0.0,
                 "size_range": (96, 128)}
    assert parse_spec("synth:train")["n"] == 100000
    with pytest.raises(DatasetError):
        parse_spec("synth:train?bogus=1")
    with pytest.raises(DatasetError):
        parse_spec("synth:train?n=abc")


def test_items_are_deterministic_and_follow_the_spec():
    r = open_dataset("synth:val?n=4&seed=5&sources=2-2&authentic=0&size=96-128")
    assert isinstance(r, SynthReader) and len(r) == 4
    a, b = r[1], pickle.loads(pickle.dumps(r))[1]  # a DataLoader worker gets a pickled copy
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.num_sources == 2 and a.image.shape[:2] == a.labels.shape
    assert 96 <= max(a.image.shape[:2]) <= 128
    with pytest.raises(IndexError):
        r[4]
