"""The fused per-visit weight statistics equal one ``meanclip_masked`` call per bad-bit set."""

from __future__ import annotations

import numpy as np
import pytest

from coaddx.kernels.stats import meanclip_masked
from coaddx.kernels.weight_stats import meanclip_sets

PARAMS = [(0x21, 3.0, 2), (0x3, 3.0, 2), (0x7F, 2.5, 3), (0x0, 3.0, 1)]


def _plane(seed: int, shape=(257, 131), nan_frac=0.01, bad_frac=0.1):
    rng = np.random.default_rng(seed)
    v = rng.normal(100.0, 5.0, shape).astype(np.float32)
    v[rng.random(shape) < nan_frac] = np.nan
    v[rng.random(shape) < 0.002] *= 40.0
    v[rng.random(shape) < 0.001] = -50.0
    m = np.where(rng.random(shape) < bad_frac, rng.integers(1, 128, shape), 0).astype(np.int32)
    return v, m


@pytest.mark.parametrize("seed", range(6))
def test_bit_identical_to_one_call_per_set(seed):
    v, m = _plane(seed)
    got = meanclip_sets(v, m, PARAMS)
    want = [meanclip_masked(v, m, bad, sigma_clip=s, clip_iter=i) for bad, s, i in PARAMS]
    assert got == want  # exact: the same pixels summed in the same order


def test_nothing_kept_is_nan_and_views_are_accepted():
    v, m = _plane(7)
    m[:] = 1
    got = meanclip_sets(v[10:50, 3:90], m[10:50, 3:90], [(1, 3.0, 2), (2, 3.0, 2)])
    assert np.isnan(got[0])
    want = meanclip_masked(v[10:50, 3:90], m[10:50, 3:90], 2, sigma_clip=3.0, clip_iter=2)
    assert got[1] == want


def test_constant_plane_and_single_pixel():
    v = np.full((40, 40), 2.5, np.float32)
    m = np.zeros((40, 40), np.int32)
    m[0, 0] = 4
    v[0, 0] = 1e6
    assert meanclip_sets(v, m, [(4, 3.0, 2), (0, 3.0, 2)]) == [
        meanclip_masked(v, m, 4, sigma_clip=3.0, clip_iter=2),
        meanclip_masked(v, m, 0, sigma_clip=3.0, clip_iter=2),
    ]
    one = np.array([[7.0]], np.float32)
    assert meanclip_sets(one, np.zeros((1, 1), np.int32), [(0, 3.0, 2)]) == [7.0]


def _hist(v, m, bads):
    from coaddx.kernels.weight_stats import _gather_classes

    return _gather_classes(v, m, np.array(bads, np.int32))[3]


def test_any_order_sums_only_where_every_order_is_exact():
    from coaddx.kernels.weight_stats import _sums_exact

    v, m = _plane(1)
    assert _sums_exact(_hist(v, m, [0x21, 0x3, 0x7F]))
    for tiny in (1e-7, 0.0, 1e-40):  # a fine spacing (or a zero / subnormal bin): in order
        w = v.copy()
        w[3, 5] = tiny
        assert not _sums_exact(_hist(w, m, [0x21, 0x3, 0x7F]))
    big = np.full((4, 4), 2.0**30, np.float32)  # spacing 2^7, sum 2^34 < 2^60: exact
    assert _sums_exact(_hist(big, np.zeros((4, 4), np.int32), [0]))
    big[0, 0] = 1.0  # spacing 2^-23 with a sum of 2^34: not
    assert not _sums_exact(_hist(big, np.zeros((4, 4), np.int32), [0]))


@pytest.mark.parametrize("seed", range(4))
def test_in_order_sums_where_order_matters(seed):
    from coaddx.kernels import weight_stats as ws

    v, m = _plane(seed)
    rng = np.random.default_rng(100 + seed)
    fin = np.isfinite(v)  # a wide sample with many tiny values: every pass keeps nearly all,
    v[fin] = (rng.random(fin.sum()) * 200.0).astype(np.float32)  # and float64 sums round
    small = fin & (rng.random(v.shape) < 0.3)
    v[small] = (rng.random(small.sum()) * 0.01).astype(np.float32)
    vals, cls, n, hist = ws._gather_classes(v, m, np.array([0x21, 0x3, 0x7F], np.int32))
    assert not ws._sums_exact(hist)
    args = (70.0, 300.0, 70.0, 300.0, 70.0, 300.0)  # the order shows in the sums' last bits
    assert ws._sum_pass(vals, cls.copy(), n, *args) != ws._sum_pass_exact(vals, cls, n, *args)
    got = meanclip_sets(v, m, PARAMS)
    want = [meanclip_masked(v, m, bad, sigma_clip=s, clip_iter=i) for bad, s, i in PARAMS]
    assert got == want
