"""The pixel planes a warp-store writer is given: checked and converted to what is stored.

:func:`planes_of` turns image, variance and mask into float32, float32 and the store's mask
dtype (uint16 in stores whose mask planes fit 16 bits, :func:`~coaddx.io.zarr.layout.mask_dtype`;
int32 before), refusing mask values the stored dtype cannot hold instead of wrapping them.
:func:`check_variance` refuses a finite pixel with a NaN or negative variance;
:func:`pixel_fields` gives the record fields that depend on the pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from coaddx.errors import InputError, StoreError
from coaddx.io.zarr.layout import MASK_DTYPES, checksum

__all__ = ["check_mask_dtype", "check_variance", "pixel_fields", "planes_of"]


#: Pixels per block of :func:`check_variance`'s pass (the block's temporaries stay in cache:
#: whole-plane ones cost fresh pages, a third of the check's time on the project VM).
_BLOCK_PIXELS = 1 << 16


def _variance_counts(image: np.ndarray, variance: np.ndarray) -> tuple[int, int]:
    """(finite image pixels, of those the ones whose variance is NaN or negative), counted
    over blocks of rows."""
    rows = max(1, _BLOCK_PIXELS // max(1, image.shape[-1]))
    n_finite = n_bad = 0
    with np.errstate(invalid="ignore"):
        for y in range(0, image.shape[0], rows):
            finite = np.isfinite(image[y : y + rows])
            n_finite += int(np.count_nonzero(finite))
            n_bad += int(np.count_nonzero(finite & ~(variance[y : y + rows] >= 0)))
    return n_finite, n_bad


def check_variance(
    visit: int | str, image: np.ndarray, variance: np.ndarray, *, warn: bool = True
) -> int:
    """Refuse (:class:`InputError`) a finite image pixel whose variance is NaN or negative;
    with ``warn``, warn when every image pixel is NaN. Returns the number of finite image
    pixels."""
    if image.ndim == 2 and image.shape == variance.shape:
        n_finite, nbad = _variance_counts(image, variance)
    else:  # whatever numpy broadcasts (the callers check the shapes afterwards)
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(image)
            n_finite = int(np.count_nonzero(finite))
            nbad = int(np.count_nonzero(finite & ~(variance >= 0)))
    if nbad:
        with np.errstate(invalid="ignore"):
            bad = np.isfinite(image) & ~(variance >= 0)
        y, x = np.argwhere(bad)[0]
        raise InputError(
            f"visit {visit}: {nbad} pixel(s) have a finite image but a NaN or "
            f"negative variance (first at y={y}, x={x}); nothing was written"
        )
    if warn and not n_finite:
        warnings.warn(
            f"visit {visit}: every image pixel is NaN; AssembleCoadd will skip it", stacklevel=3
        )
    return n_finite


def check_mask_dtype(dtype: Any, planes: Mapping[str, int], where: str) -> np.dtype:
    """The stored mask dtype of a warp group, checked to be one coaddx writes and to hold
    every bit of its mask ``planes`` (a :class:`StoreError` naming ``where`` otherwise)."""
    stored = np.dtype(str(dtype))
    if stored not in MASK_DTYPES:
        raise StoreError(f"{where}: the mask is stored as {stored}, expected int32 or uint16")
    wide = [name for name, bit in planes.items() if int(bit) >= 8 * stored.itemsize]
    if wide:
        raise StoreError(
            f"{where}: mask plane(s) {sorted(wide)} do not fit its {stored} mask; the store "
            "was altered (mask_planes or the mask array's metadata)"
        )
    return stored


def _mask(mask: Any, stored: np.dtype, where: str, narrow: bool = True) -> np.ndarray:
    values = np.asarray(mask)
    if not np.issubdtype(values.dtype, np.integer):
        values = values.astype(np.int32)
    if values.dtype != stored and values.size and not np.can_cast(values.dtype, stored, "safe"):
        info = np.iinfo(stored)
        lo, hi = int(values.min()), int(values.max())
        if lo < info.min or hi > info.max:
            raise InputError(
                f"{where}: mask values {lo}..{hi} do not fit the store's {stored} mask (bits "
                f"0-{8 * stored.itemsize - 1} of its mask planes); nothing was written"
            )
    return np.asarray(values, dtype=stored) if narrow else values


def planes_of(
    image: Any,
    variance: Any,
    mask: Any,
    mask_stored: Any = np.int32,
    where: str = "warp",
    *,
    narrow_mask: bool = True,
) -> dict[str, np.ndarray]:
    """image and variance as float32, mask as ``mask_stored`` (values that do not fit are an
    :class:`InputError` naming ``where``). With ``narrow_mask=False`` an integer mask keeps its
    dtype (checked to fit ``mask_stored`` all the same): for a writer that narrows it chunk by
    chunk and checksums it as int32 (no whole-plane copy either way)."""
    return {
        "image": np.asarray(image, dtype=np.float32),
        "variance": np.asarray(variance, dtype=np.float32),
        "mask": _mask(mask, np.dtype(mask_stored), where, narrow_mask),
    }


def pixel_fields(
    arrays: Mapping[str, np.ndarray],
    finite: np.ndarray,
    weight_stats: Mapping[str, float] | None,
    n_finite: int | None = None,
) -> dict[str, Any]:
    """``checksum`` (CRC-32C of each plane, the mask as int32 whatever its stored dtype, so
    records do not depend on the layout), ``weight_stats`` when given and ``n_finite`` (the
    finite pixels of ``finite``; counted unless the caller gives the count)."""
    out: dict[str, Any] = {
        "checksum": {
            k: checksum(v.astype(np.int32, copy=False) if k == "mask" else v)
            for k, v in arrays.items()
        }
    }
    if weight_stats is not None:
        out["weight_stats"] = {str(k): float(v) for k, v in weight_stats.items()}
    out["n_finite"] = int(np.isfinite(finite).sum()) if n_finite is None else int(n_finite)
    return out
