"""Model configurations and the plain variant registry.

``vit_b`` is the official SAFIRE architecture (SAM ViT-B + adapter, 97,020,784 parameters).
``native`` is the CPU variant of the embedded default model: a forensic native-resolution encoder
(:mod:`safire.native_encoder`; images are padded, never resampled, and the token grid follows the
image) with SAM's prompt encoder and mask decoder. ``tiny`` is the earlier 256x256 squash variant
(older checkpoints keep loading); ``micro`` and ``native_micro`` are test-size models that exercise
every code path in milliseconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Tuple

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SafireConfig:
    """Architecture and preprocessing of one SAFIRE variant (stored with our weights)."""

    img_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    adaptor_scale_factor: int = 4
    hfp_rate: float = 0.25
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    # Preprocessing: the image is squash-resized (aspect ratio not kept, no padding) to
    # img_size x img_size with bilinear interpolation, then normalised with mean/std (RGB, 0-255).
    # "pad" (native variants): the image keeps its resolution and is padded bottom/right to a
    # multiple of ``pad_multiple`` with the pixel mean (0 after normalisation); img_size is then only
    # the training crop side.
    resize: str = "squash"
    encoder: str = "vit"  # "vit" (SAM ViT + SAFIRE adapter) | "native" (safire.native_encoder)
    conv_channels: Tuple[int, int] = (48, 96)  # native encoder widths at strides 4 and 8
    pad_multiple: int = 16
    # Native prompt/position frame: coordinates are pixels / pe_ref, so positional encodings mean
    # the same distance on every image size.
    pe_ref: int = 512
    # Partition of native variants: the grid prompts are decoded on the embedding average-pooled so
    # that its longer side has at most grid_tokens cells; only the winners are decoded at full grid.
    grid_tokens: int = 32
    # Images above this many pixels are encoded in overlapping tiles at native resolution (0: never).
    tile_pixels: int = 0
    tile_size: int = 1024
    tile_overlap: int = 128
    pixel_mean: Tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: Tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "SafireConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SafireConfig fields: {sorted(unknown)}")
        kw = dict(d)
        for k in ("encoder_global_attn_indexes", "pixel_mean", "pixel_std", "conv_channels"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


VARIANTS: Dict[str, SafireConfig] = {
    # The official SAFIRE model (SAM ViT-B geometry, 1024x1024 input, 64x64 embedding).
    "vit_b": SafireConfig(),
    # CPU default: 256x256 input, 16x16 embedding, 64x64 mask logits.
    "tiny": SafireConfig(
        img_size=256,
        patch_size=16,
        encoder_embed_dim=192,
        encoder_depth=6,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(),
        window_size=0,
        prompt_embed_dim=128,
        decoder_depth=2,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
        iou_head_hidden_dim=128,
        mask_in_chans=16,
    ),
    # Embedded default: native resolution (padded to 16), 64x48 tokens for 1024x768; trained on
    # 256x256 crops (img_size), tiles of 1024 with 128 px overlap above 4 MP.
    "native": SafireConfig(
        img_size=256,
        patch_size=16,
        encoder_embed_dim=160,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(),
        window_size=8,
        mlp_ratio=3.0,
        prompt_embed_dim=128,
        decoder_depth=2,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
        iou_head_hidden_dim=128,
        mask_in_chans=16,
        resize="pad",
        encoder="native",
        conv_channels=(48, 96),
        tile_pixels=4_194_304,
    ),
    # Test-size native model (64x64 training crops).
    "native_micro": SafireConfig(
        img_size=64,
        patch_size=16,
        encoder_embed_dim=32,
        encoder_depth=1,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(),
        window_size=4,
        mlp_ratio=2.0,
        prompt_embed_dim=32,
        decoder_depth=1,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
        mask_in_chans=8,
        resize="pad",
        encoder="native",
        conv_channels=(8, 16),
        pe_ref=128,
        grid_tokens=8,
        tile_pixels=65536,
        tile_size=128,
        tile_overlap=32,
    ),
    # Test-size model: 64x64 input, 8x8 embedding.
    "micro": SafireConfig(
        img_size=64,
        patch_size=8,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(),
        window_size=0,
        prompt_embed_dim=32,
        decoder_depth=1,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
        mask_in_chans=8,
    ),
}


def get_config(variant: str) -> SafireConfig:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown SAFIRE variant {variant!r}; known: {sorted(VARIANTS)}") from None
