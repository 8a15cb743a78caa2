"""The numba kernels behind CompareWarp's detection against the numpy/scipy they replace, bit
for bit: 8-connected components (scipy's label), stencil dilation, the radix-sorted
background bins and ScaleVariance's selected quartiles (np.percentile)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from coaddx.kernels import components, detect, scale_variance, stats

EIGHT = np.ones((3, 3), bool)


def _planes(seed: int):
    rng = np.random.default_rng(seed)
    for shape, density in (((1, 1), 1.0), ((5, 7), 0.5), ((64, 80), 0.05), ((97, 31), 0.3)):
        yield rng.random(shape) < density
    yield np.zeros((9, 9), bool)
    yield np.ones((9, 9), bool)


@pytest.mark.parametrize("seed", range(4))
def test_label_flags_is_scipy_label(seed):
    for on in _planes(seed):
        rng = np.random.default_rng(seed)
        packed = on.astype(np.uint8) * 1 | (rng.random(on.shape) < 0.5).astype(np.uint8) * 16
        labels, n, area, counted = components.label_flags(packed, 1, 16)
        ref, n_ref = ndimage.label(on, structure=EIGHT)
        np.testing.assert_array_equal(labels, ref)  # numbered as scipy numbers them
        assert n == n_ref
        np.testing.assert_array_equal(
            area, np.bincount(ref.ravel(), minlength=n + 1) * (np.arange(n + 1) > 0)
        )
        good = np.bincount(ref.ravel(), weights=(packed.ravel() & 16) != 0, minlength=n + 1)
        np.testing.assert_array_equal(counted[1:], good[1:])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_pixels", [1, 2, 4, 9])
def test_remove_small_is_label_and_bincount(seed, min_pixels):
    for on in _planes(seed):
        labels, _ = ndimage.label(on, structure=EIGHT)
        ref = on & (np.bincount(labels.ravel())[labels] >= min_pixels)
        np.testing.assert_array_equal(components.remove_small(on, min_pixels), ref)
        np.testing.assert_array_equal(detect.remove_small(on, min_pixels), ref)


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("isotropic", [True, False])
def test_stamp_is_dilate(radius, isotropic):
    for on in _planes(radius):
        out = np.zeros(on.shape, bool)
        offsets = components.stencil_offsets(detect.disk(radius, isotropic))
        components.stamp(on, offsets, out)
        np.testing.assert_array_equal(out, detect.dilate(on, radius, isotropic))


def test_meanclip_rows_radix_is_the_sorted_passes():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((64, 256)) * 30 - 4).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[0] = np.nan
    x[1, 1:] = np.nan
    x[2, ::2], x[3, ::3], x[4, ::5], x[5] = 0.0, -0.0, np.inf, 7.0
    for clip_iter in (1, 2, 3):
        got = stats.meanclip_rows(x, sigma_clip=3.0, clip_iter=clip_iter)
        ref = np.empty(x.shape[0])
        stats._meanclip_rows(x, 3.0, clip_iter, ref)  # the comparison sort
        np.testing.assert_array_equal(got.view(np.uint64), ref.view(np.uint64))


@pytest.mark.parametrize("seed", range(6))
def test_scale_variance_quartiles_are_np_percentile(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 5000))
    img = (rng.standard_normal(n) * 3).astype(np.float32)
    if seed % 2:
        img = np.round(img).astype(np.float32)  # ties
    bg = rng.standard_normal(n) * 0.1
    var = (rng.random(n) * 4 + 0.1).astype(np.float32)
    good = rng.random(n) < 0.9
    good[:2] = True
    ref = np.percentile((img - bg)[good] / np.sqrt(var[good].astype(np.float64)), [25, 75])
    got = np.array(scale_variance._normalised_quartiles(img, bg, var, good))
    np.testing.assert_array_equal(got.view(np.uint64), ref.view(np.uint64))


@pytest.mark.parametrize("lead", [(), (3,), (40,), (2, 5)])
def test_akima_evaluation_is_scipy(lead):
    from scipy.interpolate import Akima1DInterpolator

    from coaddx.kernels import background

    rng = np.random.default_rng(len(lead))
    centres = np.unique(np.sort(rng.random(9)) * 300)
    spline = Akima1DInterpolator(centres, rng.standard_normal((*lead, centres.size)), axis=-1)
    at = np.concatenate([np.clip(np.arange(300.0), centres[0], centres[-1]), centres])
    ref, got = spline(at), background._akima_at(spline, at)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.view(np.uint64), ref.view(np.uint64))
