"""Lanczos, bilinear and nearest-neighbour weights of the afw warping kernel (algorithms.md 5.2).

The taps and weights that :mod:`coaddx.kernels.warp` sums (its docstring states the afw
semantics): Lanczos-n has 2n taps at k = -(n-1)..n with weights L(k - f),
L(t) = sinc(pi t) sinc(pi t / n); bilinear has taps k = 0, 1 with weights (1 - f, f); nearest
one tap of weight 1. sin(pi (k - f)) = -(-1)^k sin(pi f) for every tap and
sin(pi (k - f) / n) follows from sin and cos of pi f / n by the angle difference formula, so an
axis costs three short polynomial evaluations (accurate to ~1e-16 on the ranges used) instead
of 2n sine calls (:func:`tap_constants` holds the per-tap constants); :func:`row_weights`
computes them for a whole destination row at once (SIMD-vectorised), :func:`axis_weights` for
one pixel. The numba functions here are inlined into the pixel loops of
:mod:`coaddx.kernels.warp` (numba's on-disk cache keys on the file of the caller: after editing
this module, touch warp.py or clear its ``__pycache__``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = [
    "BILINEAR",
    "KERNELS",
    "KERNEL_CODES",
    "MAX_TAPS",
    "NEAREST",
    "axis_weights",
    "row_weights",
    "tap_constants",
    "tap_footprint",
]

KERNELS = ("lanczos3", "lanczos4", "bilinear", "nearest")

# kernel codes: Lanczos-n is coded n, the 2-tap kernels below 2
BILINEAR, NEAREST = 0, -1
KERNEL_CODES = {"lanczos3": 3, "lanczos4": 4, "bilinear": BILINEAR, "nearest": NEAREST}
MAX_TAPS = 8


def tap_footprint(code: int) -> tuple[int, int]:
    """(first tap offset, number of taps) of a kernel code."""
    return (1 - code, 2 * code) if code >= 2 else (0, 2)


def tap_constants(code: int) -> np.ndarray:
    """Per-tap constants of Lanczos-n, shape (6, 8), zeros for the other kernels.

    Rows 0-2 for k = lo + m and rows 3-5 for k' = 1 - k: (sign, sin(pi k / n), cos(pi k / n))
    with sign = -(-1)^k, so that sin(pi (k - g)) = sign sin(pi g) and
    sin(pi (k - g) / n) = sin(pi k / n) cos(b) - cos(pi k / n) sin(b), b = pi g / n.
    """
    lo, ntap = tap_footprint(code)
    consts = np.zeros((6, MAX_TAPS))
    if code >= 2:
        k = np.arange(lo, lo + ntap)
        for row, kk in ((0, k), (3, 1 - k)):
            consts[row, :ntap] = np.where(kk % 2 == 0, -1.0, 1.0)
            consts[row + 1, :ntap] = np.sin(np.pi * kk / code)
            consts[row + 2, :ntap] = np.cos(np.pi * kk / code)
    return consts


# -- scalar helpers (inlined into the pixel loop) ---------------------------------------------


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _sin_small(z):  # pragma: no cover - numba
    """sin(z) for |z| <= pi/2 (Taylor series to z^21, error < 1e-17)."""
    z2 = z * z
    p = 1.0 - z2 * (1.0 / 420.0)
    p = 1.0 - z2 * (1.0 / 342.0) * p
    p = 1.0 - z2 * (1.0 / 272.0) * p
    p = 1.0 - z2 * (1.0 / 210.0) * p
    p = 1.0 - z2 * (1.0 / 156.0) * p
    p = 1.0 - z2 * (1.0 / 110.0) * p
    p = 1.0 - z2 * (1.0 / 72.0) * p
    p = 1.0 - z2 * (1.0 / 42.0) * p
    p = 1.0 - z2 * (1.0 / 20.0) * p
    p = 1.0 - z2 * (1.0 / 6.0) * p
    return z * p


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _cos_small(z):  # pragma: no cover - numba
    """cos(z) for |z| <= pi/2 (Taylor series to z^20, error < 1e-16)."""
    z2 = z * z
    p = 1.0 - z2 * (1.0 / 380.0)
    p = 1.0 - z2 * (1.0 / 306.0) * p
    p = 1.0 - z2 * (1.0 / 240.0) * p
    p = 1.0 - z2 * (1.0 / 182.0) * p
    p = 1.0 - z2 * (1.0 / 132.0) * p
    p = 1.0 - z2 * (1.0 / 90.0) * p
    p = 1.0 - z2 * (1.0 / 56.0) * p
    p = 1.0 - z2 * (1.0 / 30.0) * p
    p = 1.0 - z2 * (1.0 / 12.0) * p
    p = 1.0 - z2 * (1.0 / 2.0) * p
    return p


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _lanczos_weight(
    g, flip, k, code, sign, sk, ck, sign1, sk1, ck1, s1, sb, cb
):  # pragma: no cover - numba
    """L(k - f) for g = min(f, 1 - f), from s1 = sin(pi g), sb, cb = sin, cos(pi g / n).

    For f > 0.5 (flip) the tap is evaluated as tap 1 - k at g (L is even), which keeps
    sin(pi t / n) free of cancellation; (sign, sk, ck) belong to k, (sign1, sk1, ck1) to 1 - k.
    """
    kk = 1.0 - k if flip else float(k)
    sg = sign1 if flip else sign
    sn = sk1 if flip else sk
    cs = ck1 if flip else ck
    pt = math.pi * (kk - g)
    v = code * sg * s1 * (sn * cb - cs * sb) / (pt * pt)
    return 1.0 if abs(pt) < 1e-5 else v


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def axis_weights(f, code, lo, ntap, consts, w, w2):  # pragma: no cover - numba
    """Fill w[:m], w2[:m] = w**2 for the non-zero taps at fraction f; return (first offset, m, sum).

    f == 0 (Lanczos, bilinear) and nearest give the single tap (offset 0 or 1, weight 1).
    """
    if code == NEAREST or f == 0.0:
        w[0] = 1.0
        w2[0] = 1.0
        return (1 if (code == NEAREST and f >= 0.5) else 0), 1, 1.0
    if code == BILINEAR:
        w[0] = 1.0 - f
        w[1] = f
        w2[0] = w[0] * w[0]
        w2[1] = f * f
        return 0, 2, 1.0
    g = min(f, 1.0 - f)
    s1 = _sin_small(math.pi * g)
    sb = _sin_small((math.pi / code) * g)
    cb = _cos_small((math.pi / code) * g)
    total = 0.0
    for m in range(ntap):
        v = _lanczos_weight(
            g,
            f > 0.5,
            lo + m,
            code,
            consts[0, m],
            consts[1, m],
            consts[2, m],
            consts[3, m],
            consts[4, m],
            consts[5, m],
            s1,
            sb,
            cb,
        )
        w[m] = v
        w2[m] = v * v
        total += v
    return lo, ntap, total


# -- per-row weights (vectorised over destination columns) ------------------------------------


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def row_weights(coords, code, lo, ntap, consts, w, w2, total, scratch):  # pragma: no cover
    """Weights w[m, c] of tap lo + m at the fraction of coords[c], their squares w2[m, c] and
    their sums total[c].

    Meant for fractions in (0, 1) (a zero fraction takes the single-tap path of the pixel loop);
    lanes with non-finite coordinates get values that are never used. scratch: (5, n) floats.
    """
    n = coords.size
    frac = scratch[0]
    for c in range(n):
        frac[c] = coords[c] - math.floor(coords[c])
    if code < 2:
        for c in range(n):
            w[0, c] = 1.0 - frac[c]
            w[1, c] = frac[c]
            w2[0, c] = w[0, c] * w[0, c]
            w2[1, c] = frac[c] * frac[c]
            total[c] = 1.0
        return
    gs, s1, sb, cb = scratch[1], scratch[2], scratch[3], scratch[4]
    for c in range(n):
        g = min(frac[c], 1.0 - frac[c])
        gs[c] = g
        s1[c] = _sin_small(math.pi * g)
        sb[c] = _sin_small((math.pi / code) * g)
        cb[c] = _cos_small((math.pi / code) * g)
        total[c] = 0.0
    for m in range(ntap):
        k = lo + m
        sign, sk, ck = consts[0, m], consts[1, m], consts[2, m]
        sign1, sk1, ck1 = consts[3, m], consts[4, m], consts[5, m]
        for c in range(n):
            v = _lanczos_weight(
                gs[c], frac[c] > 0.5, k, code, sign, sk, ck, sign1, sk1, ck1, s1[c], sb[c], cb[c]
            )
            w[m, c] = v
            w2[m, c] = v * v
            total[c] += v
