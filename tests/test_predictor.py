import threading

import numpy as np
import pytest
import torch

from safire.cache import LRUCache
from safire.predictor import SafirePredictor
from safire.transforms import points_to_model, sample_logits_at, squash_resize, upsample_logits


def test_predict_shapes_and_original_resolution(micro_model):
    p = SafirePredictor(micro_model)
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    p.set_image(img)
    out = p.predict(np.array([[10, 20], [60, 40]]), np.array([1, 0]))
    assert out.prob.shape == (50, 70) and out.mask.dtype == bool and out.prob.dtype == np.float32
    assert out.low_res_logits.shape == (32, 32)
    assert np.array_equal(out.mask, out.prob > 0.5)
    box = p.predict(box=(5, 5, 40, 30))
    both = p.predict(np.array([[20, 20]]), np.array([1]), box=(5, 5, 40, 30))
    assert box.prob.shape == both.prob.shape == (50, 70)


def test_negative_point_changes_the_answer(micro_model):
    p = SafirePredictor(micro_model)
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    p.set_image(img)
    a = p.predict(np.array([[10, 10]]), np.array([1]))
    b = p.predict(np.array([[10, 10], [50, 50]]), np.array([1, 0]))
    assert not np.allclose(a.low_res_logits, b.low_res_logits)


def test_predict_errors(micro_model):
    p = SafirePredictor(micro_model)
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(np.array([[1, 1]]), np.array([1]))
    p.set_image(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        p.predict()
    with pytest.raises(ValueError, match="point_labels"):
        p.predict(np.array([[1, 1], [2, 2]]), np.array([1]))
    with pytest.raises(ValueError, match="uint8"):
        p.set_image(np.zeros((10, 10, 3), np.float32))


def test_embedding_cache_hits_and_is_keyed_by_content(micro_model):
    p = SafirePredictor(micro_model)
    a = np.full((40, 40, 3), 10, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 11
    e1, c1 = p.embed(a)
    e2, c2 = p.embed(a.copy())
    e3, c3 = p.embed(b)
    assert (c1, c2, c3) == (False, True, False)
    assert e1 is e2 and e3 is not e1


def test_concurrent_first_requests_compute_once(micro_model):
    calls = []
    p = SafirePredictor(micro_model)
    orig = p._encode

    def slow_encode(image, key):
        calls.append(key)
        threading.Event().wait(0.2)
        return orig(image, key)

    p._encode = slow_encode
    img = np.full((30, 30, 3), 7, np.uint8)
    results = []
    threads = [threading.Thread(target=lambda: results.append(p.embed(img)[0])) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1 and len({id(r) for r in results}) == 1


def test_lru_cache_byte_cap_ttl_and_errors():
    c = LRUCache(max_bytes=3 * 400)
    for i in range(5):
        c.put(str(i), torch.zeros(100))  # 400 bytes each
    assert c.stats().entries == 3 and c.get("0") is None and c.get("4") is not None
    c.get("2")
    c.put("5", torch.zeros(100))
    assert c.get("3") is None and c.get("2") is not None  # LRU, not FIFO
    t = LRUCache(max_bytes=10_000, ttl_seconds=0.05)
    t.put("a", torch.zeros(1))
    threading.Event().wait(0.1)
    assert t.get("a") is None
    with pytest.raises(ZeroDivisionError):
        t.get_or_compute("bad", lambda: 1 / 0)
    v, cached = t.get_or_compute("bad", lambda: torch.ones(1))  # a failure is not cached
    assert not cached


def test_transforms_coordinates_and_sampling():
    pts = points_to_model(np.array([[50, 25]]), (50, 100), 64)
    assert np.allclose(pts, [[32, 32]])
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 20:] = 200
    x = squash_resize(img, 16)
    assert x.shape == (1, 3, 16, 16) and x[0, 0, 0, 0] == 0 and x[0, 0, 0, -1] == 200
    lo = torch.randn(3, 8, 8)
    full = upsample_logits(lo, (32, 32))
    xy = torch.tensor([[0, 0], [5, 7], [31, 31], [16, 3]])
    sampled = sample_logits_at(lo, xy, 32)
    ref = full[:, xy[:, 1], xy[:, 0]]
    assert torch.allclose(sampled, ref, atol=1e-5)
