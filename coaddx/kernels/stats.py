"""The one afw MEANCLIP / quantile family (algorithms.md 1.1), for per-visit weights and bins.

Every MEANCLIP of the package is built from the primitives at the top of this module: the
per-visit weight statistics here (:func:`meanclip_1d`, :func:`meanclip_masked`,
:func:`meanclip_masked_many`, :func:`meanclip_rows`) and the per-pixel clip of
:mod:`coaddx.kernels.stack` (its vectorised form). The rule, in one vocabulary (``sigma_clip``,
``clip_iter``, as ``AssembleConfig``):

* quartiles at numpy's "linear" positions (:func:`quantile_position`);
* pass 0 keeps ``|x - median| <= sigma_clip * IQR_TO_SIGMA * IQR`` (:func:`iqr_half_width`,
  about 0.7413 IQR per sigma);
* passes 1 .. clip_iter - 1 keep ``|x - c| <= sigma_clip * sqrt(var)`` about the previous
  clipped mean ``c`` and variance (:func:`next_half_width`: the IQR width where there is at
  most one value at all, nothing after a pass that kept a single value, as in afw);
* each pass re-selects from the whole sample (not cumulative), inclusively.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from coaddx.constants import IQR_TO_SIGMA

__all__ = [
    "good_values",
    "interpolate",
    "iqr_half_width",
    "meanclip_1d",
    "meanclip_masked",
    "meanclip_masked_many",
    "meanclip_mean_std",
    "meanclip_rows",
    "next_half_width",
    "numpy_lerp",
    "quantile_position",
    "sorted_quantile",
]


# -- the shared primitives (numba; inlined by LLVM into the kernels that call them) -----------


@numba.njit(nogil=True, cache=True)
def quantile_position(n, f):  # pragma: no cover - numba
    """(lo, hi, t): numpy's "linear" quantile ``f`` of ``n`` sorted values lies between the
    values of ranks ``lo`` and ``hi`` at fraction ``t`` (position ``f * (n - 1)``)."""
    pos = f * (n - 1)
    lo = math.floor(pos)
    return lo, min(lo + 1, n - 1), pos - lo


@numba.njit(nogil=True, cache=True)
def interpolate(a, b, t):  # pragma: no cover - numba
    """``a + t * (b - a)``, the quantile interpolation of the weight statistics (the difference
    is taken in the values' own dtype)."""
    return a + t * (b - a)


@numba.njit(nogil=True, cache=True)
def numpy_lerp(a, b, t):  # pragma: no cover - numba
    """numpy's linear interpolation (``numpy.lib._function_base_impl._lerp``, which
    ``np.quantile`` uses; exact at both ends), for the per-pixel quantiles of the stack."""
    d = b - a
    if t >= 0.5:
        return b - d * (1.0 - t)
    return a + d * t


@numba.njit(nogil=True, cache=True)
def sorted_quantile(s, n, f):  # pragma: no cover - numba
    """Quantile ``f`` of the sorted ``s[:n]`` by :func:`interpolate` (n >= 1)."""
    lo, hi, t = quantile_position(n, f)
    return interpolate(s[lo], s[hi], t)


@numba.njit(nogil=True, cache=True)
def iqr_half_width(sigma_clip, iqr):  # pragma: no cover - numba
    """Half-width of the first clip pass (about the median): ``sigma_clip * IQR_TO_SIGMA *
    iqr``."""
    return sigma_clip * IQR_TO_SIGMA * iqr


@numba.njit(nogil=True, cache=True)
def next_half_width(sigma_clip, iqr_half, n_good, n_kept, variance):  # pragma: no cover
    """Half-width of a later clip pass, from the pass before it (afw Statistics.cc).

    ``iqr_half`` where the sample has at most one value (``n_good``, not the kept count);
    NaN (nothing is kept next) where the previous pass kept ``n_kept <= 1`` values, whose
    variance is undefined; else ``sigma_clip * sqrt(max(0, variance))``.
    """
    if n_good <= 1:
        return iqr_half
    if n_kept <= 1:
        return np.nan
    return sigma_clip * math.sqrt(max(0.0, variance))


# -- gathering and the 1-D statistic -----------------------------------------------------------


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
def _clip_passes(x, center, iqr, sigma_clip, clip_iter):  # pragma: no cover - numba
    """The MEANCLIP passes over the 1-D sample ``x`` (summed in its order)."""
    iqr_half = iqr_half_width(sigma_clip, iqr)
    half = iqr_half
    var = np.nan
    k = 0
    for it in range(clip_iter):
        if it > 0:
            half = next_half_width(sigma_clip, iqr_half, x.size, k, var)
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

    The rule of this module's docstring: pass 0 about the median with half-width
    ``sigma_clip * 0.7413 * IQR``, later passes about the previous clipped mean with
    ``sigma_clip * sqrt(clipped variance)``, each re-selecting ``|x - c| <= h`` from the full
    set. Returns NaN when nothing is kept. This is prepareInputs' ``MEANCLIP(variance plane)``.
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
    pos = [quantile_position(n, f) for f in (0.25, 0.5, 0.75)]
    part = np.partition(x, sorted({r for lo, hi, _ in pos for r in (lo, hi)}))
    q1, med, q3 = (interpolate(float(part[lo]), float(part[hi]), t) for lo, hi, t in pos)
    return q1, med, q3


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
    frac = np.empty((nk, 3))
    ranks = np.zeros((nk, 6), np.int64)
    top = np.zeros((nk, 6), np.int64)
    rest = np.zeros((nk, 6), np.int64)
    slot = np.full((nk, 65536), -1, np.int64)
    n_slots = 0
    for k in range(nk):
        if n[k] == 0:
            continue
        for r in range(3):
            lo, hi_rank, ft = quantile_position(n[k], (0.25, 0.5, 0.75)[r])
            ranks[k, 2 * r], ranks[k, 2 * r + 1], frac[k, r] = lo, hi_rank, ft
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
            q[k, r] = interpolate(got[2 * r], got[2 * r + 1], frac[k, r])
    return q, n


@numba.njit(nogil=True, cache=True)
def _masked_clip_passes(
    values, mask, bads, n, center, iqr, sigma_clip, clip_iter
):  # pragma: no cover - numba
    """The MEANCLIP passes of every bad-bit set at once (each summed in pixel order, so each
    equals the one-set gathered computation of :func:`_clip_passes`)."""
    nk = bads.size
    ny, nx = values.shape
    var = np.full(nk, np.nan)
    center = center.copy()
    done = n == 0
    out = np.full(nk, np.nan)
    half = np.empty(nk)
    iqr_half = np.empty(nk)
    total = np.empty(nk)
    count = np.zeros(nk, np.int64)
    ss = np.empty(nk)
    mean = np.empty(nk)
    for k in range(nk):
        iqr_half[k] = iqr_half_width(sigma_clip[k], iqr[k])
    for it in range(clip_iter.max()):
        for k in range(nk):
            if it >= clip_iter[k]:
                done[k] = True
            if done[k]:
                half[k] = np.nan
            elif it == 0:
                half[k] = iqr_half[k]
            else:
                half[k] = next_half_width(sigma_clip[k], iqr_half[k], n[k], count[k], var[k])
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
    sigma_clip = np.array([float(p[1]) for p in params], np.float64)
    clip_iter = np.array([int(p[2]) for p in params], np.int64)
    q, n = _masked_quartiles(values.view(np.uint32), values, mask, bads)
    out = _masked_clip_passes(
        values, mask, bads, n, q[:, 1].copy(), q[:, 2] - q[:, 0], sigma_clip, clip_iter
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


def meanclip_mean_std(
    values: np.ndarray, *, sigma_clip: float = 3.0, clip_iter: int = 3
) -> tuple[float, float]:
    """afw MEANCLIP and STDEVCLIP of a 1-D float64 sample, unweighted (KernelSumVisitor).

    The rule of :func:`meanclip_1d`: pass 0 keeps ``|x - median| <= sigma_clip * 0.7413 *
    IQR``, later passes ``|x - mean| <= sigma_clip * std`` about the previous clipped mean and
    its std (n - 1), each re-selecting from the whole sample. Returns (mean, std) of the last
    pass; one value gives (value, 0) as in ip_diffim; (NaN, NaN) when a pass keeps nothing (a
    NaN entry or width keeps nothing, as in afw). Sums are numpy's (pairwise), quartiles
    ``np.percentile``'s.
    """
    x = np.asarray(values, np.float64)
    if x.size == 1:
        return float(x[0]), 0.0
    q1, center, q3 = np.percentile(x, [25.0, 50.0, 75.0])
    half = sigma_clip * IQR_TO_SIGMA * (q3 - q1)
    mean = std = math.nan
    for _ in range(clip_iter):
        kept = x[np.abs(x - center) <= half]
        if kept.size == 0:
            return math.nan, math.nan
        mean = center = float(kept.mean())
        std = float(kept.std(ddof=1)) if kept.size > 1 else math.nan
        half = sigma_clip * std
    return mean, std


# -- MEANCLIP of many small samples at once (the bins of a background model) ------------------


@numba.njit(nogil=True, cache=True)
def _meanclip_rows(x, sigma, iters, out):  # pragma: no cover - numba
    buf = np.empty(x.shape[1], x.dtype)
    for r in range(x.shape[0]):
        k = 0
        for v in x[r]:
            if math.isfinite(v):
                buf[k] = v
                k += 1
        if k == 0 or (k == 1 and iters > 1):  # one value: the second pass keeps nothing
            out[r] = np.nan
            continue
        s = np.sort(buf[:k])
        iqr = sorted_quantile(s, k, 0.75) - sorted_quantile(s, k, 0.25)
        out[r] = _clip_passes(s, sorted_quantile(s, k, 0.5), iqr, sigma, iters)


@numba.njit(nogil=True, cache=True)
def _radix_sort(keys, tmp, n):  # pragma: no cover - numba
    """LSD radix sort of the uint32 ``keys[:n]`` (4 passes of 8 bits; a pass whose digit is
    the same for every key is skipped); returns the buffer (``keys`` or ``tmp``) holding them."""
    count = np.empty(256, np.int64)
    src, dst = keys, tmp
    for shift in (0, 8, 16, 24):
        count[:] = 0
        for i in range(n):
            count[(src[i] >> shift) & 255] += 1
        if count[(src[0] >> shift) & 255] == n:
            continue
        total = 0
        for b in range(256):
            c = count[b]
            count[b] = total
            total += c
        for i in range(n):
            d = (src[i] >> shift) & 255
            dst[count[d]] = src[i]
            count[d] += 1
        src, dst = dst, src
    return src


@numba.njit(nogil=True, cache=True)
def _meanclip_rows_f32(bits, sigma, iters, out):  # pragma: no cover - numba
    """:func:`_meanclip_rows` of float32 rows given as their uint32 bits, sorted by a radix
    sort of order-preserving keys (sign bit set for positive values, all bits flipped for
    negative ones) instead of a comparison sort: the same sorted values, ~6x faster."""
    m = bits.shape[1]
    keys, tmp = np.empty(m, np.uint32), np.empty(m, np.uint32)
    sorted_bits = np.empty(m, np.uint32)
    s_all = sorted_bits.view(np.float32)
    sign, full = np.uint32(0x80000000), np.uint32(0xFFFFFFFF)
    for r in range(bits.shape[0]):
        k = 0
        for u in bits[r]:
            if (u & np.uint32(0x7F800000)) != np.uint32(0x7F800000):  # finite
                keys[k] = (u ^ full) if (u & sign) != 0 else (u | sign)
                k += 1
        if k == 0 or (k == 1 and iters > 1):  # one value: the second pass keeps nothing
            out[r] = np.nan
            continue
        res = _radix_sort(keys, tmp, k)
        for i in range(k):
            key = res[i]
            sorted_bits[i] = (key ^ sign) if (key & sign) != 0 else (key ^ full)
        s = s_all[:k]
        iqr = sorted_quantile(s, k, 0.75) - sorted_quantile(s, k, 0.25)
        out[r] = _clip_passes(s, sorted_quantile(s, k, 0.5), iqr, sigma, iters)


def meanclip_rows(x: np.ndarray, *, sigma_clip: float, clip_iter: int) -> np.ndarray:
    """afw MEANCLIP along the last axis of ``x`` (NaN = missing), for every other index.

    The passes of :func:`meanclip_1d` over each row's sorted finite values (summed in sorted
    order; quartiles interpolated from the row's own dtype), except that a row with a single
    value gives NaN after more than one pass (its clipped std is undefined), as the background
    bins of ScaleVariance and template detection have always been computed. NaN where nothing
    is kept. Returns float64 of shape ``x.shape[:-1]``.
    """
    flat = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    out = np.empty(flat.shape[0], np.float64)
    if flat.dtype == np.float32:  # the background bins: a radix sort of the values' bits
        _meanclip_rows_f32(flat.view(np.uint32), float(sigma_clip), int(clip_iter), out)
    else:
        _meanclip_rows(flat, float(sigma_clip), int(clip_iter), out)
    return out.reshape(x.shape[:-1])
