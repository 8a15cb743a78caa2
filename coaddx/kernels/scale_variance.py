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
    arithmetic), bit for bit, by a radix selection (:func:`_quartiles`)."""
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
    q1, q3 = _quartiles(z.view(np.uint64))
    return float(q1), float(q3)


@numba.njit(nogil=True, cache=True)
def _gather_normalised(image, background, variance, good, out):  # pragma: no cover - numba
    k = 0
    for i in range(image.size):
        if good[i]:
            out[k] = (np.float64(image[i]) - background[i]) / math.sqrt(np.float64(variance[i]))
            k += 1


#: Bits of the order-preserving key of a float64 that :func:`_quartiles` buckets by.
_BUCKET_BITS = 16


@numba.njit(nogil=True, cache=True)
def _key(u):  # pragma: no cover - numba
    """Order-preserving uint64 key of the float64 bits ``u`` (finite values)."""
    sign = np.uint64(0x8000000000000000)
    return (u ^ np.uint64(0xFFFFFFFFFFFFFFFF)) if (u & sign) != 0 else (u | sign)


@numba.njit(nogil=True, cache=True)
def _quartiles(bits):  # pragma: no cover - numba
    """numpy's "linear" 25th and 75th percentiles of finite float64 values given as their bits
    (n >= 2): a histogram of the top :data:`_BUCKET_BITS` bits of their order-preserving keys
    finds the buckets of the four ranks needed, whose values alone are sorted."""
    n = bits.size
    shift = np.uint64(64 - _BUCKET_BITS)
    count = np.zeros((1 << _BUCKET_BITS) + 1, np.int64)
    for i in range(n):
        count[(_key(bits[i]) >> shift) + np.uint64(1)] += 1
    for b in range(1 << _BUCKET_BITS):  # count[b]: values in buckets below b
        count[b + 1] += count[b]
    ranks, pos = np.empty(4, np.int64), np.empty(2)
    for j in range(2):
        q = 0.25 + 0.5 * j
        pos[j] = n * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0  # numpy's virtual index
        lo = math.floor(pos[j])
        ranks[2 * j], ranks[2 * j + 1] = lo, min(lo + 1, n - 1)
    wanted = np.zeros(1 << _BUCKET_BITS, np.bool_)
    for r in ranks:
        wanted[np.searchsorted(count, r, side="right") - 1] = True
    before = np.zeros(1 << _BUCKET_BITS, np.int64)  # wanted values in wanted buckets below b
    total = 0
    for b in range(1 << _BUCKET_BITS):
        before[b] = total
        if wanted[b]:
            total += count[b + 1] - count[b]
    keys = np.empty(total, np.uint64)
    k = 0
    for i in range(n):
        key = _key(bits[i])
        if wanted[key >> shift]:
            keys[k] = key
            k += 1
    keys.sort()
    out = np.empty(2)
    for j in range(2):
        v = np.empty(2)
        for h in range(2):
            r = ranks[2 * j + h]
            b = np.searchsorted(count, r, side="right") - 1
            key = keys[before[b] + r - count[b]]
            u = (key ^ np.uint64(0x8000000000000000)) if (key >> np.uint64(63)) != 0 else ~key
            v[h] = np.array([u]).view(np.float64)[0]
        out[j] = v[0] if pos[j] >= n - 1 else numpy_lerp(v[0], v[1], pos[j] - math.floor(pos[j]))
    return out[0], out[1]
