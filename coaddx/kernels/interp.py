"""Row interpolation over masked defects: LSST ``interpolateOverDefects`` (algorithms.md 1.4).

InterpImageTask (pipe_tasks ``interpImage.py``) turns the pixels of one mask plane into a defect
list (ip_isr ``Defects.fromMask``: footprints split into boxes that cover exactly the masked
pixels) and calls meas_algorithms ``interpolateOverDefects`` (``src/Interp.cc``, the SDSS
"photo" scheme) with ``useFallbackValueAtEdge=True``. That code works one row at a time:

1. The boxes crossing the row are merged into maximal runs of bad pixels (``classify_defects``),
   so a run here is simply a maximal run of pixels with ``mask & bad_bits != 0``.
2. Each run is classified by position (``LEFT`` x0 == 0, ``NEAR_LEFT`` x0 == 1, ``NEAR_RIGHT``
   x1 == ncol-2, ``RIGHT`` x1 == ncol-1, else ``MIDDLE``; tested in that order, ``WIDE_*`` when
   the run is >= 11 px) and by how many good pixels each side offers: two ("##") or one ("#.")
   when the neighbouring run is only one good pixel away.
3. Runs are filled left to right, in place (a later run reads the values already written for an
   earlier one), with fixed linear-prediction coefficients of out[x0-2], out[x0-1], out[x1+1],
   out[x1+2] (Interp.cc's 4-decimal values, transcribed in :mod:`coaddx.kernels.interp_tables`).
   Wide runs use the same kind of weights for the 6 pixels next to each side and a constant
   (close to the average of the neighbours) in between. Edge runs (LEFT/RIGHT, <= 6 px)
   extrapolate from the two pixels on their one side.
4. Edge runs longer than 6 px get ``fallback`` for all but the 6 pixels nearest the data, which
   are then interpolated as a 6-px run with two "good" (fallback) pixels on the edge side; a
   whole bad row gets ``fallback``. ``WIDE_NEAR_LEFT`` runs that reach the right edge get the
   last pixel (x1 == ncol-2) or ``fallback``.
5. Every value is computed in double and stored in the plane's dtype; if it is below the
   "minimum acceptable value" it is replaced by the average of the two neighbours (by the
   neighbour for edge runs). InterpImageTask passes ``-max(dtype)`` as that minimum, so the
   replacement only fires for ``-inf``; it is implemented as in the C++.
6. The variance plane goes through the same code with the same (image-derived) fallback, and
   INTRP is OR-ed into every pixel of every run.

LSST quirks reproduced on purpose (they change numbers in real coadds):

* a 2-px run with one good pixel on each side ("#..#.", type 022) clamps negative values to 0
  instead of testing the minimum acceptable value;
* after the fallback step an edge run is re-classified with "##" on the edge side, and when the
  remaining 6 px start at column 1 or end at ncol-2 the C++ reads the missing second pixel as
  the sentinel -1 (``NOTUSED``): a left-edge run of exactly 7 px uses out[x0-2] = -1, a
  right-edge run of exactly 7 px, or a left-edge run of >= 8 px ending at ncol-2, uses
  out[x1+2] = -1 (e.g. 7 bad px at the left, fallback 3, data 10: out[1] = 0.5177 + 1.3400*3
  + 0.0891*10 + 0.0886*10 = 6.3147);
* a NEAR_LEFT run (x0 == 1) followed one pixel later by another run keeps its "##" right side
  (the C++ clears the wrong bit) and so reads the first, not yet interpolated pixel of the next
  run (NaN there gives NaN here);
* RIGHT runs (and right-edge runs after the fallback step) always use two pixels on the left,
  even when the left one belongs to the previous run (already interpolated by then).

Deviations (only rows of <= 12 pixels are affected, where Interp.cc reads past the row):
a bad row of <= 6 pixels gets ``fallback`` (like longer ones); a LEFT or NEAR_LEFT run whose
second right neighbour is outside the row uses the one-good-pixel ("#.") coefficients; a NEAR_LEFT
run that reaches the right edge copies out[0]. The one-sided ``WIDE_LEFT``/``WIDE_RIGHT`` tables
of Interp.cc are not implemented: with ``useFallbackValueAtEdge=True`` (the InterpImageTask
default, the only mode offered here) such runs always take the fallback path first.
"""

from __future__ import annotations

import numba
import numpy as np

from coaddx.kernels.interp_tables import CLAMP_ZERO, MIN_CHECK, N_USE_INTERP, TABLES, WIDE_DEFECT

__all__ = ["interp_fallback", "interpolate_over_defects"]

# Defect::DefectPosition (Interp.h)
_LEFT, _NEAR_LEFT, _WIDE_LEFT, _MIDDLE, _WIDE_NEAR_LEFT = 1, 2, 3, 4, 5
_WIDE, _WIDE_NEAR_RIGHT, _NEAR_RIGHT, _WIDE_RIGHT, _RIGHT = 6, 7, 8, 9, 10


@numba.njit(nogil=True, cache=True)
def _combine(c, o12, o11, o21, o22, left, right):
    """Interp.cc's weighted sum, in double, summed left to right over the pixels in use."""
    if left == 2:
        s = c[0] * o12 + c[1] * o11
    else:
        s = c[1] * o11
    s = s + c[2] * o21
    if right == 2:
        s = s + c[3] * o22
    return s


@numba.njit(nogil=True, cache=True)
def _check(row, j, kind, vmin, a, b):
    """Post-store test on row[j]: below ``vmin`` -> average of row[a], row[b]; or clamp at 0."""
    if kind == MIN_CHECK:
        if row[j] < vmin:
            row[j] = 0.5 * (row[a] + row[b])
    elif kind == CLAMP_ZERO:
        if row[j] < 0:
            row[j] = 0


@numba.njit(nogil=True, cache=True)
def _fill(row, x0, x1, value):
    for j in range(x0, x1 + 1):
        row[j] = value


@numba.njit(nogil=True, cache=True)
def _fill_left(row, x0, x1, right, fallback, vmin, one_sided):
    """LEFT run (x0 == 0, <= 6 px): extrapolate from out[x1+1], out[x1+2]."""
    ncol = row.shape[0]
    if x1 + 1 >= ncol:  # whole (short) row bad; Interp.cc would read past the row
        _fill(row, x0, x1, fallback)
        return
    o21 = row[x1 + 1]
    if right == 1 or x1 + 2 >= ncol:  # "#?": copy the neighbour
        _fill(row, x0, x1, o21)
        return
    o22 = row[x1 + 2]
    for j in range(x0, x1 + 1):
        d = min(x1 - j + 1, 7)
        row[j] = one_sided[d, 0] * o21 + one_sided[d, 1] * o22
        if row[j] < vmin:
            row[j] = o21


@numba.njit(nogil=True, cache=True)
def _fill_right(row, x0, x1, vmin, one_sided):
    """RIGHT run (x1 == ncol-1, x0 >= 2, <= 6 px): extrapolate from out[x0-2], out[x0-1]."""
    o12 = row[x0 - 2]
    o11 = row[x0 - 1]
    for j in range(x0, x1 + 1):
        d = min(j - x0 + 1, 7)
        row[j] = one_sided[d, 1] * o12 + one_sided[d, 0] * o11
        if row[j] < vmin:
            row[j] = o11


@numba.njit(nogil=True, cache=True)
def _fill_narrow(row, x0, x1, pos, left, right, vmin, narrow, narrow_check):
    """MIDDLE / NEAR_LEFT / NEAR_RIGHT run of 1..10 px."""
    ncol = row.shape[0]
    if x1 + 1 >= ncol:  # NEAR_LEFT run reaching the right edge (tiny rows only)
        _fill(row, x0, x1, row[x0 - 1])
        return
    o11 = row[x0 - 1]
    o21 = row[x1 + 1]
    o12 = -1.0 if pos == _NEAR_LEFT else row[x0 - 2]  # Interp.cc's NOTUSED sentinel
    if pos == _NEAR_RIGHT:
        o22 = -1.0
    elif x1 + 2 < ncol:
        o22 = row[x1 + 2]
    else:  # NEAR_LEFT run ending at ncol-2 (tiny rows only)
        o22 = 0.0
        right = 1
    n = x1 - x0 + 1
    for k in range(n):
        row[x0 + k] = _combine(narrow[n, left, right, k], o12, o11, o21, o22, left, right)
        _check(row, x0 + k, narrow_check[n, left, right, k], vmin, x0 - 1, x1 + 1)


@numba.njit(nogil=True, cache=True)
def _fill_wide(row, x0, x1, pos, left, right, fallback, vmin, wide, wide_mid, wide_mid_check):
    """WIDE / WIDE_NEAR_LEFT / WIDE_NEAR_RIGHT run of >= 11 px."""
    ncol = row.shape[0]
    if pos == _WIDE_NEAR_LEFT and x1 + 2 >= ncol:  # one or no column left on the right
        _fill(row, x0, x1, row[ncol - 1] if x1 == ncol - 2 else fallback)
        return
    o11 = row[x0 - 1]
    o21 = row[x1 + 1]
    o12 = -1.0 if pos == _WIDE_NEAR_LEFT else row[x0 - 2]
    o22 = -1.0 if pos == _WIDE_NEAR_RIGHT else row[x1 + 2]
    n = x1 - x0 + 1
    mid = _combine(wide_mid[left, right], o12, o11, o21, o22, left, right)
    for k in range(n):
        if k >= n - N_USE_INTERP:
            c = wide[left, right, k - n + 2 * N_USE_INTERP]
        elif k < N_USE_INTERP:
            c = wide[left, right, k]
        else:
            row[x0 + k] = mid
            _check(row, x0 + k, wide_mid_check[left, right], vmin, x0 - 1, x1 + 1)
            continue
        row[x0 + k] = _combine(c, o12, o11, o21, o22, left, right)
        _check(row, x0 + k, MIN_CHECK, vmin, x0 - 1, x1 + 1)


@numba.njit(nogil=True, cache=True)
def _fill_run(row, x0, x1, pos, left, right, fallback, vmin, tables):
    """Interp.cc ``do_defects`` for one classified run of one row (in place)."""
    one_sided, narrow, narrow_check, wide, wide_mid, wide_mid_check = tables
    ncol = row.shape[0]
    if x1 - x0 + 1 > N_USE_INTERP:
        if pos == _LEFT or pos == _WIDE_LEFT:
            if x1 == ncol - 1:
                _fill(row, x0, x1, fallback)
                return
            _fill(row, x0, x1 - N_USE_INTERP, fallback)
            x0 = x1 - N_USE_INTERP + 1
            left = 2
            if x0 <= 1:
                pos = _NEAR_LEFT
            else:
                pos = _MIDDLE if x1 < ncol - 2 else _NEAR_RIGHT
        elif pos == _RIGHT or pos == _WIDE_RIGHT:
            _fill(row, x0 + N_USE_INTERP, x1, fallback)
            x1 = x0 + N_USE_INTERP - 1
            left = 2
            right = 2
            pos = _MIDDLE if x1 < ncol - 2 else _NEAR_RIGHT
    if pos == _LEFT:
        _fill_left(row, x0, x1, right, fallback, vmin, one_sided)
    elif pos == _RIGHT:
        _fill_right(row, x0, x1, vmin, one_sided)
    elif pos == _MIDDLE or pos == _NEAR_LEFT or pos == _NEAR_RIGHT:
        _fill_narrow(row, x0, x1, pos, left, right, vmin, narrow, narrow_check)
    else:
        _fill_wide(row, x0, x1, pos, left, right, fallback, vmin, wide, wide_mid, wide_mid_check)


@numba.njit(nogil=True, cache=True)
def _find_runs(mask_row, bad_bits, starts, ends):
    """Maximal runs of pixels with ``mask & bad_bits``; returns their number."""
    ncol = mask_row.shape[0]
    nruns = 0
    x = 0
    while x < ncol:
        if mask_row[x] & bad_bits:
            starts[nruns] = x
            while x + 1 < ncol and (mask_row[x + 1] & bad_bits):
                x += 1
            ends[nruns] = x
            nruns += 1
        x += 1
    return nruns


@numba.njit(nogil=True, cache=True)
def _classify(starts, ends, nruns, ncol, pos, left, right):
    """Interp.cc ``classify_defects``: position and "##"/"#." sides of each run."""
    for i in range(nruns):
        x0, x1 = starts[i], ends[i]
        wide = x1 - x0 + 1 >= WIDE_DEFECT
        lft, rgt = 2, 2
        if x0 == 0:
            p = _WIDE_LEFT if wide else _LEFT
        elif x0 == 1:
            p = _WIDE_NEAR_LEFT if wide else _NEAR_LEFT
            lft = 1
        elif x1 == ncol - 2:
            p = _WIDE_NEAR_RIGHT if wide else _NEAR_RIGHT
            rgt = 1
        elif x1 == ncol - 1:
            p = _WIDE_RIGHT if wide else _RIGHT
        else:
            p = _WIDE if wide else _MIDDLE
        # one good pixel between runs; the C++ bit masks have no effect for RIGHT (left side)
        # and NEAR_LEFT (right side)
        if i > 0 and ends[i - 1] == x0 - 2 and p != _RIGHT and p != _WIDE_RIGHT:
            lft = 1
        if i + 1 < nruns and starts[i + 1] == x1 + 2 and p != _NEAR_LEFT:
            rgt = 1
        pos[i], left[i], right[i] = p, lft, rgt


@numba.njit(nogil=True, cache=True)
def _interp_rows(
    image, variance, mask, bad_bits, intrp_bit, fallback, vmin_image, vmin_var, tables
):
    """Interpolate every row of image/variance in place and OR ``intrp_bit`` into the mask."""
    nrow, ncol = image.shape
    starts = np.empty(ncol, np.int64)
    ends = np.empty(ncol, np.int64)
    pos = np.empty(ncol, np.int64)
    left = np.empty(ncol, np.int64)
    right = np.empty(ncol, np.int64)
    for y in range(nrow):
        nruns = _find_runs(mask[y], bad_bits, starts, ends)
        _classify(starts, ends, nruns, ncol, pos, left, right)
        for i in range(nruns):
            _fill_run(
                image[y],
                starts[i],
                ends[i],
                pos[i],
                left[i],
                right[i],
                fallback,
                vmin_image,
                tables,
            )
            _fill_run(
                variance[y],
                starts[i],
                ends[i],
                pos[i],
                left[i],
                right[i],
                fallback,
                vmin_var,
                tables,
            )
            for x in range(starts[i], ends[i] + 1):
                mask[y, x] |= intrp_bit


def interpolate_over_defects(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    *,
    bad_bits: int,
    intrp_bit: int,
    fallback: float,
    transpose: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """InterpImageTask's row interpolation over the pixels with ``mask & bad_bits``.

    Parameters
    ----------
    image, variance : ndarray of shape (Y, X)
        Float planes (float32 or float64; the dtypes are kept).
    mask : ndarray of shape (Y, X)
        Integer mask plane (int32 in coaddx).
    bad_bits : int
        Bit mask of the planes to interpolate over (e.g. NO_DATA).
    intrp_bit : int
        Bit value OR-ed into every interpolated pixel (INTRP).
    fallback : float
        Value used far (> 6 px) from the data at the edges and for whole bad rows, on both
        planes (see :func:`interp_fallback`).
    transpose : bool
        Interpolate along columns instead of rows (InterpImageConfig.transpose).

    Returns
    -------
    image, variance, mask : ndarray of shape (Y, X)
        New arrays; the inputs are not modified. Each row (column) depends only on itself and
        ``fallback``, so bands of full lines can be processed independently.

    Examples
    --------
    >>> img = np.array([[1.0, 2.0, 3.0, 9.0, 5.0, 6.0, 7.0]])
    >>> msk = np.array([[0, 0, 0, 1, 0, 0, 0]], dtype=np.int32)
    >>> out, _, m = interpolate_over_defects(img, img, msk, bad_bits=1, intrp_bit=4,
    ...                                      fallback=0.0)
    >>> round(float(out[0, 3]), 12), m[0].tolist()
    (4.0, [0, 0, 0, 5, 0, 0, 0])
    """
    planes = [np.asarray(image), np.asarray(variance), np.asarray(mask)]
    if planes[0].ndim != 2 or any(p.shape != planes[0].shape for p in planes):
        raise ValueError("image, variance and mask must be 2-D arrays of the same shape")
    if not all(np.issubdtype(p.dtype, np.floating) for p in planes[:2]):
        raise TypeError("image and variance must be floating-point arrays")
    if not np.issubdtype(planes[2].dtype, np.integer):
        raise TypeError("mask must be an integer array")
    img, var, msk = (np.array(p.T if transpose else p, order="C", copy=True) for p in planes)
    mtype = msk.dtype.type
    _interp_rows(
        img,
        var,
        msk,
        mtype(bad_bits),
        mtype(intrp_bit),
        float(fallback),
        -np.finfo(img.dtype).max,
        -np.finfo(var.dtype).max,
        TABLES,
    )
    if transpose:
        return img.T.copy(), var.T.copy(), msk.T.copy()
    return img, var, msk


def interp_fallback(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """InterpImageTask's default edge fallback: MEDIAN of the whole image, floored at 0.

    afw ``makeStatistics(maskedImage, MEDIAN)`` with the default StatisticsControl: every finite
    pixel counts (no andMask, so ``mask`` is ignored), the median interpolates linearly between
    the two central values; then ``max(value, 0)`` (negativeFallbackAllowed=False). NaN when no
    pixel is finite.
    """
    values = np.asarray(image, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    return max(float(np.median(values)), 0.0)
