"""A smooth background model of an image (SubtractBackgroundTask, algorithms.md 1.5): MEANCLIP
of the good pixels in square bins, Akima-interpolated between bin centres.

Used by ScaleVariance (:mod:`coaddx.kernels.scale_variance`) and by the template detection of
CompareWarp (``temp_local_background``). Pure numpy/scipy.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from scipy import ndimage

from coaddx.kernels.stats import meanclip_rows

__all__ = ["background_model"]

#: afw StatisticsControl's MEANCLIP of each bin: 3 sigma, 3 iterations.
BIN_SIGMA_CLIP, BIN_CLIP_ITER = 3.0, 3


def _bin_centres(n: int, size: int) -> np.ndarray:
    starts = np.arange(0, n, size)
    return (starts + np.minimum(starts + size, n) - 1) / 2.0


def _interp_axis(
    centres: np.ndarray, values: np.ndarray, coords: np.ndarray, axis: int
) -> np.ndarray:
    """Akima spline along ``axis`` between bin centres (linear with < 4 bins, constant with 1:
    afw's REDUCE_INTERP_ORDER), extrapolated linearly from the end bins beyond them."""
    from scipy.interpolate import Akima1DInterpolator, interp1d

    values = np.moveaxis(values, axis, -1)
    if centres.size == 1:
        out = np.repeat(values, coords.size, axis=-1)
        return np.moveaxis(out, -1, axis)
    at = np.clip(coords, centres[0], centres[-1])
    spline = (
        interp1d(centres, values, axis=-1)
        if centres.size < 4
        else Akima1DInterpolator(centres, values, axis=-1)
    )
    out = spline(at) if centres.size < 4 else _akima_at(spline, at)
    lo = (values[..., 1] - values[..., 0]) / (centres[1] - centres[0])
    hi = (values[..., -1] - values[..., -2]) / (centres[-1] - centres[-2])
    below, above = coords < centres[0], coords > centres[-1]
    out[..., below] += (coords[below] - centres[0]) * lo[..., None]
    out[..., above] += (coords[above] - centres[-1]) * hi[..., None]
    return np.moveaxis(out, -1, axis)


def _akima_at(spline: Any, at: np.ndarray) -> np.ndarray:
    """``spline(at)`` of an Akima spline (a float64 PPoly, ``at`` inside its knots), evaluated
    in numba with the GIL released as scipy's ``_ppoly.evaluate`` does it (the interval
    ``x[i] <= at < x[i + 1]``, closed at the last knot; the power series summed from the
    constant term, ``z *= s``), so bit for bit."""
    c = np.ascontiguousarray(spline.c, np.float64)
    flat = c.reshape(c.shape[0], c.shape[1], -1)
    out = np.empty((at.size, flat.shape[2]), np.float64)
    _ppoly_eval(flat, np.ascontiguousarray(spline.x, np.float64), at.astype(np.float64), out)
    return np.moveaxis(out.reshape(at.shape + c.shape[2:]), 0, -1)


@numba.njit(nogil=True, cache=True)
def _ppoly_eval(c, x, at, out):  # pragma: no cover - numba
    nx, k = x.size, c.shape[0]
    for ip in range(at.size):
        xval = at[ip]
        if xval == x[nx - 1]:
            i = nx - 2
        else:
            i = np.searchsorted(x, xval, side="right") - 1  # x[i] <= xval < x[i + 1]
        s = xval - x[i]
        for jp in range(c.shape[2]):
            res = 0.0
            z = 1.0
            for kp in range(k):
                res = res + c[k - kp - 1, i, jp] * z
                if kp < k - 1:
                    z *= s
            out[ip, jp] = res


def background_model(image: np.ndarray, good: np.ndarray, bin_size: int) -> np.ndarray:
    """A smooth background: MEANCLIP of the good pixels in ``bin_size`` bins, empty bins filled
    from the nearest bin, Akima-interpolated between bin centres (SubtractBackgroundTask)."""
    ny, nx = image.shape
    b = int(bin_size)
    nby, nbx = -(-ny // b), -(-nx // b)
    pad = np.full((nby * b, nbx * b), np.nan, np.float32)
    pad[:ny, :nx] = np.where(good, image, np.nan)
    bins = pad.reshape(nby, b, nbx, b).transpose(0, 2, 1, 3).reshape(nby, nbx, -1)
    grid = meanclip_rows(bins, sigma_clip=BIN_SIGMA_CLIP, clip_iter=BIN_CLIP_ITER)
    empty = ~np.isfinite(grid)
    if empty.all():
        return np.zeros(image.shape)
    if empty.any():
        idx = ndimage.distance_transform_edt(empty, return_distances=False, return_indices=True)
        grid = grid[tuple(idx)]
    rows = _interp_axis(_bin_centres(nx, b), grid, np.arange(nx, dtype=np.float64), axis=1)
    return _interp_axis(_bin_centres(ny, b), rows, np.arange(ny, dtype=np.float64), axis=0)
