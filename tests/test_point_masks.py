"""Tests for training.point_masks (hand-made masks, expected arrays written by hand)."""

import time

import numpy as np
import pytest

from training.point_masks import (
    build_point_targets,
    point_mask_eq3,
    point_mask_multisource,
    point_mask_official,
    sample_paired_points,
)


def grid(text: str) -> np.ndarray:
    """Parse a hand-written grid: '1' -> 1, '0' -> 0, '.' -> -1 (ignore); other digits kept."""
    rows = [r.strip() for r in text.strip().splitlines()]
    return np.array([[-1 if ch == "." else int(ch) for ch in r] for r in rows], dtype=np.int64)


# Binary mask (1 = forged).  Components (4-connected):
#   label 1: A = 2x2 block top-left, D = single pixel (x=2, y=2) touching A only
#            diagonally, B = ring at x 5..7, y 4..6;
#   label 0: O = background, H = the hole (x=6, y=5) enclosed by the ring B.
MASK = grid(
    """
    11000000
    11000000
    00100000
    00000000
    00000111
    00000101
    00000111
    00000000
    """
).astype(np.uint8)


# ----------------------------------------------------------------------------
# Eq. 3
# ----------------------------------------------------------------------------
def test_eq3_point_in_block_A():
    # 1 on A, 0 on the neighbouring background O; D (same label, diagonal),
    # ring B and hole H (not neighbouring A) are ignored.
    expected = grid(
        """
        11000000
        11000000
        00.00000
        00000000
        00000...
        00000...
        00000...
        00000000
        """
    )
    out = point_mask_eq3(MASK, (1, 0))
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, expected)


def test_eq3_point_in_hole():
    # The hole's only neighbour is the ring B.
    expected = grid(
        """
        ........
        ........
        ........
        ........
        .....000
        .....010
        .....000
        ........
        """
    )
    np.testing.assert_array_equal(point_mask_eq3(MASK, (6, 5)), expected)


def test_eq3_point_in_background():
    # Background O: A, D and B all touch it -> 0; the enclosed hole H -> -1.
    expected = grid(
        """
        00111111
        00111111
        11011111
        11111111
        11111000
        111110.0
        11111000
        11111111
        """
    )
    np.testing.assert_array_equal(point_mask_eq3(MASK, (7, 7)), expected)


def test_eq3_point_in_diagonal_pixel():
    expected = grid(
        """
        ..000000
        ..000000
        00100000
        00000000
        00000...
        00000...
        00000...
        00000000
        """
    )
    np.testing.assert_array_equal(point_mask_eq3(MASK, (2, 2)), expected)


def test_eq3_non_neighbouring_other_label_region_is_ignored():
    # Two separate 0-regions split by a full column of ones; a point in the
    # small left 1-blob only neighbours the left 0-region.
    mask = grid(
        """
        00010
        01010
        00010
        """
    )
    expected = grid(
        """
        000..
        010..
        000..
        """
    )
    np.testing.assert_array_equal(point_mask_eq3(mask, (1, 1)), expected)


# ----------------------------------------------------------------------------
# Official variant
# ----------------------------------------------------------------------------
def test_official_point_in_block_A():
    # 1 on A and on D (touches A diagonally); the whole 0 label (O and H) -> 0;
    # the ring B (same label, not touching) -> -1.
    expected = grid(
        """
        11000000
        11000000
        00100000
        00000000
        00000...
        00000.0.
        00000...
        00000000
        """
    )
    np.testing.assert_array_equal(point_mask_official(MASK, (0, 1)), expected)


def test_official_point_in_hole():
    # Hole H -> 1, every label-1 pixel (A, D, B) -> 0, background O -> -1.
    expected = grid(
        """
        00......
        00......
        ..0.....
        ........
        .....000
        .....010
        .....000
        ........
        """
    )
    np.testing.assert_array_equal(point_mask_official(MASK, (6, 5)), expected)


def test_official_point_in_background():
    expected = grid(
        """
        00111111
        00111111
        11011111
        11111111
        11111000
        111110.0
        11111000
        11111111
        """
    )
    np.testing.assert_array_equal(point_mask_official(MASK, (0, 7)), expected)


def test_official_point_in_diagonal_pixel():
    expected = grid(
        """
        11000000
        11000000
        00100000
        00000000
        00000...
        00000.0.
        00000...
        00000000
        """
    )
    np.testing.assert_array_equal(point_mask_official(MASK, (2, 2)), expected)


def test_official_authentic_is_all_ones():
    out = point_mask_official(np.zeros((5, 7), np.uint8), (3, 2))
    np.testing.assert_array_equal(out, np.ones((5, 7), np.int8))
    out = point_mask_eq3(np.ones((5, 7), bool), (3, 2))
    np.testing.assert_array_equal(out, np.ones((5, 7), np.int8))


def test_ignore_pixels_are_minus_one_and_do_not_connect():
    mask = grid(
        """
        1100
        0000
        0011
        """
    )
    ignore = np.zeros(mask.shape, bool)
    ignore[1, :] = True  # splits the two label-0 pieces
    # Eq. 3: only the label-0 piece on row 0 neighbours the block; the lower
    # label-0 piece is cut off by the ignored row.
    expected = grid(
        """
        1100
        ....
        ....
        """
    )
    np.testing.assert_array_equal(point_mask_eq3(mask, (0, 0), ignore=ignore), expected)
    # Official: the whole 0 label -> 0 (including the lower-left piece), ignore -> -1.
    expected_off = grid(
        """
        1100
        ....
        00..
        """
    )
    np.testing.assert_array_equal(point_mask_official(mask, (0, 0), ignore=ignore), expected_off)
    with pytest.raises(ValueError):
        point_mask_eq3(mask, (0, 1), ignore=ignore)


def test_point_out_of_bounds_raises():
    with pytest.raises(ValueError):
        point_mask_eq3(MASK, (8, 0))
    with pytest.raises(ValueError):
        point_mask_official(MASK, (0, -1))


# ----------------------------------------------------------------------------
# Multi-source
# ----------------------------------------------------------------------------
SOURCES = grid(
    """
    001122
    001122
    110022
    110099
    000099
    """
)
SOURCES[SOURCES == 9] = 255  # ignore


def test_multisource_whole_source_is_positive():
    # Source 1 has two disconnected components: both are 1.
    expected = grid(
        """
        001100
        001100
        110000
        1100..
        0000..
        """
    )
    out = point_mask_multisource(SOURCES, (0, 3))
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, expected)
    expected2 = grid(
        """
        000011
        000011
        000011
        0000..
        0000..
        """
    )
    np.testing.assert_array_equal(point_mask_multisource(SOURCES, (5, 2)), expected2)
    with pytest.raises(ValueError):
        point_mask_multisource(SOURCES, (5, 4))  # on an ignore pixel


# ----------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------
def test_sampling_deterministic_for_seed():
    p1, s1 = sample_paired_points(SOURCES, 5, np.random.default_rng(123))
    p2, s2 = sample_paired_points(SOURCES, 5, np.random.default_rng(123))
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(s1, s2)
    draws = {tuple(sample_paired_points(SOURCES, 5, np.random.default_rng(s))[0].ravel()) for s in range(5)}
    assert len(draws) > 1


def test_sampling_binary_pairs_are_label0_then_label1():
    rng = np.random.default_rng(0)
    points, src = sample_paired_points(MASK, 50, rng)
    assert points.shape == (100, 2) and src.shape == (100,)
    assert points.dtype == np.int64
    xs, ys = points[:, 0], points[:, 1]
    assert ((xs >= 0) & (xs < 8) & (ys >= 0) & (ys < 8)).all()
    np.testing.assert_array_equal(MASK[ys, xs], src)
    np.testing.assert_array_equal(src[0::2], 0)
    np.testing.assert_array_equal(src[1::2], 1)


def test_sampling_multisource_pairs_distinct_and_not_ignored():
    rng = np.random.default_rng(7)
    points, src = sample_paired_points(SOURCES, 300, rng)
    xs, ys = points[:, 0], points[:, 1]
    np.testing.assert_array_equal(SOURCES[ys, xs], src)
    assert (src != 255).all()
    assert (src[0::2] < src[1::2]).all()  # two different sources, sorted within the pair
    assert set(src.tolist()) == {0, 1, 2}
    # uniform over the 3 pairs of sources
    pairs = {(a, b) for a, b in zip(src[0::2].tolist(), src[1::2].tolist())}
    assert pairs == {(0, 1), (0, 2), (1, 2)}


def test_sampling_area_weighting_prefers_large_sources():
    labels = np.zeros((20, 20), np.int64)
    labels[:2, :2] = 1  # 4 px
    labels[10:, :] = 2  # 200 px
    rng = np.random.default_rng(1)
    _, src_u = sample_paired_points(labels, 600, np.random.default_rng(1))
    _, src_a = sample_paired_points(labels, 600, rng, source_weighting="area")
    assert (src_a == 1).sum() < (src_u == 1).sum() / 4


def test_sampling_authentic_image():
    labels = np.zeros((6, 9), np.uint8)
    points, src = sample_paired_points(labels, 3, np.random.default_rng(5))
    assert points.shape == (6, 2)
    np.testing.assert_array_equal(src, 0)
    assert ((points[:, 0] < 9) & (points[:, 1] < 6)).all()
    # with an ignore border the points avoid it
    labels[:, :5] = 255
    points, src = sample_paired_points(labels, 20, np.random.default_rng(5))
    assert (points[:, 0] >= 5).all()
    with pytest.raises(ValueError):
        sample_paired_points(np.full((3, 3), 255, np.uint8), 1, np.random.default_rng(0))


# ----------------------------------------------------------------------------
# build_point_targets
# ----------------------------------------------------------------------------
def test_build_point_targets_matches_single_functions():
    pts = np.array([[1, 0], [6, 5], [7, 7], [2, 2]])
    for mode, fn in (("eq3", point_mask_eq3), ("official", point_mask_official)):
        out = build_point_targets(MASK, pts, mode=mode)
        assert out.shape == (4, 8, 8) and out.dtype == np.int8
        for i, p in enumerate(pts):
            np.testing.assert_array_equal(out[i], fn(MASK, p))
    pts = np.array([[0, 3], [5, 2], [0, 0]])
    out = build_point_targets(SOURCES, pts, mode="exact")
    for i, p in enumerate(pts):
        np.testing.assert_array_equal(out[i], point_mask_multisource(SOURCES, p))
    # eq3 on a multi-source map binarises (>0) and keeps ignore pixels at -1
    out = build_point_targets(SOURCES, np.array([[0, 0]]), mode="official")[0]
    assert (out[SOURCES == 255] == -1).all()
    with pytest.raises(ValueError):
        build_point_targets(MASK, pts, mode="nope")


def test_speed_large_masks():
    rng = np.random.default_rng(0)
    # blobby random mask at 1024x1024
    small = rng.random((32, 32)) > 0.6
    big = np.kron(small, np.ones((32, 32), bool)).astype(np.uint8)
    pts, _ = sample_paired_points(big, 3, rng)
    t0 = time.perf_counter()
    for mode in ("eq3", "official"):
        out = build_point_targets(big, pts, mode=mode)
        assert out.shape == (6, 1024, 1024)
    elapsed = time.perf_counter() - t0
    assert elapsed < 3.0, elapsed
    # sampled points always get value 1 on their own pixel
    for i, (x, y) in enumerate(pts):
        assert out[i, y, x] == 1
