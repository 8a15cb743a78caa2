"""The Zarr v3 warp store: one group per patch, one child group per warp type.

Layout (design.md, "On-disk formats")::

    patch.zarr/                 root attrs: {"coaddx": {"kind": "warps"}}
      direct/                   attrs: warp_type, wcs, mask_planes, tract, patch, bbox,
                                       visits (the commit log), provenance, coaddx_version
        image    (visit, y, x) float32   chunks (1, C, C)
        variance (visit, y, x) float32
        mask     (visit, y, x) uint16 (int32 when a plane's bit is >= 16, and before)
        x (x,), y (y,) int64             tract pixel coordinates of the outer box

Atomicity. Zarr's local store writes every chunk to a temporary file and renames it, so a
chunk is whole or absent. A visit is appended in three steps: (1) its slot is reserved (the
arrays grow by one along ``visit`` and the slot is listed under ``pending``), (2) its chunks
are written, (3) its record (visit id, metadata, checksums, and whatever statistics the
writer computed, e.g. ``weight_stats``) is appended to the ``visits`` attribute — the commit
log — and it leaves ``pending``. Readers only see committed visits, so an interrupted append
leaves a store that reads exactly as before and names the incomplete visit
(:func:`check_store`); the next append reuses the slot.

Integrity. Each chunk's CRC-32C is recorded as it is written and, at commit, kept in the
visit's own manifest (:mod:`coaddx.io.zarr.manifest`); readers check every chunk as they read
it and every open checks the metadata against the commit log (:mod:`coaddx.io.zarr.integrity`).
Damaged visits can be rewritten in their slots (:meth:`WarpStore.reserve_repairs`). No path
inside the store is deleted, written or read once it resolves outside the store's root.

The store writes what it is given: the chunk size and the statistics come from the caller.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from coaddx._version import __version__
from coaddx.constants import STORE_CHUNK
from coaddx.errors import SchemaError, StoreError
from coaddx.io.zarr.chunks import LocalChunkWriter, clear_slot, move_slot, region_writer
from coaddx.io.zarr.integrity import (
    StoreReport,
    check_same_grid,
    check_store,
    check_warp_type,
    holds_visits,
    read_patch,
    warp_group,
)
from coaddx.io.zarr.layout import (
    LAYERS,
    codecs,
    jsonable,
    mask_dtype,
    now,
    open_root,
    patch_store_attrs,
)
from coaddx.io.zarr.lock import store_lock
from coaddx.io.zarr.manifest import (
    commit_log,
    inside_root,
    manifest_since,
    write_manifest,
    write_manifest_group,
)
from coaddx.io.zarr.planes import check_mask_dtype, check_variance, pixel_fields, planes_of
from coaddx.model.masks import bitmask, check_mask_planes
from coaddx.model.skymap import Patch, wcs_to_header_string

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


#: The key of a write's result that carries its chunk CRCs to :meth:`WarpStore.commit` (kept
#: in the visit's manifest, not in its commit record).
CHUNKS = "chunks"


class WarpStore:
    """Writer of one warp-type group of a patch store. Appends are sequential; rendering or
    warping of the visits can run in parallel before them, each writing its own slot."""

    def __init__(self, path: str | os.PathLike[str], warp_type: str = "direct") -> None:
        check_warp_type(warp_type)
        self.path = Path(path)
        self.warp_type = warp_type
        root = open_root(self.path, "r+")
        if warp_type not in root:
            raise StoreError(f"{self.path} has no {warp_type!r} warps")
        warp_group(self.path, warp_type)  # complete, or a StoreError saying what to do
        self.group = cast(zarr.Group, root[warp_type])
        planes = cast(Mapping[str, int], self.group.attrs["mask_planes"])
        self.mask_planes = check_mask_planes(planes, where=f"{self.where} mask_planes")
        self.mask_stored = check_mask_dtype(self._array("mask").dtype, self.mask_planes, self.where)

    @property
    def where(self) -> str:
        return f"{self.path}/{self.warp_type}"

    def _array(self, name: str) -> zarr.Array:
        return cast(zarr.Array, self.group[name])

    def _attr_list(self, key: str) -> list[dict[str, Any]]:
        visits, pending = commit_log(dict(self.group.attrs), self.where)
        if key == "visits":
            return visits
        if key == "pending":
            return pending
        return list(cast(list[dict[str, Any]], self.group.attrs.get(key, [])))

    def _writers(self) -> dict[str, LocalChunkWriter] | None:
        writers = {
            name: region_writer(self.path / self.warp_type / name, root=self.path)
            for name in LAYERS
        }
        if any(w is None for w in writers.values()):
            return None
        return cast(dict[str, LocalChunkWriter], writers)

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
        check_warp_type(warp_type)
        planes = check_mask_planes(mask_planes)
        ny, nx = (int(s) for s in shape)
        if ny <= 0 or nx <= 0:
            raise SchemaError(f"warp shape must be positive, got {shape}")
        path = Path(path)
        group = _new_group(path, warp_type, overwrite)
        c = int(min(chunk, max(ny, nx)))
        for name, dtype, fill in (("image", "f4", np.nan), ("variance", "f4", np.nan)):
            _create_layer(group, name, (ny, nx), (min(c, ny), min(c, nx)), dtype, fill)
        _create_layer(group, "mask", (ny, nx), (min(c, ny), min(c, nx)), mask_dtype(planes), 0)
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
        group.attrs.update(meta)  # last: this makes the group complete
        store = cls(path, warp_type)
        if store._writers() is not None:
            write_manifest_group(path / warp_type, 0)
        return store

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
        must be the patch's: shape, tract box and WCS), else created on the patch grid with
        :func:`patch_store_attrs` (plus ``attrs``); ``mask_planes`` and ``chunk`` are used
        only when creating. A group left incomplete by a crash while it was created (it
        holds no committed visit) is created again."""
        path = Path(path)
        overwrite = False
        if (path / warp_type / "zarr.json").exists():
            try:
                store = cls(path, warp_type)
            except StoreError:
                if holds_visits(path, warp_type):
                    raise
                overwrite = True  # an interrupted create: nothing committed, start again
            else:
                have = store.shape
                if have != patch.shape:
                    raise StoreError(
                        f"{path}/{warp_type} holds {have[0]} x {have[1]} warps, the patch "
                        f"is {patch.shape[0]} x {patch.shape[1]}"
                    )
                check_same_grid(path, warp_type, dict(store.group.attrs), patch)
                return store
        try:
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
                overwrite=overwrite,
            )
        except OSError as exc:  # a full, read-only or unreachable disk (rerun recreates it)
            raise StoreError(f"cannot create the warp store {path}/{warp_type}: {exc}") from exc

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
            clear_slot(self.path / self.warp_type / name, index, self.path)

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
        for index in slots.values():
            self._clear_slot(index)
        self._resize(start + len(slots))
        self.group.attrs["pending"] = [
            {"visit": v, "index": i, "time": now()} for v, i in slots.items()
        ]
        return slots

    def reserve_repairs(self, visits: Sequence[int]) -> dict[int, int]:
        """The slots of committed (damaged) visits to rewrite in place: their chunk files are
        deleted; each is repaired when :meth:`commit_repairs` records its new write (until
        then it reads as damaged, as before). Returns visit -> slot index."""
        slots = {int(r["visit"]): k for k, r in enumerate(self.visits)}
        unknown = sorted(set(map(int, visits)) - set(slots))
        if unknown:
            raise StoreError(f"visit(s) {unknown} are not committed in {self.where}")
        out = {int(v): slots[int(v)] for v in visits}
        for index in out.values():
            self._clear_slot(index)
        return out

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
        the caller's ``weight_stats`` (statistic key -> value), plus the chunk CRCs that
        :meth:`commit` keeps in the visit's manifest. A finite pixel with a NaN or negative
        variance is refused (:class:`InputError`) before anything is written.

        ``data_region`` (rows, columns), if given, promises that every pixel outside it is
        NO_DATA (NaN image and variance): ``n_finite`` then counts only that region.
        """
        arrays = planes_of(image, variance, mask, self.mask_stored, f"slot {index}")
        n_finite = check_variance(f"slot {index}", arrays["image"], arrays["variance"], warn=False)
        writers = self._writers()
        crcs: dict[str, Any] | None = None
        if writers is not None and all(a.shape == self.shape for a in arrays.values()):
            ny, nx = self.shape
            crcs = {
                name: writers[name].write_box(index, (0, 0, nx, ny), arr, writers[name].array.fill)
                for name, arr in arrays.items()
            }
        else:
            for name, arr in arrays.items():
                self._array(name)[index] = arr
        if data_region is not None:
            fields = pixel_fields(arrays, arrays["image"][data_region], weight_stats)
        else:
            fields = pixel_fields(arrays, arrays["image"], weight_stats, n_finite)
        return {**fields, CHUNKS: crcs}

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
        The checksums are those of the box arrays; ``data_box`` is recorded beside them. A
        finite pixel with a NaN or negative variance is refused before anything is written."""
        arrays = planes_of(  # the mask narrowed chunk by chunk as it is written
            image, variance, mask, self.mask_stored, f"slot {index}", narrow_mask=False
        )
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
        n_finite = check_variance(f"slot {index}", arrays["image"], arrays["variance"], warn=False)
        no_data = np.int32(bitmask(self.mask_planes, "NO_DATA"))
        outside = {"image": np.float32(np.nan), "variance": np.float32(np.nan), "mask": no_data}
        writers = self._writers()
        crcs: dict[str, Any] | None = None
        if writers is not None:
            crcs = {
                name: writers[name].write_box(index, box, arr, outside[name])
                for name, arr in arrays.items()
            }
        else:
            for name, arr in arrays.items():
                stored = self.mask_stored if name == "mask" else arr.dtype
                full = np.full((ny, nx), outside[name], dtype=stored)
                full[box[1] : box[3], box[0] : box[2]] = arr
                self._array(name)[index] = full
        fields = pixel_fields(arrays, arrays["image"], weight_stats, n_finite)
        return {"checksum": fields.pop("checksum"), "data_box": list(box), **fields, CHUNKS: crcs}

    def _layouts(self) -> dict[str, dict[str, Any]]:
        """Each plane's dtype and chunk shape, as a manifest lists them."""
        out = {}
        for name in LAYERS:
            array = self._array(name)
            out[name] = {
                "dtype": str(np.dtype(str(array.dtype))),
                "chunk_shape": list(array.chunks[1:]),
            }
        return out

    def _manifests(self, records: Sequence[dict[str, Any]], slots: Sequence[int]) -> None:
        """Write the manifest of each record (with its chunk CRCs) before it is committed."""
        group_path = self.path / self.warp_type
        since = manifest_since(group_path)
        if since is None and all(r.get(CHUNKS) for r in records) and records:
            write_manifest_group(group_path, min(slots))  # an older store, checked from here
            since = min(slots)
        shape, layouts = self.shape, self._layouts()  # looked up once, not per record
        for record, slot in zip(records, slots, strict=True):
            crcs = record.pop(CHUNKS, None)
            if since is None or slot < since:
                continue
            if not crcs:
                raise StoreError(
                    f"{self.where}: visit {record['visit']} was written without chunk "
                    "checksums (a layout coaddx does not write itself); cannot commit it"
                )
            write_manifest(
                group_path,
                int(record["visit"]),
                slot,
                shape=shape,
                mask_planes=self.mask_planes,
                arrays={name: {**layouts[name], "crc": crcs[name]} for name in LAYERS},
                record=record,
            )

    def commit(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Make reserved visits visible, in the order given (their slots must come first)."""
        visits = self.visits
        pending = {int(p["visit"]): int(p["index"]) for p in self._attr_list("pending")}
        for i, record in enumerate(records):
            visit = int(record["visit"])
            if pending.get(visit) != len(visits) + i:
                raise StoreError(f"visit {visit} is not reserved at slot {len(visits) + i}")
        done = [
            {**jsonable({k: v for k, v in r.items() if k != CHUNKS}), CHUNKS: r.get(CHUNKS)}
            for r in records
        ]
        self._manifests(done, [len(visits) + i for i in range(len(done))])
        left = [
            {"visit": v, "index": k}
            for v, k in pending.items()
            if v not in {int(r["visit"]) for r in records}
        ]
        self.group.attrs.update({"visits": visits + done, "pending": left})

    def commit_repairs(
        self, records: Sequence[Mapping[str, Any]], slots: Mapping[int, int]
    ) -> None:
        """Replace the records (and manifests) of visits rewritten in place in their
        ``slots`` (from :meth:`reserve_repairs`)."""
        visits = self.visits
        done = [
            {**jsonable({k: v for k, v in r.items() if k != CHUNKS}), CHUNKS: r.get(CHUNKS)}
            for r in records
        ]
        at = [slots[int(r["visit"])] for r in done]
        for record, slot in zip(done, at, strict=True):
            if int(visits[slot]["visit"]) != int(record["visit"]):
                raise StoreError(f"{self.where}: slot {slot} holds visit {visits[slot]['visit']}")
        self._manifests(done, at)
        for record, slot in zip(done, at, strict=True):
            visits[slot] = record
        self.group.attrs["visits"] = visits

    def commit_in_order(
        self, records: Sequence[Mapping[str, Any]], slots: Mapping[int, int]
    ) -> None:
        """Commit the visits whose slots (visit -> index, from :meth:`reserve`) were written,
        in slot order, and release the others. Slots must be committed in order, so when a
        reserved visit is left out the visits after its slot are moved down (their chunk
        files are moved, byte for byte)."""
        order = sorted(records, key=lambda r: slots[int(r["visit"])])
        start = len(self.visits)
        for k, record in enumerate(order):
            want, have = start + k, slots[int(record["visit"])]
            if want != have:  # close the gap left by a visit that was not written
                for name in LAYERS:
                    if region_writer(self.path / self.warp_type / name) is not None:
                        move_slot(self.path / self.warp_type / name, have, want, self.path)
                    else:
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
        check_variance(visit, arrays["image"], arrays["variance"])
        arrays = planes_of(  # the mask checked to fit before a slot is reserved
            arrays["image"], arrays["variance"], arrays["mask"], self.mask_stored, f"visit {visit}"
        )
        with store_lock(self.path, "append_visit"):  # one writer at a time (lock.py)
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
        if not path.is_dir() or any(path.iterdir()):
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
        inside_root(path, path / warp_type)
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
