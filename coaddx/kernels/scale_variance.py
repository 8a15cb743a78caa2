"""ScaleVarianceTask (algorithms.md 1.5): the factor by which a warp's variance plane must be
multiplied to match the scatter of its background-subtracted pixels. Pure numpy."""

from __future__ import annotations

import math

import numpy as np

from coaddx.kernels.background import background_model

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
    resid = (image - background_model(image, good, bin_size))[good]
    var = variance[good].astype(np.float64)
    q1, q3 = np.percentile(resid / np.sqrt(var), [25, 75])
    factor = (SCALE_VARIANCE_SIGMA_PER_IQR * (q3 - q1)) ** 2
    if factor > limit:
        q1, q3 = np.percentile(resid, [25, 75])
        factor = (SCALE_VARIANCE_SIGMA_PER_IQR * (q3 - q1) / math.sqrt(np.median(var))) ** 2
        if factor > limit:
            raise ExceedsMaxVarianceScaleError(
                f"variance scale factor {factor:.3g} exceeds the limit {limit}"
            )
    return float(factor)
