"""MEANCLIP of one float32 plane for several bad-bit sets in fused passes (the warp step's
per-visit weight statistics, :func:`coaddx.warp.weights.visit_weight_stats`).

Each result is bit-identical to ``meanclip_1d(good_values(values, mask, bad), ...)`` (the rule
of :mod:`coaddx.kernels.stats`), for up to three sets per call:

* one pass over the plane gathers the pixels that are finite and good for at least one set into
  a compact float32 buffer, with a byte saying which sets they belong to, and counts the high
  16 bits of their order-preserving keys per membership class (one increment per pixel);
* the exact "linear" quartiles of every set follow from those counts and one pass over the
  buffer counting the low 16 bits of the few bins that hold the wanted ranks;
* the clipping passes run over the buffer with the three sets' sums in registers, without
  branches. The sums of the kept values run vectorised where every summation order gives the
  exact sum (:func:`_sums_exact`: the values' spacing and a bound on their sum, from those
  counts), else in pixel order; the squared deviations always in pixel order (so each equals
  the gathered computation), selected by kept bits the sum pass leaves in the class byte, and
  skipped on a set's last pass, where nothing reads them.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from coaddx.kernels.stats import interpolate, iqr_half_width, next_half_width, quantile_position

__all__ = ["MAX_PIXELS", "MAX_SETS", "histogram_bytes", "meanclip_sets"]

#: Bad-bit sets handled by one fused call; :func:`meanclip_sets` takes more in groups.
MAX_SETS = 3
#: Largest plane :func:`meanclip_sets` takes: its key histograms count in int32.
MAX_PIXELS = 2**31 - 1


@numba.njit(nogil=True, cache=True, inline="always")
def _key(u):  # pragma: no cover - numba
    """Order-preserving unsigned key of a float32 bit pattern."""
    return (~u) & np.uint32(0xFFFFFFFF) if u & np.uint32(0x80000000) else u | np.uint32(0x80000000)


@numba.njit(nogil=True, cache=True)
def _key_value(key):  # pragma: no cover - numba
    u = key & np.uint32(0x7FFFFFFF) if key & np.uint32(0x80000000) else ~key & np.uint32(0xFFFFFFFF)
    return np.array([u], dtype=np.uint32).view(np.float32)[0]


@numba.njit(nogil=True, cache=True)
def _gather_classes(values, mask, bads):  # pragma: no cover - numba
    """(vals, cls, n, hist): the finite pixels good for any set, in pixel order, their set
    bits, how many, and the high-16-bit key counts per class ``hist[class, top]``."""
    ny, nx = values.shape
    nk = bads.size
    b0 = bads[0]
    b1 = bads[1] if nk > 1 else np.int32(0)
    b2 = bads[2] if nk > 2 else np.int32(0)
    sets = np.uint8((1 << nk) - 1)  # absent sets get no bit
    vals = np.empty(ny * nx, np.float32)
    cls = np.empty(ny * nx, np.uint8)
    hist = np.zeros((7, 65536), np.int32)  # class 0 (no set) is never counted
    bits = values.view(np.uint32)
    n = 0
    for r in range(ny):
        row_v, row_m, row_b = values[r], mask[r], bits[r]
        for c in range(nx):
            v = row_v[c]
            if math.isfinite(v):
                m = row_m[c]
                cl = (
                    np.uint8((m & b0) == 0)
                    | (np.uint8((m & b1) == 0) << np.uint8(1))
                    | (np.uint8((m & b2) == 0) << np.uint8(2))
                ) & sets
                if cl != 0:
                    vals[n] = v
                    cls[n] = cl
                    hist[cl - 1, _key(row_b[c]) >> np.uint32(16)] += 1
                    n += 1
    return vals, cls, n, hist


@numba.njit(nogil=True, cache=True)
def _quartiles(vals, cls, n_all, hist, nk):  # pragma: no cover - numba
    """numpy "linear" (q1, median, q3) of every set's values and the sets' counts."""
    q = np.full((nk, 3), np.nan)
    n = np.zeros(nk, np.int64)
    frac = np.empty((nk, 3))
    ranks = np.zeros((nk, 6), np.int64)
    top = np.zeros((nk, 6), np.int64)
    rest = np.zeros((nk, 6), np.int64)
    slot = np.full((nk, 65536), -1, np.int8)  # at most 6 * MAX_SETS slots
    hi = np.zeros(65536, np.int64)
    wanted = np.zeros(65536, np.bool_)  # a bin holding a wanted rank of some set
    n_slots = 0
    for k in range(nk):
        hi[:] = 0
        for cl in range(1, 8):
            if cl & (1 << k):
                for b in range(65536):
                    hi[b] += hist[cl - 1, b]
        n[k] = hi.sum()
        if n[k] == 0:
            continue
        for r in range(3):
            lo, hi_rank, ft = quantile_position(n[k], (0.25, 0.5, 0.75)[r])
            ranks[k, 2 * r], ranks[k, 2 * r + 1], frac[k, r] = lo, hi_rank, ft
        for r in range(6):
            acc = 0
            for b in range(65536):
                if acc + hi[b] > ranks[k, r]:
                    top[k, r] = b
                    rest[k, r] = ranks[k, r] - acc
                    break
                acc += hi[b]
            if slot[k, top[k, r]] < 0:
                slot[k, top[k, r]] = n_slots
                wanted[top[k, r]] = True
                n_slots += 1
    lo_hist = np.zeros((max(n_slots, 1), 65536), np.int32)
    bits = vals[:n_all].view(np.uint32)
    for i in range(n_all):
        key = _key(bits[i])
        t = key >> np.uint32(16)
        if not wanted[t]:
            continue
        cl = cls[i]
        for k in range(nk):
            if cl & (1 << k):
                s = slot[k, t]
                if s >= 0:
                    lo_hist[s, key & np.uint32(0xFFFF)] += 1
    got = np.empty(6)
    for k in range(nk):
        if n[k] == 0:
            continue
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
def _sums_exact(hist):  # pragma: no cover - numba
    """Whether every float64 sum of any subset of the gathered values, in any order, is exact.

    All values are multiples of ``g``, the spacing of the smallest exponent present, so every
    partial sum is too; each is exactly representable while it stays within ``2**53 * g``,
    which holds when the bound ``sum |v|`` (from the high-16-bit counts: ``|v| < 2**(E-126)``
    for biased exponent E) does, with a factor 2 to spare for the bound's own rounding. A bin
    of exponent 0 (zeros, subnormals) counts as failing (the caller sums in pixel order).
    """
    tot = np.zeros(65536, np.int64)
    for cl in range(hist.shape[0]):
        for b in range(65536):
            tot[b] += hist[cl, b]
    e_min = 255
    bound = 0.0
    for t in range(65536):
        if tot[t] == 0:
            continue
        u_top = t & 0x7FFF if t & 0x8000 else ~t & 0x7FFF  # |v|'s top 15 bits
        e = u_top >> 7
        if e == 0:
            return False
        e_min = min(e_min, e)
        bound += tot[t] * 2.0 ** (e - 126)
    return e_min == 255 or bound <= 2.0 ** (e_min - 98)


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _sum_body(vals, cls, n, c0, h0, c1, h1, c2, h2):  # pragma: no cover - numba
    """Sums and counts of |v - c_k| <= h_k over each set's values (NaN h: none); the kept bits
    go to bits 3-5 of ``cls`` for :func:`_ss_pass`. Inlined into its two callers, which
    compile it in pixel order or, with ``reassoc``, vectorised."""
    t0 = t1 = t2 = 0.0
    n0 = n1 = n2 = 0
    for i in range(n):
        v = np.float64(vals[i])
        cl = cls[i] & np.uint8(7)
        k0 = ((cl & 1) != 0) & (abs(v - c0) <= h0)
        k1 = ((cl & 2) != 0) & (abs(v - c1) <= h1)
        k2 = ((cl & 4) != 0) & (abs(v - c2) <= h2)
        t0 += v if k0 else 0.0
        t1 += v if k1 else 0.0
        t2 += v if k2 else 0.0
        n0 += k0
        n1 += k1
        n2 += k2
        cls[i] = cl | (np.uint8(k0) << 3) | (np.uint8(k1) << 4) | (np.uint8(k2) << 5)
    return t0, n0, t1, n1, t2, n2


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _sum_pass(vals, cls, n, c0, h0, c1, h1, c2, h2):  # pragma: no cover - numba
    """:func:`_sum_body` in pixel order."""
    return _sum_body(vals, cls, n, c0, h0, c1, h1, c2, h2)


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _sum_pass_exact(vals, cls, n, c0, h0, c1, h1, c2, h2):  # pragma: no cover - numba
    """:func:`_sum_body` in any order (vectorised): for values where :func:`_sums_exact`
    holds, where every order gives the exact sum, so the same bits as in pixel order."""
    return _sum_body(vals, cls, n, c0, h0, c1, h1, c2, h2)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _ss_pass(vals, cls, n, m0, m1, m2, lut):  # pragma: no cover - numba
    """Sums of (v - m_k)^2 over the values each set keeps, in order: the kept bits the sum pass
    left in ``cls`` weight each term by ``lut[cls * 4 + k]`` (1.0 kept, 0.0 not) instead of
    testing the half-widths again. ``d * 0.0`` is +0 (``d`` is finite) and adding it leaves a
    sum as it was, so each equals summing the kept terms alone, in pixel order."""
    s0 = s1 = s2 = 0.0
    for i in range(n):
        v = np.float64(vals[i])
        k = np.int64(cls[i]) * 4
        e0 = v - m0
        e1 = v - m1
        e2 = v - m2
        s0 += e0 * e0 * lut[k]
        s1 += e1 * e1 * lut[k + 1]
        s2 += e2 * e2 * lut[k + 2]
    return s0, s1, s2


@numba.njit(nogil=True, cache=True)
def _ss_lut(wanted):  # pragma: no cover - numba
    """``lut[cls * 4 + k]``: 1.0 where set k is ``wanted`` and its kept bit (3 + k) is set."""
    lut = np.zeros(256 * 4)
    for c in range(256):
        for k in range(3):
            if wanted[k] and (c >> (3 + k)) & 1:
                lut[c * 4 + k] = 1.0
    return lut


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _sum_pass1(vals, cls, n, bit, c, h):  # pragma: no cover - numba
    """:func:`_sum_pass` of one set (membership ``bit``): its sum and count, in order."""
    t = 0.0
    m = 0
    for i in range(n):
        v = np.float64(vals[i])
        keep = ((cls[i] & bit) != 0) & (abs(v - c) <= h)  # bits 3-5 never match ``bit``
        t += v if keep else 0.0
        m += keep
    return t, m


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _sum_pass1_exact(vals, cls, n, bit, c, h):  # pragma: no cover - numba
    """:func:`_sum_pass1` in any order (vectorised), where :func:`_sums_exact` holds."""
    t = 0.0
    m = 0
    for i in range(n):
        v = np.float64(vals[i])
        keep = ((cls[i] & bit) != 0) & (abs(v - c) <= h)
        t += v if keep else 0.0
        m += keep
    return t, m


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _ss_pass1(vals, cls, n, bit, c, h, m):  # pragma: no cover - numba
    """:func:`_ss_pass` of one set (membership ``bit``), in order."""
    s = 0.0
    for i in range(n):
        v = np.float64(vals[i])
        d = (v - m) * (v - m)
        s += d if ((cls[i] & bit) != 0) & (abs(v - c) <= h) else 0.0
    return s


@numba.njit(nogil=True, cache=True)
def _only_one(half):  # pragma: no cover - numba
    """The one set whose half-width is not NaN (-1 if none or several)."""
    k = -1
    for j in range(3):
        if not np.isnan(half[j]):
            if k >= 0:
                return -1
            k = j
    return k


@numba.njit(nogil=True, cache=True)
def _meanclip_group(values, mask, bads, sigma_clip, clip_iter):  # pragma: no cover - numba
    nk = bads.size
    vals, cls, n_all, hist = _gather_classes(values, mask, bads)
    q, n = _quartiles(vals, cls, n_all, hist, nk)
    exact = _sums_exact(hist)
    out = np.full(3, np.nan)
    center = np.full(3, np.nan)
    half = np.full(3, np.nan)
    iqr_half = np.full(3, np.nan)
    var = np.full(3, np.nan)
    count = np.zeros(3, np.int64)
    total = np.zeros(3)
    mean = np.full(3, np.nan)
    iters = np.zeros(3, np.int64)
    done = np.ones(3, np.bool_)
    for k in range(nk):
        done[k] = n[k] == 0
        center[k] = q[k, 1]
        iqr_half[k] = iqr_half_width(sigma_clip[k], q[k, 2] - q[k, 0])
        iters[k] = clip_iter[k]
    for it in range(iters.max()):
        for k in range(3):
            if it >= iters[k]:
                done[k] = True
            if done[k]:
                half[k] = np.nan
            elif it == 0:
                half[k] = iqr_half[k]
            else:
                half[k] = next_half_width(sigma_clip[k], iqr_half[k], n[k], count[k], var[k])
        one = _only_one(half)  # the late passes of the 3-iteration preset: one set left
        if exact and one >= 0:
            total[:] = 0.0
            count[:] = 0
            total[one], count[one] = _sum_pass1_exact(
                vals, cls, n_all, 1 << one, center[one], half[one]
            )
        elif exact:
            total[0], count[0], total[1], count[1], total[2], count[2] = _sum_pass_exact(
                vals, cls, n_all, center[0], half[0], center[1], half[1], center[2], half[2]
            )
        elif one >= 0:
            total[:] = 0.0
            count[:] = 0
            total[one], count[one] = _sum_pass1(vals, cls, n_all, 1 << one, center[one], half[one])
        else:
            total[0], count[0], total[1], count[1], total[2], count[2] = _sum_pass(
                vals, cls, n_all, center[0], half[0], center[1], half[1], center[2], half[2]
            )
        ss_half = np.full(3, np.nan)  # the squared deviations only where a later pass reads them
        for k in range(3):
            mean[k] = total[k] / count[k] if count[k] > 0 else np.nan
            if not done[k] and count[k] > 1 and it + 1 < iters[k]:
                ss_half[k] = half[k]
        ss = np.zeros(3)
        one = _only_one(ss_half)
        if one >= 0:
            ss[one] = _ss_pass1(vals, cls, n_all, 1 << one, center[one], ss_half[one], mean[one])
        elif np.isfinite(ss_half).any():  # two or more sets: the sum pass left their kept bits
            ss[0], ss[1], ss[2] = _ss_pass(
                vals, cls, n_all, mean[0], mean[1], mean[2], _ss_lut(np.isfinite(ss_half))
            )
        for k in range(3):
            if done[k]:
                continue
            if count[k] == 0:
                out[k] = np.nan
                done[k] = True
                continue
            var[k] = ss[k] / (count[k] - 1) if count[k] > 1 else np.nan
            center[k] = mean[k]
            out[k] = mean[k]
    return out[:nk]


def histogram_bytes(n_sets: int = MAX_SETS) -> int:
    """Peak bytes of :func:`meanclip_sets`' key histograms, whatever the plane (its compact
    copy adds 5 bytes a pixel): the high-16-bit counts of the 7 membership classes (int32), one
    set's merged counts (int64), the slot and wanted-bin maps and, at worst, one low-16-bit
    count (int32) for each of the 6 ranks (2 per quartile) of every set."""
    n_sets = min(int(n_sets), MAX_SETS)
    bins = 65536
    return bins * (7 * 4 + 8 + n_sets + 1 + 6 * n_sets * 4)


def meanclip_sets(
    values: np.ndarray, mask: np.ndarray, params: list[tuple[int, float, int]]
) -> list[float]:
    """MEANCLIP of the finite ``values`` without any ``bad_mask`` bit, for every
    ``(bad_mask, sigma_clip, clip_iter)`` of ``params`` (NaN where nothing is kept), each
    bit-identical to :func:`coaddx.kernels.stats.meanclip_masked`. ``values``: a 2-d float32
    array (a view is fine), ``mask`` of the same shape.

    Examples
    --------
    >>> v = np.array([[1.0, 2.0, 3.0, 100.0]], np.float32)
    >>> m = np.array([[0, 0, 0, 1]], np.int32)
    >>> meanclip_sets(v, m, [(1, 3.0, 2), (0, 3.0, 2)])
    [2.0, 2.0]
    """
    if values.dtype != np.float32 or values.ndim != 2 or values.shape != mask.shape:
        raise ValueError("values must be a 2-d float32 array with a mask of the same shape")
    if values.size > MAX_PIXELS:
        raise ValueError(f"meanclip_sets counts in int32: at most {MAX_PIXELS} pixels a plane")
    mask = mask if mask.dtype == np.int32 else mask.astype(np.int32)
    out: list[float] = []
    for g in range(0, len(params), MAX_SETS):
        group = params[g : g + MAX_SETS]
        got = _meanclip_group(
            values,
            mask,
            np.array([int(p[0]) for p in group], np.int32),
            np.array([float(p[1]) for p in group], np.float64),
            np.array([int(p[2]) for p in group], np.int64),
        )
        out.extend(float(v) for v in got)
    return out
