
import numpy as np
import pytest
import torch

from safire.build import build_safire, infer_variant
from safire.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from safire.config import VARIANTS
from safire.modeling import Safire, highpass_fft

from conftest import FIXTURES


def _official_keys():
    out = {}
    with open(f"{FIXTURES}/safire_vit_b_state_dict.txt") as f:
        for line in f:
            name, shape = line.strip().split(" ", 1)
            out[name] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return out


@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    return Safire(VARIANTS["vit_b"])


def test_vit_b_state_dict_matches_official_key_list(vit_b):
    expected = _official_keys()
    assert len(expected) == 348
    got = {k: tuple(v.shape) for k, v in vit_b.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in vit_b.parameters()) == 97_020_784


def test_official_container_with_module_prefix_loads_strictly(vit_b, tmp_path):
    sd = {f"module.{k}": torch.randn_like(v) if v.is_floating_point() else v for k, v in vit_b.state_dict().items()}
    path = tmp_path / "safire.pth"
    torch.save({"model": sd, "epoch": 149, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-6}]}}, path)
    model = build_safire(checkpoint=path, device="cpu")
    assert model.meta["variant"] == "vit_b" and model.meta["checkpoint_kind"] == "official"
    loaded = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(loaded[k[len("module."):]], v)


def test_bare_state_dict_and_our_format_round_trip(micro_model, tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(micro_model.state_dict(), bare)
    m2 = build_safire(checkpoint=bare)
    assert m2.meta["variant"] == "micro"
    ours = tmp_path / "ours.pt"
    save_checkpoint(micro_model, ours, variant="micro", config=micro_model.config, model_version="micro-test-1",
                    provenance={"data": "toy"}, metrics={"miou": 0.5})
    ck = read_checkpoint(ours)
    assert ck.kind == "safire-studio" and ck.variant == "micro" and ck.meta["provenance"] == {"data": "toy"}
    m3 = build_safire(checkpoint=ours)
    assert m3.meta["model_version"] == "micro-test-1"
    for k, v in micro_model.state_dict().items():
        assert torch.equal(m3.state_dict()[k], v)


def test_half_precision_checkpoint_loads_as_float32(micro_model, tmp_path):
    p = tmp_path / "half.pt"
    save_checkpoint(micro_model, p, variant="micro", config=micro_model.config, model_version="h", half=True)
    m = build_safire(checkpoint=p)
    assert all(v.dtype == torch.float32 for v in m.state_dict().values() if v.is_floating_point())


def test_wrong_checkpoint_names_missing_and_unexpected_keys(micro_model, tmp_path):
    sd = dict(micro_model.state_dict())
    sd.pop("mask_decoder.iou_token.weight")
    sd["image_encoder.extra.weight"] = torch.zeros(1)
    p = tmp_path / "bad.pt"
    torch.save({"model": sd, "epoch": 1}, p)
    with pytest.raises(CheckpointError) as e:
        build_safire("micro", p)
    msg = str(e.value)
    assert "missing keys: mask_decoder.iou_token.weight" in msg
    assert "unexpected keys: image_encoder.extra.weight" in msg


def test_shape_mismatch_and_variant_conflict(micro_model, tmp_path):
    p = tmp_path / "m.pt"
    torch.save(micro_model.state_dict(), p)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        build_safire("tiny", p)
    ours = tmp_path / "ours.pt"
    save_checkpoint(micro_model, ours, variant="micro", config=micro_model.config, model_version="x")
    with pytest.raises(CheckpointError, match="variant 'micro'"):
        build_safire("tiny", ours)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_needing_code_execution_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"model": {"a": torch.zeros(1)}, "payload": _Evil()}, p)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_checkpoint(p)


def test_garbage_and_missing_files_give_clear_errors(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(p)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_checkpoint(tmp_path / "list.pt")


def test_infer_variant_for_each_registered_variant():
    for name in ("micro", "tiny"):
        assert infer_variant(Safire(VARIANTS[name]).state_dict()) == name


def test_highpass_removes_low_frequencies():
    x = torch.ones(1, 3, 32, 32) * 5.0  # constant image: only the DC term
    assert highpass_fft(x).abs().max() < 1e-5
    checker = torch.zeros(1, 1, 32, 32)
    checker[..., ::2, ::2] = 1.0
    checker[..., 1::2, 1::2] = 1.0  # highest frequency + DC
    out = highpass_fft(checker)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=1e-5)


def test_decoder_single_mask_equals_sam_decoder_output(micro_model):
    """Our decoder override (mask token 0 only, no repeat) gives SAM's single-mask output."""
    from segment_anything.modeling.mask_decoder import MaskDecoder

    m = micro_model
    torch.manual_seed(1)
    emb = m.encode(torch.rand(1, 3, 64, 64) * 255)
    pts = torch.rand(5, 1, 2) * 64
    lab = torch.ones(5, 1)
    ours, our_scores = m.decode(emb, pts, lab)
    sparse, dense = m.prompt_encoder(points=(pts, lab), boxes=None, masks=None)
    ref_masks, ref_iou = MaskDecoder.forward(m.mask_decoder, emb, m.prompt_encoder.get_dense_pe(), sparse, dense, False)
    assert torch.allclose(ours, ref_masks[:, 0], atol=1e-5)
    assert torch.allclose(our_scores, ref_iou[:, 0], atol=1e-6)


def test_forward_training_shapes(micro_model):
    imgs = torch.rand(2, 3, 64, 64) * 255
    pts = torch.rand(2, 6, 2) * 64
    logits, scores, emb = micro_model(imgs, pts, torch.ones(2, 6))
    assert logits.shape == (2, 6, 32, 32) and scores.shape == (2, 6) and emb.shape == (2, 32, 8, 8)


@pytest.mark.parametrize("variant", ["micro", "tiny"])
def test_shared_image_decoder_path_equals_sam_decoder(variant):
    """safire.fast_decoder (per-image context, re-associated attention, channels-last upscaling)
    gives SAM's decoder output: positive and negative points, boxes, points with a box, many prompts."""
    from segment_anything.modeling.mask_decoder import MaskDecoder

    torch.manual_seed(3)
    m = build_safire(variant)
    with torch.no_grad():  # non-zero biases everywhere, so every folded bias term is exercised
        for p in m.mask_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    S, e = m.config.img_size, m.embedding_size
    emb = torch.randn(1, m.config.prompt_embed_dim, e, e)
    ctx = m.decoder_context(emb)
    cases = [
        (torch.rand(7, 1, 2) * S, torch.ones(7, 1), None),
        (torch.rand(3, 3, 2) * S, torch.tensor([[1.0, 0.0, 0.0]] * 3), None),
        (None, None, torch.tensor([[4.0, 6.0, S / 2, S / 3]])),
        (torch.rand(1, 2, 2) * S, torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 2.0, S - 3.0, S / 2]])),
    ]
    with torch.inference_mode():
        for pts, lab, box in cases:
            fast, fast_scores = m.decode(emb, pts, lab, box, context=ctx)
            sparse, dense = m.prompt_encoder(points=(pts, lab) if pts is not None else None, boxes=box, masks=None)
            ref, ref_iou = MaskDecoder.forward(m.mask_decoder, emb, m.prompt_encoder.get_dense_pe(), sparse, dense, False)
            assert fast.shape == ref[:, 0].shape
            assert torch.allclose(fast, ref[:, 0], atol=2e-5, rtol=1e-5)
            assert torch.allclose(fast_scores, ref_iou[:, 0], atol=2e-6)


def test_decoder_context_is_cached_with_the_embedding_and_counted(micro_model):
    from safire.cache import tensor_bytes
    from safire.predictor import SafirePredictor

    pred = SafirePredictor(micro_model, cache_bytes=2**20)
    img = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    emb, cached = pred.embed(img)
    assert emb.context is not None and not cached
    assert tensor_bytes(emb) > tensor_bytes(emb.embedding)  # the context's tensors are counted
    again, cached = pred.embed(img)
    assert cached and again.context is emb.context
