"""The Zarr v3 warp store: one group per patch, one child group per warp type.

Layout (design.md, "On-disk formats")::

    patch.zarr/                 root attrs: {"coaddx": {"kind": "warps"}}
      direct/                   attrs: warp_type, wcs, mask_planes, tract, patch, bbox,
                                       visits (the commit log), provenance, coaddx_version
        image    (visit, y, x) float32   chunks (1, C, C)
        variance (visit, y, x) float32
        mask     (visit, y, x) int32
        x (x,), y (y,) int64             tract pixel coordinates of the outer box

Atomicity. Zarr's local store writes every chunk to a temporary file and renames it, so a
chunk is whole or absent. A visit is appended in three steps: (1) its slot is reserved (the
arrays grow by one along ``visit`` and the slot is listed under ``pending``), (2) its chunks
are written, (3) its record (visit id, metadata, checksums, and whatever statistics the
writer computed, e.g. ``weight_stats``) is appended to the ``visits`` attribute — the commit
log — and it leaves ``pending``. Readers only see committed visits, so an interrupted append
leaves a store that reads exactly as before and names the incomplete visit
(:func:`check_store`); the next append reuses the slot.

The store writes what it is given: the chunk size and the statistics come from the caller.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from coaddx._version import __version__
from coaddx.constants import STORE_CHUNK
from coaddx.errors import InputError, SchemaError, StoreError
from coaddx.io.zarr.chunks import region_writer
from coaddx.io.zarr.layout import (
    LAYERS,
    WARP_TYPES,
    checksum,
    codecs,
    jsonable,
    now,
    open_root,
    patch_store_attrs,
)
from coaddx.model.masks import bitmask, check_mask_planes
from coaddx.model.skymap import Box, Patch, wcs_from_header_string, wcs_to_header_string

__all__ = [
    "IncompleteStoreWarning",
    "StoreReport",
    "WarpStore",
    "check_store",
    "read_patch",
    "warp_group",
]


class IncompleteStoreWarning(UserWarning):
    """A store holds visits whose writing did not finish; they are ignored until rewritten."""


def _check_warp_type(warp_type: str) -> None:
    if warp_type not in WARP_TYPES:
        raise SchemaError(f"warp_type must be one of {WARP_TYPES}, got {warp_type!r}")


def _check_variance(visit: int, image: np.ndarray, variance: np.ndarray) -> None:
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(image) & ~(variance >= 0)
    nbad = int(np.count_nonzero(bad))
    if nbad:
        y, x = np.argwhere(bad)[0]
        raise InputError(
            f"visit {visit}: {nbad} pixel(s) have a finite image but a NaN or "
            f"negative variance (first at y={y}, x={x}); nothing was written"
        )
    if not np.isfinite(image).any():
        warnings.warn(
            f"visit {visit}: every image pixel is NaN; AssembleCoadd will skip it", stacklevel=3
        )


def _planes_of(image: Any, variance: Any, mask: Any) -> dict[str, np.ndarray]:
    return {
        "image": np.asarray(image, dtype=np.float32),
        "variance": np.asarray(variance, dtype=np.float32),
        "mask": np.asarray(mask, dtype=np.int32),
    }


def _pixel_fields(
    arrays: Mapping[str, np.ndarray],
    finite: np.ndarray,
    weight_stats: Mapping[str, float] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"checksum": {k: checksum(v) for k, v in arrays.items()}}
    if weight_stats is not None:
        out["weight_stats"] = {str(k): float(v) for k, v in weight_stats.items()}
    out["n_finite"] = int(np.isfinite(finite).sum())
    return out


class WarpStore:
    """Writer of one warp-type group of a patch store. Appends are sequential; rendering or
    warping of the visits can run in parallel before them, each writing its own slot."""

    def __init__(self, path: str | os.PathLike[str], warp_type: str = "direct") -> None:
        _check_warp_type(warp_type)
        self.path = Path(path)
        self.warp_type = warp_type
        root = open_root(self.path, "r+")
        if warp_type not in root:
            raise StoreError(f"{self.path} has no {warp_type!r} warps")
        self.group = cast(zarr.Group, root[warp_type])
        planes = cast(Mapping[str, int], self.group.attrs["mask_planes"])
        self.mask_planes = {str(k): int(v) for k, v in planes.items()}

    def _array(self, name: str) -> zarr.Array:
        return cast(zarr.Array, self.group[name])

    def _attr_list(self, key: str) -> list[dict[str, Any]]:
        return list(cast(list[dict[str, Any]], self.group.attrs.get(key, [])))

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        warp_type: str = "direct",
        shape: tuple[int, int],
        mask_planes: Mapping[str, int],
        chunk: int = STORE_CHUNK,
        wcs: str | None = None,
        x: np.ndarray | None = None,
        y: np.ndarray | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> WarpStore:
        """Create the ``warp_type`` group (and the patch store if needed) with no visits,
        stored in ``(1, chunk, chunk)`` chunks (clipped to the plane)."""
        _check_warp_type(warp_type)
        planes = check_mask_planes(mask_planes)
        ny, nx = (int(s) for s in shape)
        if ny <= 0 or nx <= 0:
            raise SchemaError(f"warp shape must be positive, got {shape}")
        path = Path(path)
        group = _new_group(path, warp_type, overwrite)
        c = int(min(chunk, max(ny, nx)))
        for name, dtype, fill in (("image", "f4", np.nan), ("variance", "f4", np.nan)):
            _create_layer(group, name, (ny, nx), (min(c, ny), min(c, nx)), dtype, fill)
        _create_layer(group, "mask", (ny, nx), (min(c, ny), min(c, nx)), "i4", 0)
        for name, values, n in (("x", x, nx), ("y", y, ny)):
            coord = np.arange(n, dtype=np.int64) if values is None else np.asarray(values, np.int64)
            if coord.shape != (n,):
                raise SchemaError(f"{name} coordinate has shape {coord.shape}, expected ({n},)")
            arr = group.create_array(
                name, shape=(n,), chunks=(n,), dtype="i8", dimension_names=(name,)
            )
            arr[:] = coord
        meta = {k: jsonable(v) for k, v in (attrs or {}).items()}
        meta.update(
            warp_type=warp_type,
            mask_planes=planes,
            wcs=wcs,
            visits=[],
            pending=[],
            provenance=[],
            coaddx_version=__version__,
        )
        group.attrs.update(meta)
        return cls(path, warp_type)

    @classmethod
    def for_patch(
        cls,
        path: str | os.PathLike[str],
        patch: Patch,
        *,
        warp_type: str = "direct",
        mask_planes: Mapping[str, int],
        chunk: int,
        attrs: Mapping[str, Any] | None = None,
    ) -> WarpStore:
        """The ``warp_type`` group of the store of ``patch``: opened when it exists (its grid
        must be the patch's), else created on the patch grid with :func:`patch_store_attrs`
        (plus ``attrs``); ``mask_planes`` and ``chunk`` are used only when creating."""
        path = Path(path)
        if (path / warp_type / "zarr.json").exists():
            store = cls(path, warp_type)
            have = store.shape
            if have != patch.shape:
                raise StoreError(
                    f"{path}/{warp_type} holds {have[0]} x {have[1]} warps, the patch "
                    f"is {patch.shape[0]} x {patch.shape[1]}"
                )
            return store
        return cls.create(
            path,
            warp_type=warp_type,
            shape=patch.shape,
            mask_planes=mask_planes,
            chunk=chunk,
            wcs=wcs_to_header_string(patch.tract_wcs),
            x=patch.x,
            y=patch.y,
            attrs=patch_store_attrs(patch, **(attrs or {})),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of every visit's planes."""
        ny, nx = self._array("image").shape[1:]
        return int(ny), int(nx)

    @property
    def visits(self) -> list[dict[str, Any]]:
        """The committed visit records, in slot order."""
        return self._attr_list("visits")

    # -- appending -----------------------------------------------------------------------
    def _clear_slot(self, index: int) -> None:
        """Remove any chunk files left in slot ``index`` by an interrupted write: zarr does not
        write chunks that equal the fill value, so a reused slot could otherwise show them."""
        for name in LAYERS:
            shutil.rmtree(self.path / self.warp_type / name / "c" / str(index), ignore_errors=True)

    def _resize(self, n: int) -> None:
        for name in LAYERS:
            arr = self._array(name)
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    def reserve(self, visits: Sequence[int]) -> dict[int, int]:
        """Reserve one slot per visit (after the committed ones) for writers running in
        parallel, each writing only its own slot; returns visit -> slot index. The visits stay
        invisible to readers until :meth:`commit`."""
        committed = {int(r["visit"]) for r in self.visits}
        again = sorted(committed & {int(v) for v in visits})
        if again:
            raise StoreError(f"visit(s) {again} are already in {self.path}/{self.warp_type}")
        start = len(committed)
        slots = {int(v): start + i for i, v in enumerate(visits)}
        self._resize(start + len(slots))
        for index in slots.values():
            self._clear_slot(index)
        self.group.attrs["pending"] = [
            {"visit": v, "index": i, "time": now()} for v, i in slots.items()
        ]
        return slots

    def write_slot(
        self,
        index: int,
        image: np.ndarray,
        variance: np.ndarray,
        mask: np.ndarray,
        *,
        data_region: tuple[slice, slice] | None = None,
        weight_stats: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """Write one reserved slot (safe to call in parallel for different slots) and return
        the record fields that depend on the pixels: checksums, ``n_finite`` and, when given,
        the caller's ``weight_stats`` (statistic key -> value).

        ``data_region`` (rows, columns), if given, promises that every pixel outside it is
        NO_DATA (NaN image and variance): ``n_finite`` then counts only that region.
        """
        arrays = _planes_of(image, variance, mask)
        for name, arr in arrays.items():
            self._array(name)[index] = arr
        region = data_region if data_region is not None else (slice(None), slice(None))
        return _pixel_fields(arrays, arrays["image"][region], weight_stats)

    def write_slot_box(
        self,
        index: int,
        x0: int,
        y0: int,
        image: np.ndarray,
        variance: np.ndarray,
        mask: np.ndarray,
        *,
        weight_stats: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """Write one reserved slot from the box of data whose corner is array pixel (x0, y0);
        every pixel outside the box is NO_DATA (NaN, NaN, the NO_DATA bit). Local stores in
        coaddx's layout are written chunk file by chunk file straight from the box (no
        full-plane copies: a warp usually covers part of the patch); others go through zarr.
        The checksums are those of the box arrays; ``data_box`` is recorded beside them."""
        arrays = _planes_of(image, variance, mask)
        ny, nx = self.shape
        h, w = arrays["image"].shape
        box = (int(x0), int(y0), int(x0) + w, int(y0) + h)
        if any(a.shape != (h, w) for a in arrays.values()) or not (
            0 <= box[0] <= box[2] <= nx and 0 <= box[1] <= box[3] <= ny
        ):
            raise SchemaError(
                f"slot {index}: data box {box} of shapes "
                f"{[a.shape for a in arrays.values()]} does not fit {ny} x {nx}"
            )
        no_data = np.int32(bitmask(self.mask_planes, "NO_DATA"))
        outside = {"image": np.float32(np.nan), "variance": np.float32(np.nan), "mask": no_data}
        writers = {name: region_writer(self.path / self.warp_type / name) for name in LAYERS}
        if all(w is not None for w in writers.values()):
            for name, arr in arrays.items():
                writers[name].write_box(index, box, arr, outside[name])  # type: ignore[union-attr]
        else:
            for name, arr in arrays.items():
                full = np.full((ny, nx), outside[name], dtype=arr.dtype)
                full[box[1] : box[3], box[0] : box[2]] = arr
                self._array(name)[index] = full
        fields = _pixel_fields(arrays, arrays["image"], weight_stats)
        return {"checksum": fields.pop("checksum"), "data_box": list(box), **fields}

    def commit(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Make reserved visits visible, in the order given (their slots must come first)."""
        visits = self.visits
        pending = {int(p["visit"]): int(p["index"]) for p in self._attr_list("pending")}
        for i, record in enumerate(records):
            visit = int(record["visit"])
            if pending.get(visit) != len(visits) + i:
                raise StoreError(f"visit {visit} is not reserved at slot {len(visits) + i}")
        left = [
            {"visit": v, "index": k}
            for v, k in pending.items()
            if v not in {int(r["visit"]) for r in records}
        ]
        self.group.attrs.update({"visits": visits + [dict(r) for r in records], "pending": left})

    def commit_in_order(
        self, records: Sequence[Mapping[str, Any]], slots: Mapping[int, int]
    ) -> None:
        """Commit the visits whose slots (visit -> index, from :meth:`reserve`) were written,
        in slot order, and release the others. Slots must be committed in order, so when a
        reserved visit is left out the visits after its slot are moved down (their slots are
        rewritten from the store)."""
        order = sorted(records, key=lambda r: slots[int(r["visit"])])
        start = len(self.visits)
        for k, record in enumerate(order):
            want, have = start + k, slots[int(record["visit"])]
            if want != have:  # close the gap left by a visit that was not written
                for name in LAYERS:
                    self._array(name)[want] = self._array(name)[have]
        if order:
            pending = [{"visit": int(r["visit"]), "index": start + k} for k, r in enumerate(order)]
            self.group.attrs["pending"] = pending
            self.commit(order)
        self._resize(start + len(order))
        self.group.attrs["pending"] = []

    def append_visit(
        self,
        visit: int,
        image: np.ndarray,
        variance: np.ndarray,
        mask: np.ndarray,
        metadata: Mapping[str, Any] | None = None,
        *,
        weight_stats: Mapping[str, float] | None = None,
    ) -> int:
        """Append one visit's warp (and the caller's ``weight_stats``, if any); returns its
        index along ``visit``. The visit becomes visible to readers only once all its chunks
        are written."""
        visit = int(visit)
        arrays = {
            "image": np.asarray(image, dtype=np.float32),
            "variance": np.asarray(variance, dtype=np.float32),
            "mask": np.asarray(mask),
        }
        for name, arr in arrays.items():
            if arr.shape != self.shape:
                raise SchemaError(
                    f"visit {visit}: {name} has shape {arr.shape}, the store holds {self.shape}"
                )
        if not np.issubdtype(arrays["mask"].dtype, np.integer):
            raise SchemaError(
                f"visit {visit}: mask must be an integer array, got {arrays['mask'].dtype}"
            )
        arrays["mask"] = arrays["mask"].astype(np.int32, copy=False)
        _check_variance(visit, arrays["image"], arrays["variance"])
        index = self.reserve([visit])[visit]
        pixels = self.write_slot(index, *arrays.values(), weight_stats=weight_stats)
        record = {"visit": visit, **{k: jsonable(v) for k, v in (metadata or {}).items()}}
        self.commit([{**record, **pixels}])
        return index

    def add_provenance(self, entry: Mapping[str, Any]) -> None:
        """Append an entry (with the time and coaddx version) to the ``provenance`` record."""
        prov = self._attr_list("provenance")
        prov.append({"time": now(), "coaddx_version": __version__, **jsonable(dict(entry))})
        self.group.attrs["provenance"] = prov

    def close(self, provenance: Mapping[str, Any] | None = None) -> None:
        """Record provenance of the writes just made (appends are already committed)."""
        if provenance is not None:
            self.add_provenance(provenance)


def _new_group(path: Path, warp_type: str, overwrite: bool) -> zarr.Group:
    if path.exists() and not (path / "zarr.json").exists():
        raise StoreError(f"{path} exists and is not a Zarr store; refusing to write into it")
    root = zarr.open_group(str(path), mode="a", zarr_format=3)
    meta: dict[str, Any] = dict(root.attrs)
    kind = meta.get("coaddx", {}).get("kind")
    if kind not in (None, "warps"):
        raise StoreError(f"{path} is a coaddx {kind} store, not a warp store")
    root.attrs["coaddx"] = {"kind": "warps", "version": __version__}
    if warp_type in root:
        if not overwrite:
            raise StoreError(
                f"{path} already has {warp_type!r} warps (use append_visit, "
                "or overwrite=True to replace them)"
            )
        del root[warp_type]
    return root.create_group(warp_type)


def _create_layer(
    group: zarr.Group,
    name: str,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    dtype: str,
    fill: float,
) -> None:
    group.create_array(
        name,
        shape=(0, *shape),
        chunks=(1, *chunks),
        dtype=dtype,
        fill_value=fill,
        compressors=codecs(name),
        dimension_names=("visit", "y", "x"),
    )


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreReport:
    """What :func:`check_store` found in one warp-type group (``shape`` and ``chunk``: the
    (rows, columns) of a visit's planes and of their storage chunks)."""

    path: str
    warp_type: str
    n_committed: int
    incomplete: tuple[int, ...]
    shape: tuple[int, int] = (0, 0)
    chunk: tuple[int, int] = (0, 0)

    @property
    def ok(self) -> bool:
        return not self.incomplete


def warp_group(path: Path, warp_type: str) -> zarr.Group:
    """The ``warp_type`` group of the store at ``path``, opened read-only and checked to hold
    the planes, coordinates and mask planes of a warp group."""
    if not path.exists():
        raise StoreError(f"no warp store at {path}")
    root = open_root(path, "r")
    _check_warp_type(warp_type)
    if warp_type not in root:
        have = sorted(root.group_keys())
        raise StoreError(f"{path} has no {warp_type!r} warps (it has: {have or 'nothing'})")
    group = cast(zarr.Group, root[warp_type])
    missing = [n for n in (*LAYERS, "x", "y") if n not in group]
    if missing or "mask_planes" not in group.attrs:
        raise StoreError(
            f"{path}/{warp_type} is not a complete warp group: missing "
            f"{missing or ['mask_planes attribute']}"
        )
    return group


def check_store(path: str | os.PathLike[str], warp_type: str = "direct") -> StoreReport:
    """Report committed and incomplete visits of a warp group without reading pixels."""
    path = Path(path)
    group = warp_group(path, warp_type)
    attrs = cast(dict[str, list[dict[str, Any]]], dict(group.attrs))
    pending = tuple(int(p["visit"]) for p in attrs.get("pending", []))
    image = cast(zarr.Array, group["image"])
    return StoreReport(
        str(path),
        warp_type,
        len(attrs.get("visits", [])),
        pending,
        (int(image.shape[1]), int(image.shape[2])),
        (int(image.chunks[1]), int(image.chunks[2])),
    )


def read_patch(path: str | os.PathLike[str], warp_type: str = "direct") -> Patch:
    """The patch grid of an existing warp store (its tract WCS and x/y coordinates)."""
    try:
        group = zarr.open_group(str(Path(path) / warp_type), mode="r")
    except Exception as exc:
        raise StoreError(f"no {warp_type!r} warps at {path}: {exc}") from exc
    attrs: dict[str, Any] = dict(group.attrs)
    wcs = attrs.get("wcs")
    if not wcs:
        raise StoreError(f"{path}/{warp_type} has no WCS; give the patch explicitly")
    x, y = (np.asarray(cast(zarr.Array, group[n])[:]) for n in ("x", "y"))
    box = Box(int(x[0]), int(y[0]), int(x[-1]) + 1, int(y[-1]) + 1)
    inner = tuple(attrs.get("inner_bbox") or box.to_list())
    return Patch(
        outer_bbox=box,
        inner_bbox=Box(*inner),
        tract_wcs=wcs_from_header_string(wcs),
        tract_id=int(attrs.get("tract", 0) or 0),
    )
