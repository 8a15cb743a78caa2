"""The coadd store: a Zarr v3 group of (y, x) planes written atomically (design.md,
"Coadd store")."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import xarray as xr

from coaddx._version import __version__
from coaddx.errors import StoreError
from coaddx.io.zarr.layout import codecs, jsonable

__all__ = ["open_coadd", "write_coadd"]


def _replace_dir(tmp: Path, path: Path) -> None:
    backup = None
    if path.exists():
        backup = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, backup)
    os.replace(tmp, path)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_coadd(
    coadd: xr.Dataset,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    compute: Callable[[Any], Any] | None = None,
) -> Path:
    """Write a coadd Dataset (lazy or not) to a Zarr v3 store, atomically.

    The store is written under a temporary name next to ``path`` and moved into place when
    complete, so an interrupted write leaves any previous coadd at ``path`` untouched. The
    lazy planes are computed once, chunk by chunk, straight into the store.

    Parameters
    ----------
    compute : callable, optional
        Called with the delayed write to run it (e.g. on a cluster with a progress bar);
        default ``dask.compute``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise StoreError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    ds = coadd.copy()
    ds.attrs = {k: jsonable(v) for k, v in coadd.attrs.items()}
    ds.attrs["coaddx"] = {"kind": "coadd", "version": __version__}
    for name, var in ds.variables.items():
        var.encoding = {}
        if var.chunks and name in ds.data_vars:
            var.encoding["chunks"] = tuple(c[0] for c in var.chunks)
        if name in ("variance", "mask", "n_image", "epoch_count"):
            var.encoding["compressors"] = codecs("variance" if name == "variance" else "mask")
    try:
        delayed = ds.to_zarr(str(tmp), mode="w-", zarr_format=3, consolidated=False, compute=False)
        (compute or dask.compute)(delayed)
        _replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def open_coadd(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a coadd store written by :func:`write_coadd` (lazy)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no coadd store at {path}")
    try:
        ds = xr.open_zarr(str(path), zarr_format=3, consolidated=False)
    except Exception as exc:
        raise StoreError(f"cannot open coadd store {path}: {exc}") from exc
    if ds.attrs.get("coaddx", {}).get("kind") != "coadd":
        raise StoreError(f"{path} is not a coaddx coadd store")
    return ds
