"""Multi-source partition of an image (the paper's grid inference), CPU-efficient.

Pipeline (``partition``):

1. A ``g x g`` grid of single positive prompts (default 16x16, SAM's grid) is decoded in chunks,
   keeping only the decoder's low-resolution logits (``N x 4h x 4w``) - never full-size maps.
2. Representative feature of each prompt (paper Eq. 8): the mean image embedding over the embedding
   cells its mask covers, the mask being read at the cell's top-left model-frame pixel exactly as the
   official code reads its 1024x1024 upsampled mask (bilinear sampling, no upsampling). Prompts with
   empty masks get no feature and take no part in clustering.
3. Clustering: a fixed number of sources (seeded k-means, cosine distance, as official), automatic
   (prompts whose masks overlap belong together: average-linkage on mask IoU, plus the image-level
   single-source test below), or the official DBSCAN on features.
4. The most confident prompt of each cluster wins (paper Eq. 9; ties -> first in grid order). Only
   the winners' logits are upsampled, straight to the output resolution.
5. Multi-source map: softmax over the winners' logits (Eq. 10); sources are ordered by area, 0 =
   largest. Binary heat map: Eq. 11 for two sources ``(sigmoid(X_front) + 1 - sigmoid(X_back)) / 2``
   with front = the winner with the smaller mask; ``1 - p(source 0)`` for three or more; all zeros
   for one source.

Image-level forgery score (SAFIRE has none; see ``docs/image-score.md`` and
:mod:`safire.image_score`): with a checkpoint whose calibration stores a score model, a logistic
score of two grid statistics (prompt masks' pairwise disagreement, mean decoder confidence);
otherwise the *complementarity* of the two winners of a seeded 2-means split,
``mean_pixels(p_a (1 - p_b) + p_b (1 - p_a))`` with p the winners' mask probabilities at low
resolution (near 0 when any two winners coincide, as on an authentic image; near 1 when they are a
source and its complement, whatever the forged area).

Uncertainty (``PartitionResult.uncertainty``, :mod:`safire.uncertainty`): how much the model's
own grid disagrees with the answer it gave, from what the grid decode already holds (no extra model
pass), in [0, 1]; high means "label this image next". ``1 - (1 - D) (1 - M)``: high when either

* D, the *prompt disagreement*: ``1 - mean IoU`` of every prompt's binarised mask with the winner
  of its source (the mean over prompts weights each source by its number of prompts); and
* M, the *decision margin* term: ``1 -`` the distance of the image score from
  ``single_source_threshold``, as a fraction of the room on that side,

is high. An authentic image whose prompts all return the whole image, and a forged image whose
prompts each return their own source cleanly, with a score far from the threshold, are near 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .clustering import cluster_masks, dbscan_features, kmeans_cosine
from .fast_decoder import DecoderContext
from .image_score import check_score_model, complementarity, grid_statistics, logistic_score
from .uncertainty import (DISAGREEMENT_SIZE, margin_uncertainty,  # noqa: F401 (re-exported)
                          partition_uncertainty, prompt_disagreement)
from .modeling import Safire
from .predictor import ImageEmbedding, SafirePredictor
from .transforms import grid_points, native_grid_points, native_logits_to_image, sample_logits_at, upsample_logits


#: Automatic-mode settings a checkpoint may carry (``meta["partition"]``, written by
#: ``safire calibrate``): they were tuned on held-out data for those weights.
CALIBRATED_KEYS = ("single_source_threshold", "iou_threshold", "min_area", "max_sources", "dbscan_eps",
                   "image_score")


def calibrated_defaults(model: Safire) -> Dict[str, float]:
    """The partition settings stored with ``model``'s weights (empty for the official weights)."""
    stored = (getattr(model, "meta", None) or {}).get("partition") or {}
    return {k: stored[k] for k in CALIBRATED_KEYS if k in stored}


@dataclass
class PartitionResult:
    """Partition of one image into sources, at the output resolution ``H x W``.

    labels: HxW uint8 source index, 0 = the largest source (the host).
    probs: KxHxW float32 per-source probabilities (softmax over sources; all ones when K = 1).
    heatmap: HxW float32 in [0, 1], binary forgery map (high = not the host).
    num_sources: K.
    confidences: K float32, the winning prompt's confidence per source.
    areas: K float32, fraction of pixels labelled with each source (descending).
    score: image-level forgery score in [0, 1] (see module docstring).
    winners: K int, grid index of each source's winning prompt.
    grid_labels: N int, cluster of each grid prompt (-1: empty mask), in output source order where
        the cluster survived, else -1.
    uncertainty: float in [0, 1], ``1 - (1 - disagreement) (1 - margin term)`` (module docstring,
        :func:`partition_uncertainty`): 0 = the grid agrees with the answer and the score is far
        from the single-source threshold; 1 = the prompts contradict the answer or the score sits
        on the threshold.
    disagreement: float in [0, 1], its prompt-disagreement part (:func:`prompt_disagreement`).
    statistics: the grid statistics a stored image-score model reads
        (:func:`safire.image_score.grid_statistics`).
    timings: seconds per stage.
    """

    labels: np.ndarray
    probs: np.ndarray
    heatmap: np.ndarray
    num_sources: int
    confidences: np.ndarray
    areas: np.ndarray
    score: float
    winners: np.ndarray
    grid_labels: np.ndarray
    uncertainty: float
    disagreement: float
    statistics: Dict[str, float] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)


@dataclass
class GridOutput:
    """Decoded grid prompts. logits: Nxmxm float32 (low-res, model frame); scores: N float32.

    Native variants also carry ``native`` (:class:`NativeGrid`): the grid was decoded on a pooled
    embedding, and the winners are decoded again on the full one before they are combined.
    """

    logits: torch.Tensor
    scores: torch.Tensor
    points: np.ndarray
    native: Optional["NativeGrid"] = None


@dataclass
class NativeGrid:
    """What a native partition needs besides the grid logits.

    embedding: 1xCxhpxwp the (pooled) embedding the grid was decoded on; cells: (rows, cols) of it
    that cover the image (the rest is padding); refine: grid indices -> Kx(4h)x(4w) logits of those
    prompts decoded on the full embedding; to_image: (Kx(4h)x(4w) logits, out_hw) -> KxHxW.
    """

    embedding: torch.Tensor
    cells: Tuple[int, int]
    refine: Callable[[np.ndarray], torch.Tensor]
    to_image: Callable[[torch.Tensor, Tuple[int, int]], torch.Tensor]


def _decode_points(model: Safire, embedding: torch.Tensor, pts: np.ndarray, chunk_size: int,
                   ctx: DecoderContext, stride: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    dev = embedding.device
    logits, scores = [], []
    for i in range(0, len(pts), chunk_size):
        c = torch.from_numpy(pts[i : i + chunk_size]).to(dev)[:, None, :]
        lab = torch.ones(c.shape[:2], device=dev)
        lo, sc = model.decode(embedding, c, lab, context=ctx, stride=stride)
        logits.append(lo.float())
        scores.append(sc.float())
    return torch.cat(logits), torch.cat(scores)


def _chunk(embedding: torch.Tensor, chunk_size: Optional[int]) -> int:
    if chunk_size is not None:
        return chunk_size
    return max(8, min(32, 65536 // (embedding.shape[-1] * embedding.shape[-2])))


@torch.inference_mode()
def decode_grid(model: Safire, embedding: torch.Tensor, grid_size: int = 16, chunk_size: Optional[int] = None,
                context: Optional[DecoderContext] = None, orig_hw: Optional[Tuple[int, int]] = None) -> GridOutput:
    """Decode ``grid_size**2`` single positive prompts in chunks (flat memory), sharing the image's
    decoder context (built here when not given). ``chunk_size`` None: about 64k image tokens per
    chunk, at most 32 prompts (16 for ViT-B's 64x64 embedding, 32 for tiny's 16x16: the fastest
    sizes measured on a 2-core CPU; larger chunks are memory-bound).

    Native variants (``orig_hw`` required: the original image size): the grid spans the original
    image; it is decoded on the embedding average-pooled by ``k = ceil(max(h, w) / grid_tokens)``
    (a 64x48 grid -> 32x24 cells), which is what keeps a 1024x768 partition within a CPU budget;
    the winners are decoded again on the full embedding later (:class:`NativeGrid`)."""
    if not model.native:
        pts = grid_points(grid_size, model.config.img_size)
        ctx = context if context is not None else model.decoder_context(embedding)
        logits, scores = _decode_points(model, embedding, pts, _chunk(embedding, chunk_size), ctx)
        return GridOutput(logits, scores, pts)
    if orig_hw is None:
        raise ValueError("decode_grid needs orig_hw (the original image size) for a native model")
    H, W = int(orig_hw[0]), int(orig_hw[1])
    h, w = embedding.shape[-2:]
    k = max(1, -(-max(h, w) // model.config.grid_tokens))
    stride = model.config.patch_size * k
    pooled = F.avg_pool2d(embedding, k, ceil_mode=True) if k > 1 else embedding
    pctx = model.decoder_context(pooled, stride) if k > 1 or context is None else context
    pts = native_grid_points(grid_size, (H, W))
    logits, scores = _decode_points(model, pooled, pts, _chunk(pooled, chunk_size), pctx, stride)
    full_ctx = context

    def refine(idx: np.ndarray) -> torch.Tensor:
        nonlocal full_ctx
        if full_ctx is None:
            full_ctx = model.decoder_context(embedding)
        with torch.inference_mode():
            lo, _ = _decode_points(model, embedding, pts[np.asarray(idx, dtype=np.int64)], 32, full_ctx)
        return lo

    cells = (-(-H // stride), -(-W // stride))
    native = NativeGrid(pooled, cells, refine, lambda lo, out_hw: native_logits_to_image(lo, (H, W), out_hw))
    return GridOutput(logits, scores, pts, native)


def native_features(logits: torch.Tensor, grid: NativeGrid) -> Tuple[np.ndarray, np.ndarray]:
    """Representative features (Eq. 8) on a native grid: the mean pooled embedding over the cells
    (inside the image) whose stride-4 logits average above 0. Returns (NxC float64, N bool)."""
    emb = grid.embedding[0]
    c, hp, wp = emb.shape
    rows, cols = grid.cells
    cell = F.avg_pool2d(logits[:, None].float(), 4)[:, 0][:, :rows, :cols]  # N x rows x cols
    sel = (cell > 0).float().reshape(len(logits), -1)
    e = emb[:, :rows, :cols].reshape(c, -1).float()
    counts = sel.sum(1)
    feats = (sel @ e.T) / counts.clamp(min=1)[:, None]
    return feats.double().cpu().numpy(), (counts > 0).cpu().numpy()


def representative_features(logits: torch.Tensor, embedding: torch.Tensor, img_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Mean embedding under each prompt's mask (paper Eq. 8).

    Args:
        logits: Nxmxm low-res logits. embedding: Cxhxw (or 1xCxhxw).
    Returns:
        (features NxC float64 (rows of empty masks are zero), valid N bool).
    """
    emb = embedding.reshape(embedding.shape[-3], -1).float()  # C x (h*w)
    h, w = embedding.shape[-2:]
    stride = img_size // w
    rr, cc = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    xy = torch.stack([cc.reshape(-1) * stride, rr.reshape(-1) * stride], dim=1)
    sel = (sample_logits_at(logits, xy, img_size) > 0).float()  # N x (h*w)
    counts = sel.sum(1)
    feats = (sel @ emb.T.to(sel.device)) / counts.clamp(min=1)[:, None]
    return feats.double().cpu().numpy(), (counts > 0).cpu().numpy()


def _winners(cluster_of: np.ndarray, scores: np.ndarray) -> np.ndarray:
    out = []
    for c in range(cluster_of.max() + 1 if (cluster_of >= 0).any() else 0):
        members = np.flatnonzero(cluster_of == c)
        if len(members):
            out.append(members[np.argmax(scores[members])])  # argmax: first on ties
    return np.asarray(out, dtype=np.int64)


def partition_from_grid(
    grid: GridOutput,
    embedding: torch.Tensor,
    img_size: int,
    out_hw: Tuple[int, int],
    num_sources: Union[int, str] = "auto",
    *,
    method: Optional[str] = None,
    seed: int = 0,
    n_init: int = 4,
    max_sources: int = 4,
    iou_threshold: float = 0.5,
    single_source_threshold: float = 0.5,
    min_area: float = 0.002,
    dbscan_eps: float = 0.2,
    gate_authentic: bool = False,
    image_score: Optional[Mapping[str, Any]] = None,
) -> PartitionResult:
    """Cluster decoded grid prompts and combine the winners (steps 2-5 of the module docstring).

    Args:
        num_sources: "auto" or a fixed K >= 1.
        method: "kmeans" (default for fixed K), "masks" (default for auto) or "dbscan" (auto only).
        single_source_threshold: auto mode declares one source when the image score is below it
            (so does a fixed K with ``gate_authentic``).
        gate_authentic: with a fixed K, an image whose score is below ``single_source_threshold``
            is one source (authentic) instead of K; e.g. the binary path: K = 2 plus this gate.
        min_area: auto mode drops sources whose winner mask covers less than this image fraction.
        image_score: a stored score model (:func:`safire.image_score.logistic_score`, written by
            ``safire calibrate``); None: the complementarity of the 2-means winners.

    The result's ``uncertainty`` (and ``disagreement``) is measured on the final sources, before
    sources without pixels are dropped by :func:`combine_winners` (module docstring).
    """
    t0 = time.perf_counter()
    timings: Dict[str, float] = {}
    logits, scores = grid.logits, grid.scores.cpu().numpy().astype(np.float64)
    n = len(scores)
    if grid.native is not None:
        feats, valid = native_features(logits, grid.native)
    else:
        feats, valid = representative_features(logits, embedding, img_size)
    timings["features"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    idx_valid = np.flatnonzero(valid)
    cluster_of = np.full(n, -1, dtype=np.int64)

    # Image-level score: the stored score model, else the complementarity of a seeded 2-means split.
    score = 0.0
    crop = None
    if grid.native is not None:
        crop = (4 * grid.native.cells[0], 4 * grid.native.cells[1])  # stride-4 logits of the pooled cells
    statistics = grid_statistics(logits, grid.scores, valid, crop)
    if image_score is not None:
        check_score_model(image_score)
        score = logistic_score(statistics, image_score)
    elif len(idx_valid) >= 2:
        lab2, _ = kmeans_cosine(feats[idx_valid], 2, seed=seed, n_init=n_init)
        tmp = np.full(n, -1, dtype=np.int64)
        tmp[idx_valid] = lab2
        w2 = _winners(tmp, scores)
        if len(w2) == 2:
            score = complementarity(logits[w2[0]], logits[w2[1]])

    if isinstance(num_sources, str):
        if num_sources != "auto":
            raise ValueError(f"num_sources must be 'auto' or an int, got {num_sources!r}")
        method = method or "masks"
        if len(idx_valid) == 0 or score < single_source_threshold:
            cluster_of[idx_valid] = 0
        elif method == "masks":
            m = logits[idx_valid]
            q = min(m.shape[-1], 64)
            small = F.interpolate(m[:, None], size=(q, q), mode="bilinear", align_corners=False)[:, 0] > 0
            cluster_of[idx_valid] = cluster_masks(small.reshape(len(idx_valid), -1).cpu().numpy(), iou_threshold)
        elif method == "dbscan":
            cluster_of[idx_valid] = dbscan_features(feats[idx_valid], eps=dbscan_eps)
        else:
            raise ValueError(f"unknown auto clustering method {method!r} (masks, dbscan)")
    else:
        k = int(num_sources)
        if k < 1:
            raise ValueError("num_sources must be >= 1")
        if (method or "kmeans") != "kmeans":
            raise ValueError("a fixed number of sources uses method='kmeans'")
        if len(idx_valid) and gate_authentic and score < single_source_threshold:
            cluster_of[idx_valid] = 0
        elif len(idx_valid):
            cluster_of[idx_valid], _ = kmeans_cosine(feats[idx_valid], k, seed=seed, n_init=n_init)
    winners = _winners(cluster_of, scores)

    if isinstance(num_sources, str) and len(winners) > 1:
        # Drop specks, then keep the clusters with the most prompts (ties: grid order).
        areas_lr = (logits[winners] > 0).float().mean(dim=(1, 2)).cpu().numpy()
        sizes = np.array([(cluster_of == c).sum() for c in range(len(winners))])
        keep = [i for i in np.argsort(-sizes, kind="stable") if areas_lr[i] >= min_area][:max_sources]
        if len(keep) < 2 and score >= single_source_threshold:
            # The masks disagree (score) but one cluster dominates: fall back to the 2-means split.
            lab2, _ = kmeans_cosine(feats[idx_valid], 2, seed=seed, n_init=n_init)
            cluster_of[:] = -1
            cluster_of[idx_valid] = lab2
            winners = _winners(cluster_of, scores)
        else:
            keep = sorted(keep)
            remap = np.full(len(winners), -1)
            remap[keep] = np.arange(len(keep))
            cluster_of = np.where(cluster_of >= 0, remap[np.maximum(cluster_of, 0)], -1)
            winners = winners[keep]
    timings["cluster"] = time.perf_counter() - t1

    t3 = time.perf_counter()
    disagreement = prompt_disagreement(logits, cluster_of, winners, crop)
    uncertainty = partition_uncertainty(disagreement, score, single_source_threshold)
    timings["uncertainty"] = time.perf_counter() - t3

    t2 = time.perf_counter()
    if grid.native is not None:
        nat = grid.native
        result = combine_winners(logits, winners, scores, out_hw,
                                 winner_logits=nat.refine(winners) if len(winners) > 1 else None,
                                 to_image=nat.to_image)
    else:
        result = combine_winners(logits, winners, scores, out_hw)
    order = result.pop("order")
    inverse = np.full(len(winners) + 1, -1)
    inverse[order] = np.arange(len(order))
    grid_labels = np.where(cluster_of >= 0, inverse[np.maximum(cluster_of, 0)], -1)
    timings["combine"] = time.perf_counter() - t2
    return PartitionResult(score=score, grid_labels=grid_labels, uncertainty=uncertainty,
                           disagreement=disagreement, statistics=statistics, timings=timings, **result)


def combine_winners(logits: torch.Tensor, winners: np.ndarray, scores: np.ndarray, out_hw: Tuple[int, int],
                    winner_logits: Optional[torch.Tensor] = None,
                    to_image: Optional[Callable[[torch.Tensor, Tuple[int, int]], torch.Tensor]] = None) -> Dict:
    """Upsample the winners' logits to ``out_hw`` and combine them (Eq. 10 / Eq. 11).

    ``winner_logits`` (Kxmxm, one per winner) replaces ``logits[winners]`` (native variants decode
    the winners again on the full embedding); ``to_image`` replaces the squash upsampling.

    Returns a dict with labels, probs, heatmap, num_sources, confidences, areas, winners and
    ``order`` (winner positions sorted by decreasing area; sources with no pixel are dropped).
    """
    H, W = out_hw
    if len(winners) <= 1:
        w = winners[:1]
        return dict(labels=np.zeros((H, W), np.uint8), probs=np.ones((1, H, W), np.float32),
                    heatmap=np.zeros((H, W), np.float32), num_sources=1,
                    confidences=scores[w].astype(np.float32) if len(w) else np.zeros(1, np.float32),
                    areas=np.ones(1, np.float32), winners=w.astype(np.int64), order=np.zeros(1, np.int64))
    lo = winner_logits if winner_logits is not None else logits[torch.from_numpy(winners)]
    full = to_image(lo, out_hw) if to_image is not None else upsample_logits(lo, out_hw)  # K x H x W
    probs = torch.softmax(full, dim=0)
    arg = probs.argmax(0)
    counts = torch.bincount(arg.reshape(-1), minlength=len(winners)).cpu().numpy()
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    if len(order) == 1:
        return combine_winners(logits, winners[order], scores, out_hw,
                               None if winner_logits is None else winner_logits[torch.from_numpy(order)],
                               to_image) | {"order": order}
    probs = probs[torch.from_numpy(order)]
    if len(order) != len(winners):  # renormalise over the surviving sources
        probs = probs / probs.sum(0, keepdim=True)
    labels = probs.argmax(0).to(torch.uint8).cpu().numpy()
    if len(order) == 2:
        lr_area = (lo[torch.from_numpy(order)] > 0).sum(dim=(1, 2)).cpu().numpy()
        # Official tie rule: with equal areas the second winner is "back".
        front, back = (0, 1) if lr_area[0] < lr_area[1] else (1, 0)
        sig = torch.sigmoid(full[torch.from_numpy(order)])
        heat = (sig[front] + (1 - sig[back])) / 2
    else:
        heat = 1 - probs[0]
    hw = float(H * W)
    return dict(labels=labels, probs=probs.cpu().numpy().astype(np.float32),
                heatmap=heat.cpu().numpy().astype(np.float32), num_sources=len(order),
                confidences=scores[winners[order]].astype(np.float32),
                areas=(counts[order] / hw).astype(np.float32), winners=winners[order], order=order)


def partition(
    predictor: SafirePredictor,
    image: Union[np.ndarray, ImageEmbedding],
    num_sources: Union[int, str] = "auto",
    *,
    grid_size: int = 16,
    chunk_size: Optional[int] = None,
    out_hw: Optional[Tuple[int, int]] = None,
    **kwargs,
) -> PartitionResult:
    """Partition an image (HxWx3 uint8 RGB, or its cached :class:`ImageEmbedding`).

    Output resolution is the original image's unless ``out_hw`` is given. Extra keyword arguments
    go to :func:`partition_from_grid` (``seed``, ``method``, ``max_sources``, ...); settings not
    given come from the checkpoint's calibration (:func:`calibrated_defaults`), then the defaults.
    """
    t0 = time.perf_counter()
    emb = image if isinstance(image, ImageEmbedding) else predictor.embed(image)[0]
    t1 = time.perf_counter()
    grid = decode_grid(predictor.model, emb.embedding, grid_size, chunk_size, context=emb.context,
                       orig_hw=emb.orig_hw)
    t2 = time.perf_counter()
    with torch.inference_mode():
        res = partition_from_grid(grid, emb.embedding[0], predictor.img_size, out_hw or emb.orig_hw,
                                  num_sources, **{**calibrated_defaults(predictor.model), **kwargs})
    res.timings = {"encode": t1 - t0, "decode": t2 - t1, **res.timings, "total": time.perf_counter() - t0}
    return res
