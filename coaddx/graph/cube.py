"""Warp cubes as dask arrays: the chunk layouts the coadd steps read them in.

A step hands over an xarray Dataset (numpy- or dask-backed) and asks for its planes in the
chunks a stage works in: every visit of an ``S x S`` subregion for stacking, one visit's
whole plane for ScaleVariance, one visit's tiles for detection. :data:`LazyArray` is the type
the steps annotate these with (they do not import dask themselves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import dask.array as da
import numpy as np
import xarray as xr

from coaddx.constants import LAYERS

__all__ = [
    "LAYERS",
    "LazyArray",
    "array_names",
    "as_dask_cube",
    "constant",
    "lazy_layers",
    "rechunked",
    "stack_scalars",
    "stack_visits",
    "visit_slice",
]

#: A lazy (dask) array, as the steps see one.
LazyArray: TypeAlias = da.Array


def as_dask_cube(var: xr.DataArray, chunks: tuple[int, int, int]) -> da.Array:
    """``var`` as a dask array in ``chunks`` (wrapped when in memory, rechunked if needed)."""
    data = var.data
    if not isinstance(data, da.Array):
        return da.from_array(np.asarray(data), chunks=chunks)
    if data.chunks[0] != (chunks[0],) or data.chunksize[1:] != chunks[1:]:
        data = data.rechunk(chunks)
    return data


def lazy_layers(ds: xr.Dataset, chunks: tuple[int, int, int]) -> dict[str, da.Array]:
    """The :data:`LAYERS` of ``ds``: its dask arrays as they are (each consumer slices and
    rechunks what it reads), numpy ones wrapped in ``chunks``."""
    return {
        v: ds[v].data if isinstance(ds[v].data, da.Array) else as_dask_cube(ds[v], chunks)
        for v in LAYERS
    }


def visit_slice(cube: da.Array, index: int, chunks: tuple[int, int]) -> da.Array:
    """One visit's plane of a warp cube as a 2-D dask array in ``chunks`` (slicing a
    store-backed array reads only that visit)."""
    return cube[index].rechunk(chunks)


def rechunked(array: da.Array, chunks: Any) -> da.Array:
    """``array`` in other ``chunks`` (``-1``: one chunk)."""
    return array.rechunk(chunks)


def stack_visits(planes: Sequence[da.Array]) -> da.Array:
    """Per-visit 2-D planes as one ``(visit, y, x)`` cube."""
    return da.stack(list(planes))


def stack_scalars(values: Sequence[da.Array]) -> da.Array:
    """Per-visit 0-d arrays as one ``(visit,)`` array in one chunk."""
    return da.stack(list(values)).rechunk(-1)


def constant(value: float) -> da.Array:
    """A 0-d dask array holding ``value``."""
    return da.from_array(np.asarray(value))


def array_names(ds: xr.Dataset) -> list[str]:
    """The names of the lazy (dask) arrays among the variables of ``ds``."""
    return [str(v.data.name) for v in ds.variables.values() if isinstance(v.data, da.Array)]
