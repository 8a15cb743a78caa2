"""The Zarr v3 warp store and coadd store (design.md, "On-disk formats").

Warp store layout (one group per patch, one child group per warp type)::

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
are written, (3) its record (visit id, metadata, checksums, weight statistics) is appended to
the ``visits`` attribute — the commit log — and it leaves ``pending``. Readers only see
committed visits, so an interrupted append leaves a store that reads exactly as before and
names the incomplete visit (:func:`check_store`); the next append reuses the slot.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from .. import __version__
from ..errors import InputError, SchemaError, StoreError
from ..kernels.stats import meanclip_masked, meanclip_masked_many
from ..masks import bitmask, check_mask_planes
from ._chunks import region_reader, region_writer

__all__ = [
    "WEIGHT_STAT_KEYS",
    "IncompleteStoreWarning",
    "StoreReport",
    "WarpStore",
    "check_store",
    "open_coadd",
    "open_warps",
    "weight_stat_key",
    "write_coadd",
    "write_warps",
]

WARP_TYPES = ("direct", "psf_matched")
PLANES = ("image", "variance", "mask")
DEFAULT_CHUNK = 512


class IncompleteStoreWarning(UserWarning):
    """A store holds visits whose writing did not finish; they are ignored until rewritten."""


def weight_stat_key(sigma_clip: float, clip_iter: int, bad_mask_planes: Sequence[str]) -> str:
    """Key under which a visit record caches MEANCLIP(variance) for these parameters."""
    return f"{float(sigma_clip):g}/{int(clip_iter)}/{','.join(sorted(bad_mask_planes))}"


#: Weight statistics computed at write time: AssembleCoadd's and CompareWarp's template's.
WEIGHT_STAT_KEYS: tuple[tuple[float, int, tuple[str, ...]], ...] = (
    (3.0, 2, ("NO_DATA", "BAD", "SAT", "EDGE")),
    (3.0, 2, ("NO_DATA", "BAD", "SAT")),
    (2.5, 3, ("NO_DATA",)),
)


def _codecs(name: str) -> list[Any] | None:
    # Decoding is what stacking waits for. Noisy images barely compress with any codec
    # (1.1-1.3x) yet cost 0.44 ms per MiB chunk to decode with lz4, so they are stored raw
    # and read straight into place. Variance and masks use lz4 + byte shuffle, which decodes
    # 3-4x faster than zstd or bitshuffle here (0.32 / 0.14 ms per MiB) and still shrinks
    # them about 3.4x and 180x.
    if name == "image":
        return None
    return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _crc(a: np.ndarray) -> str:
    return f"{zlib.crc32(np.ascontiguousarray(a).view(np.uint8)) & 0xFFFFFFFF:08x}"


def _open_root(path: Path, mode: str) -> zarr.Group:
    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3)  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        raise StoreError(f"no Zarr store at {path}") from exc
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise StoreError(f"cannot open Zarr store {path}: {exc}") from exc


def visit_weight_stats(
    variance: np.ndarray, mask: np.ndarray, mask_planes: Mapping[str, int]
) -> dict[str, float]:
    """MEANCLIP of the variance plane for every :data:`WEIGHT_STAT_KEYS` parameter set (shared
    passes over the pixels; each value equals its own ``meanclip_masked`` call)."""
    params = [
        (bitmask(mask_planes, planes, strict=False), sigma, iters)
        for sigma, iters, planes in WEIGHT_STAT_KEYS
    ]
    variance = np.asarray(variance)
    if variance.dtype == np.float32 and variance.ndim == 2:
        values = meanclip_masked_many(variance, np.asarray(mask, dtype=np.int32), params)
    else:
        values = [
            meanclip_masked(variance, mask, bad, sigma_clip=sigma, clip_iter=iters)
            for bad, sigma, iters in params
        ]
    return {
        weight_stat_key(sigma, iters, planes): value
        for (sigma, iters, planes), value in zip(WEIGHT_STAT_KEYS, values, strict=True)
    }


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


class WarpStore:
    """Writer of one warp-type group of a patch store. Appends are sequential; rendering or
    warping of the visits can run in parallel before them."""

    def __init__(self, path: str | os.PathLike[str], warp_type: str = "direct") -> None:
        if warp_type not in WARP_TYPES:
            raise SchemaError(f"warp_type must be one of {WARP_TYPES}, got {warp_type!r}")
        self.path = Path(path)
        self.warp_type = warp_type
        root = _open_root(self.path, "r+")
        if warp_type not in root:
            raise StoreError(f"{self.path} has no {warp_type!r} warps")
        self.group = root[warp_type]
        self.mask_planes = dict(self.group.attrs["mask_planes"])

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        warp_type: str = "direct",
        shape: tuple[int, int],
        mask_planes: Mapping[str, int],
        wcs: str | None = None,
        x: np.ndarray | None = None,
        y: np.ndarray | None = None,
        attrs: Mapping[str, Any] | None = None,
        chunk: int = DEFAULT_CHUNK,
        overwrite: bool = False,
    ) -> WarpStore:
        """Create the ``warp_type`` group (and the patch store if needed) with no visits."""
        if warp_type not in WARP_TYPES:
            raise SchemaError(f"warp_type must be one of {WARP_TYPES}, got {warp_type!r}")
        planes = check_mask_planes(mask_planes)
        ny, nx = (int(s) for s in shape)
        if ny <= 0 or nx <= 0:
            raise SchemaError(f"warp shape must be positive, got {shape}")
        path = Path(path)
        if path.exists() and not (path / "zarr.json").exists():
            raise StoreError(f"{path} exists and is not a Zarr store; refusing to write into it")
        root = zarr.open_group(str(path), mode="a", zarr_format=3)
        kind = dict(root.attrs).get("coaddx", {}).get("kind")
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
        group = root.create_group(warp_type)
        c = int(min(chunk, max(ny, nx)))
        for name, dtype, fill in (
            ("image", "f4", np.nan),
            ("variance", "f4", np.nan),
            ("mask", "i4", 0),
        ):
            group.create_array(
                name,
                shape=(0, ny, nx),
                chunks=(1, min(c, ny), min(c, nx)),
                dtype=dtype,
                fill_value=fill,
                compressors=_codecs(name),
                dimension_names=("visit", "y", "x"),
            )
        for name, values, n in (("x", x, nx), ("y", y, ny)):
            coord = np.arange(n, dtype=np.int64) if values is None else np.asarray(values, np.int64)
            if coord.shape != (n,):
                raise SchemaError(f"{name} coordinate has shape {coord.shape}, expected ({n},)")
            arr = group.create_array(
                name, shape=(n,), chunks=(n,), dtype="i8", dimension_names=(name,)
            )
            arr[:] = coord
        meta = {k: _jsonable(v) for k, v in (attrs or {}).items()}
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

    # -- appending -----------------------------------------------------------------------
    @property
    def visits(self) -> list[dict[str, Any]]:
        return list(self.group.attrs.get("visits", []))

    def _clear_slot(self, index: int) -> None:
        """Remove any chunk files left in slot ``index`` by an interrupted write: zarr does not
        write chunks that equal the fill value, so a reused slot could otherwise show them."""
        for name in PLANES:
            shutil.rmtree(self.path / self.warp_type / name / "c" / str(index), ignore_errors=True)

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
        total = start + len(slots)
        for name in PLANES:
            arr = self.group[name]
            if arr.shape[0] != total:
                arr.resize((total, *arr.shape[1:]))
        for index in slots.values():
            self._clear_slot(index)
        self.group.attrs["pending"] = [
            {"visit": v, "index": i, "time": _now()} for v, i in slots.items()
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
    ) -> dict[str, Any]:
        """Write one reserved slot (safe to call in parallel for different slots) and return
        the record fields that depend on the pixels (checksums, weight statistics).

        ``data_region`` (rows, columns), if given, promises that every pixel outside it is
        NO_DATA (NaN image and variance): the statistics then read only that region.
        """
        arrays = {
            "image": np.asarray(image, dtype=np.float32),
            "variance": np.asarray(variance, dtype=np.float32),
            "mask": np.asarray(mask, dtype=np.int32),
        }
        for name, arr in arrays.items():
            self.group[name][index] = arr
        region = data_region if data_region is not None else (slice(None), slice(None))
        return {
            "checksum": {k: _crc(v) for k, v in arrays.items()},
            "weight_stats": visit_weight_stats(
                arrays["variance"][region], arrays["mask"][region], self.mask_planes
            ),
            "n_finite": int(np.isfinite(arrays["image"][region]).sum()),
        }

    def write_slot_box(
        self,
        index: int,
        x0: int,
        y0: int,
        image: np.ndarray,
        variance: np.ndarray,
        mask: np.ndarray,
    ) -> dict[str, Any]:
        """Write one reserved slot from the box of data whose corner is array pixel (x0, y0);
        every pixel outside the box is NO_DATA (NaN, NaN, the NO_DATA bit). Local stores in
        coaddx's layout are written chunk file by chunk file straight from the box (no
        full-plane copies: a warp usually covers part of the patch); others go through zarr.
        The checksums are those of the box arrays; ``data_box`` is recorded beside them."""
        arrays = {
            "image": np.asarray(image, dtype=np.float32),
            "variance": np.asarray(variance, dtype=np.float32),
            "mask": np.asarray(mask, dtype=np.int32),
        }
        ny, nx = self.group["image"].shape[1:]
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
        writers = {name: region_writer(self.path / self.warp_type / name) for name in PLANES}
        if all(w is not None for w in writers.values()):
            for name, arr in arrays.items():
                writers[name].write_box(index, box, arr, outside[name])
        else:
            for name, arr in arrays.items():
                full = np.full((ny, nx), outside[name], dtype=arr.dtype)
                full[box[1] : box[3], box[0] : box[2]] = arr
                self.group[name][index] = full
        return {
            "checksum": {k: _crc(v) for k, v in arrays.items()},
            "data_box": list(box),
            "weight_stats": visit_weight_stats(
                arrays["variance"], arrays["mask"], self.mask_planes
            ),
            "n_finite": int(np.isfinite(arrays["image"]).sum()),
        }

    def commit(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Make reserved visits visible, in the order given (their slots must come first)."""
        visits = self.visits
        pending = {int(p["visit"]): int(p["index"]) for p in self.group.attrs.get("pending", [])}
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

    def _slot(self, visit: int) -> int:
        return self.reserve([visit])[visit]

    def append_visit(
        self,
        visit: int,
        image: np.ndarray,
        variance: np.ndarray,
        mask: np.ndarray,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one visit's warp; returns its index along ``visit``.

        The visit becomes visible to readers only once all its chunks are written.
        """
        visit = int(visit)
        shape = tuple(self.group["image"].shape[1:])
        arrays = {
            "image": np.asarray(image, dtype=np.float32),
            "variance": np.asarray(variance, dtype=np.float32),
            "mask": np.asarray(mask),
        }
        for name, arr in arrays.items():
            if arr.shape != shape:
                raise SchemaError(
                    f"visit {visit}: {name} has shape {arr.shape}, the store holds {shape}"
                )
        if not np.issubdtype(arrays["mask"].dtype, np.integer):
            raise SchemaError(
                f"visit {visit}: mask must be an integer array, got {arrays['mask'].dtype}"
            )
        arrays["mask"] = arrays["mask"].astype(np.int32, copy=False)
        _check_variance(visit, arrays["image"], arrays["variance"])
        index = self._slot(visit)
        pixels = self.write_slot(index, arrays["image"], arrays["variance"], arrays["mask"])
        record = {"visit": visit, **{k: _jsonable(v) for k, v in (metadata or {}).items()}}
        self.commit([{**record, **pixels}])
        return index

    def add_provenance(self, entry: Mapping[str, Any]) -> None:
        prov = list(self.group.attrs.get("provenance", []))
        prov.append({"time": _now(), "coaddx_version": __version__, **_jsonable(dict(entry))})
        self.group.attrs["provenance"] = prov

    def close(self, provenance: Mapping[str, Any] | None = None) -> None:
        """Record provenance of the writes just made (appends are already committed)."""
        if provenance is not None:
            self.add_provenance(provenance)


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreReport:
    """What :func:`check_store` found in one warp-type group."""

    path: str
    warp_type: str
    n_committed: int
    incomplete: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return not self.incomplete


def _group(path: Path, warp_type: str) -> zarr.Group:
    if not path.exists():
        raise StoreError(f"no warp store at {path}")
    root = _open_root(path, "r")
    if warp_type not in WARP_TYPES:
        raise SchemaError(f"warp_type must be one of {WARP_TYPES}, got {warp_type!r}")
    if warp_type not in root:
        have = sorted(root.group_keys())
        raise StoreError(f"{path} has no {warp_type!r} warps (it has: {have or 'nothing'})")
    group = root[warp_type]
    missing = [n for n in (*PLANES, "x", "y") if n not in group]
    if missing or "mask_planes" not in group.attrs:
        raise StoreError(
            f"{path}/{warp_type} is not a complete warp group: missing "
            f"{missing or ['mask_planes attribute']}"
        )
    return group


def check_store(path: str | os.PathLike[str], warp_type: str = "direct") -> StoreReport:
    """Report committed and incomplete visits of a warp group without reading pixels."""
    path = Path(path)
    group = _group(path, warp_type)
    pending = tuple(int(p["visit"]) for p in group.attrs.get("pending", []))
    return StoreReport(str(path), warp_type, len(group.attrs.get("visits", [])), pending)


def _visit_variables(records: list[dict[str, Any]]) -> dict[str, tuple[str, np.ndarray]]:
    skip = {"visit", "checksum", "weight_stats", "data_box"}
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


def open_warps(
    path: str | os.PathLike[str],
    warp_type: str = "direct",
    *,
    chunks: Mapping[str, int] | str | None = None,
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
        :class:`IncompleteStoreWarning`.
    """
    from ..plan import plan_stack
    from ..runtime import memory_per_task

    path = Path(path)
    group = _group(path, warp_type)
    attrs = dict(group.attrs)
    records = list(attrs.get("visits", []))
    if not records:
        raise StoreError(f"{path}/{warp_type} holds no visits")
    if attrs.get("pending"):
        ids = [int(p["visit"]) for p in attrs["pending"]]
        warnings.warn(
            f"{path}/{warp_type}: visit(s) {ids} were not completely written and are "
            "ignored; append them again to finish",
            IncompleteStoreWarning,
            stacklevel=2,
        )
    n = len(records)
    arrays = {name: group[name] for name in PLANES}
    ny, nx = arrays["image"].shape[1:]
    store_chunk = arrays["image"].chunks[1:]
    if chunks == "storage":
        dchunks: tuple[int, int, int] = (1, *store_chunk)
    elif chunks is None:
        plan = plan_stack(n, (ny, nx), budget_bytes=memory_per_task(), storage_chunk=store_chunk[0])
        dchunks = (n, *plan.subregion)
    else:
        dchunks = (
            int(chunks.get("visit", n)),
            int(chunks.get("y", store_chunk[0])),
            int(chunks.get("x", store_chunk[1])),
        )
    token = f"{path.resolve()}-{warp_type}-{n}-{records[-1].get('checksum', {})}"
    data = {}
    for name, arr in arrays.items():
        source = region_reader(path / warp_type / name) or arr
        lazy = da.from_array(
            source,
            chunks=(dchunks[0], dchunks[1], dchunks[2]),
            lock=False,
            asarray=True,
            name=f"coaddx-read-{name}-{zlib.crc32(token.encode()):x}-{dchunks}",
            inline_array=True,
        )
        if lazy.shape[0] != n:
            lazy = lazy[:n]
        data[name] = (("visit", "y", "x"), lazy)
    coords: dict[str, Any] = {
        "visit": ("visit", np.asarray([int(r["visit"]) for r in records], dtype=np.int64)),
        "y": ("y", group["y"][:]),
        "x": ("x", group["x"][:]),
    }
    ds = xr.Dataset(data, coords=coords)
    for key, var in _visit_variables(records).items():
        ds[key] = var
    keep = {k: v for k, v in attrs.items() if k not in ("visits", "pending")}
    keep["mask_planes"] = check_mask_planes(keep["mask_planes"], where=f"{path} mask_planes")
    ds.attrs.update(keep)
    ds.attrs["store"] = str(path)
    keys = sorted({k for r in records for k in r.get("weight_stats", {})})
    if keys:
        stats = np.asarray(
            [[r.get("weight_stats", {}).get(k, np.nan) for k in keys] for r in records],
            dtype=np.float64,
        )
        ds["variance_meanclip"] = (("visit", "weight_key"), stats)
        ds = ds.assign_coords(weight_key=np.asarray(keys, dtype=str))
    return ds


def write_warps(
    dataset: xr.Dataset,
    path: str | os.PathLike[str],
    warp_type: str = "direct",
    *,
    chunk: int = DEFAULT_CHUNK,
) -> WarpStore:
    """Write or append the visits of ``dataset`` to the ``warp_type`` group of ``path``.

    Only ``image``, ``variance``, ``mask``, the ``visit`` coordinate and the ``mask_planes``
    attribute are required; per-visit variables (dims ``(visit,)``) become visit metadata and
    ``wcs`` (a FITS header string) is optional. Appending checks that shape and mask planes
    agree with the store. Visits are written one at a time (a dask-backed dataset is computed
    visit by visit), each committed only when complete.
    """
    from ..validate import validate_warps

    validate_warps(dataset, where="write_warps")
    path = Path(path)
    ny, nx = dataset.sizes["y"], dataset.sizes["x"]
    exists = path.exists() and (path / warp_type / "zarr.json").exists()
    if exists:
        store = WarpStore(path, warp_type)
        have = tuple(store.group["image"].shape[1:])
        if have != (ny, nx):
            raise SchemaError(
                f"cannot append {ny} x {nx} warps to {path}/{warp_type}, which "
                f"holds {have[0]} x {have[1]}"
            )
        if dict(store.mask_planes) != dict(dataset.attrs["mask_planes"]):
            raise SchemaError(
                f"mask planes of the data {dict(dataset.attrs['mask_planes'])} "
                f"differ from those of {path}/{warp_type} {store.mask_planes}"
            )
    else:
        extra = {
            k: v
            for k, v in dataset.attrs.items()
            if k not in ("mask_planes", "wcs", "visits", "pending", "provenance", "store")
        }
        store = WarpStore.create(
            path,
            warp_type=warp_type,
            shape=(ny, nx),
            mask_planes=dataset.attrs["mask_planes"],
            wcs=dataset.attrs.get("wcs"),
            x=dataset["x"].values if "x" in dataset.coords else None,
            y=dataset["y"].values if "y" in dataset.coords else None,
            attrs=extra,
            chunk=chunk,
        )
    per_visit = [k for k, v in dataset.data_vars.items() if v.dims == ("visit",)]
    for i, visit in enumerate(dataset["visit"].values):
        one = dataset.isel(visit=i)
        meta = {k: one[k].values.item() for k in per_visit}
        store.append_visit(
            int(visit), one["image"].values, one["variance"].values, one["mask"].values, meta
        )
    store.close({"operation": "write_warps", "visits": [int(v) for v in dataset["visit"].values]})
    return store


# -- coadd store -------------------------------------------------------------------------


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
    ds.attrs = {k: _jsonable(v) for k, v in coadd.attrs.items()}
    ds.attrs["coaddx"] = {"kind": "coadd", "version": __version__}
    for name, var in ds.variables.items():
        var.encoding = {}
        if var.chunks and name in ds.data_vars:
            var.encoding["chunks"] = tuple(c[0] for c in var.chunks)
        if name in ("variance", "mask", "n_image", "epoch_count"):
            var.encoding["compressors"] = _codecs("variance" if name == "variance" else "mask")
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
