"""Other dask chunks of a warp store a Dataset was opened from: :func:`reopen_warps`.

A step that reads one warp cube in several layouts (CompareWarp: whole visit planes for
ScaleVariance, tiles for detection, subregions for the template) asks for each layout here,
so each consumer reads its own chunks from the store instead of rechunking shared reads (a
chunk read for the template is then not held in memory until every visit is detected). The
store a Dataset came from is this package's record (``open_warps`` writes it); steps pass the
Dataset, never a path.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import dask.array as da
import xarray as xr

from coaddx.errors import CoaddxError
from coaddx.io.zarr.layout import LAYERS
from coaddx.io.zarr.warps import open_warps

__all__ = ["reopen_warps"]


def reopen_warps(ds: xr.Dataset, chunks: Mapping[str, int]) -> xr.Dataset | None:
    """``ds`` opened again from its warp store with other dask ``chunks`` when ``ds`` is an
    untouched :func:`~coaddx.io.zarr.warps.open_warps` view (same visits, same planes), else
    None (in memory, selected or changed since it was opened: use ``ds`` itself)."""
    path, warp_type = ds.attrs.get("store"), ds.attrs.get("warp_type")
    data = ds["image"].data
    if not path or warp_type not in ("direct", "psf_matched") or not isinstance(data, da.Array):
        return None
    size = {d: int(c) for d, c in zip(("visit", "y", "x"), data.chunksize, strict=True)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            same = open_warps(path, warp_type, chunks=size)
            if any(same[v].data.name != ds[v].data.name for v in LAYERS):
                return None  # selected or changed since it was opened
            return open_warps(path, warp_type, chunks=chunks)
    except CoaddxError:
        return None
