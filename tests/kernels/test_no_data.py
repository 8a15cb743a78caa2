"""The single-pass NO_DATA helpers against the numpy expressions they replace."""

import numpy as np
import pytest

from coaddx.kernels.no_data import any_finite, blank_no_data, unusable_counts


@pytest.fixture
def noisy_planes():
    rng = np.random.default_rng(3)
    shape = (37, 53)
    image = rng.normal(size=shape).astype(np.float32)
    variance = rng.normal(size=shape).astype(np.float32)
    for plane in (image, variance):
        plane[rng.random(shape) < 0.1] = np.nan
        plane[rng.random(shape) < 0.05] = np.inf
        plane[rng.random(shape) < 0.05] = -np.inf
    variance[rng.random(shape) < 0.05] = 0
    mask = rng.integers(0, 1 << 12, shape).astype(np.int32)
    return image, variance, mask


def test_unusable_counts_match_numpy(noisy_planes):
    image, variance, _ = noisy_planes
    with np.errstate(invalid="ignore"):
        nonpositive = variance <= 0
    missing = ~(np.isfinite(image) & np.isfinite(variance)) | nonpositive
    assert unusable_counts(image, variance) == (missing.sum(), nonpositive.sum())
    assert unusable_counts(image[:, ::3], variance[:, ::3])[0] == missing[:, ::3].sum()


def test_blank_no_data_matches_boolean_indexing(noisy_planes):
    image, variance, mask = noisy_planes
    got = [image.copy(), variance.copy()]
    blank_no_data(*got, mask, 256)
    blanked = (mask & 256) != 0
    for plane, out in zip((image, variance), got, strict=True):
        want = plane.copy()
        want[blanked] = np.nan
        assert np.array_equal(out.view(np.uint32), want.view(np.uint32))


def test_blank_no_data_refuses_mismatched_planes(noisy_planes):
    image, variance, mask = noisy_planes
    with pytest.raises(ValueError, match="shapes"):
        blank_no_data(image, variance[1:], mask, 256)


def test_any_finite_matches_numpy(noisy_planes):
    image, _, _ = noisy_planes
    assert any_finite(image) and any_finite(image[:, ::2])
    assert not any_finite(np.full((4, 5), np.nan, np.float32))
    assert not any_finite(np.array([np.inf, -np.inf], np.float32))
    assert not any_finite(np.empty((0, 3), np.float32))
