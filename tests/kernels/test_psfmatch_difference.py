"""The fused difference pass and bad-pixel plane (coaddx.kernels.psfmatch.difference) against
plain numpy references."""

import numpy as np
import pytest

from coaddx.kernels.psfmatch.basis import alard_lupton_basis
from coaddx.kernels.psfmatch.difference import bad_pixels, difference_planes
from coaddx.kernels.psfmatch.solve import SpatialKernel, bbox_from_shape


@pytest.mark.parametrize("model", ["chebyshev1", "polynomial"])
@pytest.mark.parametrize("scale", [1.0, -1.0 / 0.97])
@pytest.mark.parametrize("threads", [1, 3])
def test_difference_planes_match_numpy(model, scale, threads):
    rng = np.random.default_rng(1)
    shape = (37, 53)
    ref = (
        rng.normal(size=shape).astype(np.float32),
        rng.uniform(1, 2, shape).astype(np.float32),
        rng.integers(0, 8, shape).astype(np.int32),
    )
    matched = (
        rng.normal(size=shape).astype(np.float32),
        rng.uniform(1, 2, shape).astype(np.float32),
        rng.integers(0, 8, shape).astype(np.int32) * 8,
    )
    matched[0][3, 4] = np.nan
    basis = alard_lupton_basis(5, (1.0,), (1,))
    bg = np.array([0.5, -0.2, 0.3, 0.01, 0.02, -0.03])
    kernel = SpatialKernel(
        basis, np.zeros((3, 1)), bg, 0, 2, model, bbox_from_shape(shape, (100, 200))
    )
    img, var, mask = difference_planes(ref, matched, kernel, scale=scale, threads=threads)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    want = (ref[0].astype(np.float64) - matched[0] - kernel.background(xx, yy)) * scale
    np.testing.assert_allclose(img, want.astype(np.float32), rtol=1e-6, atol=1e-6)
    assert np.isnan(img[3, 4]) and img.dtype == var.dtype == np.float32
    np.testing.assert_allclose(var, (ref[1].astype(np.float64) + matched[1]) * scale**2, rtol=1e-6)
    np.testing.assert_array_equal(mask, ref[2] | matched[2])
    none, _, _ = difference_planes(ref, matched, None, threads=threads)
    np.testing.assert_array_equal(none[np.isfinite(none)], (ref[0] - matched[0])[np.isfinite(none)])


def test_bad_pixels_codes_and_counts():
    rng = np.random.default_rng(2)
    shape = (20, 30)
    ms, mt = rng.integers(0, 16, shape).astype(np.int32), rng.integers(0, 16, shape)
    si, ti = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape)
    si[2, 3], ti[4, 5] = np.nan, np.inf
    codes, n_masked, n_unusable = bad_pixels(ms, 4, mt.astype(np.int32), 8, si, ti)
    masked = ((ms & 4) != 0) | ((mt & 8) != 0)
    finite = np.isfinite(si) & np.isfinite(ti)
    np.testing.assert_array_equal(codes & 1, masked)
    np.testing.assert_array_equal((codes & 2) != 0, ~finite)
    assert n_masked == masked.sum() and n_unusable == (masked | ~finite).sum()
