"""Schema checks of warp Datasets, shared by the store writer and the assembler."""

from __future__ import annotations

import numpy as np
import xarray as xr

from coaddx.constants import LAYERS
from coaddx.errors import SchemaError
from coaddx.model.masks import check_mask_planes

__all__ = ["validate_warps"]


def validate_warps(ds: xr.Dataset, *, where: str = "warps") -> None:
    """Raise :class:`SchemaError` unless ``ds`` has the coaddx warp schema (no data read)."""
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"{where}: expected an xarray.Dataset, got {type(ds).__name__}")
    missing = [v for v in LAYERS if v not in ds.data_vars]
    if missing:
        raise SchemaError(
            f"{where}: missing variable(s) {missing}; a warp Dataset needs "
            f"{list(LAYERS)} over (visit, y, x)"
        )
    for name in LAYERS:
        if ds[name].dims != ("visit", "y", "x"):
            raise SchemaError(
                f"{where}: {name} has dims {ds[name].dims}, expected ('visit', 'y', 'x')"
            )
    if "visit" not in ds.coords:
        raise SchemaError(f"{where}: the 'visit' coordinate is missing")
    if ds.sizes["visit"] == 0:
        raise SchemaError(f"{where}: no visits")
    visits = np.asarray(ds["visit"].values)
    if not np.issubdtype(visits.dtype, np.integer):
        raise SchemaError(f"{where}: visit ids must be integers, got {visits.dtype}")
    if len(np.unique(visits)) != len(visits):
        raise SchemaError(f"{where}: duplicate visit ids {sorted(visits.tolist())}")
    if "mask_planes" not in ds.attrs:
        raise SchemaError(f"{where}: attribute 'mask_planes' (name -> bit) is missing")
    check_mask_planes(ds.attrs["mask_planes"], where=f"{where}.attrs['mask_planes']")
    if not np.issubdtype(ds["mask"].dtype, np.integer):
        raise SchemaError(f"{where}: mask must be integer, got {ds['mask'].dtype}")
    for name in ("image", "variance"):
        if not np.issubdtype(ds[name].dtype, np.floating):
            raise SchemaError(f"{where}: {name} must be floating point, got {ds[name].dtype}")
