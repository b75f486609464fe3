"""The native-resolution variants: padding instead of resampling, token grids that follow the image,
one coordinate frame for points and grids, tiles, the pooled-grid partition, native training crops."""

import numpy as np
import pytest
import torch

from safire import SafirePredictor, build_safire, partition
from safire.config import VARIANTS
from safire.transforms import native_logits_to_image, padded_hw
from training.prompt_data import PAD_RGB, PromptSampleConfig, PromptTrainingSet, native_crop

NATIVE = [name for name, cfg in VARIANTS.items() if cfg.resize == "pad"]


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return build_safire("native_micro")


def test_registry_has_native_variants_and_the_default_is_native():
    assert {"native", "native_micro"} <= set(NATIVE)
    from safire.build import DEFAULT_CHECKPOINT

    assert "native" in DEFAULT_CHECKPOINT.name


@pytest.mark.parametrize("hw", [(37, 53), (64, 64), (100, 30)])
def test_token_grid_follows_the_padded_image(micro, hw):
    pred = SafirePredictor(micro, cache_bytes=0)
    img = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    emb = pred.set_image(img)
    ph, pw = padded_hw(hw, 16)
    assert emb.native and emb.orig_hw == hw
    assert tuple(emb.embedding.shape[-2:]) == (ph // 16, pw // 16)
    click = pred.predict(np.array([[hw[1] / 2, hw[0] / 2]]), np.array([1]))
    assert click.mask.shape == hw and click.low_res_logits.shape == (ph // 4, pw // 4)


def test_points_are_original_pixels(micro):
    pred = SafirePredictor(micro, cache_bytes=0)
    emb = pred.set_image(np.zeros((40, 90, 3), np.uint8))
    pts = np.array([[3.5, 7.25], [89.0, 39.0]], np.float32)
    assert np.array_equal(emb.to_model(pts, micro.config.img_size), pts)


def test_point_and_grid_encodings_share_one_frame(micro):
    """A point at a token centre gets exactly that token's dense positional encoding."""
    h, w, s = 3, 5, 16
    dense = micro.dense_pe((h, w))[0]  # C x h x w
    pe = micro.prompt_encoder.pe_layer
    for i, j in [(0, 0), (2, 4), (1, 3)]:
        x, y = (j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5  # SAM adds half a pixel to points
        pt = pe.forward_with_coords(torch.tensor([[[x + 0.5, y + 0.5]]]), micro.prompt_encoder.input_image_size)
        assert torch.allclose(pt[0, 0], dense[:, i, j], atol=1e-5)
    # a 2x pooled grid is the same frame at twice the stride
    pooled = micro.dense_pe((2, 3), stride=32)[0]
    assert torch.allclose(pooled[:, 0, 0], pe._pe_encoding(torch.tensor([[16 / micro.config.pe_ref] * 2]))[0], atol=1e-5)


def test_tiles_cover_the_whole_grid(micro):
    cfg = micro.config
    x = torch.rand(1, 3, 200, 330) * 255
    assert 200 * 330 > cfg.tile_pixels
    with torch.inference_mode():
        tiled = micro.encode(x)
        assert tiled.shape[-2:] == (13, 21)
        assert torch.isfinite(tiled).all()
        # every token was written by some tile (an unwritten token would stay exactly 0 everywhere)
        assert (tiled.abs().sum(1) > 0).all()
        # below the budget the image is encoded whole
        small = x[..., :64, :96]
        assert torch.equal(micro.encode(small), micro.image_encoder(micro.normalize(small)))


def test_native_logits_are_cropped_not_squashed():
    lo = torch.full((1, 12, 16), -5.0)
    lo[0, :, :5] = 5.0  # left 20 px of a 48x64 padded frame
    full = native_logits_to_image(lo, (45, 61))
    assert full.shape == (1, 45, 61)
    assert (full[0, :, :18] > 0).all() and (full[0, :, 22:] < 0).all()


@pytest.mark.parametrize("k", ["auto", 1, 2, 3])
def test_native_partition_shapes(micro, k):
    pred = SafirePredictor(micro, cache_bytes=0)
    img = np.random.default_rng(1).integers(0, 256, (150, 260, 3), dtype=np.uint8)
    res = partition(pred, img, k, grid_size=6)
    assert res.labels.shape == (150, 260) and res.heatmap.shape == (150, 260)
    assert res.probs.shape == (res.num_sources, 150, 260)
    assert 1 <= res.num_sources <= (4 if k == "auto" else k)
    assert np.allclose(res.probs.sum(0), 1, atol=1e-4)


def test_native_crop_never_resamples():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    lab = (rng.random((70, 90)) > 0.5).astype(np.uint8)
    c, l = native_crop(img, lab, 64, rng)
    hits = [(y, x) for y in range(7) for x in range(27) if np.array_equal(img[y : y + 64, x : x + 64], c)]
    assert len(hits) == 1 and np.array_equal(lab[hits[0][0] : hits[0][0] + 64, hits[0][1] : hits[0][1] + 64], l)
    # smaller than the crop: padded with the pixel mean and ignored labels
    c, l = native_crop(img[:40, :50], lab[:40, :50], 64, rng)
    assert c.shape == (64, 64, 3) and (l[40:] == 255).all() and (c[40:, :] == np.array(PAD_RGB, np.uint8)).all()


def test_native_training_items(micro):
    class Item:
        def __init__(self, image, labels):
            self.image, self.labels = image, labels

    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    lab = np.zeros((90, 120), np.uint8)
    lab[20:60, 30:80] = 1
    cfg = PromptSampleConfig(img_size=64, mask_size=16, embed_size=4, native=True, seed=0)
    item = PromptTrainingSet([Item(img, lab)], cfg)[0]
    assert item["image"].shape == (3, 64, 64) and item["targets"].shape == (6, 16, 16)
    assert item["sources"].shape == (4, 4)
    logits, scores, emb = micro.train()(item["image"][None], item["points"][None], torch.ones(1, 6))
    micro.eval()
    assert logits.shape == (1, 6, 16, 16) and emb.shape == (1, 32, 4, 4)
