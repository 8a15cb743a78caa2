"""Per-visit PSF products of a warp group: what a CoaddPsf is made of (algorithms.md 1.6).

For every visit it warps, ``make_warps`` stores the visit's PSF carried to the patch frame and
the footprints of its detectors on the patch, one small file per visit::

    patch.zarr/direct/psf_products/zarr.json     a Zarr group marker (no attributes of note)
    patch.zarr/direct/psf_products/<visit>.npz   numpy arrays, uncompressed, no pickles

with, for the D detectors of the visit that land on the patch (in compositing order):

=============  ==========================  ==================================================
array          shape                       meaning
=============  ==========================  ==================================================
``detector``   (D,) int64                  detector ids
``polygon``    (D, V, 2) float64           valid polygon on the patch, (x, y) patch pixels
``grid_x``     (D, G) float64              patch x of the PSF grid nodes (increasing)
``grid_y``     (D, H) float64              patch y of the PSF grid nodes (increasing)
``images``     (D, H, G, R, C) float32     unit-sum patch-frame PSFs at the nodes, centred
``position``   (D, 2) float64              the PSF's average position on the patch (x, y)
=============  ==========================  ==================================================

Atomicity and integrity follow the visit's chunks: the file is written by the visit's task
(to a temporary name, then renamed) before the visit's record is saved, and the record, which
the commit makes visible, names the file and its CRC-32C (``record["psf_products"]``). The record is
covered by the visit's manifest (:mod:`coaddx.io.zarr.manifest`), so an edited file or entry
is found when the products are read. An interrupted run leaves at most a file that no record
names; the visit's next write replaces it. Visits written before coaddx stored PSF products
have no ``psf`` entry: their stores open and stack as before, and only the PSF products are
missing (:func:`read_psf_products` returns None for them).

:func:`psf_variables` lays the products of several visits out as Dataset variables over a
``psf_input`` dimension (one row per visit and detector, PSFs zero-padded, centred, to one
shape): the form ``open_warps`` attaches to the warps and the coadd carries into its store.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from coaddx.errors import SchemaError, StoreError
from coaddx.io.zarr.manifest import chunk_crc, inside_root

__all__ = [
    "PSF_DIR",
    "PSF_FIELDS",
    "PSF_KEY",
    "PSF_VARIABLES",
    "check_psf_products",
    "psf_variables",
    "read_psf_products",
    "write_psf_products",
]

#: The folder of a warp group that holds one products file per visit.
PSF_DIR = "psf_products"
#: The key of a visit record that names its products file.
PSF_KEY = "psf_products"
#: The arrays of one visit's products.
PSF_FIELDS = ("detector", "polygon", "grid_x", "grid_y", "images", "position")
#: Dataset variable -> dims of :func:`psf_variables`.
PSF_VARIABLES: dict[str, tuple[str, ...]] = {
    "psf_visit": ("psf_input",),
    "psf_detector": ("psf_input",),
    "psf_polygon": ("psf_input", "psf_vertex", "psf_xy"),
    "psf_grid_x": ("psf_input", "psf_node_x"),
    "psf_grid_y": ("psf_input", "psf_node_y"),
    "psf_images": ("psf_input", "psf_node_y", "psf_node_x", "psf_row", "psf_col"),
    "psf_position": ("psf_input", "psf_xy"),
}


def check_psf_products(
    products: Mapping[str, Any], where: str = "psf products"
) -> dict[str, np.ndarray]:
    """The products as arrays of the documented dtypes, their shapes checked to agree."""
    missing = [k for k in PSF_FIELDS if k not in products]
    if missing:
        raise SchemaError(f"{where}: missing {missing}")
    out: dict[str, np.ndarray] = {
        "detector": np.asarray(products["detector"], dtype=np.int64),
        "polygon": np.asarray(products["polygon"], dtype=np.float64),
        "grid_x": np.asarray(products["grid_x"], dtype=np.float64),
        "grid_y": np.asarray(products["grid_y"], dtype=np.float64),
        "images": np.asarray(products["images"], dtype=np.float32),
        "position": np.asarray(products["position"], dtype=np.float64),
    }
    d = out["detector"].shape[0] if out["detector"].ndim == 1 else -1
    images = out["images"]
    expect: dict[str, tuple[int | None, ...]] = {
        "polygon": (d, None, 2),
        "grid_x": (d, None),
        "grid_y": (d, None),
        "images": (d, out["grid_y"].shape[-1], out["grid_x"].shape[-1], None, None),
        "position": (d, 2),
    }
    for name, dims in expect.items():
        shape = out[name].shape
        if (
            d < 1
            or len(shape) != len(dims)
            or any(e is not None and s != e for s, e in zip(shape, dims, strict=True))
        ):
            raise SchemaError(f"{where}: {name} has shape {shape}, expected {dims} (D = {d})")
    if images.shape[3] % 2 == 0 or images.shape[4] % 2 == 0:
        raise SchemaError(f"{where}: PSF images must have odd sides, got {images.shape[3:]}")
    return out


def _marker(folder: Path) -> None:
    meta = folder / "zarr.json"
    if not meta.exists():
        body = {"zarr_format": 3, "node_type": "group", "attributes": {"coaddx": PSF_DIR}}
        tmp = folder / f".zarr.json.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(json.dumps(body))
        os.replace(tmp, meta)


def write_psf_products(
    root: str | os.PathLike[str], warp_type: str, visit: int, products: Mapping[str, Any]
) -> dict[str, Any]:
    """Write one visit's products file (whole or not at all) and return the record entry
    (``record["psf_products"]``) that names it: file, CRC-32C, size, detectors and PSF shape."""
    arrays = check_psf_products(products, f"visit {visit} psf products")
    folder = inside_root(root, Path(root) / warp_type / PSF_DIR)
    folder.mkdir(exist_ok=True)
    _marker(folder)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    data = buf.getvalue()
    name = f"{int(visit)}.npz"
    tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)
    return {
        "file": f"{PSF_DIR}/{name}",
        "crc32c": chunk_crc(data),
        "bytes": len(data),
        "detectors": [int(v) for v in arrays["detector"]],
        "shape": [int(s) for s in arrays["images"].shape[3:]],
    }


def read_psf_products(
    root: str | os.PathLike[str], warp_type: str, record: Mapping[str, Any]
) -> dict[str, np.ndarray] | None:
    """A committed visit's products (checked against the CRC its record names), or None when
    the record has none (a visit written before coaddx stored them)."""
    entry = record.get(PSF_KEY)
    if entry is None:
        return None
    visit = record.get("visit")
    where = f"{root}/{warp_type}: visit {visit}"
    try:
        path = inside_root(root, Path(root) / warp_type / str(entry["file"]))
        want = int(entry["crc32c"])
        data = path.read_bytes()
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{where}: malformed psf products entry {entry!r}") from exc
    except OSError as exc:
        raise StoreError(
            f"{where}: its PSF products file cannot be read ({exc}); rewrite the visit "
            "(make_warps(reuse=True) after 'coaddx check')"
        ) from exc
    if chunk_crc(data) != want:
        raise StoreError(f"{where}: its PSF products file {path} was altered (CRC mismatch)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in PSF_FIELDS}
    except (OSError, ValueError, KeyError) as exc:
        raise StoreError(f"{where}: unreadable PSF products file {path}: {exc}") from exc
    return check_psf_products(arrays, where)


def _pad(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    r, c = images.shape[-2:]
    if (r, c) == (rows, cols):
        return images
    out = np.zeros((*images.shape[:-2], rows, cols), dtype=images.dtype)
    r0, c0 = (rows - r) // 2, (cols - c) // 2
    out[..., r0 : r0 + r, c0 : c0 + c] = images
    return out


def _pad_vertices(polygon: np.ndarray, n: int) -> np.ndarray:
    """(D, V, 2) -> (D, n, 2) by repeating the last vertex (a zero-length edge changes no
    point's containment)."""
    v = polygon.shape[1]
    if v == n:
        return polygon
    return np.concatenate([polygon, np.repeat(polygon[:, -1:], n - v, axis=1)], axis=1)


def psf_variables(
    products: Mapping[int, Mapping[str, np.ndarray]],
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """The products of several visits (visit -> arrays) as Dataset variables over
    ``psf_input`` (:data:`PSF_VARIABLES`); empty when there are none. Visits must share the
    number of grid nodes; PSFs are zero-padded (centred) and polygons padded to one size."""
    items = [(int(v), check_psf_products(p, f"visit {v}")) for v, p in products.items()]
    if not items:
        return {}
    grids = {(p["grid_y"].shape[1], p["grid_x"].shape[1]) for _, p in items}
    if len(grids) != 1:
        raise SchemaError(f"psf products: visits have different PSF grids {sorted(grids)}")
    rows = max(p["images"].shape[3] for _, p in items)
    cols = max(p["images"].shape[4] for _, p in items)
    nv = max(p["polygon"].shape[1] for _, p in items)
    cat = {
        "psf_visit": np.concatenate([np.full(p["detector"].size, v, np.int64) for v, p in items]),
        "psf_detector": np.concatenate([p["detector"] for _, p in items]),
        "psf_polygon": np.concatenate([_pad_vertices(p["polygon"], nv) for _, p in items]),
        "psf_grid_x": np.concatenate([p["grid_x"] for _, p in items]),
        "psf_grid_y": np.concatenate([p["grid_y"] for _, p in items]),
        "psf_images": np.concatenate([_pad(p["images"], rows, cols) for _, p in items]),
        "psf_position": np.concatenate([p["position"] for _, p in items]),
    }
    return {k: (PSF_VARIABLES[k], cat[k]) for k in PSF_VARIABLES}
