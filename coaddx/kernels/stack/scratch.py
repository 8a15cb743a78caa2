"""The segment scratch shared by the compiled stacking passes, and their common arithmetic.

A segment is a run of pixels of the flattened (visit, pixel) block. Its scratch is two arrays
with one value per pixel of the segment in each row: float64 rows ``facc[SW..]`` and int32 rows
``iacc[CNT..]``, named by the constants below.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from coaddx.kernels.stack.options import ERROR_INPUT, ERROR_MOSAIC

__all__ = [
    "CANCELLATION",
    "CNT",
    "COUNT_LOW",
    "CSD",
    "CSDD",
    "CSV",
    "CSW",
    "CSW2",
    "HIQR",
    "JIT",
    "MU",
    "NCLIP",
    "NFACC",
    "NIMAGE_ONE",
    "ORA",
    "ORM",
    "SDD",
    "SV",
    "SW",
    "SW2",
    "SWX",
    "C",
    "H",
    "mean_error",
    "store",
    "variance_coefficient",
    "weighted_variance",
]

#: numba options of every compiled stacking function (GIL released, cached, IEEE numerics).
JIT: dict[str, Any] = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}

# float64 rows: the standard pass and the clip window, then the clip sums about the centre
SW, SWX, SW2, SDD, SV, MU, C, H, HIQR = range(9)
CSW, CSW2, CSD, CSDD, CSV = range(9, 14)
NFACC = 14
# int32 rows: packed NPOINT | n_image << 16, OR of the good masks, OR of all, NCLIPPED
CNT, ORM, ORA, NCLIP = range(4)

NIMAGE_ONE = np.int32(1 << 16)  # n_image lives in the high half of the packed count
COUNT_LOW = np.int32(0xFFFF)  # NPOINT lives in the low half
CANCELLATION = 1e-8  # Σw(x-mean)² below this fraction of Σw(x-c)²: recompute the pixel exactly


@numba.njit(**JIT)
def variance_coefficient(err, wk):  # pragma: no cover - numba
    """Factor of σ² in the error sum: w² ("input"), w ("mosaic"), unused ("sample")."""
    if err == ERROR_INPUT:
        return wk * wk
    if err == ERROR_MOSAIC:
        return wk
    return 0.0


@numba.njit(**JIT)
def weighted_variance(n, sw, sw2, sdd):  # pragma: no cover - numba
    """Debiased weighted sample variance from Σw, Σw² and Σw(x - mean)²; NaN if n <= 1."""
    if n <= 1:
        return np.nan
    return sdd / sw * (sw * sw / (sw * sw - sw2))


@numba.njit(**JIT)
def mean_error(err, n, sw, sw2, sv, sdd):  # pragma: no cover - numba
    """Squared error of a weighted mean in the three error modes."""
    if err == ERROR_INPUT:
        return sv / (sw * sw)
    if err == ERROR_MOSAIC:
        return sv / sw
    return weighted_variance(n, sw, sw2, sdd) * sw2 / (sw * sw)


@numba.njit(**JIT)
def store(out_val, out_var, i, n, value, err2):  # pragma: no cover - numba
    """Write pixel ``i`` of the outputs: NaN value and variance where no input is good."""
    if n == 0:
        out_val[i] = np.nan
        out_var[i] = np.nan
    else:
        out_val[i] = value
        out_var[i] = err2
