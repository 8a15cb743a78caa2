"""Single passes over a warp's planes that numpy would make in several, each with whole-plane
temporaries (whose fresh pages cost as much as the arithmetic on the project VM): counting the
source pixels a warp cannot use, blanking the pixels a warp marks NO_DATA, and asking whether a
plane holds any finite pixel."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["any_finite", "blank_no_data", "unusable_counts"]


@numba.njit(nogil=True, cache=True)
def _blank_no_data(image, variance, mask, bit):  # pragma: no cover - numba
    ny, nx = mask.shape
    nan = np.float32(np.nan)
    for y in range(ny):
        for x in range(nx):  # stored unconditionally (a select, not a branch: vectorised)
            blank = (mask[y, x] & bit) != 0
            image[y, x] = nan if blank else image[y, x]
            variance[y, x] = nan if blank else variance[y, x]


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


@numba.njit(nogil=True, cache=True)
def _unusable_counts(image, variance):  # pragma: no cover - numba
    ny, nx = image.shape
    n_missing = 0
    n_nonpositive = 0
    for y in range(ny):
        for x in range(nx):
            v = variance[y, x]
            nonpositive = np.int64(v <= 0)  # integer arithmetic, no branches: vectorised
            finite = np.int64(np.isfinite(image[y, x])) & np.int64(np.isfinite(v))
            n_nonpositive += nonpositive
            n_missing += (1 - finite) | nonpositive
    return n_missing, n_nonpositive


def unusable_counts(image: np.ndarray, variance: np.ndarray) -> tuple[int, int]:
    """(pixels with a non-finite image or variance or a variance <= 0, pixels with a variance
    <= 0): the counts of ``~(isfinite(image) & isfinite(variance)) | (variance <= 0)`` and of
    ``variance <= 0``, in one pass."""
    if not (image.shape == variance.shape and image.ndim == 2):
        raise ValueError(f"planes of shapes {image.shape} and {variance.shape}")
    n_missing, n_nonpositive = _unusable_counts(image, variance)
    return int(n_missing), int(n_nonpositive)
