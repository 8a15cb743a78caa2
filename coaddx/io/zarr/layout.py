"""What every coaddx Zarr store shares: warp types, planes, codecs, attributes (design.md,
"On-disk formats"). Nothing here reads pixels."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from coaddx.constants import LAYERS
from coaddx.errors import StoreError
from coaddx.model.skymap import Patch

__all__ = [
    "LAYERS",
    "MASK_DTYPES",
    "WARP_TYPES",
    "checksum",
    "codecs",
    "jsonable",
    "mask_dtype",
    "now",
    "open_root",
    "patch_store_attrs",
]

#: The warp-type groups of a patch store.
WARP_TYPES = ("direct", "psf_matched")
#: The (visit, y, x) arrays of a warp group.


def codecs(name: str) -> list[Any] | None:
    """The compressors of plane ``name`` ("image", "variance" or "mask") in a new store.

    Decoding is what stacking waits for, and a page-cache read of raw chunks runs at memory
    speed on every thread while blosc decodes at a fraction of it. Noisy images barely
    compress (1.1-1.3x), so they are stored raw and read straight into place; so is the
    variance (lz4 + shuffle shrank it ~3x but decoded at ~330 Mpix/s per thread on the project
    machine against ~540-850 Mpix/s for a raw read; a 64-visit 2048 x 2048 store grows from
    1.3 to 1.9 GiB). Masks are runs of a few values: lz4 without shuffle on 16-bit values
    (:func:`mask_dtype`) shrinks them ~190x and decodes ~2x faster than lz4 + byte shuffle on
    the int32 masks stores held before. Stores written with other codecs keep
    theirs (the chunk reader and writer follow each array's metadata).
    """
    if name in ("image", "variance"):
        return None
    return [BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")]


def mask_dtype(planes: Mapping[str, int]) -> str:
    """The stored dtype of the mask plane of a new store: ``"u2"`` when every mask plane's bit
    fits 16 bits (readers still return int32 masks with the same values), else ``"i4"``."""
    return "u2" if all(0 <= int(b) < 16 for b in planes.values()) else "i4"


#: The stored dtypes a mask plane may have (int32 in stores written before uint16 masks).
MASK_DTYPES = (np.dtype("int32"), np.dtype("uint16"))


def now() -> str:
    """The current UTC time as an ISO string (seconds), as written in store records."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into plain Python (for attributes)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def checksum(a: np.ndarray) -> str:
    """CRC-32C of the array's bytes (the crc32c package's hardware path, as the chunk checksums),
    as 8 hex digits (the ``checksum`` of a visit record; before issue 15: zlib's CRC-32)."""
    data = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    return f"{crc32c.crc32c(data.data) & 0xFFFFFFFF:08x}"


def open_root(path: Path, mode: str) -> zarr.Group:
    """The root group of a Zarr v3 store, with a :class:`StoreError` when it cannot be read."""
    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3)  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        raise StoreError(f"no Zarr store at {path}") from exc
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise StoreError(f"cannot open Zarr store {path}: {exc}") from exc


def patch_store_attrs(patch: Patch, **extra: Any) -> dict[str, Any]:
    """Group attributes of a store on ``patch``'s grid: ``tract``, ``patch``, ``bbox``,
    ``inner_bbox``, ``bunit`` (nJy), then ``extra`` (which may override them)."""
    return {
        "tract": patch.tract_id,
        "patch": patch.name,
        "bbox": patch.outer_bbox.to_list(),
        "inner_bbox": patch.inner_bbox.to_list(),
        "bunit": "nJy",
        **extra,
    }
