"""Stateful and stateless prompt prediction on cached image embeddings.

>>> predictor = SafirePredictor(build_safire())
>>> predictor.set_image(image)                                  # HxWx3 uint8 RGB, encoder runs once
>>> pred = predictor.predict(np.array([[120, 80]]), np.array([1]))
>>> pred.mask.shape == image.shape[:2]

Embeddings are cached in a thread-safe LRU keyed by the image content (and the model), capped in
bytes; concurrent first requests for one image compute its embedding once. ``embed`` + ``predict``
with an explicit ``embedding=`` are the thread-safe, stateless path the server uses.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .cache import LRUCache
from .fast_decoder import DecoderContext
from .modeling import Safire
from .transforms import (check_image, native_logits_to_image, points_to_model, squash_resize,
                         to_tensor, upsample_logits)


@dataclass
class ImageEmbedding:
    """The encoder output for one image.

    embedding: 1xCxhxw float32 on the model's device. orig_hw: (H, W) of the original image.
    key: content key used by the cache. context: the decoder's prompt-independent state for this
    image (:class:`safire.fast_decoder.DecoderContext`), computed with the embedding and reused by
    every click and grid prompt; it counts in the cache's byte size.
    """

    embedding: torch.Tensor
    orig_hw: Tuple[int, int]
    key: str
    encode_seconds: float = 0.0
    context: Optional[DecoderContext] = None
    native: bool = False  # model frame = original pixels, padded (see safire.transforms)

    def to_model(self, points: np.ndarray, img_size: int) -> np.ndarray:
        """Nx2 (x, y) original pixels -> model-frame pixels (float32)."""
        if self.native:
            return np.asarray(points, dtype=np.float32).reshape(-1, 2).copy()
        return points_to_model(points, self.orig_hw, img_size)

    def logits_to_image(self, logits: torch.Tensor, out_hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Kxhxw low-resolution logits -> KxHxW at ``out_hw`` (default the original size)."""
        if self.native:
            return native_logits_to_image(logits, self.orig_hw, out_hw)
        return upsample_logits(logits, tuple(out_hw or self.orig_hw))


@dataclass
class MaskPrediction:
    """Result of one prompt set.

    prob: HxW float32 in [0, 1] at the original resolution (sigmoid of the upsampled logits).
    mask: HxW bool, ``prob > 0.5`` (logit > 0).
    score: the confidence head's output (regresses pixel accuracy; roughly in [0, 1], unclipped).
    low_res_logits: (4h)x(4w) float32 logits in the model frame.
    """

    prob: np.ndarray
    mask: np.ndarray
    score: float
    low_res_logits: np.ndarray


def image_digest(image: np.ndarray) -> str:
    """Content key of an image array (shape + bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


class SafirePredictor:
    """Prompt predictor for one model.

    Args:
        model: a :class:`Safire` (eval mode). Its device is used for all computation.
        cache_bytes: embedding cache capacity in bytes (0 disables caching).
        cache_ttl: seconds after which a cached embedding expires (None: never).
    """

    def __init__(self, model: Safire, cache_bytes: int = 512 * 2**20, cache_ttl: Optional[float] = None,
                 cache: Optional[LRUCache] = None) -> None:
        self.model = model.eval()
        self.cache = cache if cache is not None else LRUCache(cache_bytes, cache_ttl)
        self._model_tag = f"{getattr(model, 'meta', {}).get('model_version', 'model')}#{id(model):x}"
        self._current: Optional[ImageEmbedding] = None
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def img_size(self) -> int:
        return self.model.config.img_size

    # -- encoder ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def _encode(self, image: np.ndarray, key: str) -> ImageEmbedding:
        t0 = time.perf_counter()
        native = self.model.native
        x = to_tensor(image, self.device, dtype=None) if native else squash_resize(image, self.img_size, self.device)
        emb = self.model.encode(x)
        del x
        ctx = self.model.decoder_context(emb)
        return ImageEmbedding(emb, (int(image.shape[0]), int(image.shape[1])), key, time.perf_counter() - t0, ctx,
                              native=native)

    def embed(self, image: np.ndarray, key: Optional[str] = None) -> Tuple[ImageEmbedding, bool]:
        """Embedding of ``image`` (HxWx3 uint8 RGB), from the cache when present.

        ``key`` overrides the content hash (e.g. a task id plus image URL); it must identify the
        pixels uniquely. Returns ``(embedding, was_cached)``.
        """
        image = check_image(image)
        key = f"{self._model_tag}:{key or image_digest(image)}"
        return self.cache.get_or_compute(key, lambda: self._encode(image, key))

    def set_image(self, image: np.ndarray, key: Optional[str] = None) -> ImageEmbedding:
        """Stateful API: compute (or fetch) the embedding and make it current."""
        emb, _ = self.embed(image, key)
        with self._lock:
            self._current = emb
        return emb

    # -- decoder ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[Sequence[float]] = None,
        embedding: Optional[ImageEmbedding] = None,
    ) -> MaskPrediction:
        """Mask of the source region selected by the prompts.

        Args:
            point_coords: Nx2 (x, y) pixels in the original image (may be fractional).
            point_labels: N ints, 1 = positive (inside the wanted source), 0 = negative.
            box: (x0, y0, x1, y1) original pixels, or None.
            embedding: the image's embedding; default the one set by :meth:`set_image`.
        Returns:
            :class:`MaskPrediction` at the original resolution.
        """
        emb = embedding or self._current
        if emb is None:
            raise RuntimeError("no image set: call set_image() first or pass embedding=")
        if point_coords is None and box is None:
            raise ValueError("predict needs at least one point or a box")
        dev = self.device
        S = self.img_size
        coords = labels = boxes = None
        if point_coords is not None:
            pts = np.asarray(point_coords, dtype=np.float32).reshape(-1, 2)
            lab = np.asarray(point_labels if point_labels is not None else np.ones(len(pts)), dtype=np.float32)
            if lab.shape != (len(pts),):
                raise ValueError(f"point_labels must have shape ({len(pts)},), got {lab.shape}")
            if len(pts):
                coords = torch.from_numpy(emb.to_model(pts, S)).to(dev)[None]
                labels = torch.from_numpy(lab).to(dev)[None]
        if box is not None:
            b = np.asarray(box, dtype=np.float32).reshape(2, 2)
            boxes = torch.from_numpy(emb.to_model(b, S).reshape(4)).to(dev)[None]
        if coords is None and boxes is None:
            raise ValueError("predict needs at least one point or a box")
        logits, scores = self.model.decode(emb.embedding, coords, labels, boxes, context=emb.context)
        full = emb.logits_to_image(logits)[0]
        prob = torch.sigmoid(full).cpu().numpy().astype(np.float32)
        return MaskPrediction(prob=prob, mask=prob > 0.5, score=float(scores[0]),
                              low_res_logits=logits[0].float().cpu().numpy())
