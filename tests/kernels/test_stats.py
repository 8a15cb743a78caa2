"""MEANCLIP's window rule after a pass that keeps a single value, and the 1-D weight statistic."""

import numpy as np
import pytest

from coaddx.kernels.stack import stack_block
from coaddx.kernels.stats import good_values, meanclip_1d, meanclip_masked


def _stack(values, sigma, niter):
    v = np.asarray(values, np.float32)[:, None, None]
    return stack_block(
        v,
        np.ones_like(v),
        np.zeros(v.shape, np.int32),
        np.ones(len(values)),
        statistic="meanclip",
        bad_mask=0,
        sigma_clip=sigma,
        clip_iter=niter,
        clipped_bit=1 << 9,
    )


def test_meanclip_after_a_single_kept_value_is_nan_as_in_afw():
    # [0, 5, 10], 0.5 sigma: iteration 0 keeps only 5 (median 5, h = 0.5*0.7413*5 = 1.85).
    # afw's next window uses NPOINT = 3 > 1, so h = 0.5*sqrt(NaN) = NaN and nothing is kept.
    value, var, mask, n_image = _stack([0, 5, 10], 0.5, 2)
    assert np.isnan(value[0, 0]) and np.isnan(var[0, 0]) and mask[0, 0] == 1 << 9
    assert n_image[0, 0] == 3
    value, _, mask, _ = _stack([0, 5, 10], 0.5, 1)
    assert value[0, 0] == 5.0 and mask[0, 0] == 1 << 9
    assert np.isnan(meanclip_1d(np.array([0.0, 5.0, 10.0]), sigma_clip=0.5, clip_iter=2))
    assert meanclip_1d(np.array([0.0, 5.0, 10.0]), sigma_clip=0.5, clip_iter=1) == 5.0


def test_meanclip_1d_worked_example_and_good_values():
    # algorithms.md 1.1: [1, 2, 2, 3, 8], 3 sigma, 2 iterations -> 8 clipped, mean 2
    assert meanclip_1d(np.array([1, 2, 2, 3, 8.0])) == pytest.approx(2.0)
    # 9 zeros and a one: IQR = 0 clips the one
    assert meanclip_1d(np.r_[np.zeros(9), 1.0]) == 0.0
    assert np.isnan(meanclip_1d(np.array([np.nan, np.inf])))
    values = np.array([[1.0, np.nan], [3.0, 4.0]], np.float32)
    mask = np.array([[0, 0], [2, 0]], np.int32)
    np.testing.assert_array_equal(good_values(values, mask, 2), [1.0, 4.0])


@pytest.mark.parametrize("sigma, iters", [(3.0, 2), (2.5, 3), (0.5, 2)])
def test_meanclip_masked_is_bit_identical_to_gather_then_meanclip(sigma, iters):
    """Radix-selected quartiles + in-place passes == gather + partition, on awkward samples:
    empty, one value, ties, NaN, inf, -0.0, negative values, masked pixels."""
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(0, 120))
        v = rng.normal(rng.uniform(-5, 5), rng.uniform(0.01, 3), n).astype(np.float32)
        if trial % 3 == 0:
            v = np.round(v, 1).astype(np.float32)  # many ties
        v[rng.random(n) < 0.1] = np.nan
        v[rng.random(n) < 0.02] = np.inf
        if trial % 5 == 0:
            v[rng.random(n) < 0.1] = -0.0
        m = rng.integers(0, 8, n).astype(np.int32)
        got = meanclip_masked(
            v.reshape(1, -1), m.reshape(1, -1), 2, sigma_clip=sigma, clip_iter=iters
        )
        want = meanclip_1d(good_values(v, m, 2), sigma_clip=sigma, clip_iter=iters)
        assert (np.isnan(got) and np.isnan(want)) or got == want, (trial, got, want)


def test_meanclip_masked_on_an_image():
    rng = np.random.default_rng(2)
    v = rng.gamma(5, 20, (300, 200)).astype(np.float32)
    m = np.zeros(v.shape, np.int32)
    m[:, :30] = 4
    v[:10] = np.nan
    assert meanclip_masked(v, m, 4) == meanclip_1d(good_values(v, m, 4))
    assert meanclip_masked(v.astype(np.float64), m, 4) == meanclip_1d(good_values(v, m, 4))
    assert np.isnan(meanclip_masked(v, np.full(v.shape, 4, np.int32), 4))
