"""SAM's two-way transformer, re-associated for many prompts on one image (exact, inference path).

SAM's mask decoder runs its two-way transformer once per prompt over a private copy of the whole
image embedding (N = h*w tokens of width C): every attention projects all N image tokens, per
prompt. With a point/box prompt and no mask prompt, two facts make most of that work avoidable
without changing the result (up to float rounding):

1. **Layer 0 sees the same image for every prompt** (embedding + the constant no-mask embedding).
   Its image-side projections (token-to-image keys/values, image-to-token queries) are computed
   once per image (:class:`DecoderContext`) and shared by every prompt and every later click.
2. **Projecting N image tokens is the expensive side of an attention whose other side has only T
   tokens** (T = 7: IoU token, 4 mask tokens, point, padding). Moving the projection matrix to the
   T side is the same bilinear form: ``(x Wk^T + bk) . q = x . (q Wk) + bk . q`` (the bias term is
   constant over the image tokens, so softmax ignores it for token-to-image attention), and since
   attention rows sum to one, ``A (x Wv^T + bv) = (A x) Wv^T + bv``. The image-to-token output
   projection is folded the same way (``sum_h A_h (V_h W_h^T)``). Each of these costs
   ``H*T*C`` per image token instead of ``C*D`` (D = attention width): 2.3x fewer operations for
   SAM ViT-B's decoder (H = 8, T = 7, C = 256, D = 128).

Only inference with one image embedding and no mask prompt takes this path; training (one embedding
per prompt, autograd through SAM's own modules) uses SAM's code unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.transformer import Attention, TwoWayTransformer


@dataclass
class DecoderContext:
    """Prompt-independent decoder state for one image embedding (h = w = embedding side).

    src, pos: 1xNxC image tokens (embedding + no-mask dense embedding) and their positional
    encoding; k0, v0: 1xHxNxd layer-0 token-to-image keys and values; q0: 1xHxNxd layer-0
    image-to-token queries.
    """

    src: torch.Tensor
    pos: torch.Tensor
    k0: torch.Tensor
    v0: torch.Tensor
    q0: torch.Tensor
    hw: Tuple[int, int]


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    """BxLx(H*d) -> BxHxLxd."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """BxHxLxd -> BxLx(H*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def build_context(transformer: TwoWayTransformer, src: torch.Tensor, pos: torch.Tensor) -> DecoderContext:
    """Context for ``src`` = 1xCxhxw (embedding + dense no-mask embedding), ``pos`` = 1xCxhxw."""
    h, w = src.shape[-2:]
    s = src.flatten(2).transpose(1, 2)
    p = pos.flatten(2).transpose(1, 2)
    layer0 = transformer.layers[0]
    t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
    return DecoderContext(
        src=s, pos=p,
        k0=_split(t2i.k_proj(s + p), t2i.num_heads), v0=_split(t2i.v_proj(s), t2i.num_heads),
        q0=_split(i2t.q_proj(s + p), i2t.num_heads), hw=(int(h), int(w)),
    )


def _tokens_to_shared_image(attn: Attention, q_tok: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Tokens (BxTxC) attend to one image whose keys/values (1xHxNxd) are already projected."""
    q = _split(attn.q_proj(q_tok), attn.num_heads)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return attn.out_proj(_merge(a @ v))


def _tokens_to_image(attn: Attention, q_tok: torch.Tensor, k_img: torch.Tensor, v_img: torch.Tensor) -> torch.Tensor:
    """Tokens (BxTxC) attend to per-prompt image tokens (BxNxC) without projecting the N tokens."""
    heads, (b, t, c) = attn.num_heads, q_tok.shape
    q = _split(attn.q_proj(q_tok), heads)  # BxHxTxd
    d = q.shape[-1]
    qk = (q @ attn.k_proj.weight.view(heads, d, c)).reshape(b, heads * t, c)
    a = torch.softmax(qk @ k_img.transpose(1, 2) / math.sqrt(d), dim=-1)  # Bx(HT)xN
    av = (a @ v_img).view(b, heads, t, c)
    out = av @ attn.v_proj.weight.view(heads, d, c).transpose(-1, -2) + attn.v_proj.bias.view(1, heads, 1, d)
    return attn.out_proj(_merge(out))


def _softmax_dim2(s: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 2 of BxHxTxN (T = a handful of tokens): vectorised along N, several times
    faster than ``torch.softmax`` over a short last dimension."""
    e = torch.exp(s - s.amax(dim=2, keepdim=True))
    return e / e.sum(dim=2, keepdim=True)


def _image_to_tokens(attn: Attention, q_img: Optional[torch.Tensor], k_tok: torch.Tensor, v_tok: torch.Tensor,
                     residual: torch.Tensor, q_heads: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``residual`` + attention of the image tokens (BxNxC, or projected once: ``q_heads``
    1xHxNxd) to the prompt tokens (BxTxC); returns BxNxC."""
    heads, (b, t, c) = attn.num_heads, k_tok.shape
    k = _split(attn.k_proj(k_tok), heads)  # BxHxTxd
    v = _split(attn.v_proj(v_tok), heads)
    d = k.shape[-1]
    if q_heads is not None:
        s = k @ q_heads.transpose(-1, -2)  # BxHxTxN
    else:
        kq = (k @ attn.q_proj.weight.view(heads, d, c)).reshape(b, heads * t, c)
        bias = (k @ attn.q_proj.bias.view(heads, d, 1)).reshape(b, heads * t, 1)
        s = torch.baddbmm(bias, kq, q_img.transpose(1, 2)).view(b, heads, t, -1)
    a = _softmax_dim2(s / math.sqrt(d)).view(b, heads * t, -1)
    c_out = attn.out_proj.weight.shape[0]
    vw = v @ attn.out_proj.weight.view(c_out, heads, d).permute(1, 2, 0)  # BxHxTxC
    # each head's attention over the T tokens sums to 1, so a pixel's H*T weights sum to H
    vw = vw + (attn.out_proj.bias / heads).view(1, 1, 1, c_out)
    return torch.baddbmm(residual, a.transpose(1, 2), vw.reshape(b, heads * t, c_out))


def two_way_shared(transformer: TwoWayTransformer, ctx: DecoderContext,
                   tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same as ``transformer(src.expand(B), pos.expand(B), tokens)``; returns (queries BxTxC, keys BxNxC)."""
    queries, keys, key_pe = tokens, ctx.src, ctx.pos
    for i, layer in enumerate(transformer.layers):
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        q = queries + tokens
        if i == 0:
            attn_out = _tokens_to_shared_image(layer.cross_attn_token_to_image, q, ctx.k0, ctx.v0)
        else:
            kp = keys + key_pe  # keys do not change until norm4: one sum serves both attentions
            attn_out = _tokens_to_image(layer.cross_attn_token_to_image, q, kp, keys)
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + tokens
        if i == 0:
            keys = _image_to_tokens(layer.cross_attn_image_to_token, None, q, queries, keys, q_heads=ctx.q0)
        else:
            keys = _image_to_tokens(layer.cross_attn_image_to_token, kp, q, queries, keys)
        keys = layer.norm4(keys)
    q = queries + tokens
    attn_out = _tokens_to_image(transformer.final_attn_token_to_image, q, keys + key_pe, keys)
    queries = transformer.norm_final_attn(queries + attn_out)
    return queries, keys


def upscale_single_mask(output_upscaling: torch.nn.Sequential, keys: torch.Tensor, hw: Tuple[int, int],
                        hyper: torch.Tensor) -> torch.Tensor:
    """SAM's ``output_upscaling`` followed by the dot with one hypernetwork vector, per prompt.

    Same as ``hyper @ output_upscaling(keys as BxCxhxw)``, computed channels-last: each stride-2
    transposed convolution is a matmul per image token, SAM's LayerNorm2d is ``F.layer_norm``.

    Args:
        keys: BxNxC decoder image tokens (N = h*w); hyper: BxC8 (the mask token's hypernetwork
            output). Returns Bx(4h)x(4w) mask logits.
    """
    conv1, norm, act1, conv2, act2 = output_upscaling
    b, n, c = keys.shape
    h, w = hw
    c4, c8 = conv1.out_channels, conv2.out_channels
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c4)  # C x (a, b, C/4)
    x = torch.addmm(conv1.bias.repeat(4), keys.reshape(b * n, c), w1).view(b, n, 4, c4)
    x = act1(F.layer_norm(x, (c4,), norm.weight, norm.bias, norm.eps))
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c4, 4 * c8)  # C/4 x (a2, b2, C/8)
    x = act2(torch.addmm(conv2.bias.repeat(4), x.reshape(b * n * 4, c4), w2)).view(b, n, 16, c8)
    m = (x.view(b, n * 16, c8) @ hyper.unsqueeze(-1)).view(b, h, w, 2, 2, 2, 2)  # y, x, a, b, a2, b2
    return m.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, 4 * h, 4 * w)
