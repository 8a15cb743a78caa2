"""The warp-store writer's plane checks: counts over row blocks, the mask kept un-narrowed."""

import numpy as np
import pytest

from coaddx.errors import InputError
from coaddx.io.zarr.planes import check_variance, planes_of


@pytest.fixture
def wide_planes():
    """Planes larger than one row block of the variance check, a third of them NaN."""
    rng = np.random.default_rng(5)
    image = rng.normal(size=(300, 700)).astype(np.float32)
    image[rng.random(image.shape) < 0.3] = np.nan
    variance = np.abs(rng.normal(size=image.shape)).astype(np.float32)
    return image, variance


def test_check_variance_returns_the_finite_count(wide_planes):
    image, variance = wide_planes
    assert check_variance("v", image, variance) == np.isfinite(image).sum()


def test_check_variance_names_the_first_bad_pixel_past_the_first_block(wide_planes):
    image, variance = wide_planes
    image[250, 3], image[260, 9] = 1.0, 2.0
    variance[250, 3], variance[260, 9] = -1.0, np.nan
    with pytest.raises(InputError, match=r"2 pixel\(s\) .*\(first at y=250, x=3\)"):
        check_variance("v", image, variance)


def test_check_variance_warns_on_an_all_nan_image():
    nan = np.full((3, 4), np.nan, np.float32)
    with pytest.warns(UserWarning, match="every image pixel is NaN"):
        assert check_variance("v", nan, nan) == 0


def test_planes_of_keeps_the_mask_unnarrowed_but_checks_it():
    mask = np.array([[0, 5], [1 << 15, 7]], np.int32)
    kept = planes_of(mask, mask, mask, np.uint16, narrow_mask=False)["mask"]
    assert kept.dtype == np.int32 and np.shares_memory(kept, mask)
    assert planes_of(mask, mask, mask, np.uint16)["mask"].dtype == np.uint16
    with pytest.raises(InputError, match="do not fit"):
        planes_of(mask, mask, mask * 4, np.uint16, narrow_mask=False)
