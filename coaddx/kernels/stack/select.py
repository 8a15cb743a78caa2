"""The order statistics of the stack: "median" and the window of "meanclip".

Per segment the values are copied into a (visit, pixel) buffer (inputs that are not good as
+inf); blocks of its columns are sorted at once by the sorting network (:mod:`.network`), so
quartiles are a gather. Above ``StackOptions.network_max_visits`` visits a per-pixel
quickselect replaces the network. Quantile positions, interpolation and the IQR half-width are
the shared primitives of :mod:`coaddx.kernels.stats`.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from coaddx.kernels.stack.masks import reject_visit
from coaddx.kernels.stack.network import sort_blocked, sort_columns
from coaddx.kernels.stack.scratch import (
    CNT,
    COUNT_LOW,
    JIT,
    MU,
    NIMAGE_ONE,
    ORA,
    ORM,
    SDD,
    SW,
    SW2,
    SWX,
    C,
    store,
    weighted_variance,
)
from coaddx.kernels.stats import iqr_half_width, numpy_lerp, quantile_position

__all__ = [
    "SELECT_TILE",
    "column_quantile",
    "fill_add",
    "fill_clip_segment",
    "fill_good",
    "fill_segment",
    "fill_visit",
    "fill_visits4",
    "good_sdd",
    "median_finish",
    "network_window",
    "quantile_table",
    "quartile_window",
    "select_kth",
    "selected_quantile",
    "selection_window",
]

SELECT_TILE = 16  # pixels gathered at once for the per-pixel selection


@numba.njit(**JIT)
def fill_add(xi, m0, wk, bad, keep, fzero, sw, cnt, orm, ora):
    """One input added to a pixel's standard-pass sums (the body of :func:`fill_good`,
    :func:`fill_visit` and :func:`fill_visits4`).

    Returns the sums, the input's kept mask bits and whether it is good."""
    zero = np.int32(0)
    m = np.int32(m0 & keep)
    good = (np.int32(m & bad) == zero) & (xi - xi == fzero)
    sw += wk if good else 0.0
    counted = np.int32(m0 & bad) == zero  # n_image: before remove_bits, NaN or not
    inc = (np.int32(1) if good else zero) + (NIMAGE_ONE if counted else zero)
    cnt = np.int32(cnt + np.int32(inc))
    orm = np.int32(orm | (m if good else zero))
    ora = np.int32(ora | m)
    return sw, cnt, orm, ora, m, good


@numba.njit(**JIT)
def fill_visit(img, msk, wk, bad, keep, sw, sw2, swx, cnt, orm, ora, row):
    """Standard-pass sums of one visit, also copying its values (+inf where not good) to row.

    Returns the OR of the visit's (kept) mask bits over the segment.
    """
    fzero = img.dtype.type(0)
    row_or = np.int32(0)
    for p in range(img.size):
        xi = img[p]
        sw[p], cnt[p], orm[p], ora[p], m, good = fill_add(
            xi, msk[p], wk, bad, keep, fzero, sw[p], cnt[p], orm[p], ora[p]
        )
        sw2[p] += wk * wk if good else 0.0
        swx[p] += wk * np.float64(xi) if good else 0.0
        row[p] = xi if good else np.inf
        row_or = np.int32(row_or | m)
    return row_or


@numba.njit(**JIT)
def fill_good(img, msk, wk, bad, keep, sw, cnt, orm, ora, row):
    """Σw, the counts, the mask ORs and the value copy of one visit (:func:`fill_add` per
    pixel; what "meanclip" needs of the standard pass). Returns the visit's mask OR."""
    fzero = img.dtype.type(0)
    row_or = np.int32(0)
    for p in range(img.size):
        xi = img[p]
        sw[p], cnt[p], orm[p], ora[p], m, good = fill_add(
            xi, msk[p], wk, bad, keep, fzero, sw[p], cnt[p], orm[p], ora[p]
        )
        row[p] = xi if good else np.inf
        row_or = np.int32(row_or | m)
    return row_or


@numba.njit(**JIT)
def fill_visits4(image, mask, w, vis, k, x0, npix, bad, keep, facc, iacc, vals, median):
    """:func:`fill_good` (or with ``median`` :func:`fill_visit`) of the visits k .. k + 3 in
    one pass: each pixel's sums are loaded and stored once for four visits and added to in
    visit order, so they equal four calls bit for bit. Returns the visits' mask ORs."""
    w0, w1, w2, w3 = w[k], w[k + 1], w[k + 2], w[k + 3]
    i0 = image[vis[k], x0 : x0 + npix]
    i1 = image[vis[k + 1], x0 : x0 + npix]
    i2 = image[vis[k + 2], x0 : x0 + npix]
    i3 = image[vis[k + 3], x0 : x0 + npix]
    m0 = mask[vis[k], x0 : x0 + npix]
    m1 = mask[vis[k + 1], x0 : x0 + npix]
    m2 = mask[vis[k + 2], x0 : x0 + npix]
    m3 = mask[vis[k + 3], x0 : x0 + npix]
    r0, r1, r2, r3 = vals[k], vals[k + 1], vals[k + 2], vals[k + 3]
    sw, sw2, swx = facc[SW], facc[SW2], facc[SWX]
    cnt, orm, ora = iacc[CNT], iacc[ORM], iacc[ORA]
    zero, inf, fzero = np.int32(0), np.inf, image.dtype.type(0)
    o0 = o1 = o2 = o3 = zero
    for p in range(npix):
        a, c, om, oa = sw[p], cnt[p], orm[p], ora[p]
        x = i0[p]
        a, c, om, oa, m, g0 = fill_add(x, m0[p], w0, bad, keep, fzero, a, c, om, oa)
        r0[p] = x if g0 else inf
        o0 = np.int32(o0 | m)
        y = i1[p]
        a, c, om, oa, m, g1 = fill_add(y, m1[p], w1, bad, keep, fzero, a, c, om, oa)
        r1[p] = y if g1 else inf
        o1 = np.int32(o1 | m)
        z = i2[p]
        a, c, om, oa, m, g2 = fill_add(z, m2[p], w2, bad, keep, fzero, a, c, om, oa)
        r2[p] = z if g2 else inf
        o2 = np.int32(o2 | m)
        u = i3[p]
        a, c, om, oa, m, g3 = fill_add(u, m3[p], w3, bad, keep, fzero, a, c, om, oa)
        r3[p] = u if g3 else inf
        o3 = np.int32(o3 | m)
        sw[p], cnt[p], orm[p], ora[p] = a, c, om, oa
        if median:
            b, e = sw2[p], swx[p]
            b += w0 * w0 if g0 else 0.0
            e += w0 * np.float64(x) if g0 else 0.0
            b += w1 * w1 if g1 else 0.0
            e += w1 * np.float64(y) if g1 else 0.0
            b += w2 * w2 if g2 else 0.0
            e += w2 * np.float64(z) if g2 else 0.0
            b += w3 * w3 if g3 else 0.0
            e += w3 * np.float64(u) if g3 else 0.0
            sw2[p], swx[p] = b, e
    return o0, o1, o2, o3


@numba.njit(**JIT)
def fill_rejected4(image, mask, w, vis, k, x0, x1, bad, keep, pbits, ors, rej):
    """:func:`.masks.reject_visit` of the visits k .. k + 3, in visit order."""
    for i in range(4):
        v = vis[k + i]
        reject_visit(image[v, x0:x1], mask[v, x0:x1], w[k + i], bad, keep, pbits, ors[i], rej)


@numba.njit(**JIT)
def fill_segment(image, mask, w, vis, x0, x1, bad, keep, pbits, vals, facc, iacc, rej):
    """Standard pass of "median" over a segment: the sums, the value copy and the rejected
    weight of every visit (four visits at a time, :func:`fill_visits4`, then one at a time)."""
    nfour = vis.size // 4 * 4
    for k in range(0, nfour, 4):
        ors = fill_visits4(image, mask, w, vis, k, x0, x1 - x0, bad, keep, facc, iacc, vals, True)
        fill_rejected4(image, mask, w, vis, k, x0, x1, bad, keep, pbits, ors, rej)
    for k in range(nfour, vis.size):
        v, wk = vis[k], w[k]
        img, msk = image[v, x0:x1], mask[v, x0:x1]
        row_or = fill_visit(
            img,
            msk,
            wk,
            bad,
            keep,
            facc[SW],
            facc[SW2],
            facc[SWX],
            iacc[CNT],
            iacc[ORM],
            iacc[ORA],
            vals[k],
        )
        reject_visit(img, msk, wk, bad, keep, pbits, row_or, rej)


@numba.njit(**JIT)
def fill_clip_segment(image, mask, w, vis, x0, x1, bad, keep, pbits, vals, facc, iacc, rej):
    """:func:`fill_segment` for "meanclip" (Σw, the counts, the masks and the value copy)."""
    nfour = vis.size // 4 * 4
    for k in range(0, nfour, 4):
        ors = fill_visits4(image, mask, w, vis, k, x0, x1 - x0, bad, keep, facc, iacc, vals, False)
        fill_rejected4(image, mask, w, vis, k, x0, x1, bad, keep, pbits, ors, rej)
    for k in range(nfour, vis.size):
        v, wk = vis[k], w[k]
        img, msk = image[v, x0:x1], mask[v, x0:x1]
        row_or = fill_good(
            img, msk, wk, bad, keep, facc[SW], iacc[CNT], iacc[ORM], iacc[ORA], vals[k]
        )
        reject_visit(img, msk, wk, bad, keep, pbits, row_or, rej)


@numba.njit(**JIT)
def network_window(vals, npix, sigma_clip, with_iqr, ci, cj, passes, buf, cnt, centre, hiqr):
    """Median and clip half-width of the columns of vals, sorted block by block in buf: by
    the bitonic passes when there are some (buf's rows beyond vals' hold +inf), else by the
    comparators (ci, cj)."""
    width = buf.shape[1]
    blocked = passes.shape[0] > 0
    # the comparators turn -0.0 into +0.0 (see sort_columns); the passes do not, so the copy
    # does it for them: both leave the same sorted columns
    zero = buf.dtype.type(0)
    table = quantile_table(vals.shape[0])
    for b0 in range(0, npix, width):
        b1 = min(npix, b0 + width)
        for k in range(vals.shape[0]):  # a loop, not a slice copy (no shape check to compile)
            src, dst = vals[k], buf[k]
            if blocked:
                for p in range(b1 - b0):
                    dst[p] = src[b0 + p] + zero
            else:
                for p in range(b1 - b0):
                    dst[p] = src[b0 + p]
        if blocked:
            sort_blocked(buf, b1 - b0, passes)
        else:
            sort_columns(buf, b1 - b0, ci, cj)
        quartile_window(
            buf, b1 - b0, sigma_clip, with_iqr, table, cnt[b0:b1], centre[b0:b1], hiqr[b0:b1]
        )


@numba.njit(**JIT)
def column_quantile(buf, p, n, f):
    """Quantile f of the n sorted values buf[:n, p], linear interpolation at f·(n-1) (NumPy)."""
    if n == 0:
        return np.nan
    lo, hi, t = quantile_position(n, f)
    return numpy_lerp(np.float64(buf[lo, p]), np.float64(buf[hi, p]), t)


QUANTILES = (0.5, 0.25, 0.75)  # the rows of quantile_table


@numba.njit(**JIT)
def quantile_table(nmax):
    """:func:`coaddx.kernels.stats.quantile_position` of the median and quartiles for every
    count 1 .. nmax: rows (lo, hi) as int64 and t, columns the count (row 0 unused)."""
    ranks = np.zeros((6, nmax + 1), np.int64)
    fracs = np.zeros((3, nmax + 1))
    for n in range(1, nmax + 1):
        for i in range(3):
            lo, hi, t = quantile_position(n, QUANTILES[i])
            ranks[2 * i, n], ranks[2 * i + 1, n], fracs[i, n] = lo, hi, t
    return ranks, fracs


@numba.njit(**JIT)
def table_quantile(buf, p, n, table, i):
    """:func:`column_quantile` of QUANTILES[i], its positions read from quantile_table."""
    if n == 0:
        return np.nan
    ranks, fracs = table
    lo, hi = ranks[2 * i, n], ranks[2 * i + 1, n]
    return numpy_lerp(np.float64(buf[lo, p]), np.float64(buf[hi, p]), fracs[i, n])


@numba.njit(**JIT)
def quartile_window(buf, npix, sigma_clip, with_iqr, table, cnt, centre, hiqr):
    """Median (the iteration-0 clip centre) and, if with_iqr, its half-width
    sigma_clip·0.7413·IQR (:func:`coaddx.kernels.stats.iqr_half_width`) of sorted columns;
    ``table``: :func:`quantile_table`."""
    for p in range(npix):
        centre[p] = table_quantile(buf, p, cnt[p] & COUNT_LOW, table, 0)
    if with_iqr:
        for p in range(npix):
            n = cnt[p] & COUNT_LOW
            iqr = table_quantile(buf, p, n, table, 2) - table_quantile(buf, p, n, table, 1)
            hiqr[p] = iqr_half_width(sigma_clip, iqr)


@numba.njit(**JIT)
def select_kth(a, n, k):
    """Reorder a[:n] so that a[k] is its k-th smallest value, with no larger value before it and
    no smaller one after it (Hoare quickselect)."""
    lo, hi = 0, n - 1
    while lo < hi:
        pivot = a[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while pivot < a[j]:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@numba.njit(**JIT)
def selected_quantile(a, n, f):
    """Quantile f of a[:n] by selection (reorders a)."""
    lo, hi, t = quantile_position(n, f)
    select_kth(a, n, lo)
    b = a[lo]
    for i in range(lo + 1, n):  # rank lo + 1 is the smallest value after rank lo
        b = a[i] if a[i] < b or i == lo + 1 else b
    return numpy_lerp(np.float64(a[lo]), np.float64(b if hi > lo else a[lo]), t)


@numba.njit(**JIT)
def selection_window(vals, npix, sigma_clip, with_iqr, centre, hiqr, tile):
    """:func:`quartile_window` for many visits: per-pixel selection instead of sorting.

    The good values of tile.shape[0] pixels at a time are gathered into the rows of tile.
    """
    ntile = tile.shape[0]
    count = np.zeros(ntile, np.int64)
    for p0 in range(0, npix, ntile):
        q1 = min(ntile, npix - p0)
        count[:] = 0
        for k in range(vals.shape[0]):
            row = vals[k, p0 : p0 + q1]
            for q in range(q1):
                if row[q] < np.inf:
                    tile[q, count[q]] = row[q]
                    count[q] += 1
        for q in range(q1):
            n, col, p = count[q], tile[q], p0 + q
            if n == 0:
                centre[p] = hiqr[p] = np.nan
                continue
            centre[p] = selected_quantile(col, n, 0.5)
            if with_iqr:
                iqr = selected_quantile(col, n, 0.75) - selected_quantile(col, n, 0.25)
                hiqr[p] = iqr_half_width(sigma_clip, iqr)


@numba.njit(**JIT)
def good_sdd(vals, w, npix, mu, sdd):
    """Σw(x - mean)² over the good (finite) entries of the value buffer."""
    for k in range(w.size):
        row = vals[k]
        wk = w[k]
        for p in range(npix):
            x = np.float64(row[p])
            d = x - mu[p]
            sdd[p] += wk * d * d if x < np.inf else 0.0


@numba.njit(**JIT)
def median_finish(vals, w, x0, npix, facc, iacc, out_val, out_var):
    """Unweighted median; error² = π/2 · (weighted sample variance) / n (afw MEDIAN)."""
    mu = facc[MU]
    for p in range(npix):
        mu[p] = facc[SWX, p] / facc[SW, p]
    good_sdd(vals, w, npix, mu, facc[SDD])
    for p in range(npix):
        n = iacc[CNT, p] & COUNT_LOW
        var = weighted_variance(n, facc[SW, p], facc[SW2, p], facc[SDD, p])
        store(out_val, out_var, x0 + p, n, facc[C, p], 0.5 * math.pi * var / n)
