"""Brute-force reference of :func:`coaddx.kernels.stack.stack_block` (algorithms.md §1.1).

Written straight from the rules, one pixel at a time in plain Python/NumPy; slow on purpose. It
shares no code with the kernel (only the constant IQR_TO_SIGMA). Two numerical choices are shared
with the kernel: clipped sums are taken about the clip-window centre (afw works on x - crude
mean), and a set of identical values has exactly that mean and a zero variance. Rounded sums
could miss such a value by an ulp and then clip everything away when the next half-width is 0.
"""

from __future__ import annotations

import math

import numpy as np

from coaddx.constants import IQR_TO_SIGMA

__all__ = ["stack_block_reference"]


def stack_block_reference(
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
    """Same signature and results as ``stack_block``, by loops over pixels."""
    nv, ny, nx = image.shape
    weights = np.asarray(weights, dtype=np.float64)
    included = [i for i in range(nv) if math.isfinite(weights[i]) and weights[i] > 0]
    rules = dict(
        statistic=statistic,
        bad=int(bad_mask),
        sigma=float(sigma_clip),
        niter=int(clip_iter),
        error_mode=error_mode,
        thresholds=list(zip(propagate_bits, propagate_thresholds, strict=True)),
        clipped=int(clipped_bit),
        mask_map=list(zip(map_from, map_to, strict=True)),
        no_data=int(no_data_bit),
        remove=int(remove_bits),
    )
    value = np.full((ny, nx), np.nan, np.float32)
    var = np.full((ny, nx), np.nan, np.float32)
    out_mask = np.zeros((ny, nx), np.int32)
    n_image = np.zeros((ny, nx), np.int32)
    for y in range(ny):
        for x in range(nx):
            inputs = [
                (
                    float(image[i, y, x]),
                    float(variance[i, y, x]),
                    int(mask[i, y, x]),
                    float(weights[i]),
                )
                for i in included
            ]
            value[y, x], var[y, x], out_mask[y, x], n_image[y, x] = _pixel(inputs, rules)
    return value, var, out_mask, n_image


def _pixel(inputs, r):
    bad = r["bad"]
    n_image = sum(1 for _, _, m, _ in inputs if m & bad == 0)
    inputs = [(x, v, m & ~r["remove"], w) for x, v, m, w in inputs]
    good = [(x, v, m, w) for x, v, m, w in inputs if math.isfinite(x) and m & bad == 0]
    rejected = [(x, v, m, w) for x, v, m, w in inputs if not (math.isfinite(x) and m & bad == 0)]
    n = len(good)
    if r["statistic"] == "mean":
        (value, err2), nclip = _mean_and_error(good, r["error_mode"]), 0
    elif r["statistic"] == "median":
        (value, err2), nclip = _median(good), 0
    else:
        value, err2, nclip = _meanclip(good, r)
    out = 0
    for _, _, m, _ in good:
        out |= m
    sw = sum(w for _, _, _, w in good)
    for bit, threshold in r["thresholds"]:
        rw = sum(w for _, _, m, w in rejected if m & bit)
        if sw + rw > 0 and rw / (sw + rw) > threshold:
            out |= bit
    if n == 0:
        out, value, err2 = r["no_data"], math.nan, math.nan
    if nclip > 0:
        out |= r["clipped"]
    if n < len(inputs):
        for from_bits, to_bit in r["mask_map"]:
            if any(m & from_bits for _, _, m, _ in inputs):
                out |= to_bit
    return value, err2, out, n_image


def _moments(good, centre=0.0):
    """(n, Σw, Σw², weighted mean, debiased weighted variance) with sums about ``centre``."""
    n = len(good)
    if n == 0:
        return 0, 0.0, 0.0, math.nan, math.nan
    w = np.array([g[3] for g in good])
    x = np.array([g[0] for g in good])
    sw, sw2 = w.sum(), (w * w).sum()
    if (x == x[0]).all():  # identical values: exact mean, no spread
        return n, sw, sw2, x[0], (0.0 if n > 1 else math.nan)
    d = x - centre
    dmean = (w * d).sum() / sw
    biased = (w * (d - dmean) ** 2).sum() / sw
    return n, sw, sw2, centre + dmean, biased * sw * sw / (sw * sw - sw2)


def _mean_and_error(good, mode, centre=0.0):
    n, sw, sw2, mean, var = _moments(good, centre)
    if n == 0:
        return math.nan, math.nan
    if mode == "input":
        err2 = sum(w * w * v for _, v, _, w in good) / sw**2
    elif mode == "mosaic":
        err2 = sum(w * v for _, v, _, w in good) / sw
    else:
        err2 = var * sw2 / sw**2
    return mean, err2


def _quartiles(good):
    values = np.array([g[0] for g in good], dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    q1, q2, q3 = np.quantile(values, [0.25, 0.5, 0.75], method="linear")
    return float(q1), float(q2), float(q3)


def _median(good):
    n, _, _, _, var = _moments(good)
    return _quartiles(good)[1], (math.pi / 2 * var / n if n else math.nan)


def _meanclip(good, r):
    q1, centre, q3 = _quartiles(good)
    iqr_half = r["sigma"] * IQR_TO_SIGMA * (q3 - q1)
    half = iqr_half
    kept: list = []  # set by iteration 0 before any later iteration reads it
    for it in range(r["niter"]):
        if it > 0:
            _, _, _, mean, var = _moments(kept, centre)
            centre = mean
            # afw: the IQR width only where the pixel has <= 1 good input; a pass that kept a
            # single value of several leaves a NaN variance, so nothing is kept next (NaN)
            if len(good) <= 1:
                half = iqr_half
            else:
                half = r["sigma"] * math.sqrt(max(0.0, var)) if len(kept) > 1 else math.nan
        kept = [g for g in good if abs(g[0] - centre) <= half]
    if not kept:
        return math.nan, math.nan, len(good)
    value, err2 = _mean_and_error(kept, r["error_mode"], centre)
    return value, err2, len(good) - len(kept)
