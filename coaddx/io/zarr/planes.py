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


def check_variance(
    visit: int | str, image: np.ndarray, variance: np.ndarray, *, warn: bool = True
) -> None:
    """Refuse (:class:`InputError`) a finite image pixel whose variance is NaN or negative;
    with ``warn``, warn when every image pixel is NaN."""
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(image) & ~(variance >= 0)
    nbad = int(np.count_nonzero(bad))
    if nbad:
        y, x = np.argwhere(bad)[0]
        raise InputError(
            f"visit {visit}: {nbad} pixel(s) have a finite image but a NaN or "
            f"negative variance (first at y={y}, x={x}); nothing was written"
        )
    if warn and not np.isfinite(image).any():
        warnings.warn(
            f"visit {visit}: every image pixel is NaN; AssembleCoadd will skip it", stacklevel=3
        )


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


def _mask(mask: Any, stored: np.dtype, where: str) -> np.ndarray:
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
    return np.asarray(values, dtype=stored)


def planes_of(
    image: Any, variance: Any, mask: Any, mask_stored: Any = np.int32, where: str = "warp"
) -> dict[str, np.ndarray]:
    """image and variance as float32, mask as ``mask_stored`` (values that do not fit are an
    :class:`InputError` naming ``where``)."""
    return {
        "image": np.asarray(image, dtype=np.float32),
        "variance": np.asarray(variance, dtype=np.float32),
        "mask": _mask(mask, np.dtype(mask_stored), where),
    }


def pixel_fields(
    arrays: Mapping[str, np.ndarray],
    finite: np.ndarray,
    weight_stats: Mapping[str, float] | None,
) -> dict[str, Any]:
    """``checksum`` (CRC-32C of each plane, the mask as int32 whatever its stored dtype, so
    records do not depend on the layout), ``weight_stats`` when given and ``n_finite``."""
    out: dict[str, Any] = {
        "checksum": {
            k: checksum(v.astype(np.int32, copy=False) if k == "mask" else v)
            for k, v in arrays.items()
        }
    }
    if weight_stats is not None:
        out["weight_stats"] = {str(k): float(v) for k, v in weight_stats.items()}
    out["n_finite"] = int(np.isfinite(finite).sum())
    return out
