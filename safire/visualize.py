"""Rendering of partition results (pure numpy functions returning uint8 arrays)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Official SAFIRE palette by source index (0 = the largest source, as in the paper's figures).
PALETTE = np.array(
    [(190, 174, 212), (127, 201, 127), (253, 192, 134), (255, 255, 153),
     (251, 128, 114), (128, 177, 211), (179, 222, 105), (255, 255, 255)],
    dtype=np.uint8,
)
# Strong tints for overlays: host uncoloured, then red, cyan, yellow, magenta, ...
OVERLAY_COLOURS = np.array(
    [(0, 0, 0), (230, 25, 75), (0, 200, 220), (255, 225, 25), (240, 50, 230),
     (60, 180, 75), (245, 130, 48), (70, 90, 255)],
    dtype=np.uint8,
)


def colorize_partition(labels: np.ndarray) -> np.ndarray:
    """HxW source labels -> HxWx3 uint8 colour map (official palette; index >= 8 cycles)."""
    return PALETTE[labels.astype(np.int64) % len(PALETTE)]


def heatmap_to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """HxW float in [0, 1] -> HxW uint8 (rounded)."""
    return np.clip(np.rint(heatmap * 255.0), 0, 255).astype(np.uint8)


def boundaries(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """HxW bool: pixels whose label differs from a 4-neighbour (thickened to ``width``)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    return edge


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint every non-host source of ``image`` (HxWx3 uint8) and outline all source boundaries.

    Source 0 (the host) keeps its pixels; source i >= 1 is blended with ``OVERLAY_COLOURS[i]``.
    The outline width scales with the image (about 0.3 % of the shorter side, at least 1 px).
    """
    out = image.astype(np.float32).copy()
    lab = labels.astype(np.int64)
    colours = OVERLAY_COLOURS[np.where(lab == 0, 0, 1 + (lab - 1) % (len(OVERLAY_COLOURS) - 1))].astype(np.float32)
    tinted = lab > 0
    out[tinted] = (1 - alpha) * out[tinted] + alpha * colours[tinted]
    width = max(1, int(round(min(labels.shape) * 0.003)))
    edge = boundaries(lab, width)
    out[edge] = (255.0, 255.0, 255.0)
    return out.astype(np.uint8)
