"""Whole-image statistics with the afw rules (algorithms.md 1.1), for per-visit weights."""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["IQR_TO_SIGMA", "good_values", "meanclip_1d", "meanclip_masked", "meanclip_masked_many"]

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
    return _gather(
        np.ascontiguousarray(values), np.ascontiguousarray(mask, dtype=np.int32), np.int32(bad_mask)
    )


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


# -- MEANCLIP of a masked float32 image without gathering or sorting ---------------------------
#
# The per-visit weight statistic runs on every warp written (three parameter sets, ~15 Mpix
# each): gathering the good pixels and partitioning them cost about 0.4 s per set. Here the
# quartiles come from an exact two-pass radix selection on the float32 bit patterns (mapped to
# order-preserving unsigned keys: 16 high bits, then the 16 low bits of the few bins holding the
# wanted ranks) and the clipping passes read the image in place, in the gathered order, so the
# result is bit-identical to ``meanclip_1d(good_values(...))``.


@numba.njit(nogil=True, cache=True, inline="always")
def _sort_key(u):  # pragma: no cover - numba
    return (~u) & np.uint32(0xFFFFFFFF) if u & np.uint32(0x80000000) else u | np.uint32(0x80000000)


@numba.njit(nogil=True, cache=True)
def _key_value(key):  # pragma: no cover - numba
    u = key & np.uint32(0x7FFFFFFF) if key & np.uint32(0x80000000) else ~key & np.uint32(0xFFFFFFFF)
    return np.array([u], dtype=np.uint32).view(np.float32)[0]


@numba.njit(nogil=True, cache=True)
def _masked_quartiles(bits, values, mask, bads):  # pragma: no cover - numba
    """numpy "linear" quartiles (q1, median, q3) of the good pixels of every bad-bit set
    (row k of the result for ``bads[k]``), exactly, and their counts. 2-d inputs (views)."""
    nk = bads.size
    ny, nx = values.shape
    hi = np.zeros((nk, 65536), np.int64)
    n = np.zeros(nk, np.int64)
    for r in range(ny):
        row_v, row_m, row_b = values[r], mask[r], bits[r]
        for c in range(nx):
            if math.isfinite(row_v[c]):
                m = row_m[c]
                top = _sort_key(row_b[c]) >> np.uint32(16)
                for k in range(nk):
                    if (m & bads[k]) == 0:
                        hi[k, top] += 1
                        n[k] += 1
    q = np.full((nk, 3), np.nan)
    pos = np.empty((nk, 3))
    ranks = np.zeros((nk, 6), np.int64)
    top = np.zeros((nk, 6), np.int64)
    rest = np.zeros((nk, 6), np.int64)
    slot = np.full((nk, 65536), -1, np.int64)
    n_slots = 0
    for k in range(nk):
        if n[k] == 0:
            continue
        for r in range(3):
            pos[k, r] = (0.25, 0.5, 0.75)[r] * (n[k] - 1)
            lo = math.floor(pos[k, r])
            ranks[k, 2 * r] = lo
            ranks[k, 2 * r + 1] = min(lo + 1, n[k] - 1)
        for r in range(6):
            acc = 0
            for b in range(65536):
                if acc + hi[k, b] > ranks[k, r]:
                    top[k, r] = b
                    rest[k, r] = ranks[k, r] - acc
                    break
                acc += hi[k, b]
            if slot[k, top[k, r]] < 0:
                slot[k, top[k, r]] = n_slots
                n_slots += 1
    lo_hist = np.zeros((max(n_slots, 1), 65536), np.int64)
    for r in range(ny):
        row_v, row_m, row_b = values[r], mask[r], bits[r]
        for c in range(nx):
            if math.isfinite(row_v[c]):
                m = row_m[c]
                key = _sort_key(row_b[c])
                t = key >> np.uint32(16)
                for k in range(nk):
                    if (m & bads[k]) == 0:
                        s = slot[k, t]
                        if s >= 0:
                            lo_hist[s, key & np.uint32(0xFFFF)] += 1
    for k in range(nk):
        if n[k] == 0:
            continue
        got = np.empty(6)
        for r in range(6):
            s = slot[k, top[k, r]]
            acc = 0
            for b in range(65536):
                if acc + lo_hist[s, b] > rest[k, r]:
                    got[r] = _key_value((np.uint32(top[k, r]) << np.uint32(16)) | np.uint32(b))
                    break
                acc += lo_hist[s, b]
        for r in range(3):
            a, b = got[2 * r], got[2 * r + 1]
            q[k, r] = a + (pos[k, r] - math.floor(pos[k, r])) * (b - a)
    return q, n


@numba.njit(nogil=True, cache=True)
def _masked_clip_passes(values, mask, bads, n, center, iqr, sigma, iters):  # pragma: no cover
    """The MEANCLIP passes of every bad-bit set at once (each summed in pixel order, so each
    equals the one-set gathered computation)."""
    nk = bads.size
    ny, nx = values.shape
    var = np.full(nk, np.nan)
    center = center.copy()
    done = n == 0
    out = np.full(nk, np.nan)
    half = np.empty(nk)
    total = np.empty(nk)
    count = np.empty(nk, np.int64)
    ss = np.empty(nk)
    mean = np.empty(nk)
    for it in range(iters.max()):
        for k in range(nk):
            if it >= iters[k]:
                done[k] = True
            if done[k]:
                half[k] = np.nan
            elif it == 0 or n[k] <= 1:
                half[k] = sigma[k] * IQR_TO_SIGMA * iqr[k]
            elif math.isnan(var[k]):
                half[k] = np.nan
            else:
                half[k] = sigma[k] * math.sqrt(max(0.0, var[k]))
            total[k] = 0.0
            count[k] = 0
            ss[k] = 0.0
        for r in range(ny):
            row_v, row_m = values[r], mask[r]
            for c in range(nx):
                v = row_v[c]
                if math.isfinite(v):
                    m = row_m[c]
                    for k in range(nk):
                        if (m & bads[k]) == 0 and abs(v - center[k]) <= half[k]:
                            total[k] += v
                            count[k] += 1
        for k in range(nk):
            mean[k] = total[k] / count[k] if count[k] > 0 else np.nan
        for r in range(ny):
            row_v, row_m = values[r], mask[r]
            for c in range(nx):
                v = row_v[c]
                if math.isfinite(v):
                    m = row_m[c]
                    for k in range(nk):
                        if (m & bads[k]) == 0 and abs(v - center[k]) <= half[k]:
                            ss[k] += (v - mean[k]) * (v - mean[k])
        for k in range(nk):
            if done[k]:
                continue
            if count[k] == 0:
                out[k] = np.nan
                done[k] = True
                continue
            var[k] = ss[k] / (count[k] - 1) if count[k] > 1 else np.nan
            center[k] = mean[k]
            out[k] = mean[k]
    return out


def meanclip_masked_many(
    values: np.ndarray, mask: np.ndarray, params: list[tuple[int, float, int]]
) -> list[float]:
    """:func:`meanclip_masked` for several ``(bad_mask, sigma_clip, clip_iter)`` sets in shared
    passes over the image (each result bit-identical to its own call). ``values`` must be a
    float32 2-d array (a view is fine)."""
    if values.dtype != np.float32 or values.ndim != 2 or values.shape != mask.shape:
        raise ValueError("values must be a 2-d float32 array with a mask of the same shape")
    if not params:
        return []
    mask = mask if mask.dtype == np.int32 else mask.astype(np.int32)
    bads = np.array([int(p[0]) for p in params], np.int32)
    sigmas = np.array([float(p[1]) for p in params], np.float64)
    iters = np.array([int(p[2]) for p in params], np.int64)
    q, n = _masked_quartiles(values.view(np.uint32), values, mask, bads)
    out = _masked_clip_passes(
        values, mask, bads, n, q[:, 1].copy(), q[:, 2] - q[:, 0], sigmas, iters
    )
    return [float(v) for v in out]


def meanclip_masked(
    values: np.ndarray,
    mask: np.ndarray,
    bad_mask: int,
    *,
    sigma_clip: float = 3.0,
    clip_iter: int = 2,
) -> float:
    """``meanclip_1d(good_values(values, mask, bad_mask), ...)`` (bit for bit) without copying
    or sorting: exact radix-selected quartiles and in-place clipping passes. float32 images take
    the fast path; other dtypes fall back to gathering."""
    values = np.asarray(values)
    mask = np.asarray(mask)
    if values.shape != mask.shape:
        raise ValueError(f"values {values.shape} and mask {mask.shape} differ in shape")
    if values.dtype != np.float32:
        return meanclip_1d(
            good_values(values, mask, bad_mask), sigma_clip=sigma_clip, clip_iter=clip_iter
        )
    if values.ndim != 2:
        values, mask = values.reshape(1, -1), mask.reshape(1, -1)
    return meanclip_masked_many(values, mask, [(bad_mask, sigma_clip, clip_iter)])[0]
