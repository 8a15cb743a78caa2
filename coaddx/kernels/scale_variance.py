"""ScaleVarianceTask (algorithms.md 1.5): the factor by which a warp's variance plane must be
multiplied to match the scatter of its background-subtracted pixels. numpy and numba: the
normalised residuals are gathered and their quartiles selected (not sorted) in one numba pass
each, with numpy's "linear" interpolation, so the factor is ``np.percentile``'s to the bit."""

from __future__ import annotations

import math

import numba
import numpy as np

from coaddx.kernels.background import background_model
from coaddx.kernels.stats import numpy_lerp

__all__ = ["SCALE_VARIANCE_SIGMA_PER_IQR", "ExceedsMaxVarianceScaleError", "scale_variance_factor"]

#: ScaleVarianceTask's own, rounded, IQR-to-sigma factor (LSST writes 0.74 there, not
#: :data:`coaddx.constants.IQR_TO_SIGMA`; kept for parity).
SCALE_VARIANCE_SIGMA_PER_IQR = 0.74


class ExceedsMaxVarianceScaleError(RuntimeError):
    """ScaleVariance's factor is above its limit with both estimators."""


def scale_variance_factor(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    *,
    bad_bits: int,
    limit: float = 10.0,
    bin_size: int = 32,
) -> float:
    """ScaleVarianceTask: the factor the variance plane must be multiplied by (algorithms.md
    1.5). Raises :class:`ExceedsMaxVarianceScaleError` above ``limit`` with both estimators."""
    with np.errstate(invalid="ignore"):
        good = (
            ((mask & bad_bits) == 0) & np.isfinite(image) & np.isfinite(variance) & (variance > 0)
        )
    if np.count_nonzero(good) < 2:
        return 1.0
    background = background_model(image, good, bin_size)
    q1, q3 = _normalised_quartiles(image, background, variance, good)
    factor = (SCALE_VARIANCE_SIGMA_PER_IQR * (q3 - q1)) ** 2
    if factor > limit:
        resid = (image - background)[good]
        var = variance[good].astype(np.float64)
        q1, q3 = np.percentile(resid, [25, 75])
        factor = (SCALE_VARIANCE_SIGMA_PER_IQR * (q3 - q1) / math.sqrt(np.median(var))) ** 2
        if factor > limit:
            raise ExceedsMaxVarianceScaleError(
                f"variance scale factor {factor:.3g} exceeds the limit {limit}"
            )
    return float(factor)


def _normalised_quartiles(
    image: np.ndarray, background: np.ndarray, variance: np.ndarray, good: np.ndarray
) -> tuple[float, float]:
    """``np.percentile((image - background)[good] / sqrt(variance[good]), [25, 75])`` (float64
    arithmetic), bit for bit, by selection."""
    z = np.empty(int(np.count_nonzero(good)), np.float64)
    _gather_normalised(
        np.ascontiguousarray(image).ravel(),
        np.ascontiguousarray(background, np.float64).ravel(),
        np.ascontiguousarray(variance).ravel(),
        np.ascontiguousarray(good).ravel(),
        z,
    )
    if not np.isfinite(z).all():  # numpy's NaN rules: leave them to numpy
        q1, q3 = np.percentile(z, [25, 75])
        return float(q1), float(q3)
    q1, q3 = _quartiles(z)
    return float(q1), float(q3)


@numba.njit(nogil=True, cache=True)
def _gather_normalised(image, background, variance, good, out):  # pragma: no cover - numba
    k = 0
    for i in range(image.size):
        if good[i]:
            out[k] = (np.float64(image[i]) - background[i]) / math.sqrt(np.float64(variance[i]))
            k += 1


@numba.njit(nogil=True, cache=True)
def _select(a, lo, hi, k):  # pragma: no cover - numba
    """Partially order ``a[lo:hi + 1]`` in place so that ``a[k]`` is its (k - lo)-th smallest
    and nothing after it is smaller (Hoare quickselect, median-of-three pivot)."""
    while hi > lo:
        mid = (lo + hi) // 2
        x, y, w = a[lo], a[mid], a[hi]
        pivot = max(min(x, y), min(max(x, y), w))
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
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


@numba.njit(nogil=True, cache=True)
def _quartiles(a):  # pragma: no cover - numba
    """numpy's "linear" 25th and 75th percentiles of the finite float64 ``a`` (n >= 2),
    reordering it."""
    n = a.size
    out = np.empty(2)
    start = 0
    for j, q in enumerate((0.25, 0.75)):
        pos = n * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0  # numpy's virtual index
        lo = math.floor(pos)
        if pos >= n - 1:
            out[j] = a[:].max()
            continue
        _select(a, start, n - 1, lo)
        nxt = a[lo + 1 :].min()  # nothing after a[lo] is smaller
        out[j] = numpy_lerp(a[lo], nxt, pos - lo)
        start = lo + 1  # the next rank is above: select among what follows
    return out[0], out[1]
