"""The weighted mean of the stack as a decomposable reduction over chunks of visits.

``mean_chunk`` sums one chunk of visits, ``mean_combine`` merges partial sums (in any tree) and
``mean_finalize`` turns them into the coadd value, variance and n_image: dask's
``mean_chunk`` / ``mean_combine`` / ``mean_agg`` shape, and the seam an incremental coadd keeps
(the sums of the visits so far, combined with those of new visits). The result equals
:func:`~coaddx.kernels.stack.stack_block`'s ``"mean"`` (value, variance and n_image, to float32
rounding; its mask rules are not part of the reduction). The spread about the mean is combined
with the parallel-variance update (Chan et al.), so the "sample" error stays accurate.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from coaddx.kernels.stack.options import ERROR_MODES, check_bits

__all__ = ["MeanSums", "mean_chunk", "mean_combine", "mean_finalize"]


class MeanSums(NamedTuple):
    """Partial sums of the weighted mean over the good inputs of some visits, per pixel.

    All float64 of shape (Y, X) but the counts (int32).
    """

    weight: np.ndarray  # Σw
    weighted_value: np.ndarray  # Σwx
    weight_squared: np.ndarray  # Σw²
    spread: np.ndarray  # Σw(x - m)², m = Σwx / Σw of these visits
    input_error: np.ndarray  # Σw²σ² (error_mode "input")
    mosaic_error: np.ndarray  # Σwσ² (error_mode "mosaic")
    n_good: np.ndarray  # good inputs (NPOINT)
    n_image: np.ndarray  # included visits without a bad bit (before remove_bits)


def mean_chunk(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    weights: np.ndarray,
    *,
    bad_mask: int,
    remove_bits: int = 0,
) -> MeanSums:
    """Partial sums of the weighted mean of a (V, Y, X) chunk of visits.

    Parameters
    ----------
    image, variance : ndarray of shape (V, Y, X)
    mask : ndarray of shape (V, Y, X)
        int32 mask bit planes.
    weights : ndarray of shape (V,)
        Per-visit weights; a visit whose weight is not finite or <= 0 is absent.
    bad_mask, remove_bits : int
        As in :class:`~coaddx.kernels.stack.StackOptions`: an input is good if finite and its
        mask, less ``remove_bits``, has no ``bad_mask`` bit; n_image counts the included visits
        whose mask (before ``remove_bits``) has no ``bad_mask`` bit.

    Returns
    -------
    MeanSums

    Examples
    --------
    >>> cube = np.array([1.0, 3.0], np.float32).reshape(2, 1, 1)
    >>> sums = mean_chunk(cube, np.ones_like(cube), np.zeros(cube.shape, np.int32), [1, 3],
    ...                   bad_mask=1)
    >>> float(sums.weighted_value[0, 0]), int(sums.n_good[0, 0])
    (10.0, 2)
    """
    image, variance, mask = np.asarray(image), np.asarray(variance), np.asarray(mask)
    if image.ndim != 3 or variance.shape != image.shape or mask.shape != image.shape:
        raise ValueError(
            f"image, variance and mask must share one (V, Y, X) shape, got "
            f"{image.shape}, {variance.shape}, {mask.shape}"
        )
    weights = np.asarray(weights, np.float64).ravel()
    if weights.size != image.shape[0]:
        raise ValueError(f"weights has {weights.size} entries for {image.shape[0]} visits")
    bad = np.int32(check_bits(bad_mask, "bad_mask"))
    keep = np.int32(~check_bits(remove_bits, "remove_bits"))
    shape = image.shape[1:]
    sw, swx, sw2, sv_in, sv_mo = (np.zeros(shape) for _ in range(5))
    n_good, n_image = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    included = [v for v in range(image.shape[0]) if np.isfinite(weights[v]) and weights[v] > 0]
    goods = []
    for v in included:
        wk, m = weights[v], mask[v].astype(np.int32)
        x, var = image[v].astype(np.float64), variance[v].astype(np.float64)
        good = (m & keep & bad == 0) & np.isfinite(image[v])
        sw += np.where(good, wk, 0.0)
        swx += np.where(good, wk * x, 0.0)
        sw2 += np.where(good, wk * wk, 0.0)
        sv_in += np.where(good, wk * wk * var, 0.0)
        sv_mo += np.where(good, wk * var, 0.0)
        n_good += good
        n_image += m & bad == 0
        goods.append(good)
    mean = _ratio(swx, sw)
    spread = np.zeros(shape)
    for v, good in zip(included, goods, strict=True):
        d = image[v].astype(np.float64) - mean
        spread += np.where(good, weights[v] * d * d, 0.0)
    return MeanSums(sw, swx, sw2, spread, sv_in, sv_mo, n_good, n_image)


def mean_combine(*partials: MeanSums) -> MeanSums:
    """Merge the partial sums of disjoint sets of visits (at least one)."""
    if not partials:
        raise ValueError("mean_combine needs at least one MeanSums")
    first = partials[0]
    sums = [sum((getattr(p, f) for p in partials[1:]), getattr(first, f)) for f in MeanSums._fields]
    out = MeanSums(*sums)
    mean = _ratio(out.weighted_value, out.weight)
    spread = np.zeros(mean.shape)
    for p in partials:
        d = np.where(p.weight > 0, _ratio(p.weighted_value, p.weight) - mean, 0.0)
        spread += p.spread + p.weight * d * d
    return out._replace(
        spread=spread, n_good=out.n_good.astype(np.int32), n_image=out.n_image.astype(np.int32)
    )


def mean_finalize(
    sums: MeanSums, *, error_mode: str = "input"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, variance, n_image) of the weighted mean from its sums.

    ``error_mode`` as in :class:`~coaddx.kernels.stack.StackOptions`. value and variance are
    float32 (NaN where no input is good), n_image int32.
    """
    if error_mode not in ERROR_MODES:
        raise ValueError(f"error_mode must be one of {ERROR_MODES}, got {error_mode!r}")
    sw, n = sums.weight, sums.n_good
    value = _ratio(sums.weighted_value, sw)
    sw_sq = sw * sw
    if error_mode == "input":
        err2 = _ratio(sums.input_error, sw_sq)
    elif error_mode == "mosaic":
        err2 = _ratio(sums.mosaic_error, sw)
    else:
        debias = _ratio(sw_sq, sw_sq - sums.weight_squared)
        sample = np.where(n > 1, _ratio(sums.spread, sw) * debias, np.nan)
        err2 = sample * _ratio(sums.weight_squared, sw_sq)
    good = n > 0
    value = np.where(good, value, np.nan).astype(np.float32)
    err2 = np.where(good, err2, np.nan).astype(np.float32)
    return value, err2, sums.n_image.astype(np.int32)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (no warning)."""
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den != 0)
