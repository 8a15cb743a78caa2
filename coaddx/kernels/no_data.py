"""Single passes over a warp's planes that numpy would make in several, each with whole-plane
temporaries (whose fresh pages cost as much as the arithmetic on the project VM): blanking the
pixels a warp marks NO_DATA, and asking whether a plane holds any finite pixel."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["any_finite", "blank_no_data"]


@numba.njit(nogil=True, cache=True)
def _blank_no_data(image, variance, mask, bit):  # pragma: no cover - numba
    ny, nx = mask.shape
    for y in range(ny):
        for x in range(nx):
            if mask[y, x] & bit:
                image[y, x] = np.nan
                variance[y, x] = np.nan


def blank_no_data(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, bit: int) -> None:
    """Set image and variance to NaN, in place, wherever ``mask`` has any of ``bit``'s bits
    (``image[(mask & bit) != 0] = nan``, and the same for ``variance``)."""
    if not (image.shape == variance.shape == mask.shape and mask.ndim == 2):
        raise ValueError(f"planes of shapes {image.shape}, {variance.shape}, {mask.shape}")
    _blank_no_data(image, variance, mask, mask.dtype.type(bit))


@numba.njit(nogil=True, cache=True)
def _any_finite(flat):  # pragma: no cover - numba
    for v in flat:
        if np.isfinite(v):
            return True
    return False


def any_finite(values: np.ndarray) -> bool:
    """``np.isfinite(values).any()``, stopping at the first finite value."""
    flat = values.reshape(-1)  # a copy only for a non-contiguous view
    return bool(_any_finite(flat))
