"""Per-visit chunk manifests of a warp group: what was written, checked when it is read.

When a visit is committed, the store writes its manifest: one small JSON record per visit,
``<group>/chunk_manifests/<visit>/zarr.json`` (a Zarr group whose attributes are the record,
so Zarr sees a valid hierarchy), never the shared group attributes, so writers of different
visits never rewrite one object. It holds the CRC-32C (Castagnoli, hardware accelerated
by the ``crc32c`` package, which releases the GIL) of every chunk file of every plane of the
visit's slot, ``null`` for the chunks that equal the fill value and were not written, the
layout the visit was written with (plane shape, chunk shape, dtype per array, mask planes),
the CRC-32C of the visit's commit record and one of the manifest itself.
``chunk_manifests/zarr.json`` records ``since``: the first slot whose visits all have a
manifest (0 for a store created by this coaddx; the number of visits already committed when
an older store was first appended to).

Readers check each chunk file against its CRC as they read it (:class:`ManifestIndex`), so a
replaced, truncated or deleted chunk, or metadata edited since the visit was written, raises
:class:`~coaddx.errors.StoreError` naming the store, array, visit and chunk. A store without
``chunk_manifests`` (written by an older coaddx) reads as before, unchecked.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import crc32c
import numpy as np

from coaddx.errors import StoreError

__all__ = [
    "MANIFESTS",
    "ManifestIndex",
    "chunk_crc",
    "commit_log",
    "inside_root",
    "manifest_since",
    "read_manifest",
    "record_crc",
    "write_manifest",
    "write_manifest_group",
]

#: The child group of a warp group that holds one manifest per committed visit.
MANIFESTS = "chunk_manifests"
#: Algorithm named in every manifest.
ALGORITHM = "crc32c"
#: A chunk whose manifest entry is unknown (no manifest: the visit was written by an older
#: coaddx, or the layout is one coaddx does not write itself).
UNCHECKED = -1


def chunk_crc(data: bytes | np.ndarray) -> int:
    """CRC-32C of a chunk file's bytes (or of an array's bytes, in memory order)."""
    if isinstance(data, np.ndarray):
        return int(crc32c.crc32c(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data))
    return int(crc32c.crc32c(data))


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def record_crc(record: Mapping[str, Any]) -> int:
    """CRC-32C of a commit record as JSON (the form the group attributes hold)."""
    return chunk_crc(_canonical(json.loads(json.dumps(dict(record)))))


def inside_root(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path`` resolved (symlinks followed), refused with a :class:`StoreError` unless it lies
    inside the resolved ``root``: a store never deletes, writes or reads outside itself."""
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise StoreError(
            f"{path} leads outside the store {root} (to {real}, through a symbolic link); "
            "refusing to delete, write or read it"
        )
    return real


def _write_json(path: Path, attrs: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"zarr_format": 3, "node_type": "group", "attributes": dict(attrs)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(body, indent=1))
    os.replace(tmp, path)


def write_manifest_group(group_path: Path, since: int) -> None:
    """Create ``chunk_manifests`` (if absent) with ``since``: the first checked slot."""
    meta = group_path / MANIFESTS / "zarr.json"
    if not meta.exists():
        _write_json(meta, {"since": int(since), "algorithm": ALGORITHM})


def manifest_since(group_path: Path) -> int | None:
    """The first slot whose visits have manifests, or None for a store without them."""
    meta = group_path / MANIFESTS / "zarr.json"
    try:
        attrs = json.loads(meta.read_text())["attributes"]
        return int(attrs["since"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{meta}: unreadable chunk manifest index: {exc}") from exc


def write_manifest(
    group_path: Path,
    visit: int,
    slot: int,
    *,
    shape: tuple[int, int],
    mask_planes: Mapping[str, int],
    arrays: Mapping[str, Mapping[str, Any]],
    record: Mapping[str, Any],
) -> None:
    """Write visit ``visit``'s manifest: ``arrays`` maps each plane to ``dtype``,
    ``chunk_shape`` and ``crc`` (rows of chunk CRCs, None for unwritten fill chunks)."""
    body = {
        "format": 1,
        "algorithm": ALGORITHM,
        "visit": int(visit),
        "slot": int(slot),
        "shape": [int(s) for s in shape],
        "mask_planes": {str(k): int(v) for k, v in mask_planes.items()},
        "record": record_crc(record),
        "arrays": {str(k): dict(v) for k, v in arrays.items()},
    }
    body = json.loads(json.dumps(body))
    _write_json(
        group_path / MANIFESTS / str(int(visit)) / "zarr.json",
        {"manifest": body, "manifest_crc": chunk_crc(_canonical(body))},
    )


#: Manifests already read and checked by this process, by path, with the (inode, size,
#: mtime) they were read at: a manifest is replaced by a rename, so a change shows there.
_CACHE: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
_CACHE_SIZE = 8192


def read_manifest(group_path: Path, visit: int) -> dict[str, Any] | None:
    """Visit ``visit``'s manifest (checked against its own CRC), or None when it has none."""
    path = group_path / MANIFESTS / str(int(visit)) / "zarr.json"
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{group_path}: visit {visit}: unreadable chunk manifest: {exc}") from exc
    key, stamp = str(path), (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    body = _read_manifest(path, group_path, visit)
    if body is not None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = (stamp, body)
    return body


def _read_manifest(path: Path, group_path: Path, visit: int) -> dict[str, Any] | None:
    try:
        attrs = json.loads(path.read_text())["attributes"]
        body, crc = attrs["manifest"], int(attrs["manifest_crc"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"{group_path}: visit {visit}: unreadable chunk manifest {path}: {exc}"
        ) from exc
    if chunk_crc(_canonical(body)) != crc or int(body.get("visit", -1)) != int(visit):
        raise StoreError(f"{group_path}: visit {visit}: chunk manifest {path} was altered")
    return dict(body)


def commit_log(attrs: Mapping[str, Any], where: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The ``visits`` and ``pending`` attributes of a warp group, checked to be a commit log
    (lists of records with integer visit ids, unique; pending entries with a slot index)."""
    visits, pending = attrs.get("visits", []), attrs.get("pending", [])
    for key, value in (("visits", visits), ("pending", pending)):
        if not isinstance(value, list) or not all(
            isinstance(r, dict) and _is_int(r.get("visit")) for r in value
        ):
            raise StoreError(
                f"{where}: the {key!r} attribute (the commit log) is not a list of visit "
                f"records: {str(value)[:80]!r}; the store is damaged (run 'coaddx check')"
            )
    if not all(_is_int(p.get("index")) for p in pending):
        raise StoreError(f"{where}: a 'pending' entry has no slot index: {pending!r}")
    ids = [int(r["visit"]) for r in visits]
    dup = sorted({v for v in ids if ids.count(v) > 1})
    if dup:
        raise StoreError(f"{where}: visit(s) {dup} are committed twice in the commit log")
    return visits, pending


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ManifestIndex:
    """The expected CRC of every chunk of the committed visits of one warp group, for
    readers: ``slots`` gives, per slot, ``(visit, record CRC)`` or None (no manifest).
    Manifests are loaded on first use (per process; cheap to pickle)."""

    def __init__(
        self, group_path: str, store: str, slots: Sequence[tuple[int, int] | None]
    ) -> None:
        self.group_path = str(group_path)
        self.store = str(store)
        self.slots = tuple(slots)
        self._loaded: dict[int, dict[str, Any]] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        return (ManifestIndex, (self.group_path, self.store, self.slots))

    def manifest(self, slot: int) -> dict[str, Any] | None:
        """The manifest of the visit in ``slot`` (checked against its record), or None."""
        if slot >= len(self.slots) or self.slots[slot] is None:
            return None
        got = self._loaded.get(slot)
        if got is None:
            visit, rcrc = self.slots[slot]  # type: ignore[misc]
            got = read_manifest(Path(self.group_path), visit)
            where = f"{self.group_path}: visit {visit}"
            if got is None:
                raise StoreError(
                    f"{where} (slot {slot}) has no chunk manifest: its chunks were never "
                    "written or the manifest was deleted; rewrite the visit"
                )
            if int(got["slot"]) != slot or int(got["record"]) != rcrc:
                raise StoreError(
                    f"{where}: its commit record differs from the one written with its "
                    f"chunks (slot {got['slot']} vs {slot}, or fields edited)"
                )
            self._loaded[slot] = got
        return got

    def expected(self, array: str, slot: int, chunk: Sequence[int]) -> int | None:
        """The CRC of chunk (j, i) of ``array`` in ``slot``: an int, None (a fill chunk that
        was not written) or :data:`UNCHECKED`."""
        got = self.manifest(slot)
        if got is None:
            return UNCHECKED
        try:
            value = got["arrays"][array]["crc"][chunk[0]][chunk[1]]
        except (KeyError, IndexError, TypeError) as exc:
            raise StoreError(
                f"{self.group_path}/{array}: visit {got['visit']}: chunk {tuple(chunk)} is "
                "not in its chunk manifest (the array's chunk grid was changed)"
            ) from exc
        return None if value is None else int(value)
