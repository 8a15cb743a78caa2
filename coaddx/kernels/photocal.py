"""PhotoCalTask.getZeroPoint (algorithms.md 7, step 3): the zero point of an exposure from the
magnitude differences of its calibration stars, exactly as LSST computes it.

The differences dmag = ref - inst are sorted (NaNs dropped). Iteration 0 starts from a crude
mode (a 20-bin histogram; the middle of the contiguous modal bins, with a width from the
half-maximum points / 2.3; without contiguous modes the median and the quartiles / 2.3); later
iterations clip around the median of the kept values with 0.7413 x their inter-quartile range;
the clip is ``n_sigma`` x min(sigma, ``sigma_max``) (exclusive); the loop stops when the kept
count stops changing. The zero point is the inverse-variance mean of the kept values and its
error the formal error of that mean, sqrt(1 / sum w) (not the scatter: algorithms.md 9.11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coaddx.constants import IQR_TO_SIGMA

__all__ = ["ZeroPoint", "zero_point"]

_HIST_BINS = 20
_HALF_WIDTH_TO_SIGMA = 2.3  # (q3 - q1) / 2.3 from the half-maximum points (LSST's constant)


@dataclass(frozen=True)
class ZeroPoint:
    """``zp`` (mag), ``sigma`` (its formal error; the clipping width when every star was
    rejected), ``ngood`` (stars kept) and ``good`` (which of the finite inputs, in input order,
    were kept; all False when every star was rejected)."""

    zp: float
    sigma: float
    ngood: int
    good: np.ndarray


def _modal_start(dmag: np.ndarray, zp0: float | None) -> tuple[float, float, float]:
    """Iteration 0: (center, sigma, the sigma_max LSST derives when none is given)."""
    npt = dmag.size
    hist, edges = np.histogram(dmag, _HIST_BINS)
    imode = np.flatnonzero(hist == hist.max())
    if imode[-1] - imode[0] + 1 == imode.size:  # the modes are contiguous
        center = zp0 if zp0 else 0.5 * (edges[imode[0]] + edges[imode[-1] + 1])
        peak = hist[imode].sum() / imode.size
        j = imode[0]
        while j >= 0 and hist[j] > 0.5 * peak:
            j -= 1
        j = max(j, 0)
        q1 = dmag[hist[:j].sum()]
        j = imode[-1]
        while j < _HIST_BINS and hist[j] > 0.5 * peak:
            j += 1
        j = min(j, _HIST_BINS - 1)
        q3 = dmag[min(hist[:j].sum(), npt - 1)]
        if q1 == q3:
            q1, q3 = dmag[int(0.25 * npt)], dmag[int(0.75 * npt)]
        sig = (q3 - q1) / _HALF_WIDTH_TO_SIGMA
        return float(center), float(sig), 2 * float(sig)
    q1, q3 = dmag[int(0.25 * npt)], dmag[int(0.75 * npt)]
    return (
        float(np.median(dmag)),
        float((q3 - q1) / _HALF_WIDTH_TO_SIGMA),
        float(dmag[-1] - dmag[0]),
    )


def zero_point(
    ref: np.ndarray,
    inst: np.ndarray,
    inst_err: np.ndarray | None = None,
    *,
    n_sigma: float = 3.0,
    sigma_max: float | None = 0.25,
    n_iter: int = 20,
    use_median: bool = True,
    zp0: float | None = None,
) -> ZeroPoint:
    """getZeroPoint of reference magnitudes ``ref`` and instrumental magnitudes ``inst``
    (-2.5 log10 flux) with the magnitude errors ``inst_err`` (the weights are 1 / err^2;
    without errors every weight is 1). ``sigma_max`` None derives it from the modal width as
    LSST does; ``use_median`` False centres later iterations on LSST's error-weighted average
    (its weights are the errors themselves, algorithms.md 9.11). ``zp0`` replaces the modal
    centre of iteration 0. See the module docstring; ``ValueError`` without finite pairs."""
    ref = np.asarray(ref, np.float64)
    inst = np.asarray(inst, np.float64)
    err = np.ones_like(ref) if inst_err is None else np.asarray(inst_err, np.float64)
    dmag_all = ref - inst
    order = np.argsort(dmag_all, kind="stable")
    dmag, derr = dmag_all[order], err[order]
    finite = ~np.isnan(dmag) & ~np.isnan(derr)
    dmag, derr, order = dmag[finite], derr[finite], order[finite]
    if dmag.size == 0:
        raise ValueError("zero_point: no finite magnitude pairs")
    cap = math.inf
    npt = ngood = dmag.size
    good = np.ones(dmag.size, bool)
    sig = 0.0
    for i in range(int(n_iter)):
        if i == 0:
            center, sig, derived = _modal_start(dmag, zp0)
            cap = derived if sigma_max is None else float(sigma_max)
        else:
            npt = int(good.sum())
            kept = dmag[good]
            center = (
                float(np.median(kept))
                if use_median
                else float(np.average(kept, weights=derr[good]))
            )
            q3 = kept[min(int(0.75 * npt + 0.5), npt - 1)]
            q1 = kept[min(int(0.25 * npt + 0.5), npt - 1)]
            sig = float(IQR_TO_SIGMA * (q3 - q1))
        good = np.abs(dmag - center) < n_sigma * min(sig, cap)
        old, ngood = ngood, int(good.sum())
        if ngood == 0:
            if i == 0:  # everything in one bin: LSST's average with the errors as weights
                center = float(np.average(dmag, weights=derr))
            return ZeroPoint(center, sig, int(dmag.size), np.zeros(ref.size, bool))
        if ngood == old:
            break
    zp, weight_sum = np.average(dmag[good], weights=1.0 / derr[good] ** 2, returned=True)
    mask = np.zeros(ref.size, bool)
    mask[order[good]] = True
    return ZeroPoint(float(zp), float(np.sqrt(1.0 / weight_sum)), ngood, mask)
