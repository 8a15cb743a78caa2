"""What every coaddx Zarr store shares: warp types, planes, codecs, attributes (design.md,
"On-disk formats"). Nothing here reads pixels."""

from __future__ import annotations

import datetime as _dt
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from coaddx.constants import LAYERS
from coaddx.errors import StoreError
from coaddx.model.skymap import Patch

__all__ = [
    "LAYERS",
    "WARP_TYPES",
    "checksum",
    "codecs",
    "jsonable",
    "now",
    "open_root",
    "patch_store_attrs",
]

#: The warp-type groups of a patch store.
WARP_TYPES = ("direct", "psf_matched")
#: The (visit, y, x) arrays of a warp group.


def codecs(name: str) -> list[Any] | None:
    """The compressors of plane ``name`` ("image", "variance" or "mask").

    Decoding is what stacking waits for. Noisy images barely compress with any codec
    (1.1-1.3x) yet cost 0.44 ms per MiB chunk to decode with lz4, so they are stored raw
    and read straight into place. Variance and masks use lz4 + byte shuffle, which decodes
    3-4x faster than zstd or bitshuffle here (0.32 / 0.14 ms per MiB) and still shrinks
    them about 3.4x and 180x.
    """
    if name == "image":
        return None
    return [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]


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
    """CRC-32 of the array's bytes, as 8 hex digits (the ``checksum`` of a visit record)."""
    data = np.ascontiguousarray(a).view(np.uint8)
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"  # type: ignore[arg-type]


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
