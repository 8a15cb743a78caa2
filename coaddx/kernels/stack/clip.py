"""The per-pixel afw MEANCLIP of the stack: the vectorised form of the rule of
:mod:`coaddx.kernels.stats` (its half-width primitives), as visit-outer passes over the unsorted
(visit, pixel) value copy.

Clipped sums are taken about the clip-window centre (afw sums x - centre), and a kept set of
identical values has exactly that mean and a zero variance.
"""

from __future__ import annotations

import numba
import numpy as np

from coaddx.kernels.stack.options import ERROR_SAMPLE
from coaddx.kernels.stack.scratch import (
    CANCELLATION,
    CNT,
    COUNT_LOW,
    CSD,
    CSDD,
    CSV,
    CSW,
    CSW2,
    HIQR,
    JIT,
    MU,
    NCLIP,
    SDD,
    C,
    H,
    mean_error,
    store,
    variance_coefficient,
    weighted_variance,
)
from coaddx.kernels.stats import next_half_width

__all__ = [
    "clip_add",
    "clip_moments",
    "clip_pass",
    "clip_update",
    "clip_visit",
    "clip_visit_sums",
    "clip_visits4",
    "clip_visits4_error",
    "exact_clip_moments",
    "meanclip_finish",
]


@numba.njit(**JIT)
def clip_add(x, c, h, wk, sw, sw2, sd, sdd, n):
    """One input added to a pixel's clip sums (the body of :func:`clip_visit`,
    :func:`clip_visit_sums` and :func:`clip_visits4`)."""
    d = np.float64(x) - c
    kept = abs(d) <= h
    sw += wk if kept else 0.0
    sw2 += wk * wk if kept else 0.0
    sd += wk * d if kept else 0.0
    sdd += wk * d * d if kept else 0.0
    n += np.int32(1) if kept else np.int32(0)
    return sw, sw2, sd, sdd, n, kept


@numba.njit(**JIT)
def clip_visit(row, var, wk, cv, npix, centre, half, sw, sw2, sd, sdd, sv, nkeep):
    """Add one visit's inputs with |x - centre| <= half to the clip sums.

    Inputs that are not good are +inf in ``row`` and never pass (centre and half are finite or
    NaN). Sums are taken about the window centre (as afw does); sv sums cv·var.
    """
    for p in range(npix):
        sw[p], sw2[p], sd[p], sdd[p], nkeep[p], kept = clip_add(
            row[p], centre[p], half[p], wk, sw[p], sw2[p], sd[p], sdd[p], nkeep[p]
        )
        t = cv * var[p]
        sv[p] += t if kept else 0.0


@numba.njit(**JIT)
def clip_visit_sums(row, wk, npix, centre, half, sw, sw2, sd, sdd, nkeep):
    """:func:`clip_visit` without the error sum (the passes before the last)."""
    for p in range(npix):
        sw[p], sw2[p], sd[p], sdd[p], nkeep[p], _ = clip_add(
            row[p], centre[p], half[p], wk, sw[p], sw2[p], sd[p], sdd[p], nkeep[p]
        )


@numba.njit(**JIT)
def clip_visits4(vals, k, w, npix, centre, half, sw, sw2, sd, sdd, nkeep):
    """:func:`clip_visit_sums` of the visits k .. k + 3 in one pass over the pixels: each
    pixel's sums are loaded and stored once for four visits and added to in visit order, so
    they equal four calls of :func:`clip_visit_sums` bit for bit."""
    w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
    r0, r1, r2, r3 = vals[k], vals[k + 1], vals[k + 2], vals[k + 3]
    for p in range(npix):
        c, h = centre[p], half[p]
        a, b, e, f, n = sw[p], sw2[p], sd[p], sdd[p], nkeep[p]
        a, b, e, f, n, _ = clip_add(r0[p], c, h, w0, a, b, e, f, n)
        a, b, e, f, n, _ = clip_add(r1[p], c, h, w1, a, b, e, f, n)
        a, b, e, f, n, _ = clip_add(r2[p], c, h, w2, a, b, e, f, n)
        a, b, e, f, n, _ = clip_add(r3[p], c, h, w3, a, b, e, f, n)
        sw[p], sw2[p], sd[p], sdd[p], nkeep[p] = a, b, e, f, n


@numba.njit(**JIT)
def clip_visits4_error(vals, variance, vis, x0, k, w, cv, npix, centre, half, facc, nkeep):
    """:func:`clip_visits4` with the error sum of :func:`clip_visit` (the last pass); cv holds
    the four visits' variance coefficients."""
    w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
    c0, c1, c2, c3 = cv[0], cv[1], cv[2], cv[3]
    r0, r1, r2, r3 = vals[k], vals[k + 1], vals[k + 2], vals[k + 3]
    v0 = variance[vis[k], x0 : x0 + npix]
    v1 = variance[vis[k + 1], x0 : x0 + npix]
    v2 = variance[vis[k + 2], x0 : x0 + npix]
    v3 = variance[vis[k + 3], x0 : x0 + npix]
    sw, sw2, sd, sdd, sv = facc[CSW], facc[CSW2], facc[CSD], facc[CSDD], facc[CSV]
    for p in range(npix):
        c, h = centre[p], half[p]
        a, b, e, f, n, g = sw[p], sw2[p], sd[p], sdd[p], nkeep[p], sv[p]
        a, b, e, f, n, kept = clip_add(r0[p], c, h, w0, a, b, e, f, n)
        t = c0 * v0[p]
        g += t if kept else 0.0
        a, b, e, f, n, kept = clip_add(r1[p], c, h, w1, a, b, e, f, n)
        t = c1 * v1[p]
        g += t if kept else 0.0
        a, b, e, f, n, kept = clip_add(r2[p], c, h, w2, a, b, e, f, n)
        t = c2 * v2[p]
        g += t if kept else 0.0
        a, b, e, f, n, kept = clip_add(r3[p], c, h, w3, a, b, e, f, n)
        t = c3 * v3[p]
        g += t if kept else 0.0
        sw[p], sw2[p], sd[p], sdd[p], nkeep[p], sv[p] = a, b, e, f, n, g


@numba.njit(**JIT)
def clip_moments(vals, w, npix, facc):
    """Mean (row MU) and Σw(x - mean)² (row SDD) of every pixel's kept set.

    From the one-pass sums about the centre, unless they cancel to fewer than ~8 digits (a kept
    set far narrower than its distance to the centre, e.g. identical values, or an empty one):
    those pixels are recomputed by :func:`exact_clip_moments`.
    """
    mean, sdd = facc[MU], facc[SDD]
    for p in range(npix):
        sw, sd, around = facc[CSW, p], facc[CSD, p], facc[CSDD, p]
        spread = around - sd * sd / sw
        mean[p] = facc[C, p] + sd / sw
        sdd[p] = spread if spread > CANCELLATION * around else -1.0
    for p in range(npix):
        if sdd[p] < 0.0:
            mean[p], sdd[p] = exact_clip_moments(vals, w, p, facc[C, p], facc[H, p])


@numba.njit(**JIT)
def exact_clip_moments(vals, w, p, centre, half):
    """(mean, Σw(x - mean)²) of pixel p's kept set by two passes over its column; identical
    kept values give exactly that mean and a zero spread."""
    sw = sd = 0.0
    lo, hi = np.inf, -np.inf
    for k in range(w.size):
        x = np.float64(vals[k, p])
        if abs(x - centre) <= half:
            sw, sd = sw + w[k], sd + w[k] * (x - centre)
            lo, hi = min(lo, x), max(hi, x)
    if lo == hi:
        return lo, 0.0
    dmean = sd / sw
    sdd = 0.0
    for k in range(w.size):
        d = np.float64(vals[k, p]) - centre
        if abs(d) <= half:
            sdd += w[k] * (d - dmean) ** 2
    return centre + dmean, sdd


@numba.njit(**JIT)
def clip_update(npix, sigma_clip, facc, nkeep, cnt):
    """Next window: centre = clipped mean, half-width by
    :func:`coaddx.kernels.stats.next_half_width`: sigma_clip·sqrt(max(0, clipped variance)),
    or the IQR width where the pixel has n <= 1 GOOD inputs (afw Statistics.cc tests the
    standard-pass count NPOINT, not the kept count, so a pass that keeps one of several inputs
    leaves a NaN window and a NaN result, as in afw)."""
    for p in range(npix):
        var = weighted_variance(nkeep[p], facc[CSW, p], facc[CSW2, p], facc[SDD, p])
        facc[C, p] = facc[MU, p]
        facc[H, p] = next_half_width(sigma_clip, facc[HIQR, p], cnt[p] & COUNT_LOW, nkeep[p], var)


@numba.njit(**JIT)
def clip_pass(vals, variance, w, vis, x0, npix, err, facc, nkeep):
    """One clip iteration over all visits with the current window (facc[C], facc[H]).

    With err < 0 the error sum is skipped (the value rows stand in for the variance rows).
    Visits are taken four at a time (:func:`clip_visits4`), the rest one at a time.
    """
    facc[CSW : CSV + 1, :npix] = 0.0
    nkeep[:npix] = 0
    sums = err < 0 or err == ERROR_SAMPLE
    cv = np.empty(4)
    nfour = w.size // 4 * 4
    for k in range(0, nfour, 4):
        if sums:
            clip_visits4(
                vals,
                k,
                w,
                npix,
                facc[C],
                facc[H],
                facc[CSW],
                facc[CSW2],
                facc[CSD],
                facc[CSDD],
                nkeep,
            )
            continue
        for i in range(4):
            cv[i] = variance_coefficient(err, w[k + i])
        clip_visits4_error(vals, variance, vis, x0, k, w, cv, npix, facc[C], facc[H], facc, nkeep)
    for k in range(nfour, w.size):
        if sums:
            clip_visit_sums(
                vals[k],
                w[k],
                npix,
                facc[C],
                facc[H],
                facc[CSW],
                facc[CSW2],
                facc[CSD],
                facc[CSDD],
                nkeep,
            )
            continue
        clip_visit(
            vals[k],
            variance[vis[k], x0 : x0 + npix],
            w[k],
            variance_coefficient(err, w[k]),
            npix,
            facc[C],
            facc[H],
            facc[CSW],
            facc[CSW2],
            facc[CSD],
            facc[CSDD],
            facc[CSV],
            nkeep,
        )


@numba.njit(**JIT)
def meanclip_finish(
    variance, vals, w, vis, x0, npix, err, clip_iter, sigma_clip, facc, iacc, out_val, out_var
):
    """afw MEANCLIP: clip_iter non-cumulative clip passes, then the weighted mean of the kept
    set (the window of pass 0 is the median and IQR width of :func:`quartile_window`)."""
    nkeep = iacc[NCLIP]
    for p in range(npix):  # a loop, not a slice copy (no shape check to compile)
        facc[H, p] = facc[HIQR, p]
    for it in range(clip_iter):
        if it > 0:
            clip_update(npix, sigma_clip, facc, nkeep, iacc[CNT])
        last = it == clip_iter - 1
        clip_pass(vals, variance, w, vis, x0, npix, err if last else -1, facc, nkeep)
        clip_moments(vals, w, npix, facc)
    for p in range(npix):
        n = iacc[CNT, p] & COUNT_LOW
        e2 = mean_error(err, nkeep[p], facc[CSW, p], facc[CSW2, p], facc[CSV, p], facc[SDD, p])
        store(out_val, out_var, x0 + p, n, facc[MU, p], e2)
        nkeep[p] = n - nkeep[p]  # the row now holds NCLIPPED
