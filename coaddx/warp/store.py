"""The warp store with the warp step's defaults: ``coaddx.open_warps`` and
``coaddx.write_warps``.

:mod:`coaddx.io.zarr` reads and writes exactly what it is told. The choices are made here:
the storage chunk of a new store (``coaddx.store-chunk``), the dask chunks a store is opened
with for stacking (:func:`coaddx.plan.plan_stack` from ``coaddx.memory-per-task``) and the
weight statistics cached with every visit (:data:`coaddx.warp.weights.WEIGHT_PRESETS`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Literal

import xarray as xr

from coaddx.io.zarr import warps as io_warps
from coaddx.io.zarr.integrity import inspect_group
from coaddx.io.zarr.warp_store import WarpStore
from coaddx.plan import plan_stack
from coaddx.settings import memory_per_task, store_chunk
from coaddx.warp.weights import visit_weight_stats

__all__ = ["open_warps", "stacking_chunks", "write_warps"]


def stacking_chunks(
    path: str | os.PathLike[str], warp_type: str = "direct"
) -> dict[str, int] | Literal["storage"]:
    """Dask chunks of every committed visit over a square subregion, sized by
    :func:`coaddx.plan.plan_stack` from ``coaddx.memory-per-task`` (headers only; a store
    whose metadata disagree with its commit log raises :class:`~coaddx.errors.StoreError`)."""
    state = inspect_group(path, warp_type)
    state.raise_if_damaged()
    n = len(state.records)
    if not n:
        return "storage"  # nothing to plan: opening reports the empty store
    plan = plan_stack(n, state.shape, budget_bytes=memory_per_task(), storage_chunk=state.chunk[0])
    return {"visit": n, "y": plan.subregion[0], "x": plan.subregion[1]}


def open_warps(
    path: str | os.PathLike[str],
    warp_type: str = "direct",
    *,
    chunks: Mapping[str, int] | Literal["storage"] | None = None,
) -> xr.Dataset:
    """Open a warp store as a lazy ``xarray.Dataset`` with dims ``(visit, y, x)``.

    Parameters
    ----------
    path : path-like
        The patch store.
    warp_type : {"direct", "psf_matched"}
    chunks : mapping, "storage" or None
        Dask chunks. ``None`` (default) gives every visit of a square subregion per chunk,
        sized by :func:`coaddx.plan.plan_stack` from ``coaddx.memory-per-task`` — the layout
        :func:`coaddx.assemble` stacks without rechunking. ``"storage"`` gives the on-disk
        ``(1, C, C)`` chunks.

    Returns
    -------
    xarray.Dataset
        ``image``, ``variance``, ``mask`` (dask arrays: nothing is read until computed),
        per-visit variables (``mjd``, ``band``, ``psf_fwhm``, ...), coordinates ``visit``,
        ``y``, ``x`` and attributes ``mask_planes``, ``wcs``, ``warp_type``, ``provenance``.
        Visits whose writing did not finish are left out with an
        :class:`coaddx.IncompleteStoreWarning`.
    """
    if chunks is None:
        chunks = stacking_chunks(path, warp_type)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = io_warps.open_warps(path, warp_type, chunks=chunks)
    for w in caught:  # attributed to the caller, as if raised here
        warnings.warn(w.message, w.category, stacklevel=2)
    return ds


def write_warps(
    dataset: xr.Dataset,
    path: str | os.PathLike[str],
    warp_type: str = "direct",
    *,
    chunk: int | None = None,
) -> WarpStore:
    """Write or append the visits of ``dataset`` to the ``warp_type`` group of ``path``.

    Only ``image``, ``variance``, ``mask``, the ``visit`` coordinate and the ``mask_planes``
    attribute are required; per-visit variables (dims ``(visit,)``) become visit metadata and
    ``wcs`` (a FITS header string) is optional. Appending checks that shape and mask planes
    agree with the store. Visits are written one at a time (a dask-backed dataset is computed
    visit by visit), each committed only when complete with its weight statistics
    (:func:`coaddx.warp.weights.visit_weight_stats`). ``chunk``: the storage chunk of a new
    store (default ``coaddx.store-chunk``).
    """
    return io_warps.write_warps(
        dataset,
        path,
        warp_type,
        chunk=store_chunk() if chunk is None else int(chunk),
        statistics=visit_weight_stats,
    )
