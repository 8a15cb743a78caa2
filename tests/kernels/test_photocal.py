"""getZeroPoint (coaddx.kernels.photocal.zero_point) on hand-built cases of algorithms.md 7:
the modal start, the clipping cap, convergence to a fixed point, all stars rejected."""

from __future__ import annotations

import numpy as np
import pytest

from coaddx.kernels.photocal import zero_point


def _inst(dmag, ref=20.0):
    """Instrumental magnitudes giving ``dmag`` = ref - inst."""
    return ref - np.asarray(dmag, np.float64)


def test_modal_start_finds_the_core_despite_one_sided_outliers():
    core = 25.0 + np.linspace(-0.02, 0.02, 12)
    outliers = 25.0 + np.linspace(0.3, 1.2, 14)  # more than half the stars, all on one side
    dmag = np.r_[outliers, core]
    err = np.full(dmag.size, 0.01)
    got = zero_point(np.full(dmag.size, 20.0), _inst(dmag), err)
    assert got.zp == pytest.approx(core.mean(), abs=1e-12)
    assert got.ngood == 12 and got.good.tolist() == [False] * 14 + [True] * 12
    assert got.sigma == pytest.approx(0.01 / np.sqrt(12))  # formal error, not the scatter
    # the plain median sits among the outliers: the modal start is what finds the core
    assert np.median(dmag) > core.max()


def test_clipping_is_capped_at_sigma_max():
    rng = np.random.default_rng(1)
    dmag = 25.0 + rng.normal(0.0, 0.5, 400)
    capped = zero_point(np.full(400, 20.0), _inst(dmag))
    kept = dmag[capped.good]
    assert np.abs(kept - np.median(kept)).max() < 3 * 0.25
    assert (np.abs(dmag - np.median(kept)) < 0.75).sum() == capped.ngood
    loose = zero_point(np.full(400, 20.0), _inst(dmag), sigma_max=None)
    assert capped.ngood <= 0.9 * 400 and loose.ngood > capped.ngood + 25  # uncapped: ~all


def test_converges_to_a_self_consistent_clip():
    rng = np.random.default_rng(7)
    err = rng.uniform(0.005, 0.05, 68)
    dmag = 25.0 + np.r_[rng.normal(0, err[:60]), rng.uniform(-2, 2, 8)]
    got = zero_point(np.full(dmag.size, 20.0), _inst(dmag), err)
    kept = np.sort(dmag[got.good])
    n = kept.size
    centre = np.median(kept)
    sigma = 0.741301109252802 * (
        kept[min(int(0.75 * n + 0.5), n - 1)] - kept[min(int(0.25 * n + 0.5), n - 1)]
    )
    again = np.abs(dmag - centre) < 3 * min(sigma, 0.25)
    np.testing.assert_array_equal(again, got.good)  # a fixed point: the count stopped changing
    w = 1 / err[got.good] ** 2
    assert got.zp == pytest.approx(np.sum(w * dmag[got.good]) / w.sum(), abs=1e-12)
    assert got.sigma == pytest.approx(np.sqrt(1 / w.sum()))
    assert abs(got.zp - 25.0) < 5 * got.sigma


def test_all_rejected_returns_the_error_weighted_average():
    dmag = np.full(5, 24.5)
    err = np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    got = zero_point(np.full(5, 20.0), _inst(dmag), err)
    assert got.zp == pytest.approx(24.5) and got.ngood == 5 and not got.good.any()
    assert got.sigma == 0.0


def test_nans_are_dropped_and_nothing_finite_is_an_error():
    dmag = np.array([25.0, np.nan, 25.01, 24.99, 25.0])
    got = zero_point(np.full(5, 20.0), _inst(dmag), np.full(5, 0.01))
    assert got.ngood == 4 and not got.good[1]
    assert got.zp == pytest.approx(25.0)
    with pytest.raises(ValueError, match="no finite"):
        zero_point(np.array([np.nan]), np.array([1.0]))
