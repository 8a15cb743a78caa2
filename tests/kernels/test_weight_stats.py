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
