"""Pure pre/post-processing functions shared by inference and training.

Preprocessing (as the official SAFIRE code): the original HxW RGB image is *squash-resized* (aspect
ratio not kept, no padding) to ``S x S`` with bilinear interpolation (half-pixel centres, no
antialiasing, like OpenCV's INTER_LINEAR), then normalised inside the model.

Coordinates: points are ``(x, y)`` pixels. Original -> model frame is ``x * S / W``, ``y * S / H``
(SAM's convention; the prompt encoder adds the half-pixel shift itself).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an HxWx3 uint8 RGB array (greyscale HxW and RGBA are converted)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be HxWx3 RGB, got shape {image.shape}")
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image is too small: {image.shape[1]}x{image.shape[0]}")
    return image


def squash_resize(image: np.ndarray, size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 1x3xSxS float32 in [0, 255] (bilinear, aspect ratio not kept)."""
    image = check_image(image)
    arr = np.ascontiguousarray(image)
    if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. decoded PIL buffers)
        arr = arr.copy()
    x = torch.from_numpy(arr).to(device=device)
    x = x.permute(2, 0, 1).unsqueeze(0).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        x = x.clamp_(0.0, 255.0)
    return x


def squash_resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """BxHxWx3 uint8 (or Bx3xHxW float) -> Bx3xSxS float32 in [0, 255]."""
    if images.dtype == torch.uint8:
        images = images.permute(0, 3, 1, 2).float()
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 255)
    return images


def points_to_model(points: np.ndarray, orig_hw: Tuple[int, int], size: int) -> np.ndarray:
    """Nx2 (x, y) original pixels -> Nx2 (x, y) model-frame pixels (float32)."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2).copy()
    h, w = orig_hw
    pts[:, 0] *= size / w
    pts[:, 1] *= size / h
    return pts


def box_to_model(box: Sequence[float], orig_hw: Tuple[int, int], size: int) -> np.ndarray:
    """(x0, y0, x1, y1) original pixels -> model-frame pixels, float32 shape (4,)."""
    b = np.asarray(box, dtype=np.float32).reshape(2, 2)
    return points_to_model(b, orig_hw, size).reshape(4)


def grid_points(n_per_side: int, size: int) -> np.ndarray:
    """SAM's point grid: (n*n)x2 (x, y) model-frame pixels, row-major with x fastest.

    Coordinates are ``linspace(1/(2n), 1 - 1/(2n), n) * size`` (32, 96, ..., 992 for n=16, S=1024).
    """
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side) * size
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1).astype(np.float32)


def upsample_logits(logits: torch.Tensor, out_hw: Tuple[int, int]) -> torch.Tensor:
    """Kxhxw low-resolution logits -> KxHxW at ``out_hw`` (bilinear, half-pixel centres).

    Because the model frame is a squash of the original, one bilinear resize maps the decoder's
    low-resolution logits straight to the original resolution.
    """
    if tuple(logits.shape[-2:]) == tuple(out_hw):
        return logits
    return F.interpolate(logits[None].float(), size=out_hw, mode="bilinear", align_corners=False)[0]


def sample_logits_at(logits: torch.Tensor, xy: torch.Tensor, frame: int) -> torch.Tensor:
    """Bilinear value of low-res logits at model-frame pixel positions, exactly as if the logits
    had first been upsampled to ``frame x frame`` (align_corners=False) and then indexed.

    Args:
        logits: Nxhxw. xy: Px2 (x, y) integer pixel positions in the ``frame`` grid.
    Returns:
        NxP float.
    """
    h, w = logits.shape[-2:]
    # Centre of frame pixel i maps to source coordinate (i + 0.5) * h / frame - 0.5; grid_sample with
    # align_corners=False expects normalised coordinates (2 * (src + 0.5) / h - 1).
    gx = 2.0 * ((xy[:, 0].float() + 0.5) * w / frame) / w - 1.0
    gy = 2.0 * ((xy[:, 1].float() + 0.5) * h / frame) / h - 1.0
    grid = torch.stack([gx, gy], dim=-1).view(1, 1, -1, 2).expand(logits.shape[0], -1, -1, -1)
    out = F.grid_sample(logits[:, None].float(), grid.to(logits.device), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[:, 0, 0, :]


# -- native-resolution frame (variants with ``resize == "pad"``) ------------------------------------
# The model frame is the original image padded bottom/right to a multiple of the stride: original
# pixel (x, y) is model pixel (x, y); low-resolution logits are at stride 4 of the padded frame.


def to_tensor(image: np.ndarray, device: Optional[torch.device] = None,
              dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
    """HxWx3 uint8 RGB -> 1x3xHxW in [0, 255] (no resampling); ``dtype=None`` keeps uint8 (a
    view when possible: the native encoder converts tile by tile)."""
    arr = np.ascontiguousarray(check_image(image))
    if not arr.flags.writeable:
        arr = arr.copy()
    x = torch.from_numpy(arr).to(device=device).permute(2, 0, 1).unsqueeze(0)
    return x if dtype is None else x.to(dtype)


def padded_hw(hw: Tuple[int, int], multiple: int) -> Tuple[int, int]:
    """(H, W) rounded up to multiples of ``multiple``."""
    return (-(-int(hw[0]) // multiple) * multiple, -(-int(hw[1]) // multiple) * multiple)


def native_logits_to_image(logits: torch.Tensor, orig_hw: Tuple[int, int],
                           out_hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Kxhxw stride-4 logits of a padded native frame -> KxHxW over the original image.

    The logits covering the image are upsampled 4x (bilinear, half-pixel centres) and cropped to
    ``orig_hw``; with a different ``out_hw`` (e.g. a bounded working resolution) the same logits are
    resized straight to it (scale ``out_hw / orig_hw``) and cropped, so no full-size map is made.
    """
    H, W = int(orig_hw[0]), int(orig_hw[1])
    oh, ow = (H, W) if out_hw is None else (int(out_hw[0]), int(out_hw[1]))
    lh, lw = -(-H // 4), -(-W // 4)
    lo = logits[..., :lh, :lw].float()
    # the lh x lw logits cover 4lh x 4lw original pixels; scale them so that the original image
    # maps onto oh x ow, then crop: one bilinear step, never a full-resolution map first
    th, tw = -(-4 * lh * oh // H), -(-4 * lw * ow // W)
    return F.interpolate(lo[None], size=(th, tw), mode="bilinear", align_corners=False)[0][..., :oh, :ow]


def native_grid_points(n_per_side: int, orig_hw: Tuple[int, int]) -> np.ndarray:
    """SAM's point grid over an original HxW image: (n*n)x2 (x, y) pixels, row-major, x fastest."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile((side * orig_hw[1])[None, :], (n_per_side, 1))
    ys = np.tile((side * orig_hw[0])[:, None], (1, n_per_side))
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1).astype(np.float32)
