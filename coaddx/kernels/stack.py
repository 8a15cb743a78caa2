"""Per-pixel stacking of a (visit, y, x) block with the afw ``statisticsStack`` rules.

Pure numpy + numba kernel (algorithms.md §1.1, §1.3, §2.2). One call stacks one block on one
thread with the GIL released; dask supplies the parallelism.

Layout of the work (the block is viewed as (visit, pixel) with the pixels of a block flattened):

* ``"mean"``: visit-outer passes over contiguous pixel segments with float64 accumulators in
  segment buffers and a branch-free good-pixel test (runs near memory bandwidth).
* ``"median"`` / ``"meanclip"``: per segment the values are copied into a (visit, pixel) buffer
  (inputs that are not good as +inf); blocks of a few hundred of its columns are sorted at once by
  a Batcher odd-even merge sorting network applied across pixels (SIMD min/max), so quartiles are
  a gather; the clip iterations are visit-outer passes over the unsorted copy. Above
  ``_NETWORK_MAX_VISITS`` visits a per-pixel quickselect replaces the network.

Numerics: all sums are float64. Clipped sums are taken about the clip-window centre (afw sums
x - centre), and a kept set of identical values has exactly that mean and a zero variance.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np

__all__ = ["ERROR_MODES", "IQR_TO_SIGMA", "STATISTICS", "sorting_network", "stack_block"]

#: 1 sigma in units of the interquartile range (Gaussian), afw ``IQ_TO_STDEV``.
IQR_TO_SIGMA = 0.741301109252802
STATISTICS = ("mean", "meanclip", "median")
ERROR_MODES = ("input", "mosaic", "sample")

_MEAN, _MEANCLIP, _MEDIAN = 0, 1, 2
_INPUT, _MOSAIC, _SAMPLE = 0, 1, 2
_NIMAGE_ONE = np.int32(1 << 16)  # n_image lives in the high half of the packed count
_COUNT_LOW = np.int32(0xFFFF)  # NPOINT lives in the low half
_MAX_VISITS = (1 << 15) - 1
_NETWORK_MAX_VISITS = 4096  # above: per-pixel selection (measured crossover 2000-4000 visits)
_SELECT_TILE = 16  # pixels gathered at once for the per-pixel selection
_MEAN_SEGMENT = 4096  # pixels per segment of the mean pass (accumulators stay in L1/L2)
_SORT_BUFFER_BYTES = 128 * 1024  # target size of the (visit, pixel) sort block (within L2)
_SORT_WIDTH = (64, 512)  # bounds on the pixels of one sort block
_FILL_BUFFER_BYTES = 512 * 1024  # target size of the (visit, pixel) value copy (about L2)
_FILL_MIN = 512  # fewest pixels per segment of the value copy (long rows stream well)
_JIT = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}


def stack_block(
    image,
    variance,
    mask,
    weights,
    *,
    statistic,
    bad_mask,
    sigma_clip=3.0,
    clip_iter=2,
    error_mode="input",
    propagate_bits=(),
    propagate_thresholds=(),
    clipped_bit=0,
    map_from=(),
    map_to=(),
    no_data_bit=0,
    remove_bits=0,
):
    """Stack a (V, Y, X) block of visits with the afw statisticsStack rules.

    Parameters
    ----------
    image, variance : ndarray of shape (V, Y, X)
        float32 (float64 accepted); sums are computed in float64.
    mask : ndarray of shape (V, Y, X)
        int32 mask bit planes.
    weights : ndarray of shape (V,)
        Per-visit scalar weights. A visit whose weight is not finite or <= 0 is excluded
        entirely (as if absent: it counts nowhere, not in N, n_image or the mask map).
    statistic : {"mean", "meanclip", "median"}
    bad_mask : int
        andMask: inputs with any of these bits are rejected.
    sigma_clip, clip_iter : float, int
        numSigmaClip and numIter of "meanclip" (clip_iter >= 1).
    error_mode : {"input", "mosaic", "sample"}
        Variance of the mean: Σw²σ²/(Σw)² (calcErrorFromInputVariance), Σwσ²/Σw (mosaic mode) or
        var·Σw²/(Σw)² from the weighted sample variance. "median" always uses π/2·var/n.
    propagate_bits, propagate_thresholds : sequences of equal length
        Bit values and threshold fractions of maskPropagationThresholds.
    clipped_bit : int
        Bit value OR-ed where NCLIPPED > 0.
    map_from, map_to : sequences of equal length
        maskMap pairs of bit values, applied where NMASKED > 0 to the OR of the masks of ALL
        included inputs (accepted ones too, afw semantics).
    no_data_bit : int
        Replaces the mask where NPOINT == 0 (value and variance are NaN there).
    remove_bits : int
        Bits cleared from every input mask after counting n_image and before the statistic, the
        OR mask and the mask map (removeMaskPlanes).

    Returns
    -------
    value, variance : ndarray of shape (Y, X), float32
    mask : ndarray of shape (Y, X), int32
    n_image : ndarray of shape (Y, X), int32
        Included visits whose input mask (before remove_bits) has no bad_mask bit; NaN pixels
        without bad bits still count (algorithms.md §2.2).

    Examples
    --------
    >>> cube = np.array([1, 2, 2, 3, 8], np.float32).reshape(5, 1, 1)
    >>> flags = np.zeros(cube.shape, np.int32)
    >>> value, var, msk, nimg = stack_block(cube, np.ones_like(cube), flags, np.ones(5),
    ...                                     statistic="meanclip", bad_mask=1, clipped_bit=1 << 9)
    >>> float(value[0, 0]), float(var[0, 0]), int(msk[0, 0]), int(nimg[0, 0])
    (2.0, 0.25, 512, 5)
    """
    image, variance, mask = _check_cube(image, variance, mask)
    stat = _code(statistic, STATISTICS, "statistic")
    err = _code(error_mode, ERROR_MODES, "error_mode")
    if stat == _MEANCLIP and (int(clip_iter) < 1 or not 0 <= float(sigma_clip) < math.inf):
        raise ValueError(
            f"'meanclip' needs clip_iter >= 1 and a finite sigma_clip >= 0, got "
            f"{clip_iter!r} and {sigma_clip!r}"
        )
    w, vis = _included_visits(weights, image.shape[0])
    pbits, pthr = _pairs(propagate_bits, propagate_thresholds, "propagate_bits", np.float64)
    mfrom, mto = _pairs(map_from, map_to, "map_from", np.int32)
    ints = np.array(
        [
            _bits(bad_mask, "bad_mask"),
            ~_bits(remove_bits, "remove_bits"),
            _bits(clipped_bit, "clipped_bit"),
            _bits(no_data_bit, "no_data_bit"),
            int(clip_iter),
        ],
        dtype=np.int32,
    )
    nv, ny, nx = image.shape
    flat = [a.reshape(nv, ny * nx) for a in (image, variance, mask)]
    outs = _empty_outputs(ny * nx)
    if vis.size == 0:
        outs[0][:], outs[1][:], outs[2][:], outs[3][:] = np.nan, np.nan, ints[3], 0
    else:
        network = stat != _MEAN and vis.size <= _NETWORK_MAX_VISITS
        ci, cj = sorting_network(vis.size) if network else _NO_NETWORK
        seg, width = _segment_length(stat, vis.size, image.itemsize)
        rows = 0 if stat == _MEAN else vis.size
        vals = np.empty((rows, seg), dtype=image.dtype)
        buf = np.empty((rows, width) if network else (_SELECT_TILE, rows), dtype=image.dtype)
        _stack_flat(
            *flat,
            w,
            vis,
            stat,
            err,
            ints,
            float(sigma_clip),
            pbits,
            pthr,
            mfrom,
            mto,
            ci,
            cj,
            seg,
            vals,
            buf,
            *outs,
        )
    return tuple(o.reshape(ny, nx) for o in outs)


# --------------------------------------------------------------------------------------------
# argument handling (plain Python)


def _check_cube(image, variance, mask):
    image, variance = np.asarray(image), np.asarray(variance)
    if image.ndim != 3 or variance.shape != image.shape or np.shape(mask) != image.shape:
        raise ValueError(
            f"image, variance and mask must share one (V, Y, X) shape, got "
            f"{image.shape}, {variance.shape}, {np.shape(mask)}"
        )
    if image.shape[0] > _MAX_VISITS:
        raise ValueError(f"at most {_MAX_VISITS} visits per block, got {image.shape[0]}")
    ftype = np.float64 if np.float64 in (image.dtype, variance.dtype) else np.float32
    cube = (
        np.ascontiguousarray(image, dtype=ftype),
        np.ascontiguousarray(variance, dtype=ftype),
        np.ascontiguousarray(mask, dtype=np.int32),
    )
    return tuple(_readonly(a) for a in cube)


def _readonly(array):
    """A read-only view: numba compiles one specialisation for read-only and writeable inputs
    alike (dask often hands over read-only blocks)."""
    view = array.view()
    view.flags.writeable = False
    return view


def _code(name, choices, what):
    if name not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {name!r}")
    return choices.index(name)


def _bits(value, what):
    value = int(value)
    if not 0 <= value < 2**31:
        raise ValueError(f"{what} must be a bit value in 0 .. 2**31-1, got {value}")
    return value


def _included_visits(weights, nvisit):
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if weights.size != nvisit:
        raise ValueError(f"weights has {weights.size} entries for {nvisit} visits")
    vis = np.flatnonzero(np.isfinite(weights) & (weights > 0))
    return np.ascontiguousarray(weights[vis]), vis.astype(np.int64)


def _pairs(first, second, what, dtype):
    a, b = list(first), list(second)
    if len(a) != len(b):
        raise ValueError(f"{what} pairs have unequal lengths ({len(a)} and {len(b)})")
    bits = np.array([_bits(v, what) for v in a], dtype=np.int32)
    if dtype is np.int32:
        return bits, np.array([_bits(v, what) for v in b], dtype=np.int32)
    return bits, np.array(b, dtype=np.float64)


def _empty_outputs(npix):
    return (
        np.empty(npix, np.float32),
        np.empty(npix, np.float32),
        np.empty(npix, np.int32),
        np.empty(npix, np.int32),
    )


def _segment_length(stat, nvisit, itemsize):
    """(pixels per segment, columns per sort block) for a statistic and a number of visits."""
    if stat == _MEAN:
        return _MEAN_SEGMENT, 0
    width = _SORT_BUFFER_BYTES // (nvisit * itemsize) // 16 * 16
    width = min(_SORT_WIDTH[1], max(_SORT_WIDTH[0], width))
    seg = max(_FILL_BUFFER_BYTES // (nvisit * itemsize), _FILL_MIN) // width * width
    return int(min(_MEAN_SEGMENT, max(width, seg))), int(width)


_NO_NETWORK = (_readonly(np.zeros(0, np.int64)), _readonly(np.zeros(0, np.int64)))


@lru_cache(maxsize=64)
def sorting_network(n):
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for ``n`` keys.

    Built for the next power of two >= n with every comparator that touches an index >= n
    dropped (valid because padding keys are +inf and stay on top). Returns two int64 arrays.
    """
    size = 1 << max(0, int(n) - 1).bit_length()
    pairs = [(i, j) for i, j in _batcher_pairs(size) if j < n]
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return _readonly(np.ascontiguousarray(arr[:, 0])), _readonly(np.ascontiguousarray(arr[:, 1]))


def _batcher_pairs(size):
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        yield i + j, i + j + k
            k //= 2
        p *= 2


# --------------------------------------------------------------------------------------------
# compiled kernels. Segment scratch: float64 rows facc[_SW..] and int32 rows iacc[_CNT..], each
# holding one value per pixel of the current segment.

_SW, _SWX, _SW2, _SDD, _SV, _MU, _C, _H, _HIQR = range(9)  # standard pass, clip window
_CSW, _CSW2, _CSD, _CSDD, _CSV = range(9, 14)  # clip sums about the window centre
_NFACC = 14
_CANCELLATION = 1e-8  # Σw(x-mean)² below this fraction of Σw(x-c)²: recompute the pixel exactly
_CNT, _ORM, _ORA, _NCLIP = range(4)  # packed NPOINT | n_image << 16, OR good, OR all, NCLIPPED


@numba.njit(**_JIT)
def _stack_flat(
    image,
    variance,
    mask,
    w,
    vis,
    stat,
    err,
    ints,
    sigma,
    pbits,
    pthr,
    mfrom,
    mto,
    ci,
    cj,
    seg,
    vals,
    buf,
    out_val,
    out_var,
    out_mask,
    out_n,
):
    """Drive the pixel segments of a flattened (visit, pixel) block."""
    npix = image.shape[1]
    facc = np.empty((_NFACC, seg))
    iacc = np.empty((4, seg), np.int32)
    rej = np.empty((pbits.size, seg))
    for x0 in range(0, npix, seg):
        x1 = min(npix, x0 + seg)
        for r in (_SW, _SWX, _SW2, _SDD, _SV):  # the clip sums are cleared per iteration
            facc[r, : x1 - x0] = 0.0
        iacc[:, : x1 - x0] = 0
        rej[:, : x1 - x0] = 0.0
        if stat == _MEAN:
            _mean_segment(
                image,
                variance,
                mask,
                w,
                vis,
                x0,
                x1,
                err,
                ints,
                pbits,
                facc,
                iacc,
                rej,
                out_val,
                out_var,
            )
        else:
            _sorted_segment(
                image,
                variance,
                mask,
                w,
                vis,
                x0,
                x1,
                stat,
                err,
                ints,
                sigma,
                pbits,
                ci,
                cj,
                vals,
                buf,
                facc,
                iacc,
                rej,
                out_val,
                out_var,
            )
        _finish_masks(
            x0, x1, vis.size, ints, facc[_SW], iacc, rej, pthr, pbits, mfrom, mto, out_mask, out_n
        )


@numba.njit(**_JIT)
def _variance_coefficient(err, wk):
    """Factor of σ² in the error sum: w² ("input"), w ("mosaic"), unused ("sample")."""
    if err == _INPUT:
        return wk * wk
    if err == _MOSAIC:
        return wk
    return 0.0


@numba.njit(**_JIT)
def _accumulate_visit(img, var, msk, wk, cv, bad, keep, sw, swx, sv, cnt, orm, ora):
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
        inc = (np.int32(1) if good else zero) + (_NIMAGE_ONE if counted else zero)
        cnt[p] += np.int32(inc)
        orm[p] |= m if good else zero
        ora[p] |= m
        row_or = np.int32(row_or | m)
    return row_or


@numba.njit(**_JIT)
def _fill_visit(img, msk, wk, bad, keep, sw, sw2, swx, cnt, orm, ora, row):
    """Standard-pass sums of one visit, also copying its values (+inf where not good) to row.

    Returns the OR of the visit's (kept) mask bits over the segment.
    """
    zero, fzero = np.int32(0), img.dtype.type(0)
    row_or = zero
    for p in range(img.size):
        xi = img[p]
        xv = np.float64(xi)
        m0 = msk[p]
        m = np.int32(m0 & keep)
        good = (np.int32(m & bad) == zero) & (xi - xi == fzero)
        sw[p] += wk if good else 0.0
        sw2[p] += wk * wk if good else 0.0
        swx[p] += wk * xv if good else 0.0
        counted = np.int32(m0 & bad) == zero  # n_image: before remove_bits, NaN or not
        inc = (np.int32(1) if good else zero) + (_NIMAGE_ONE if counted else zero)
        cnt[p] += np.int32(inc)
        orm[p] |= m if good else zero
        ora[p] |= m
        row[p] = xi if good else np.inf
        row_or = np.int32(row_or | m)
    return row_or


@numba.njit(**_JIT)
def _reject_visit(img, msk, wk, bad, keep, pbits, row_or, rej):
    """Add wk to rej[b] where the input is rejected (masked or non-finite) and has bit pbits[b].

    row_or (the OR of the visit's mask over the segment) lets absent bits skip their pass; it
    runs while the segment is still in cache.
    """
    zero = np.int32(0)
    for b in range(pbits.size):
        bit = pbits[b]
        if row_or & bit == 0:
            continue
        acc = rej[b]
        if bit & bad == bit:  # the bit itself rejects: no need to look at the value
            for p in range(img.size):
                hit = np.int32(msk[p] & keep & bit) != zero
                acc[p] += wk if hit else 0.0
            continue
        for p in range(img.size):
            xv = np.float64(img[p])
            m = np.int32(msk[p] & keep)
            rejected = (np.int32(m & bad) != zero) | (xv - xv != 0.0)
            hit = rejected & (np.int32(m & bit) != zero)
            acc[p] += wk if hit else 0.0


@numba.njit(**_JIT)
def _mean_segment(
    image, variance, mask, w, vis, x0, x1, err, ints, pbits, facc, iacc, rej, out_val, out_var
):
    """Weighted mean of a segment (value, error) plus the standard-pass mask sums."""
    bad, keep = ints[0], ints[1]
    for k in range(vis.size):
        v, wk = vis[k], w[k]
        img, msk = image[v, x0:x1], mask[v, x0:x1]
        row_or = _accumulate_visit(
            img,
            variance[v, x0:x1],
            msk,
            wk,
            _variance_coefficient(err, wk),
            bad,
            keep,
            facc[_SW],
            facc[_SWX],
            facc[_SV],
            iacc[_CNT],
            iacc[_ORM],
            iacc[_ORA],
        )
        _reject_visit(img, msk, wk, bad, keep, pbits, row_or, rej)
    mu = facc[_MU]
    for p in range(x1 - x0):
        mu[p] = facc[_SWX, p] / facc[_SW, p]
    if err == _SAMPLE:
        _sample_moments(image, mask, w, vis, x0, x1, bad, keep, mu, facc[_SW2], facc[_SDD])
    for p in range(x1 - x0):
        n = iacc[_CNT, p] & _COUNT_LOW
        e2 = _mean_error(err, n, facc[_SW, p], facc[_SW2, p], facc[_SV, p], facc[_SDD, p])
        _store(out_val, out_var, x0 + p, n, mu[p], e2)


@numba.njit(**_JIT)
def _sample_moments(image, mask, w, vis, x0, x1, bad, keep, mu, sw2, sdd):
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


@numba.njit(**_JIT)
def _weighted_variance(n, sw, sw2, sdd):
    """Debiased weighted sample variance from Σw, Σw² and Σw(x - mean)²; NaN if n <= 1."""
    if n <= 1:
        return np.nan
    return sdd / sw * (sw * sw / (sw * sw - sw2))


@numba.njit(**_JIT)
def _mean_error(err, n, sw, sw2, sv, sdd):
    """Squared error of a weighted mean in the three error modes."""
    if err == _INPUT:
        return sv / (sw * sw)
    if err == _MOSAIC:
        return sv / sw
    return _weighted_variance(n, sw, sw2, sdd) * sw2 / (sw * sw)


@numba.njit(**_JIT)
def _store(out_val, out_var, i, n, value, err2):
    if n == 0:
        out_val[i] = np.nan
        out_var[i] = np.nan
    else:
        out_val[i] = value
        out_var[i] = err2


@numba.njit(**_JIT)
def _sorted_segment(
    image,
    variance,
    mask,
    w,
    vis,
    x0,
    x1,
    stat,
    err,
    ints,
    sigma,
    pbits,
    ci,
    cj,
    vals,
    buf,
    facc,
    iacc,
    rej,
    out_val,
    out_var,
):
    """ "median" or "meanclip" of a segment: fill, sort the columns, then finish the statistic."""
    npix = x1 - x0
    bad, keep = ints[0], ints[1]
    for k in range(vis.size):
        v, wk = vis[k], w[k]
        img, msk = image[v, x0:x1], mask[v, x0:x1]
        row_or = _fill_visit(
            img,
            msk,
            wk,
            bad,
            keep,
            facc[_SW],
            facc[_SW2],
            facc[_SWX],
            iacc[_CNT],
            iacc[_ORM],
            iacc[_ORA],
            vals[k],
        )
        _reject_visit(img, msk, wk, bad, keep, pbits, row_or, rej)
    if ci.size == 0 and vis.size > 1:  # too many visits for a sorting network
        _selection_window(vals, npix, sigma, stat == _MEANCLIP, facc[_C], facc[_HIQR], buf)
    else:
        _network_window(
            vals, npix, sigma, stat == _MEANCLIP, ci, cj, buf, iacc[_CNT], facc[_C], facc[_HIQR]
        )
    if stat == _MEDIAN:
        _median_finish(vals, w, x0, npix, facc, iacc, out_val, out_var)
    else:
        _meanclip_finish(
            variance, vals, w, vis, x0, npix, err, ints[4], sigma, facc, iacc, out_val, out_var
        )


@numba.njit(**_JIT)
def _network_window(vals, npix, sigma, with_iqr, ci, cj, buf, cnt, centre, hiqr):
    """Median and clip half-width of the columns of vals, sorted block by block in buf."""
    width = buf.shape[1]
    for b0 in range(0, npix, width):
        b1 = min(npix, b0 + width)
        for k in range(vals.shape[0]):
            buf[k, : b1 - b0] = vals[k, b0:b1]
        _sort_columns(buf, b1 - b0, ci, cj)
        _quartile_window(buf, b1 - b0, sigma, with_iqr, cnt[b0:b1], centre[b0:b1], hiqr[b0:b1])


@numba.njit(**_JIT)
def _sort_columns(buf, npix, ci, cj):
    """Sort every column buf[:, p] (p < npix) ascending with the comparator network (ci, cj)."""
    zero = buf.dtype.type(0)  # "+ 0" keeps LLVM from turning the min store into a masked store
    for c in range(ci.size):
        lo = buf[ci[c]]
        hi = buf[cj[c]]
        for p in range(npix):
            a = lo[p]
            b = hi[p]
            below = a < b
            lo[p] = (a if below else b) + zero
            hi[p] = (b if below else a) + zero


@numba.njit(**_JIT)
def _quantile_position(n, f):
    """(lo, hi, t): quantile f of n sorted values lies between ranks lo and hi at fraction t."""
    pos = f * (n - 1)
    lo = math.floor(pos)
    return lo, min(lo + 1, n - 1), pos - lo


@numba.njit(**_JIT)
def _lerp(a, b, t):
    """NumPy's linear interpolation (``numpy.lib._function_base_impl._lerp``)."""
    d = b - a
    if t >= 0.5:
        return b - d * (1.0 - t)
    return a + d * t


@numba.njit(**_JIT)
def _quantile(buf, p, n, f):
    """Quantile f of the n sorted values buf[:n, p], linear interpolation at f·(n-1) (NumPy)."""
    if n == 0:
        return np.nan
    lo, hi, t = _quantile_position(n, f)
    return _lerp(np.float64(buf[lo, p]), np.float64(buf[hi, p]), t)


@numba.njit(**_JIT)
def _quartile_window(buf, npix, sigma, with_iqr, cnt, centre, hiqr):
    """Median (the iteration-0 clip centre) and, if with_iqr, sigma·0.7413·IQR (its half-width)
    of sorted columns."""
    for p in range(npix):
        centre[p] = _quantile(buf, p, cnt[p] & _COUNT_LOW, 0.5)
    if with_iqr:
        for p in range(npix):
            n = cnt[p] & _COUNT_LOW
            iqr = _quantile(buf, p, n, 0.75) - _quantile(buf, p, n, 0.25)
            hiqr[p] = sigma * IQR_TO_SIGMA * iqr


@numba.njit(**_JIT)
def _select(a, n, k):
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


@numba.njit(**_JIT)
def _selected_quantile(a, n, f):
    """Quantile f of a[:n] by selection (reorders a)."""
    lo, hi, t = _quantile_position(n, f)
    _select(a, n, lo)
    b = a[lo]
    for i in range(lo + 1, n):  # rank lo + 1 is the smallest value after rank lo
        b = a[i] if a[i] < b or i == lo + 1 else b
    return _lerp(np.float64(a[lo]), np.float64(b if hi > lo else a[lo]), t)


@numba.njit(**_JIT)
def _selection_window(vals, npix, sigma, with_iqr, centre, hiqr, tile):
    """:func:`_quartile_window` for many visits: per-pixel selection instead of sorting.

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
            centre[p] = _selected_quantile(col, n, 0.5)
            if with_iqr:
                iqr = _selected_quantile(col, n, 0.75) - _selected_quantile(col, n, 0.25)
                hiqr[p] = sigma * IQR_TO_SIGMA * iqr


@numba.njit(**_JIT)
def _good_sdd(vals, w, npix, mu, sdd):
    """Σw(x - mean)² over the good (finite) entries of the value buffer."""
    for k in range(w.size):
        row = vals[k]
        wk = w[k]
        for p in range(npix):
            x = np.float64(row[p])
            d = x - mu[p]
            sdd[p] += wk * d * d if x < np.inf else 0.0


@numba.njit(**_JIT)
def _median_finish(vals, w, x0, npix, facc, iacc, out_val, out_var):
    """Unweighted median; error² = π/2 · (weighted sample variance) / n (afw MEDIAN)."""
    mu = facc[_MU]
    for p in range(npix):
        mu[p] = facc[_SWX, p] / facc[_SW, p]
    _good_sdd(vals, w, npix, mu, facc[_SDD])
    for p in range(npix):
        n = iacc[_CNT, p] & _COUNT_LOW
        var = _weighted_variance(n, facc[_SW, p], facc[_SW2, p], facc[_SDD, p])
        _store(out_val, out_var, x0 + p, n, facc[_C, p], 0.5 * math.pi * var / n)


@numba.njit(**_JIT)
def _clip_visit(row, var, wk, cv, npix, centre, half, sw, sw2, sd, sdd, sv, nkeep):
    """Add one visit's inputs with |x - centre| <= half to the clip sums.

    Inputs that are not good are +inf in ``row`` and never pass (centre and half are finite or
    NaN). Sums are taken about the window centre (as afw does); sv sums cv·var.
    """
    one, zero = np.int32(1), np.int32(0)
    for p in range(npix):
        x = np.float64(row[p])
        d = x - centre[p]
        kept = abs(d) <= half[p]
        sw[p] += wk if kept else 0.0
        sw2[p] += wk * wk if kept else 0.0
        sd[p] += wk * d if kept else 0.0
        sdd[p] += wk * d * d if kept else 0.0
        t = cv * var[p]
        sv[p] += t if kept else 0.0
        nkeep[p] += one if kept else zero


@numba.njit(**_JIT)
def _clip_moments(vals, w, npix, facc):
    """Mean (row _MU) and Σw(x - mean)² (row _SDD) of every pixel's kept set.

    From the one-pass sums about the centre, unless they cancel to fewer than ~8 digits (a kept
    set far narrower than its distance to the centre, e.g. identical values, or an empty one):
    those pixels are recomputed by :func:`_exact_clip_moments`.
    """
    mean, sdd = facc[_MU], facc[_SDD]
    for p in range(npix):
        sw, sd, around = facc[_CSW, p], facc[_CSD, p], facc[_CSDD, p]
        spread = around - sd * sd / sw
        mean[p] = facc[_C, p] + sd / sw
        sdd[p] = spread if spread > _CANCELLATION * around else -1.0
    for p in range(npix):
        if sdd[p] < 0.0:
            mean[p], sdd[p] = _exact_clip_moments(vals, w, p, facc[_C, p], facc[_H, p])


@numba.njit(**_JIT)
def _exact_clip_moments(vals, w, p, centre, half):
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


@numba.njit(**_JIT)
def _clip_update(npix, sigma, facc, nkeep, cnt):
    """Next window: centre = clipped mean, half-width = sigma·sqrt(max(0, clipped variance)),
    or sigma·0.7413·IQR where the pixel has n <= 1 GOOD inputs (afw Statistics.cc tests the
    standard-pass count NPOINT, not the kept count: a pass that keeps one of several inputs
    has a NaN variance, so the next window is NaN and the result NaN, as in afw)."""
    for p in range(npix):
        var = _weighted_variance(nkeep[p], facc[_CSW, p], facc[_CSW2, p], facc[_SDD, p])
        half = sigma * math.sqrt(max(0.0, var)) if nkeep[p] > 1 else np.nan
        facc[_C, p] = facc[_MU, p]
        facc[_H, p] = half if (cnt[p] & 0xFFFF) > 1 else facc[_HIQR, p]


@numba.njit(**_JIT)
def _clip_pass(vals, variance, w, vis, x0, npix, err, facc, nkeep):
    """One clip iteration over all visits with the current window (facc[_C], facc[_H]).

    With err < 0 the error sum is skipped (the value rows stand in for the variance rows).
    """
    facc[_CSW : _CSV + 1, :npix] = 0.0
    nkeep[:npix] = 0
    for k in range(w.size):
        if err < 0 or err == _SAMPLE:
            var, cv = vals[k], 0.0
        else:
            var, cv = variance[vis[k], x0 : x0 + npix], _variance_coefficient(err, w[k])
        _clip_visit(
            vals[k],
            var,
            w[k],
            cv,
            npix,
            facc[_C],
            facc[_H],
            facc[_CSW],
            facc[_CSW2],
            facc[_CSD],
            facc[_CSDD],
            facc[_CSV],
            nkeep,
        )


@numba.njit(**_JIT)
def _meanclip_finish(
    variance, vals, w, vis, x0, npix, err, niter, sigma, facc, iacc, out_val, out_var
):
    """afw MEANCLIP: niter non-cumulative clip passes, then the weighted mean of the kept set."""
    nkeep = iacc[_NCLIP]
    facc[_H, :npix] = facc[_HIQR, :npix]
    for it in range(niter):
        if it > 0:
            _clip_update(npix, sigma, facc, nkeep, iacc[_CNT])
        _clip_pass(vals, variance, w, vis, x0, npix, err if it == niter - 1 else -1, facc, nkeep)
        _clip_moments(vals, w, npix, facc)
    for p in range(npix):
        n = iacc[_CNT, p] & _COUNT_LOW
        e2 = _mean_error(err, nkeep[p], facc[_CSW, p], facc[_CSW2, p], facc[_CSV, p], facc[_SDD, p])
        _store(out_val, out_var, x0 + p, n, facc[_MU, p], e2)
        nkeep[p] = n - nkeep[p]  # the row now holds NCLIPPED


@numba.njit(**_JIT)
def _finish_masks(x0, x1, nvis, ints, sw, iacc, rej, pthr, pbits, mfrom, mto, out_mask, out_n):
    """Output mask (OR mask, threshold propagation, NO_DATA, CLIPPED, maskMap) and n_image.

    Written as branch-free pixel loops, one per rule, so that they vectorise.
    """
    clipped_bit, no_data_bit = ints[2], ints[3]
    zero = np.int32(0)
    cnt, orm, ora, nclip = iacc[_CNT], iacc[_ORM], iacc[_ORA], iacc[_NCLIP]
    om, on = out_mask[x0:x1], out_n[x0:x1]
    for p in range(x1 - x0):
        on[p] = cnt[p] >> 16
        om[p] = orm[p]
    for b in range(pbits.size):
        bit, threshold, r = pbits[b], pthr[b], rej[b]
        for p in range(x1 - x0):
            om[p] |= bit if r[p] / (sw[p] + r[p]) > threshold else zero
    for p in range(x1 - x0):
        m = om[p] if cnt[p] & _COUNT_LOW != zero else no_data_bit
        om[p] = m | (clipped_bit if nclip[p] > zero else zero)
    for i in range(mfrom.size):
        src, dst = mfrom[i], mto[i]
        for p in range(x1 - x0):
            hit = (cnt[p] & _COUNT_LOW < nvis) & (np.int32(ora[p] & src) != zero)
            om[p] |= dst if hit else zero
