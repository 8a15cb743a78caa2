"""Pure numpy/numba per-block kernels (no dask, xarray, zarr or IO imports)."""

# first: the cache locator and CPU target must be in place before any kernel is defined
from coaddx.kernels._cache import (
    ContentLocator,
    compile_seconds,
    mark_precompiled,
    precompiled,
)
from coaddx.kernels._dispatch import lookup, register

__all__ = [
    "ContentLocator",
    "compile_seconds",
    "lookup",
    "mark_precompiled",
    "precompiled",
    "register",
]
