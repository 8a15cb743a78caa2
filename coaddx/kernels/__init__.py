"""Pure numpy/numba per-block kernels (no dask, xarray, zarr or IO imports)."""

from coaddx.kernels._dispatch import lookup, register

__all__ = ["lookup", "register"]
