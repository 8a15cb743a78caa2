"""Whole-image statistics with the afw rules (algorithms.md 1.1), for per-visit weights."""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["IQR_TO_SIGMA", "good_values", "meanclip_1d"]

IQR_TO_SIGMA = 0.741301109252802


@numba.njit(nogil=True, cache=True)
def _gather(values, mask, bad):  # pragma: no cover - numba
    out = np.empty(values.size, dtype=values.dtype)
    flat_v, flat_m = values.ravel(), mask.ravel()
    k = 0
    for i in range(flat_v.size):
        v = flat_v[i]
        if (flat_m[i] & bad) == 0 and math.isfinite(v):
            out[k] = v
            k += 1
    return out[:k]


def good_values(values: np.ndarray, mask: np.ndarray, bad_mask: int) -> np.ndarray:
    """Finite values whose mask has no ``bad_mask`` bit, as a 1-D array of the values' dtype."""
    return _gather(np.ascontiguousarray(values), np.ascontiguousarray(mask, dtype=np.int32),
                   np.int32(bad_mask))


@numba.njit(nogil=True, cache=True)
def _clip_passes(x, center, iqr, sigma, iters):  # pragma: no cover - numba
    var = np.nan
    for it in range(iters):
        if it == 0 or x.size <= 1:
            half = sigma * IQR_TO_SIGMA * iqr
        elif math.isnan(var):  # a pass that kept one value: nothing is kept next, as in afw
            half = np.nan
        else:
            half = sigma * math.sqrt(max(0.0, var))
        total = 0.0
        k = 0
        for v in x:
            if abs(v - center) <= half:
                total += v
                k += 1
        if k == 0:
            return np.nan
        mean = total / k
        ss = 0.0
        for v in x:
            if abs(v - center) <= half:
                ss += (v - mean) * (v - mean)
        var = ss / (k - 1) if k > 1 else np.nan
        center = mean
    return center


def meanclip_1d(values: np.ndarray, *, sigma_clip: float = 3.0, clip_iter: int = 2) -> float:
    """Unweighted afw MEANCLIP of the finite entries of ``values`` (any shape).

    Iteration 0 clips around the median with half-width ``sigma_clip * 0.7413 * IQR``; later
    iterations around the previous clipped mean with ``sigma_clip * sqrt(clipped variance)``
    (the IQR width only when there is at most one value at all, as in afw); each
    iteration re-selects from the full set (not cumulative) and keeps ``|x - c| <= h``.
    Returns NaN when nothing is kept. This is prepareInputs' ``MEANCLIP(variance plane)``.
    """
    x = np.asarray(values).ravel()
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan")
    q1, med, q3 = _quartiles(x)
    return float(_clip_passes(x, med, q3 - q1, float(sigma_clip), int(clip_iter)))


def _quartiles(x: np.ndarray) -> tuple[float, float, float]:
    """numpy "linear" percentiles 25, 50, 75 from one partition (in the values' own dtype; the
    interpolation in float64), without np.percentile's float64 copy of the whole sample."""
    n = x.size
    pos = [f * (n - 1) for f in (0.25, 0.5, 0.75)]
    kth = sorted({int(np.floor(p)) for p in pos} | {min(int(np.floor(p)) + 1, n - 1) for p in pos})
    part = np.partition(x, kth)
    out = []
    for p in pos:
        lo = int(np.floor(p))
        hi = min(lo + 1, n - 1)
        a, b = float(part[lo]), float(part[hi])
        out.append(a + (p - lo) * (b - a))
    return out[0], out[1], out[2]
