"""Tests for coaddx.kernels.footprint.footprint_sums: the SIMD footprint sums of the warp
kernel equal the separable double sums (float64, to a few units of float64 rounding)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from coaddx.kernels.footprint import corner_or, footprint_sums


@numba.njit
def _sums(image, variance, q, stride, wxs, wys, c, taps):
    return footprint_sums(
        image.reshape(-1), variance.reshape(-1), q, stride, wxs, wxs * wxs, wys, wys * wys, c, taps
    )


@numba.njit
def _corners(flat, q, dx, dy):
    return corner_or(flat, q, dx, dy)


@pytest.mark.parametrize("ntap", [2, 4, 6, 8])
@pytest.mark.parametrize("dtypes", [(np.float32,) * 2, (np.float64,) * 2, (np.float64, np.float32)])
def test_footprint_sums_match_the_double_sum(ntap, dtypes):
    """Also with planes of two types (float64 image, float32 variance: that failed to compile)
    and at the very end of the planes (the 6-tap rows are read with masked 8-lane loads)."""
    rng = np.random.default_rng(ntap)
    image = rng.normal(100.0, 30.0, (20, 23)).astype(dtypes[0])
    variance = rng.uniform(1.0, 9.0, (20, 23)).astype(dtypes[1])
    wxs = rng.uniform(-0.2, 1.0, (ntap, 5))
    wys = rng.uniform(-0.2, 1.0, (ntap, 5))
    taps = (0,) * ntap
    for j0, i0, c in [(0, 0, 0), (3, 7, 2), (20 - ntap, 23 - ntap, 4)]:  # incl. the last pixel
        got = _sums(image, variance, j0 * 23 + i0, 23, wxs, wys, c, taps)
        k = np.outer(wys[:, c], wxs[:, c])
        foot = (slice(j0, j0 + ntap), slice(i0, i0 + ntap))
        want_i = (k * image[foot].astype(np.float64)).sum()
        want_v = (k * k * variance[foot].astype(np.float64)).sum()
        scale_i = (np.abs(k) * np.abs(image[foot])).sum()
        scale_v = (k * k * variance[foot]).sum()
        assert abs(got[0] - want_i) <= 1e-14 * scale_i
        assert abs(got[1] - want_v) <= 1e-14 * scale_v


def test_footprint_sums_reject_unsupported_tap_counts():
    image = np.ones((8, 8), np.float32)
    w = np.ones((3, 1))
    with pytest.raises(numba.TypingError):
        _sums(image, image, 0, 8, w, w, 0, (0, 0, 0))


def test_corner_or_ors_the_four_corners():
    flat = (1 << np.arange(12)).astype(np.int32)
    assert _corners(flat, 0, 1, 4) == 1 | 2 | 16 | 32
    assert _corners(flat, 6, 0, 4) == (1 << 6) | (1 << 10)
    assert _corners(flat, 11, 0, 0) == 1 << 11
    assert _corners(flat.astype(np.int8), 2, 1, 0) == 4 | 8
