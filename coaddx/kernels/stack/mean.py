"""The weighted mean of a segment of the stack: visit-outer passes over contiguous pixels with
float64 accumulators and a branch-free good-pixel test (runs near memory bandwidth)."""

from __future__ import annotations

import numba
import numpy as np

from coaddx.kernels.stack.masks import reject_visit
from coaddx.kernels.stack.options import ERROR_SAMPLE
from coaddx.kernels.stack.scratch import (
    CNT,
    COUNT_LOW,
    JIT,
    MU,
    NIMAGE_ONE,
    ORA,
    ORM,
    SDD,
    SV,
    SW,
    SW2,
    SWX,
    mean_error,
    store,
    variance_coefficient,
)

__all__ = ["accumulate_visit", "mean_segment", "sample_moments"]


@numba.njit(**JIT)
def accumulate_visit(img, var, msk, wk, cv, bad, keep, sw, swx, sv, cnt, orm, ora):
    """Standard-pass sums of one visit over a segment: the hot loop of "mean".

    Returns the OR of the visit's (kept) mask bits over the segment.
    """
    zero, fzero = np.int32(0), img.dtype.type(0)
    row_or = zero
    for p in range(img.size):
        xi = img[p]
        xv = np.float64(xi)
        m0 = msk[p]
        m = np.int32(m0 & keep)
        good = (np.int32(m & bad) == zero) & (xi - xi == fzero)  # finite, in the input precision
        sw[p] += wk if good else 0.0
        swx[p] += wk * xv if good else 0.0
        t = cv * var[p]
        sv[p] += t if good else 0.0
        counted = np.int32(m0 & bad) == zero  # n_image: before remove_bits, NaN or not
        inc = (np.int32(1) if good else zero) + (NIMAGE_ONE if counted else zero)
        cnt[p] += np.int32(inc)
        orm[p] |= m if good else zero
        ora[p] |= m
        row_or = np.int32(row_or | m)
    return row_or


@numba.njit(**JIT)
def mean_segment(
    image, variance, mask, w, vis, x0, x1, err, bad, keep, pbits, facc, iacc, rej, out_val, out_var
):
    """Weighted mean of a segment (value, error) plus the standard-pass mask sums."""
    for k in range(vis.size):
        v, wk = vis[k], w[k]
        img, msk = image[v, x0:x1], mask[v, x0:x1]
        row_or = accumulate_visit(
            img,
            variance[v, x0:x1],
            msk,
            wk,
            variance_coefficient(err, wk),
            bad,
            keep,
            facc[SW],
            facc[SWX],
            facc[SV],
            iacc[CNT],
            iacc[ORM],
            iacc[ORA],
        )
        reject_visit(img, msk, wk, bad, keep, pbits, row_or, rej)
    mu = facc[MU]
    for p in range(x1 - x0):
        mu[p] = facc[SWX, p] / facc[SW, p]
    if err == ERROR_SAMPLE:
        sample_moments(image, mask, w, vis, x0, x1, bad, keep, mu, facc[SW2], facc[SDD])
    for p in range(x1 - x0):
        n = iacc[CNT, p] & COUNT_LOW
        e2 = mean_error(err, n, facc[SW, p], facc[SW2, p], facc[SV, p], facc[SDD, p])
        store(out_val, out_var, x0 + p, n, mu[p], e2)


@numba.njit(**JIT)
def sample_moments(image, mask, w, vis, x0, x1, bad, keep, mu, sw2, sdd):
    """Second pass of the sample variance: Σw² and Σw(x - mean)² over the good inputs."""
    zero = np.int32(0)
    for k in range(vis.size):
        v, wk = vis[k], w[k]
        img, msk = image[v, x0:x1], mask[v, x0:x1]
        for p in range(x1 - x0):
            xv = np.float64(img[p])
            good = (np.int32(msk[p] & keep & bad) == zero) & (xv - xv == 0.0)
            d = xv - mu[p]
            sw2[p] += wk * wk if good else 0.0
            sdd[p] += wk * d * d if good else 0.0
