"""ScaleVariance as dask tasks: one 0-d task per visit over its whole plane (the background
bins and the quartiles are of the whole plane)."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np

from coaddx.kernels.scale_variance import ExceedsMaxVarianceScaleError
from coaddx.kernels.scale_variance import scale_variance_factor as scale_variance_kernel

__all__ = ["scale_variance_factor"]

log = logging.getLogger("coaddx.compare_warp")


def _factor_chunk(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    *,
    bad_bits: int,
    limit: float,
    bin_size: int,
) -> np.ndarray:
    """ScaleVariance of one visit; a failure is logged and ignored (factor 1), as in LSST."""
    try:
        factor = scale_variance_kernel(
            image, variance, mask, bad_bits=bad_bits, limit=limit, bin_size=bin_size
        )
    except ExceedsMaxVarianceScaleError as exc:
        log.warning("ScaleVariance failed (%s); the variance is not rescaled", exc)
        factor = 1.0
    return np.asarray(factor, dtype=np.float64)


def scale_variance_factor(
    image: da.Array,
    variance: da.Array,
    mask: da.Array,
    *,
    bad_bits: int,
    limit: float,
    bin_size: int,
) -> da.Array:
    """The 0-d ScaleVariance factor of one visit's 2-D planes (each in one chunk):
    :func:`coaddx.kernels.scale_variance.scale_variance_factor`, 1 where it fails."""
    return da.map_blocks(
        _factor_chunk,
        image,
        variance,
        mask,
        dtype=np.float64,
        drop_axis=[0, 1],
        chunks=(),
        bad_bits=bad_bits,
        limit=limit,
        bin_size=bin_size,
    )
