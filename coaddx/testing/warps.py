"""Small random warp Datasets for tests and benchmarks."""

from __future__ import annotations

import numpy as np
import xarray as xr

from coaddx.model.masks import mask_planes as default_mask_planes

__all__ = ["random_warps"]


def random_warps(
    n_visits: int = 6,
    shape: tuple[int, int] = (40, 56),
    *,
    seed: int = 0,
    dask_chunks: dict | None = None,
    nan_frac: float = 0.02,
    mask_frac: float = 0.1,
) -> xr.Dataset:
    """A random warp Dataset with outliers, NaNs, masks of several planes and per-visit noise."""
    rng = np.random.default_rng(seed)
    planes = default_mask_planes()
    ny, nx = shape
    sigma = rng.uniform(0.5, 2.0, n_visits)[:, None, None]
    image = (10 + rng.normal(0, 1, (n_visits, ny, nx)) * sigma).astype(np.float32)
    outliers = rng.random((n_visits, ny, nx)) < 0.03
    image[outliers] += rng.uniform(20, 200, outliers.sum()).astype(np.float32)
    variance = np.broadcast_to(sigma**2, image.shape).astype(np.float32).copy()
    variance *= rng.uniform(0.8, 1.2, image.shape).astype(np.float32)
    mask = np.zeros(image.shape, np.int32)
    for name in ("BAD", "SAT", "EDGE", "CR", "NO_DATA", "DETECTED", "NOT_DEBLENDED"):
        hit = rng.random(image.shape) < mask_frac / 4
        mask[hit] |= 1 << planes[name]
    nodata = (mask & (1 << planes["NO_DATA"])) != 0
    image[nodata] = np.nan
    variance[nodata] = np.nan
    nan_hits = rng.random(image.shape) < nan_frac
    image[nan_hits] = np.nan
    ds = xr.Dataset(
        {
            "image": (("visit", "y", "x"), image),
            "variance": (("visit", "y", "x"), variance),
            "mask": (("visit", "y", "x"), mask),
        },
        coords={"visit": np.arange(100, 100 + n_visits), "y": np.arange(ny), "x": np.arange(nx)},
        attrs={"mask_planes": planes},
    )
    ds["psf_fwhm"] = ("visit", rng.uniform(3, 6, n_visits))
    if dask_chunks:
        ds = ds.chunk(dask_chunks)
    return ds
