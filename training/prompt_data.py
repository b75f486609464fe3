"""Turn dataset samples into training tensors: squash-resized images, paired point prompts and
their point masks, and source labels at embedding resolution (for the contrastive loss).

Every sample is processed with a generator derived from ``(seed, epoch, index)``, so a run is
reproducible and independent of worker count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .point_masks import build_point_targets, sample_paired_points

IGNORE = 255


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """HxW uint8 labels -> size x size by nearest neighbour (pixel-centre sampling)."""
    h, w = labels.shape
    ys = np.minimum(((np.arange(size) + 0.5) * h / size).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(size) + 0.5) * w / size).astype(np.int64), w - 1)
    return labels[ys[:, None], xs[None, :]]


def random_crop(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, min_scale: float = 0.6):
    """Random crop keeping between ``min_scale`` and 1 of each side."""
    h, w = labels.shape
    ch = int(h * rng.uniform(min_scale, 1.0))
    cw = int(w * rng.uniform(min_scale, 1.0))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return image[y0 : y0 + ch, x0 : x0 + cw], labels[y0 : y0 + ch, x0 : x0 + cw]


#: Padding colour of native crops: the ImageNet pixel mean (0 after normalisation).
PAD_RGB = (124, 116, 104)


def native_crop(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator):
    """Random ``size x size`` crop at native resolution; smaller images are padded bottom/right
    with :data:`PAD_RGB` and IGNORE labels (as inference pads)."""
    h, w = labels.shape
    if h < size or w < size:
        ph, pw = max(size - h, 0), max(size - w, 0)
        image = np.concatenate([image, np.broadcast_to(np.array(PAD_RGB, np.uint8), (h, pw, 3))], axis=1) if pw else image
        labels = np.pad(labels, ((0, 0), (0, pw)), constant_values=IGNORE) if pw else labels
        image = np.concatenate([image, np.broadcast_to(np.array(PAD_RGB, np.uint8), (ph, w + pw, 3))], axis=0) if ph else image
        labels = np.pad(labels, ((0, ph), (0, 0)), constant_values=IGNORE) if ph else labels
        h, w = labels.shape
    y0 = int(rng.integers(0, h - size + 1))
    x0 = int(rng.integers(0, w - size + 1))
    return image[y0 : y0 + size, x0 : x0 + size], labels[y0 : y0 + size, x0 : x0 + size]


@dataclass
class PromptSampleConfig:
    img_size: int
    mask_size: int  # decoder low-res side (4 * embedding side)
    embed_size: int
    num_pairs: int = 3
    point_mask_mode: str = "exact"  # exact | eq3 | official
    augment: bool = True
    crop_prob: float = 0.5
    seed: int = 0
    # Native variants: a random img_size x img_size crop at the image's own resolution (padded with
    # the pixel mean and ignored labels when the image is smaller); never resampled.
    native: bool = False


class PromptTrainingSet(Dataset):
    """Wraps a reader whose items have ``image`` (HxWx3 uint8 RGB) and ``labels`` (HxW uint8 source
    index, 255 = ignore). Items:

    - image: 3xSxS in [0, 255]: uint8 when taken as is (native crops: 4x less to move between
      processes), float32 when resized;
    - points: Px2 float32 (x, y) model-frame pixels (P = 2 * num_pairs), labels all positive;
    - targets: Pxmxm int8 point masks at decoder resolution (1 / 0 / -1 ignore);
    - sources: hxw int64 source labels at embedding resolution (255 ignore).
    """

    def __init__(self, reader: Sequence[Any], cfg: PromptSampleConfig) -> None:
        self.reader = reader
        self.cfg = cfg
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.epoch, int(index)])
        item = self.reader[index]
        image, labels = item.image, item.labels
        if cfg.native:
            image, labels = native_crop(image, labels, cfg.img_size, rng)
            if cfg.augment and rng.random() < 0.5:
                image, labels = image[:, ::-1], labels[:, ::-1]
        elif cfg.augment:
            if rng.random() < cfg.crop_prob:
                image, labels = random_crop(image, labels, rng)
            if rng.random() < 0.5:
                image, labels = image[:, ::-1], labels[:, ::-1]
        S = cfg.img_size
        img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None]
        if img.shape[-2:] != (S, S):
            img = F.interpolate(img.float(), size=(S, S), mode="bilinear", align_corners=False).clamp_(0, 255)
        lab_s = resize_labels(np.ascontiguousarray(labels), S)
        if (lab_s == IGNORE).all():
            lab_s = np.zeros_like(lab_s)
        points, _ = sample_paired_points(lab_s, cfg.num_pairs, rng, ignore_index=IGNORE)
        targets = build_point_targets(lab_s, points, mode=cfg.point_mask_mode, ignore_index=IGNORE)
        step = S // cfg.mask_size
        # Nearest downsample of the point masks (pixel centres), preserving -1.
        off = step // 2
        targets = targets[:, off::step, off::step][:, : cfg.mask_size, : cfg.mask_size]
        sources = resize_labels(lab_s, cfg.embed_size).astype(np.int64)
        return {
            "image": img[0],
            "points": torch.from_numpy(points.astype(np.float32)),
            "targets": torch.from_numpy(np.ascontiguousarray(targets)),
            "sources": torch.from_numpy(sources),
        }


class ConcatReader:
    """Several readers seen as one sequence (items keep their own types)."""

    def __init__(self, readers: Sequence[Any]) -> None:
        self.readers = list(readers)
        self._offsets = np.cumsum([0] + [len(r) for r in self.readers])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        r = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return self.readers[r][index - int(self._offsets[r])]
