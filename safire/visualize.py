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


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45, band_rows: int = 0) -> np.ndarray:
    """Tint every non-host source of ``image`` (HxWx3 uint8) and outline all source boundaries.

    Source 0 (the host) keeps its pixels; source i >= 1 is blended with ``OVERLAY_COLOURS[i]``.
    The outline width scales with the image (about 0.3 % of the shorter side, at least 1 px).
    ``band_rows`` > 0 works on bands of that many rows (same result, bounded float memory for
    very large images).
    """
    width = max(1, int(round(min(labels.shape) * 0.003)))
    h = labels.shape[0]
    if band_rows <= 0 or h <= band_rows:
        return _overlay(image, labels, alpha, width)
    out = np.empty_like(image, dtype=np.uint8)
    pad = width + 1  # rows of context: the outline near a band's edge depends on them
    for y0 in range(0, h, band_rows):
        y1 = min(h, y0 + band_rows)
        a, b = max(0, y0 - pad), min(h, y1 + pad)
        out[y0:y1] = _overlay(image[a:b], labels[a:b], alpha, width)[y0 - a:y1 - a]
    return out


def _overlay(image: np.ndarray, labels: np.ndarray, alpha: float, width: int) -> np.ndarray:
    out = image.astype(np.float32).copy()
    lab = labels.astype(np.int64)
    colours = OVERLAY_COLOURS[np.where(lab == 0, 0, 1 + (lab - 1) % (len(OVERLAY_COLOURS) - 1))].astype(np.float32)
    tinted = lab > 0
    out[tinted] = (1 - alpha) * out[tinted] + alpha * colours[tinted]
    edge = boundaries(lab, width)
    out[edge] = (255.0, 255.0, 255.0)
    return out.astype(np.uint8)


# Anchors of a perceptually ordered dark-to-bright map (close to matplotlib's "inferno"), so heat
# maps render the same with or without matplotlib installed.
_HEAT_ANCHORS = np.array(
    [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66),
     (245, 125, 21), (250, 193, 39), (252, 255, 164)],
    dtype=np.float32,
)
_HEAT_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_HEAT_ANCHORS)), _HEAT_ANCHORS[:, c])
     for c in range(3)], axis=1).round().astype(np.uint8)


def heatmap_colour(heatmap: np.ndarray) -> np.ndarray:
    """HxW float heat map in [0, 1] -> HxWx3 uint8 (dark = the host, bright = forged)."""
    return _HEAT_LUT[heatmap_to_uint8(np.asarray(heatmap, dtype=np.float32))]


def truth_colour(labels: np.ndarray, ignore: int = 255) -> np.ndarray:
    """Ground-truth source labels -> colours (official palette); ``ignore`` pixels mid grey."""
    lab = np.asarray(labels)
    out = colorize_partition(np.where(lab == ignore, 0, lab))
    out[lab == ignore] = (128, 128, 128)
    return out


def _resize(arr: np.ndarray, size: tuple, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    if (arr.shape[1], arr.shape[0]) == tuple(size):
        return arr
    return np.asarray(Image.fromarray(arr).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def tile_row(tiles, captions=None, title: str = "", *, tile_height: int = 0, max_pixels: int = 0,
             nearest=None, gap: int = 6) -> np.ndarray:
    """Tiles (HxWx3 or HxW uint8, same size) side by side on a dark strip with captions and a title.

    ``tile_height`` > 0 scales every tile to that height; else tiles keep their size unless the
    row would exceed ``max_pixels`` (then they are scaled down to fit). ``nearest``: per tile, use
    nearest-neighbour scaling (label maps). Text uses PIL's built-in bitmap font.
    """
    from PIL import Image, ImageDraw

    tiles = [np.repeat(t[..., None], 3, axis=2) if t.ndim == 2 else t for t in tiles]
    h, w = tiles[0].shape[:2]
    scale = 1.0
    if tile_height > 0:
        scale = tile_height / h
    elif max_pixels > 0 and len(tiles) * h * w > max_pixels:
        scale = (max_pixels / (len(tiles) * h * w)) ** 0.5
    if scale != 1.0:
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        nearest = nearest or [False] * len(tiles)
        tiles = [_resize(t, size, bool(nn)) for t, nn in zip(tiles, nearest)]
        h, w = tiles[0].shape[:2]
    line = 14
    head = (line + 4) * (1 if title else 0) + (line + 2 if captions else 0) + 4
    W = len(tiles) * w + (len(tiles) + 1) * gap
    canvas = np.full((head + h + gap, W, 3), 24, np.uint8)
    for i, t in enumerate(tiles):
        x = gap + i * (w + gap)
        canvas[head:head + h, x:x + w] = t
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    y = 3
    if title:
        draw.text((gap, y), title, fill=(235, 235, 235))
        y += line + 4
    for i, cap in enumerate(captions or []):
        draw.text((gap + i * (w + gap), y), str(cap), fill=(200, 200, 200))
    return np.asarray(img)


def explain_panel(image: np.ndarray, heatmap: np.ndarray, labels: np.ndarray, title: str = "",
                  max_pixels: int = 24_000_000) -> np.ndarray:
    """The analyst's view of one prediction: image | continuous heat map | sources over the image.

    At the image's resolution unless the three tiles together exceed ``max_pixels`` (then scaled).
    """
    k = int(labels.max()) + 1 if labels.size else 1
    h, w = labels.shape
    if max_pixels > 0 and 3 * h * w > max_pixels:  # scale the inputs first: no full-size tiles in memory
        from PIL import Image

        f = (max_pixels / (3 * h * w)) ** 0.5
        size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
        image = _resize(image, size)
        heatmap = np.asarray(Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(size, Image.BILINEAR))
        labels = _resize(labels.astype(np.uint8), size, nearest=True)
    return tile_row([image, heatmap_colour(heatmap), overlay(image, labels, band_rows=1024)],
                    ["image", "heat map (bright = forged)", f"sources ({k}), host untinted"], title)
