"""Point masks and dual-region paired point sampling for SAFIRE training.

SAFIRE is trained with point prompts: each prompt point asks the model to
segment "the source region containing me".  The image-level ground truth has
to be turned into a per-point target, the *point mask*, with values

* ``1``  -- the region the point belongs to (positive),
* ``0``  -- region(s) that are known to come from a different source (negative),
* ``-1`` -- unknown / ignored (excluded from the losses).

Conventions used throughout this module
---------------------------------------
* Images / masks are ``H x W`` numpy arrays indexed ``[row, col] = [y, x]``.
* A point is an integer pixel coordinate ``(x, y)``: ``x`` is the column
  (``0 <= x < W``), ``y`` the row (``0 <= y < H``).  Point arrays are
  ``N x 2`` integer arrays whose columns are ``(x, y)``, which is the order
  SAM's prompt encoder expects.
* Point masks are ``H x W`` ``np.int8`` arrays with values in ``{1, 0, -1}``.
* Connected components are 4-connected (as ``cv2.connectedComponents(...,
  connectivity=4)`` in the official code); "touching" / "neighbouring" means
  8-neighbourhood adjacency, i.e. intersecting the 3x3 dilation of a component.

Three point-mask constructions are provided:

``point_mask_multisource``
    Exact target when a multi-source label map is available (paper, text
    before Eq. 3): 1 on the whole source of the point, 0 on every other
    labelled source.
``point_mask_eq3``
    Paper Eq. 3 for binary masks: 1 on the 4-connected component of the point,
    0 on the opposite-label components that neighbour it, -1 elsewhere.
``point_mask_official``
    What the released training code actually computes (SAFIRE reference
    notes, sections 5.2 and 10.2): because of
    ``connectedComponents(255 - mask)`` the *whole* opposite-label region is a
    single "component", so it is 0 as soon as the point's component touches it.
    Same-label components that touch the point's component diagonally keep
    their value 1; the remaining same-label components are -1.

Everything here is pure numpy/scipy (no OpenCV) and deterministic given the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

__all__ = [
    "point_mask_eq3",
    "point_mask_official",
    "point_mask_multisource",
    "sample_paired_points",
    "build_point_targets",
]

PointLike = Union[Sequence[int], np.ndarray]

# 4-connectivity for component labelling, full 3x3 for "touching".
_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _check_point(point: PointLike, shape: Tuple[int, int]) -> Tuple[int, int]:
    """Return ``(x, y)`` as python ints after validating it lies inside ``shape``."""
    p = np.asarray(point).reshape(-1)
    if p.shape[0] != 2:
        raise ValueError(f"point must be (x, y), got {point!r}")
    x, y = int(p[0]), int(p[1])
    h, w = shape
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"point (x={x}, y={y}) outside image of shape (H={h}, W={w})")
    return x, y


def _valid_mask(labels: np.ndarray, ignore_index: Optional[int]) -> np.ndarray:
    """Pixels that carry a label: not ``ignore_index`` and not negative."""
    valid = np.ones(labels.shape, dtype=bool) if labels.dtype == bool else labels >= 0
    if ignore_index is not None:
        valid &= labels != ignore_index
    return valid


class _BinaryComponents(NamedTuple):
    """4-connected components of both labels of a binary mask (computed once per image)."""

    lab: np.ndarray  # HxW bool, the binary label (meaningless where ~valid)
    valid: np.ndarray  # HxW bool
    comps: Tuple[np.ndarray, np.ndarray]  # component ids of label-0 / label-1 pixels (0 = not that label)
    counts: Tuple[int, int]
    slices: Tuple[list, list]  # ndimage.find_objects per label


def _binary_components(binary: np.ndarray, ignore: Optional[np.ndarray]) -> _BinaryComponents:
    binary = np.asarray(binary)
    if binary.ndim != 2:
        raise ValueError(f"binary mask must be HxW, got shape {binary.shape}")
    lab = binary != 0
    if ignore is None:
        valid = np.ones(lab.shape, dtype=bool)
    else:
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != lab.shape:
            raise ValueError(f"ignore shape {ignore.shape} != mask shape {lab.shape}")
        valid = ~ignore
    comps, counts, slices = [], [], []
    for value in (False, True):
        c, n = ndimage.label((lab == value) & valid, structure=_FOUR)
        comps.append(c)
        counts.append(int(n))
        slices.append(ndimage.find_objects(c))
    return _BinaryComponents(lab, valid, tuple(comps), tuple(counts), tuple(slices))


def _point_component(bc: _BinaryComponents, x: int, y: int):
    """Locate the point's component and its 3x3 dilation inside a padded window.

    Returns ``(v, cid, win, comp_in_win, dilated_in_win)`` where ``v`` is the
    point's binary label (0/1), ``cid`` its component id in ``bc.comps[v]``,
    ``win`` a pair of slices (bounding box of the component padded by one
    pixel and clipped to the image) and the two boolean arrays are restricted
    to that window.  Working in the window keeps the per-point cost
    proportional to the component size, not to the image size.
    """
    if not bc.valid[y, x]:
        raise ValueError(f"point (x={x}, y={y}) lies on an ignored pixel")
    v = int(bc.lab[y, x])
    comp = bc.comps[v]
    cid = int(comp[y, x])
    sl = bc.slices[v][cid - 1]
    h, w = comp.shape
    win = (
        slice(max(sl[0].start - 1, 0), min(sl[0].stop + 1, h)),
        slice(max(sl[1].start - 1, 0), min(sl[1].stop + 1, w)),
    )
    c_win = comp[win] == cid
    d_win = ndimage.binary_dilation(c_win, structure=_EIGHT)
    return v, cid, win, c_win, d_win


def _touched_lut(comp: np.ndarray, win, d_win: np.ndarray, n: int) -> np.ndarray:
    """Boolean lookup table ``lut[id]`` = component ``id`` intersects the dilation (``lut[0]`` False)."""
    lut = np.zeros(n + 1, dtype=bool)
    lut[comp[win][d_win]] = True
    lut[0] = False
    return lut


def _eq3_from_components(bc: _BinaryComponents, x: int, y: int) -> np.ndarray:
    v, _cid, win, c_win, d_win = _point_component(bc, x, y)
    other = bc.comps[1 - v]
    lut = _touched_lut(other, win, d_win, bc.counts[1 - v])
    out = np.full(other.shape, -1, dtype=np.int8)
    out[lut[other]] = 0
    out[win][c_win] = 1
    return out


def _official_from_components(bc: _BinaryComponents, x: int, y: int) -> np.ndarray:
    v, _cid, win, _c_win, d_win = _point_component(bc, x, y)
    same, other = bc.comps[v], bc.comps[1 - v]
    out = np.full(same.shape, -1, dtype=np.int8)
    # The whole opposite-label region is one "component" in the official code.
    if np.any(other[win][d_win]):
        out[other > 0] = 0
    # Every same-label component touched by the dilated point component
    # (the point's own component and any diagonal neighbour) keeps value 1.
    lut = _touched_lut(same, win, d_win, bc.counts[v])
    out[lut[same]] = 1
    return out


# --------------------------------------------------------------------------- #
# public point-mask functions
# --------------------------------------------------------------------------- #
def point_mask_eq3(
    binary: np.ndarray, point: PointLike, ignore: Optional[np.ndarray] = None
) -> np.ndarray:
    """Point mask of paper Eq. 3 for a binary ground truth.

    Args:
        binary: ``H x W`` bool/integer mask; non-zero = label 1 (e.g. forged),
            zero = label 0.  The labels are symmetric here: only "same label as
            the point" vs "other label" matters.
        point: ``(x, y)`` integer pixel coordinate (x = column, y = row).
        ignore: optional ``H x W`` bool mask of pixels without a label (e.g.
            padding).  They are -1 in the output and belong to no component
            (so they do not connect regions).

    Returns:
        ``H x W`` ``np.int8`` with

        * ``1`` on ``R_P``, the 4-connected component of the point's label that
          contains the point;
        * ``0`` on every 4-connected component of the *other* label that
          neighbours ``R_P`` (intersects its 3x3 dilation, i.e. touches it in
          the 8-neighbourhood);
        * ``-1`` everywhere else: non-neighbouring components of the other
          label, all other components of the point's label (including ones
          touching ``R_P`` only diagonally -- the literal Eq. 3 would give
          them 0, which contradicts their identical binary label, and the
          official code gives them 1; ignoring them is the safe choice), and
          ignored pixels.
    """
    bc = _binary_components(binary, ignore)
    x, y = _check_point(point, bc.lab.shape)
    return _eq3_from_components(bc, x, y)


def point_mask_official(
    binary: np.ndarray, point: PointLike, ignore: Optional[np.ndarray] = None
) -> np.ndarray:
    """Point mask as computed by the released SAFIRE training code (``pair_random_cc``).

    Args:
        binary: ``H x W`` bool/integer mask, non-zero = label 1.
        point: ``(x, y)`` integer pixel coordinate.
        ignore: optional ``H x W`` bool mask of unlabeled pixels (-1 in the
            output, excluded from all components).  Not part of the official
            code, which has no ignore pixels at this stage.

    Returns:
        ``H x W`` ``np.int8`` with

        * ``1`` on the point's 4-connected component ``C`` and on every other
          same-label 4-connected component that touches ``C`` (8-neighbourhood;
          only possible diagonally) -- the official code keeps the original
          target value for every touched label;
        * ``0`` on **all** pixels of the other label, provided ``C`` touches
          the other label anywhere (always true unless ``C`` covers every
          labelled pixel), because ``connectedComponents(255 - mask)`` labels
          the whole opposite region as one component;
        * ``-1`` on the remaining same-label components and on ignored pixels.

        For an image with a single label (authentic) this is all ones.
    """
    bc = _binary_components(binary, ignore)
    x, y = _check_point(point, bc.lab.shape)
    return _official_from_components(bc, x, y)


def point_mask_multisource(
    sources: np.ndarray, point: PointLike, ignore_index: Optional[int] = 255
) -> np.ndarray:
    """Exact point mask from a multi-source label map.

    Args:
        sources: ``H x W`` integer map of source indices (``0..K-1``, any
            non-negative ids work).  Pixels equal to ``ignore_index`` or
            negative carry no label.
        point: ``(x, y)`` integer pixel coordinate; must be on a labelled pixel.
        ignore_index: label value meaning "ignore" (default 255, as in PNG
            label maps); ``None`` disables it.

    Returns:
        ``H x W`` ``np.int8``: ``1`` on *all* pixels of the point's source
        (every component -- the target is "the source region containing me",
        not a connected component), ``0`` on all other labelled pixels,
        ``-1`` on ignored pixels.
    """
    sources = np.asarray(sources)
    if sources.ndim != 2:
        raise ValueError(f"sources must be HxW, got shape {sources.shape}")
    x, y = _check_point(point, sources.shape)
    valid = _valid_mask(sources, ignore_index)
    if not valid[y, x]:
        raise ValueError(f"point (x={x}, y={y}) lies on an ignored pixel")
    out = np.where(valid, np.int8(0), np.int8(-1)).astype(np.int8)
    out[sources == sources[y, x]] = 1
    return out


# --------------------------------------------------------------------------- #
# sampling
# --------------------------------------------------------------------------- #
def sample_paired_points(
    labels: np.ndarray,
    num_pairs: int,
    rng: np.random.Generator,
    ignore_index: Optional[int] = 255,
    source_weighting: Literal["uniform", "area"] = "uniform",
) -> Tuple[np.ndarray, np.ndarray]:
    """Dual-region paired point sampling, generalised to any number of sources.

    For each of the ``num_pairs`` pairs two *different* sources are drawn
    (uniformly among the sources present in the image, or proportionally to
    their pixel area with ``source_weighting="area"``), then one pixel is drawn
    uniformly from each of them.  Within a pair the point of the smaller
    source id comes first, so for a binary mask every pair is
    ``(point in label 0, point in label 1)`` exactly like the official code.
    If the image has a single source (authentic image) both points of every
    pair are uniform over the labelled pixels (the whole image when nothing is
    ignored).

    Args:
        labels: ``H x W`` integer map.  A binary mask (0/1) is the two-source
            case; a multi-source map holds source ids.  Pixels equal to
            ``ignore_index`` or negative are never sampled.
        num_pairs: number of pairs; ``2 * num_pairs`` points are returned.
        rng: ``numpy.random.Generator``; the result is a deterministic
            function of its state.
        ignore_index: "no label" value (default 255); ``None`` disables it.
        source_weighting: ``"uniform"`` (default) or ``"area"``.  Irrelevant
            for two sources.

    Returns:
        ``(points, point_source)``: ``points`` is ``(2*num_pairs) x 2``
        ``np.int64`` with columns ``(x, y)`` in pixels (x = column, y = row);
        ``point_source`` is ``(2*num_pairs,)`` ``np.int64`` holding the label
        value under each point.

    Raises:
        ValueError: if no pixel is labelled or ``num_pairs < 0``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be HxW, got shape {labels.shape}")
    if num_pairs < 0:
        raise ValueError("num_pairs must be >= 0")
    if source_weighting not in ("uniform", "area"):
        raise ValueError(f"unknown source_weighting {source_weighting!r}")
    h, w = labels.shape
    flat = labels.reshape(-1)
    valid = _valid_mask(labels, ignore_index).reshape(-1)
    present, counts = np.unique(flat[valid], return_counts=True)
    if present.size == 0:
        raise ValueError("labels has no labelled pixel to sample from")

    n = 2 * num_pairs
    if present.size == 1:
        if valid.all():
            flat_idx = rng.integers(0, h * w, size=n)
        else:
            pool = np.flatnonzero(valid)
            flat_idx = pool[rng.integers(0, pool.size, size=n)]
        src = np.full(n, present[0], dtype=np.int64)
    else:
        p = None if source_weighting == "uniform" else counts / counts.sum()
        pools: dict = {}
        flat_idx = np.empty(n, dtype=np.int64)
        src = np.empty(n, dtype=np.int64)
        for i in range(num_pairs):
            pair = np.sort(rng.choice(present.size, size=2, replace=False, p=p))
            for j, k in enumerate(pair):
                k = int(k)
                if k not in pools:
                    pools[k] = np.flatnonzero(flat == present[k])
                pool = pools[k]
                flat_idx[2 * i + j] = pool[rng.integers(0, pool.size)]
                src[2 * i + j] = present[k]
    ys, xs = np.divmod(np.asarray(flat_idx, dtype=np.int64), w)
    points = np.stack([xs, ys], axis=1).astype(np.int64)
    return points, src


def build_point_targets(
    labels: np.ndarray,
    points: np.ndarray,
    mode: Literal["exact", "eq3", "official"] = "exact",
    ignore_index: Optional[int] = 255,
) -> np.ndarray:
    """Point masks for several points of one image.

    Args:
        labels: ``H x W`` integer label map (binary 0/1 or multi-source ids;
            ``ignore_index`` / negative = no label).
        points: ``N x 2`` integer array of ``(x, y)`` pixel coordinates.
        mode:
            * ``"exact"`` -- :func:`point_mask_multisource` (labels are source ids);
            * ``"eq3"`` -- :func:`point_mask_eq3` on the binarised labels
              (``label > 0`` -> 1, as the official loaders binarise masks);
            * ``"official"`` -- :func:`point_mask_official` on the binarised labels.

            In the binary modes ignored pixels are passed as ``ignore``.
        ignore_index: "no label" value (default 255); ``None`` disables it.

    Returns:
        ``N x H x W`` ``np.int8`` point masks with values in ``{1, 0, -1}``.
        Connected components are computed once per call and shared by all
        points.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be HxW, got shape {labels.shape}")
    pts = np.asarray(points).reshape(-1, 2)
    out = np.empty((pts.shape[0],) + labels.shape, dtype=np.int8)
    if mode == "exact":
        valid = _valid_mask(labels, ignore_index)
        base = np.where(valid, np.int8(0), np.int8(-1)).astype(np.int8)
        for i, pt in enumerate(pts):
            x, y = _check_point(pt, labels.shape)
            if not valid[y, x]:
                raise ValueError(f"point (x={x}, y={y}) lies on an ignored pixel")
            out[i] = base
            out[i][labels == labels[y, x]] = 1
        return out
    if mode not in ("eq3", "official"):
        raise ValueError(f"unknown mode {mode!r}")
    valid = _valid_mask(labels, ignore_index)
    binary = (labels > 0) & valid
    bc = _binary_components(binary, None if valid.all() else ~valid)
    fn = _eq3_from_components if mode == "eq3" else _official_from_components
    for i, pt in enumerate(pts):
        x, y = _check_point(pt, labels.shape)
        out[i] = fn(bc, x, y)
    return out
