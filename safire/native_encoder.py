"""Native-resolution image encoder of the ``native`` SAFIRE variants.

The image is never resampled: it is padded (bottom/right only, so the 8x8 JPEG grid stays aligned
with the token cells) to a multiple of the stride, and the token grid follows the image
(1024x768 -> 64x48 tokens at stride 16). Every operation is local or windowed, so the cost is
linear in the pixel count and any size works.

Stages (input Bx3xHxW normalised RGB, H and W multiples of 16):

1. **Forensic front end** at full resolution, 36 channels:
   - the normalised RGB (3);
   - three fixed SRM high-pass residuals per colour channel (9), in pixel units / 4, soft-clipped
     to +-3 (the truncation of rich-model steganalysis);
   - a learned *constrained* 5x5 convolution (Bayar & Stamm: centre tap -1, the other taps sum to
     1, so it can only learn prediction-error filters), 6 channels, soft-clipped alike;
   - SAFIRE's FFT high-pass image (:func:`safire.modeling.highpass_fft`) (3);
   - the magnitudes of the 15 residuals, whose 4x4 average (next stage) is the local noise level.
2. **Stride 4**: a 4x4 patchify (pixel-unshuffle + 1x1 conv) to ``conv_channels[0]``; LayerNorm.
3. **Stride 8**: 3x3 stride-2 convolution to ``conv_channels[1]``, LayerNorm, and a residual 3x3
   block. Each stride-8 cell is one JPEG 8x8 block.
4. **Stride 16**: 2x2 patch merge to ``encoder_embed_dim``, then ``encoder_depth`` SAM ViT blocks
   with windowed attention (``window_size`` tokens, relative positions) - no absolute position
   embedding, so nothing depends on where a region sits.
5. **Neck** as SAM's (1x1 conv, LayerNorm, 3x3 conv, LayerNorm) to ``prompt_embed_dim``.

Output: BxCxhxw with h = H/16, w = W/16.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Block

_SRM = (
    # KV (second-order "square 5x5"), normalised by 12
    [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
    # square 3x3, normalised by 4
    [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]],
    # first-order horizontal edge, normalised by 2
    [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
)
_SRM_NORM = (12.0, 4.0, 2.0)


def _soft_clip(x: torch.Tensor, t: float = 3.0) -> torch.Tensor:
    return t * torch.tanh(x / t)


def srm_kernels() -> torch.Tensor:
    """9x3x5x5 float32: the three SRM kernels applied to each of R, G, B (output 3c+i reads only
    input channel c), so they join the constrained kernels in one convolution."""
    k = torch.tensor(_SRM, dtype=torch.float32) / torch.tensor(_SRM_NORM).view(3, 1, 1)
    w = torch.zeros(9, 3, 5, 5)
    for c in range(3):
        w[3 * c : 3 * c + 3, c] = k
    return w


class ConstrainedConv(nn.Module):
    """Bayar-Stamm constrained convolution: every kernel has centre -1 and off-centre sum 1."""

    def __init__(self, in_chans: int = 3, out_chans: int = 6, k: int = 5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(out_chans, in_chans, k, k) * 0.1 + 0.01)
        self.k = k

    def constrained_weight(self) -> torch.Tensor:
        k = self.k
        c = k // 2
        centre = torch.zeros(k, k, device=self.weight.device, dtype=self.weight.dtype)
        centre[c, c] = 1.0
        w = self.weight * (1 - centre)
        w = w / w.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
        return w - centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.constrained_weight(), padding=self.k // 2)


class ForensicFrontEnd(nn.Module):
    """Bx3xHxW normalised RGB -> Bx36xHxW (RGB, SRM and constrained residuals, FFT high-pass,
    residual magnitudes)."""

    out_chans = 36

    def __init__(self, pixel_std: Tuple[float, float, float], hfp_rate: float = 0.25) -> None:
        super().__init__()
        self.register_buffer("srm", srm_kernels(), persistent=False)
        self.register_buffer("std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.constrained = ConstrainedConv(3, 6, 5)
        self.hfp_rate = hfp_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .modeling import highpass_fft  # local: modeling imports this module

        px = x * (self.std / 4.0)  # pixel units / 4
        # SRM (fixed, per colour channel) and constrained kernels in one 15-channel convolution
        w = torch.cat([self.srm.to(px.dtype), self.constrained.constrained_weight().to(px.dtype)], dim=0)
        res = _soft_clip(F.conv2d(px, w, padding=2))
        hfp = highpass_fft(x, self.hfp_rate)
        # residual energy (|r|): averaged by the 4x4 patchify it is the local noise level, the trace
        # that tells a donor's camera from the host's (the linear residuals average out to ~0)
        return torch.cat([x, res, hfp, res.abs()], dim=1)


class ResBlock(nn.Module):
    """3x3 conv, LayerNorm, GELU, residual. BxCxHxW -> same. (A depthwise 7x7 ConvNeXt block was
    measured 10x slower to train on CPU: depthwise backward has no fast kernel there.)"""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm = LayerNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.norm(self.conv(x)))


class NativeImageEncoder(nn.Module):
    """Forensic native-resolution encoder (see the module docstring).

    Args:
        embed_dim: token width at stride 16. depth / num_heads / window_size: ViT blocks.
        conv_channels: widths at strides 4 and 8. out_chans: embedding channels (prompt dim).
    Input: Bx3xHxW normalised, H and W multiples of 16. Output: BxCx(H/16)x(W/16).
    """

    stride = 16

    def __init__(self, *, embed_dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 conv_channels: Tuple[int, int], out_chans: int, pixel_std: Tuple[float, float, float],
                 hfp_rate: float = 0.25) -> None:
        super().__init__()
        c4, c8 = conv_channels
        self.front = ForensicFrontEnd(pixel_std, hfp_rate)
        self.patch4 = nn.Conv2d(ForensicFrontEnd.out_chans * 16, c4, 1)
        self.norm4 = LayerNorm2d(c4)
        self.down8 = nn.Conv2d(c4, c8, 3, stride=2, padding=1)
        self.norm8 = LayerNorm2d(c8)
        self.block8 = ResBlock(c8)
        self.down16 = nn.Conv2d(c8, embed_dim, 2, stride=2)
        self.blocks = nn.ModuleList([
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True,
                  norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6), use_rel_pos=True, rel_pos_zero_init=True,
                  window_size=window_size, input_size=(window_size, window_size))
            for _ in range(depth)
        ])
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, 1, bias=False), LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False), LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"native encoder input must be padded to a multiple of {self.stride}, got {w}x{h}")
        f = self.front(x)
        f = F.gelu(self.norm4(self.patch4(F.pixel_unshuffle(f, 4))))
        f = F.gelu(self.norm8(self.down8(f)))
        f = self.block8(f)
        t = self.down16(f).permute(0, 2, 3, 1)  # B x h x w x C
        for blk in self.blocks:
            t = blk(t)
        return self.neck(t.permute(0, 3, 1, 2))
