"""Warp Datasets in and out of the warp store: :func:`open_warps` (lazy, dims
``(visit, y, x)``) and :func:`write_warps` (visit by visit, each committed when complete).

Both take the layout they are told: the dask chunks to read and the storage chunk to create
are the caller's choice (the warp step, :mod:`coaddx.warp.store`, derives its defaults from
the planner and the ``coaddx.*`` settings); so are any per-visit statistics written.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from coaddx.errors import SchemaError, StoreError
from coaddx.io.schema import validate_warps
from coaddx.io.zarr.chunks import region_reader
from coaddx.io.zarr.integrity import inspect_group
from coaddx.io.zarr.layout import LAYERS
from coaddx.io.zarr.lock import store_lock
from coaddx.io.zarr.psf_products import PSF_KEY, psf_variables, read_psf_products
from coaddx.io.zarr.warp_store import IncompleteStoreWarning, WarpStore
from coaddx.model.masks import check_mask_planes

__all__ = ["VisitStatistics", "open_warps", "stored_mask", "visit_variables", "write_warps"]

#: A per-visit statistic computed by the caller of :func:`write_warps`:
#: ``(variance, mask, mask_planes) -> {key: value}``, written as the record's ``weight_stats``.
VisitStatistics = Callable[[np.ndarray, np.ndarray, Mapping[str, int]], Mapping[str, float]]


def visit_variables(records: list[dict[str, Any]]) -> dict[str, tuple[str, np.ndarray]]:
    """Per-visit variables (dims ``("visit",)``) from the visit records' metadata fields."""
    skip = {"visit", "checksum", "weight_stats", "data_box", PSF_KEY}
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in skip and k not in keys]
    out = {}
    for key in keys:
        values = [r.get(key) for r in records]
        if all(isinstance(v, bool) for v in values):
            out[key] = ("visit", np.asarray(values, dtype=bool))
        elif all(
            (isinstance(v, int | float) and not isinstance(v, bool)) or v is None for v in values
        ):
            out[key] = (
                "visit",
                np.asarray([np.nan if v is None else v for v in values], dtype=np.float64),
            )
        elif all(isinstance(v, str) for v in values):
            out[key] = ("visit", np.asarray(values, dtype=str))
        else:
            out[key] = ("visit", np.asarray([json.dumps(v) for v in values], dtype=str))
    return out


def _read_chunks(
    chunks: Mapping[str, int] | Literal["storage"], n: int, store_chunk: tuple[int, ...]
) -> tuple[int, int, int]:
    if chunks == "storage":
        return (1, int(store_chunk[0]), int(store_chunk[1]))
    if not isinstance(chunks, Mapping):
        raise SchemaError(f"chunks must be a mapping or 'storage', got {chunks!r}")
    return (
        int(chunks.get("visit", n)),
        int(chunks.get("y", store_chunk[0])),
        int(chunks.get("x", store_chunk[1])),
    )


def _weight_stats(ds: xr.Dataset, records: list[dict[str, Any]]) -> xr.Dataset:
    keys = sorted({k for r in records for k in r.get("weight_stats", {})})
    if not keys:
        return ds
    stats = np.asarray(
        [[r.get("weight_stats", {}).get(k, np.nan) for k in keys] for r in records],
        dtype=np.float64,
    )
    ds["variance_meanclip"] = (("visit", "weight_key"), stats)
    return ds.assign_coords(weight_key=np.asarray(keys, dtype=str))


def _lazy_plane(
    source: Any, label: str, token: str, chunks: tuple[int, int, int], n: int
) -> da.Array:
    """One plane of the store as a dask array of its first ``n`` visits in ``chunks``."""
    lazy = da.from_array(
        source,
        chunks=chunks,
        lock=False,
        asarray=True,
        name=f"coaddx-read-{label}-{zlib.crc32(token.encode()):x}-{chunks}",
        inline_array=True,
    )
    return lazy[:n] if lazy.shape[0] != n else lazy


#: The int32 masks :func:`open_warps` widened from 16-bit chunks, by dask name, with the same
#: masks read as stored (:func:`stored_mask`); the newest entries only.
_STORED: OrderedDict[str, da.Array] = OrderedDict()
_STORED_KEEP = 64


_STORED_LOCK = threading.Lock()


def _remember_stored(wide: da.Array, narrow: da.Array) -> None:
    with _STORED_LOCK:
        _STORED[wide.name] = narrow
        _STORED.move_to_end(wide.name)
        while len(_STORED) > _STORED_KEEP:
            _STORED.popitem(last=False)


def stored_mask(mask: xr.DataArray) -> xr.DataArray:
    """``mask`` read in its stored dtype when it is a mask plane exactly as :func:`open_warps`
    returned it from a store of 16-bit masks (uint16: the same values in half the bytes, which
    the stacking and epoch kernels take as they are), else ``mask`` itself.

    A dask array's name names its values, so a mask that was sliced, combined or rechunked
    since (a new name) is returned unchanged: the stack then reads the int32 one.
    """
    data = mask.data
    with _STORED_LOCK:
        narrow = _STORED.get(data.name) if isinstance(data, da.Array) else None
    if narrow is None or narrow.shape != data.shape or narrow.chunks != data.chunks:
        return mask
    return mask.copy(data=narrow)


def open_warps(
    path: str | os.PathLike[str],
    warp_type: str = "direct",
    *,
    chunks: Mapping[str, int] | Literal["storage"] = "storage",
) -> xr.Dataset:
    """Open a warp store as a lazy ``xarray.Dataset`` with dims ``(visit, y, x)``.

    Parameters
    ----------
    path : path-like
        The patch store.
    warp_type : {"direct", "psf_matched"}
    chunks : mapping or "storage"
        Dask chunks by dimension name (a missing ``visit`` means all visits, a missing ``y``
        or ``x`` the storage chunk), or ``"storage"``: the on-disk ``(1, C, C)`` chunks.
        :func:`coaddx.open_warps` plans them for stacking.

    Returns
    -------
    xarray.Dataset
        ``image``, ``variance``, ``mask`` (dask arrays: nothing is read until computed;
        ``mask`` is int32 whatever the stored dtype, :func:`stored_mask` gives a 16-bit
        store's masks as they are stored, which :func:`coaddx.assemble` stacks),
        per-visit variables (``mjd``, ``band``, ``psf_fwhm``, ...), the cached statistics
        ``variance_meanclip(visit, weight_key)`` when the writer stored some, the visits' PSF
        products (``psf_*`` over ``psf_input``, :mod:`coaddx.io.zarr.psf_products`; absent
        for visits written before coaddx stored them), coordinates
        ``visit``, ``y``, ``x`` and attributes ``mask_planes``, ``wcs``, ``warp_type``,
        ``provenance``. Visits whose writing did not finish are left out with an
        :class:`IncompleteStoreWarning`.
    """
    path = Path(path)
    state = inspect_group(path, warp_type)
    state.raise_if_damaged()
    group = state.group
    attrs: dict[str, Any] = dict(group.attrs)
    records = state.records
    if not records:
        raise StoreError(f"{path}/{warp_type} holds no visits")
    if state.pending:
        ids = [int(p["visit"]) for p in state.pending]
        warnings.warn(
            f"{path}/{warp_type}: visit(s) {ids} were not completely written and are "
            "ignored; append them again to finish",
            IncompleteStoreWarning,
            stacklevel=2,
        )
    n = len(records)
    arrays = {name: cast(zarr.Array, group[name]) for name in LAYERS}
    dchunks = _read_chunks(chunks, n, arrays["image"].chunks[1:])
    token = f"{path.resolve()}-{warp_type}-{n}-{records[-1].get('checksum', {})}"
    data = {}
    index = state.index()
    for name, arr in arrays.items():
        # masks read as int32 whatever their stored dtype (uint16 since the mask planes fit)
        want = np.dtype(np.int32) if name == "mask" else None
        fast = region_reader(path / warp_type / name, root=path, manifests=index, dtype=want)
        lazy = _lazy_plane(fast if fast is not None else arr, name, token, dchunks, n)
        if want is not None and lazy.dtype != want:
            lazy = lazy.astype(want)
        if fast is not None and fast.stored != fast.dtype:  # the stacking reads it as stored
            narrow = region_reader(path / warp_type / name, root=path, manifests=index)
            if narrow is not None:
                stored = _lazy_plane(narrow, f"{name}-stored", token, dchunks, n)
                _remember_stored(lazy, stored)
        data[name] = (("visit", "y", "x"), lazy)
    coords: dict[str, Any] = {
        "visit": ("visit", np.asarray([int(r["visit"]) for r in records], dtype=np.int64)),
        "y": ("y", np.asarray(cast(zarr.Array, group["y"])[:])),
        "x": ("x", np.asarray(cast(zarr.Array, group["x"])[:])),
    }
    ds = xr.Dataset(data, coords=coords)
    for key, var in visit_variables(records).items():
        ds[key] = var
    keep = {k: v for k, v in attrs.items() if k not in ("visits", "pending")}
    keep["mask_planes"] = check_mask_planes(keep["mask_planes"], where=f"{path} mask_planes")
    ds.attrs.update(keep)
    ds.attrs["store"] = str(path)
    products = {}
    for r in records:
        got = read_psf_products(path, warp_type, r)
        if got is not None:
            products[int(r["visit"])] = got
    for key, (dims, values) in psf_variables(products).items():
        ds[key] = (dims, values)
    return _weight_stats(ds, records)


def _store_for(dataset: xr.Dataset, path: Path, warp_type: str, chunk: int) -> WarpStore:
    ny, nx = dataset.sizes["y"], dataset.sizes["x"]
    if path.exists() and (path / warp_type / "zarr.json").exists():
        store = WarpStore(path, warp_type)
        if store.shape != (ny, nx):
            raise SchemaError(
                f"cannot append {ny} x {nx} warps to {path}/{warp_type}, which "
                f"holds {store.shape[0]} x {store.shape[1]}"
            )
        if dict(store.mask_planes) != dict(dataset.attrs["mask_planes"]):
            raise SchemaError(
                f"mask planes of the data {dict(dataset.attrs['mask_planes'])} "
                f"differ from those of {path}/{warp_type} {store.mask_planes}"
            )
        return store
    extra = {
        k: v
        for k, v in dataset.attrs.items()
        if k not in ("mask_planes", "wcs", "visits", "pending", "provenance", "store")
    }
    return WarpStore.create(
        path,
        warp_type=warp_type,
        shape=(ny, nx),
        mask_planes=dataset.attrs["mask_planes"],
        chunk=chunk,
        wcs=dataset.attrs.get("wcs"),
        x=dataset["x"].values if "x" in dataset.coords else None,
        y=dataset["y"].values if "y" in dataset.coords else None,
        attrs=extra,
    )


def write_warps(
    dataset: xr.Dataset,
    path: str | os.PathLike[str],
    warp_type: str = "direct",
    *,
    chunk: int,
    statistics: VisitStatistics | None = None,
) -> WarpStore:
    """Write or append the visits of ``dataset`` to the ``warp_type`` group of ``path``.

    Only ``image``, ``variance``, ``mask``, the ``visit`` coordinate and the ``mask_planes``
    attribute are required; per-visit variables (dims ``(visit,)``) become visit metadata and
    ``wcs`` (a FITS header string) is optional. Appending checks that shape and mask planes
    agree with the store; ``chunk`` is the storage chunk of a store created here. Visits are
    written one at a time (a dask-backed dataset is computed visit by visit), each committed
    only when complete, with ``statistics(variance, mask, mask_planes)`` as its
    ``weight_stats`` when given.
    """
    validate_warps(dataset, where="write_warps")
    path = Path(path)
    with store_lock(path, "write_warps"):  # one writer at a time (lock.py)
        store = _store_for(dataset, path, warp_type, chunk)
        per_visit = [k for k, v in dataset.data_vars.items() if v.dims == ("visit",)]
        for i, visit in enumerate(dataset["visit"].values):
            one = dataset.isel(visit=i)
            meta = {str(k): one[k].values.item() for k in per_visit}
            image, variance, mask = (one[v].values for v in LAYERS)
            stats = None
            if statistics is not None:
                stats = statistics(
                    np.asarray(variance, dtype=np.float32), mask.astype(np.int32), store.mask_planes
                )
            store.append_visit(int(visit), image, variance, mask, meta, weight_stats=stats)
        store.close(
            {"operation": "write_warps", "visits": [int(v) for v in dataset["visit"].values]}
        )
    return store
