"""Pure numpy/numba per-block kernels (no dask, xarray, zarr or IO imports)."""
