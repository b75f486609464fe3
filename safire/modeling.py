"""SAFIRE network: SAM's ViT image encoder with a high-frequency adapter, SAM's prompt encoder and
SAM's mask decoder (single-mask output; IoU head output 0 is the confidence).

Built from ``segment_anything.modeling`` classes so that parameter names are identical to SAM's and
to the official ``safire.pth`` (see ``docs/checkpoints.md``). Nothing here touches CUDA explicitly:
modules follow whatever device they are moved to.

Frames and conventions:
- "model frame": the square ``img_size x img_size`` image the encoder sees (the original image is
  squash-resized into it, see :mod:`safire.transforms`).
- Point coordinates given to :meth:`Safire.decode` are ``(x, y)`` pixels in the model frame.
- Low-resolution mask logits are ``(4*h) x (4*w)`` where ``h = w = img_size / patch_size`` (256x256
  for ViT-B at 1024).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.image_encoder import ImageEncoderViT, PatchEmbed

from .config import SafireConfig
from .fast_decoder import DecoderContext, build_context, two_way_shared, upscale_single_mask
from .native_encoder import NativeImageEncoder


def highpass_fft(x: torch.Tensor, rate: float = 0.25) -> torch.Tensor:
    """High-frequency image of SAFIRE's adapter.

    Removes the central ``sqrt(rate)`` fraction (per axis) of the fft-shifted spectrum, i.e. every
    frequency whose shifted index lies in the central square of side ``2 * int(sqrt(H*W*rate) // 2)``,
    and returns ``|real(ifft)|``.

    Args:
        x: Bx3xHxW float tensor (normalised image).
    Returns:
        Bx3xHxW float tensor, same dtype as ``x`` (computed in float32).
    """
    h, w = x.shape[-2:]
    line = int((h * w * rate) ** 0.5 // 2)
    spec = torch.fft.fftshift(torch.fft.fft2(x.float(), norm="forward"), dim=(-2, -1))
    keep = torch.ones((h, w), dtype=torch.float32, device=x.device)
    keep[h // 2 - line : h // 2 + line, w // 2 - line : w // 2 + line] = 0.0
    spec = spec * keep
    out = torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm="forward").real.abs()
    return out.to(x.dtype)


class ImageEncoderViTAdaptor(ImageEncoderViT):
    """SAM ViT encoder plus SAFIRE's adapter.

    The adapter embeds a high-pass (FFT) version of the input with an overlapping patch embedding,
    projects it and the (position-embedded) RGB patch tokens to ``embed_dim // adaptor_scale_factor``,
    sums them once, and before every ViT block (and once after the last one) adds
    ``up(adaptor_block_i(z))`` to the token stream. Parameter names match the official code.

    Input: Bx3xSxS normalised image (S = img_size). Output: BxCxhxw embedding, C = out_chans.
    """

    def __init__(self, *, adaptor_scale_factor: int = 4, hfp_rate: float = 0.25, **kwargs) -> None:
        super().__init__(**kwargs)
        embed_dim = kwargs["embed_dim"]
        patch = self.patch_embed.proj.kernel_size[0]
        hidden = embed_dim // adaptor_scale_factor
        self.hfp_rate = hfp_rate
        self.hfp_overlap_patch_embed = PatchEmbed(
            kernel_size=(2 * patch, 2 * patch),
            stride=(patch, patch),
            padding=(patch // 2, patch // 2),
            in_chans=kwargs.get("in_chans", 3),
            embed_dim=embed_dim,
        )
        self.adaptor_patch_embed_tune = nn.Linear(embed_dim, hidden)
        self.hfp_patch_embed_tune = nn.Linear(embed_dim, hidden)
        self.adaptor_shared_up_projection_layer = nn.Linear(hidden, embed_dim)
        self.adaptor_blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(hidden, hidden), nn.GELU()) for _ in range(len(self.blocks))]
        )
        self.adaptor_final_block = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y_embed = self.hfp_overlap_patch_embed(highpass_fft(x, self.hfp_rate))
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        z = self.adaptor_patch_embed_tune(x) + self.hfp_patch_embed_tune(y_embed)
        up = self.adaptor_shared_up_projection_layer
        for block, adaptor in zip(self.blocks, self.adaptor_blocks):
            x = block(x + up(adaptor(z)))
        x = x + up(self.adaptor_final_block(z))
        return self.neck(x.permute(0, 3, 1, 2))


class SafireMaskDecoder(MaskDecoder):
    """SAM's mask decoder with two changes that keep its parameters and outputs identical:

    - image embeddings are repeated over the prompt batch only when their batch size differs from
      the prompt batch (B images each with its own prompt can pass through, as in SAFIRE);
    - with ``multimask_output=False`` only mask token 0 is turned into a mask (SAM computes all four
      and drops three), which saves a quarter of the final matmul;
    - :meth:`forward_shared` decodes many prompts on one image through a per-image
      :class:`~safire.fast_decoder.DecoderContext` (same outputs, a fraction of the work).
    """

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        tokens = self._tokens(sparse_prompt_embeddings)
        n = tokens.shape[0]
        src = image_embeddings
        if src.shape[0] != n:
            src = src.expand(n, -1, -1, -1) if src.shape[0] == 1 else torch.repeat_interleave(src, n, dim=0)
        src = src + dense_prompt_embeddings
        pos_src = image_pe.expand(n, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        return self._outputs(hs, src.transpose(1, 2).reshape(b, c, h, w), multimask_output)

    def forward_shared(self, ctx: DecoderContext, sparse_prompt_embeddings: torch.Tensor,
                       multimask_output: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode B prompts against one image through its :class:`DecoderContext` (no mask prompt).

        Equal to :meth:`forward` with the context's embedding (see :mod:`safire.fast_decoder`).
        """
        tokens = self._tokens(sparse_prompt_embeddings)
        hs, src = two_way_shared(self.transformer, ctx, tokens)
        b, n, c = src.shape
        if multimask_output:
            return self._outputs(hs, src.transpose(1, 2).reshape(b, c, *ctx.hw), multimask_output)
        hyper = self.output_hypernetworks_mlps[0](hs[:, 1, :])
        masks = upscale_single_mask(self.output_upscaling, src, ctx.hw, hyper)
        return masks[:, None], self.iou_prediction_head(hs[:, 0, :])[:, :1]

    def _tokens(self, sparse: torch.Tensor) -> torch.Tensor:
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
        return torch.cat((output_tokens, sparse), dim=1)

    def _outputs(self, hs: torch.Tensor, src: torch.Tensor, multimask_output: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.output_upscaling(src)
        b, c, h, w = upscaled.shape
        idx: List[int] = list(range(1, self.num_mask_tokens)) if multimask_output else [0]
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in idx], dim=1
        )
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, iou_pred[:, idx]


class Safire(nn.Module):
    """The SAFIRE model: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``.

    ``pixel_mean`` / ``pixel_std`` are non-persistent buffers (not in checkpoints), RGB, 0-255 scale.
    """

    def __init__(self, config: SafireConfig) -> None:
        super().__init__()
        self.config = config
        if config.encoder == "native":
            self.image_encoder = NativeImageEncoder(
                embed_dim=config.encoder_embed_dim, depth=config.encoder_depth,
                num_heads=config.encoder_num_heads, window_size=config.window_size,
                mlp_ratio=config.mlp_ratio, conv_channels=tuple(config.conv_channels),
                out_chans=config.prompt_embed_dim, pixel_std=config.pixel_std, hfp_rate=config.hfp_rate,
            )
        elif config.encoder == "vit":
            self.image_encoder = self._vit_encoder(config)
        else:
            raise ValueError(f"unknown encoder {config.encoder!r} (vit, native)")
        # Native variants: prompts are (x, y) pixels of the padded image, normalised by pe_ref (the
        # same physical distance means the same encoding on every image size).
        pe_side = config.pe_ref if config.encoder == "native" else config.img_size
        self.prompt_encoder = PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(pe_side // config.patch_size, pe_side // config.patch_size),
            input_image_size=(pe_side, pe_side),
            mask_in_chans=config.mask_in_chans,
        )
        self._init_decoder(config)

    @staticmethod
    def _vit_encoder(config: SafireConfig) -> ImageEncoderViTAdaptor:
        return ImageEncoderViTAdaptor(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6),
            use_rel_pos=True,
            rel_pos_zero_init=True,
            window_size=config.window_size,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
            adaptor_scale_factor=config.adaptor_scale_factor,
            hfp_rate=config.hfp_rate,
        )

    def _init_decoder(self, config: SafireConfig) -> None:
        self.mask_decoder = SafireMaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        )
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)
        # Mask tokens 1..3 and their hypernetworks never produce an output in single-mask mode; they
        # stay in the state dict for checkpoint compatibility but are not trained.
        for i in range(1, self.mask_decoder.num_mask_tokens):
            for p in self.mask_decoder.output_hypernetworks_mlps[i].parameters():
                p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def native(self) -> bool:
        """True for native-resolution variants (``resize == "pad"``)."""
        return self.config.resize == "pad"

    def dense_pe(self, hw: Tuple[int, int], stride: Optional[float] = None) -> torch.Tensor:
        """1xCxhxw positional encoding of an embedding grid.

        Squash variants: SAM's ``get_dense_pe()`` (the grid is fixed). Native variants: the
        encoding at each token centre ``((j + 0.5) * stride, (i + 0.5) * stride)`` pixels, in the
        frame of the point prompts (``stride`` defaults to the encoder's 16; a grid average-pooled
        by k has stride 16k).
        """
        if not self.native:
            return self.prompt_encoder.get_dense_pe()
        h, w = int(hw[0]), int(hw[1])
        s = float(stride or self.config.patch_size) / self.config.pe_ref
        pe = self.prompt_encoder.pe_layer
        dev = pe.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) * s
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # h x w x 2 (x, y)
        return pe._pe_encoding(grid).permute(2, 0, 1)[None]

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for ViT-B)."""
        return self.config.img_size // self.config.patch_size

    @property
    def mask_size(self) -> int:
        """Side of the decoder's low-resolution logits (4x the embedding side)."""
        return 4 * self.embedding_size

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS float in [0, 255] (RGB, model frame) -> normalised input."""
        return (images - self.pixel_mean) / self.pixel_std

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS float in [0, 255] RGB -> BxCxhxw image embedding.

        Native variants take any Bx3xHxW: the normalised image is padded bottom/right with zeros
        (the pixel mean) to a multiple of ``pad_multiple`` and, above ``tile_pixels``, encoded in
        overlapping tiles at native resolution; h, w = padded H, W / 16.
        """
        if not self.native:
            return self.image_encoder(self.normalize(images))
        H, W = images.shape[-2:]
        if self.config.tile_pixels and H * W > self.config.tile_pixels:
            return self._encode_tiled(images)
        return self.image_encoder(self._pad(self.normalize(images.float())))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.config.pad_multiple
        ph, pw = (-x.shape[-2]) % m, (-x.shape[-1]) % m
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def _encode_tiled(self, images: torch.Tensor) -> torch.Tensor:
        """Native encoding of a large image (Bx3xHxW, uint8 or float in [0, 255], not padded) in
        tiles of ``tile_size`` overlapping by ``tile_overlap`` pixels of the padded frame; each tile
        keeps the tokens of its centre part (half the overlap is dropped on every inner edge), so
        no token comes from a tile border. Tiles are converted and normalised one at a time: the
        memory is the image plus one tile's activations, whatever the image size."""
        s = self.config.patch_size
        T, O = self.config.tile_size, self.config.tile_overlap
        m = self.config.pad_multiple
        H, W = -(-images.shape[-2] // m) * m, -(-images.shape[-1] // m) * m

        def starts(n: int) -> List[int]:
            if n <= T:
                return [0]
            out = list(range(0, n - T + 1, T - O))
            if out[-1] + T < n:
                out.append(n - T)
            return out

        out = None
        for y0 in starts(H):
            th = min(T, H)
            for x0 in starts(W):
                tw = min(T, W)
                tile = self.normalize(images[..., y0 : y0 + th, x0 : x0 + tw].float())
                if tile.shape[-2:] != (th, tw):  # bottom/right tiles reach into the padding
                    tile = F.pad(tile, (0, tw - tile.shape[-1], 0, th - tile.shape[-2]))
                e = self.image_encoder(tile)
                del tile
                if out is None:
                    out = e.new_zeros(e.shape[0], e.shape[1], H // s, W // s)
                top = 0 if y0 == 0 else O // 2
                left = 0 if x0 == 0 else O // 2
                bottom = th if y0 + th >= H else th - O // 2
                right = tw if x0 + tw >= W else tw - O // 2
                out[..., (y0 + top) // s : (y0 + bottom) // s, (x0 + left) // s : (x0 + right) // s] = \
                    e[..., top // s : bottom // s, left // s : right // s]
        return out

    def decoder_context(self, embedding: torch.Tensor, stride: Optional[float] = None) -> DecoderContext:
        """Prompt-independent decoder state of one image (1xCxhxw embedding); reuse it for every
        prompt on that image (:meth:`decode` builds it when not given). ``stride``: pixels per
        token of a native embedding (16, or 16k when average-pooled by k)."""
        if embedding.shape[0] != 1:
            raise ValueError(f"a decoder context is built from one embedding, got batch {embedding.shape[0]}")
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return build_context(self.mask_decoder.transformer, embedding + dense,
                             self.dense_pe(embedding.shape[-2:], stride))

    def decode(
        self,
        embedding: torch.Tensor,
        point_coords: Optional[torch.Tensor],
        point_labels: Optional[torch.Tensor],
        boxes: Optional[torch.Tensor] = None,
        context: Optional[DecoderContext] = None,
        fast: bool = True,
        stride: Optional[float] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode prompts against one embedding (1xCxhxw, broadcast) or one embedding per prompt.

        Args:
            embedding: 1xCxhxw or BxCxhxw.
            point_coords: BxNx2 float, (x, y) pixels in the model frame, or None.
            point_labels: BxN float/long, 1 = positive, 0 = negative, -1 = padding; or None.
            boxes: Bx4 float (x0, y0, x1, y1) model-frame pixels, or None.
            context: the embedding's :meth:`decoder_context` (one embedding only), to reuse it.
            fast: with one embedding, use the shared-image path of :mod:`safire.fast_decoder`
                (False: SAM's decoder as is, e.g. as a reference).
            stride: native variants, pixels per token of ``embedding`` (default 16).
        Returns:
            logits: Bx(4h)x(4w) float mask logits (low resolution);
            scores: B float, the confidence (IoU-head output 0; trained to regress pixel accuracy).
        """
        points = None
        if point_coords is not None:
            points = (point_coords.float(), point_labels.float())
        sparse, _ = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # broadcast over any grid
        if fast and embedding.shape[0] == 1:
            ctx = context if context is not None else self.decoder_context(embedding, stride)
            logits, scores = self.mask_decoder.forward_shared(ctx, sparse, multimask_output=False)
        else:
            logits, scores = self.mask_decoder(
                image_embeddings=embedding,
                image_pe=self.dense_pe(embedding.shape[-2:], stride),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        return logits[:, 0], scores[:, 0]

    def forward(
        self, images: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor, pool: int = 1
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training forward: encode B images once, decode P single-point prompts for each.

        Args:
            images: Bx3xSxS float in [0, 255] (RGB, model frame).
            point_coords: BxPx2 (x, y) model-frame pixels; point_labels: BxP (1 = positive).
            pool: native variants, decode on the embedding average-pooled by this factor (as the
                partition's grid pass does on large images); logits are then pool x smaller.
        Returns:
            logits (BxPx(4h)x(4w)), scores (BxP), embeddings (BxCxhxw, not pooled).
        """
        emb = self.encode(images)
        b, p = point_coords.shape[:2]
        dec = F.avg_pool2d(emb, pool, ceil_mode=True) if pool > 1 else emb
        emb_rep = torch.repeat_interleave(dec, p, dim=0)
        logits, scores = self.decode(
            emb_rep, point_coords.reshape(b * p, 1, 2), point_labels.reshape(b * p, 1),
            stride=self.config.patch_size * pool if pool > 1 else None,
        )
        return logits.reshape(b, p, *logits.shape[-2:]), scores.reshape(b, p), emb
