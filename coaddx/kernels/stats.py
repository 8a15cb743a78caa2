"""Whole-image statistics with the afw rules (algorithms.md 1.1), for per-visit weights."""

from __future__ import annotations

import numpy as np

__all__ = ["IQR_TO_SIGMA", "meanclip_1d"]

IQR_TO_SIGMA = 0.741301109252802


def meanclip_1d(values: np.ndarray, *, sigma_clip: float = 3.0, clip_iter: int = 2) -> float:
    """Unweighted afw MEANCLIP of the finite entries of ``values`` (any shape).

    Iteration 0 clips around the median with half-width ``sigma_clip * 0.7413 * IQR``; later
    iterations around the previous clipped mean with ``sigma_clip * sqrt(clipped variance)``;
    each iteration re-selects from the full set (not cumulative) and keeps ``|x - c| <= h``.
    Returns NaN when nothing is kept. This is prepareInputs' ``MEANCLIP(variance plane)``.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return float("nan")
    q1, med, q3 = np.percentile(x, [25.0, 50.0, 75.0], method="linear")
    center, var, kept_n = med, float("nan"), n
    for it in range(clip_iter):
        if it == 0 or kept_n <= 1:
            half = sigma_clip * IQR_TO_SIGMA * (q3 - q1)
        else:
            half = sigma_clip * np.sqrt(max(0.0, var))
        kept = x[np.abs(x - center) <= half]
        kept_n = kept.size
        if kept_n == 0:
            return float("nan")
        center = float(kept.mean())
        var = float(kept.var(ddof=1)) if kept_n > 1 else float("nan")
    return float(center)
