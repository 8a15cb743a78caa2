"""What a warp group holds and whether it is whole: :func:`check_store` and the checks that
every open makes (:func:`inspect_group`).

Three depths. Every open checks the metadata against the commit log and the chunk manifests
(:mod:`coaddx.io.zarr.manifest`): the commit log parses, the arrays have the warp schema
(dtypes, plane shape, chunk shape), every committed visit has a slot and, where the store
keeps manifests, a manifest whose layout, mask planes and commit record match what the store
says now. ``check_store`` adds a look at every chunk file the manifests list (present, a file,
inside the store; a fill chunk absent), and ``deep=True`` reads and checks the CRC of each.
Nothing here writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from coaddx.errors import CoaddxError, SchemaError, StoreError
from coaddx.io.zarr.chunks import region_reader
from coaddx.io.zarr.layout import LAYERS, MASK_DTYPES, WARP_TYPES, open_root
from coaddx.io.zarr.manifest import (
    ManifestIndex,
    chunk_crc,
    commit_log,
    inside_root,
    manifest_since,
    read_manifest,
    record_crc,
)
from coaddx.io.zarr.psf_products import PSF_KEY
from coaddx.model.masks import check_mask_planes
from coaddx.model.skymap import Box, Patch, wcs_from_header_string

__all__ = [
    "Damage",
    "GroupState",
    "StoreReport",
    "check_same_grid",
    "check_store",
    "check_warp_type",
    "holds_visits",
    "inspect_group",
    "read_patch",
    "warp_group",
]

#: The dtype of each plane of a warp group.
DTYPES = {"image": np.dtype("float32"), "variance": np.dtype("float32"), "mask": np.dtype("int32")}
OLD_STORE = "no chunk checksums (written by an older coaddx): metadata checked, chunks not"


def check_warp_type(warp_type: str) -> None:
    if warp_type not in WARP_TYPES:
        raise SchemaError(f"warp_type must be one of {WARP_TYPES}, got {warp_type!r}")


@dataclass(frozen=True)
class Damage:
    """One thing wrong in a warp group: the visit (None: the whole group), the array and
    chunk (row, column) when known, and what is wrong."""

    visit: int | None
    problem: str
    array: str | None = None
    chunk: tuple[int, ...] | None = None

    def __str__(self) -> str:
        where = [f"visit {self.visit}" if self.visit is not None else "store"]
        if self.array:
            where.append(f"array {self.array!r}")
        if self.chunk is not None:
            where.append(f"chunk {self.chunk}")
        return f"{', '.join(where)}: {self.problem}"


@dataclass(frozen=True)
class StoreReport:
    """What :func:`check_store` found in one warp-type group (``shape`` and ``chunk``: the
    (rows, columns) of a visit's planes and of their storage chunks; ``damaged``: what is
    wrong; ``notes``: what could not be checked)."""

    path: str
    warp_type: str
    n_committed: int
    incomplete: tuple[int, ...]
    shape: tuple[int, int] = (0, 0)
    chunk: tuple[int, int] = (0, 0)
    damaged: tuple[Damage, ...] = ()
    notes: tuple[str, ...] = ()
    deep: bool = False

    @property
    def ok(self) -> bool:
        return not self.incomplete and not self.damaged

    @property
    def damaged_visits(self) -> tuple[int, ...]:
        """The committed visits with damage of their own (rewriting them repairs it)."""
        return tuple(sorted({d.visit for d in self.damaged if d.visit is not None}))

    @property
    def store_damage(self) -> tuple[Damage, ...]:
        """Damage to the group itself (metadata), which rewriting visits does not repair."""
        return tuple(d for d in self.damaged if d.visit is None)

    def lines(self) -> list[str]:
        """The report as text, a line each."""
        depth = "every chunk read and checked" if self.deep else "metadata and chunk files"
        out = [
            f"{self.path}/{self.warp_type}: {self.n_committed} committed visit(s), "
            f"{self.shape[0]} x {self.shape[1]} in {self.chunk[0]} x {self.chunk[1]} chunks "
            f"({depth})"
        ]
        out += [f"  note: {n}" for n in self.notes]
        if self.incomplete:
            out.append(f"  incomplete (not committed) visit(s): {list(self.incomplete)}")
        out += [f"  DAMAGED {d}" for d in self.damaged]
        out.append("  ok" if self.ok else f"  {len(self.damaged)} problem(s) found")
        return out


def warp_group(path: Path, warp_type: str) -> zarr.Group:
    """The ``warp_type`` group of the store at ``path``, opened read-only and checked to hold
    the planes, coordinates and mask planes of a warp group."""
    if not path.exists():
        raise StoreError(f"no warp store at {path}")
    root = open_root(path, "r")
    check_warp_type(warp_type)
    try:
        has = warp_type in root
        group = cast(zarr.Group, root[warp_type]) if has else None
    except Exception as exc:  # unreadable group metadata (zarr raises several types)
        raise StoreError(f"{path}/{warp_type}: unreadable group metadata: {exc}") from exc
    if group is None:
        have = sorted(root.group_keys())
        raise StoreError(f"{path} has no {warp_type!r} warps (it has: {have or 'nothing'})")
    missing = [n for n in (*LAYERS, "x", "y") if n not in group]
    if missing or "mask_planes" not in group.attrs:
        raise StoreError(
            f"{path}/{warp_type} is not a complete warp group (missing "
            f"{missing or ['mask_planes attribute']}; interrupted while being created?): "
            "delete it, or rerun make_warps, which recreates a group with no visits"
        )
    return group


@dataclass
class GroupState:
    """A warp group as the checks found it: the commit log, layout and what is wrong."""

    path: Path
    warp_type: str
    group: zarr.Group
    records: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    shape: tuple[int, int] = (0, 0)
    chunk: tuple[int, int] = (0, 0)
    since: int | None = None
    damage: list[Damage] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}/{self.warp_type}"

    def index(self) -> ManifestIndex:
        """The expected chunk CRCs of the committed visits, for readers."""
        since = len(self.records) if self.since is None else self.since
        slots = [
            (int(r["visit"]), record_crc(r)) if k >= since else None
            for k, r in enumerate(self.records)
        ]
        return ManifestIndex(self.where, str(self.path), slots)

    def raise_if_damaged(self) -> None:
        if self.damage:
            more = f" (and {len(self.damage) - 1} more problem(s))" if len(self.damage) > 1 else ""
            raise StoreError(
                f"{self.where} is damaged: {self.damage[0]}{more}; run 'coaddx check "
                f"{self.path}' to list what is damaged, make_warps(reuse=True) to rewrite "
                "damaged visits"
            )


def _arrays(state: GroupState, n: int) -> dict[str, zarr.Array]:
    arrays: dict[str, zarr.Array] = {}
    name = "x/y"
    try:
        for name in LAYERS:
            arrays[name] = cast(zarr.Array, state.group[name])
        name = "x/y"
        ny, nx = (int(cast(zarr.Array, state.group[c]).shape[0]) for c in ("y", "x"))
        for name, arr in arrays.items():
            dtype, shape, chunks = np.dtype(str(arr.dtype)), arr.shape, arr.chunks
            allowed = MASK_DTYPES if name == "mask" else (DTYPES[name],)
            if dtype not in allowed or len(shape) != 3 or tuple(shape[1:]) != (ny, nx):
                raise StoreError(
                    f"is {dtype} {tuple(shape)}, expected {DTYPES[name]} (visit, {ny}, {nx})"
                )
            if len(chunks) != 3 or chunks[0] != 1 or chunks != arrays["image"].chunks:
                raise StoreError(f"has chunks {chunks}, the image has {arrays['image'].chunks}")
            if shape[0] < n:
                for k in range(int(shape[0]), n):
                    visit = int(state.records[k]["visit"])
                    state.damage.append(
                        Damage(
                            visit,
                            f"committed at slot {k} but the arrays hold only "
                            f"{shape[0]} slots: its slot was never written",
                            name,
                        )
                    )
    except StoreError as exc:
        state.damage.append(Damage(None, str(exc), name))
        return {}
    except Exception as exc:  # zarr raises several types for edited metadata
        state.damage.append(Damage(None, f"unreadable array metadata: {exc}", name))
        return {}
    state.shape = (ny, nx)
    state.chunk = (int(arrays["image"].chunks[1]), int(arrays["image"].chunks[2]))
    return arrays


def _weight_stats_problem(record: dict[str, Any]) -> str | None:
    stats = record.get("weight_stats", {})
    if not isinstance(stats, dict):
        return f"weight_stats is {stats!r}, not a mapping"
    for key, value in stats.items():
        if not isinstance(value, int | float) or value < 0:  # NaN passes: not computed
            return f"weight statistic {key!r} = {value!r} (a variance cannot be negative)"
    return None


def _check_manifest(
    state: GroupState, slot: int, record: dict[str, Any], arrays: dict[str, zarr.Array]
) -> None:
    visit = int(record["visit"])
    try:
        got = read_manifest(state.path / state.warp_type, visit)
    except StoreError as exc:
        state.damage.append(Damage(visit, str(exc)))
        return
    if got is None:
        state.damage.append(
            Damage(visit, "has no chunk manifest: its slot was never written by coaddx")
        )
        return
    if int(got["slot"]) != slot:
        state.damage.append(Damage(visit, f"was written to slot {got['slot']}, listed at {slot}"))
    if int(got["record"]) != record_crc(record):
        state.damage.append(
            Damage(visit, "its commit record (metadata, weight_stats) was edited after writing")
        )
    planes = dict(cast(Mapping[str, int], state.group.attrs["mask_planes"]))
    if got["mask_planes"] != planes:
        state.damage.append(
            Damage(
                None,
                f"mask_planes {planes} differ from {got['mask_planes']}, with which visit "
                f"{visit} was written",
            )
        )
    if list(got["shape"]) != list(state.shape):
        state.damage.append(
            Damage(
                None,
                f"planes are {state.shape}, visit {visit} was written as {tuple(got['shape'])}",
            )
        )
    for name, arr in arrays.items():
        info = got["arrays"].get(name, {})
        if list(info.get("chunk_shape", [])) != list(arr.chunks[1:]) or info.get("dtype") != str(
            np.dtype(str(arr.dtype))
        ):
            state.damage.append(
                Damage(
                    None,
                    f"zarr.json says {arr.dtype} chunks {arr.chunks[1:]}, visit {visit} was "
                    f"written as {info.get('dtype')} chunks {tuple(info.get('chunk_shape', []))}",
                    name,
                )
            )


def inspect_group(path: str | os.PathLike[str], warp_type: str = "direct") -> GroupState:
    """Open the ``warp_type`` group of ``path`` and check its metadata against the commit log
    and the chunk manifests (no chunk is read). Damage is listed in ``damage``; a path that
    is no warp store raises :class:`StoreError`."""
    path = Path(path)
    group = warp_group(path, warp_type)
    state = GroupState(path, warp_type, group)
    attrs: dict[str, Any] = dict(group.attrs)
    try:
        check_mask_planes(attrs["mask_planes"], where=f"{state.where} mask_planes")
        state.records, state.pending = commit_log(attrs, state.where)
    except CoaddxError as exc:
        state.damage.append(Damage(None, str(exc)))
        return state
    arrays = _arrays(state, len(state.records))
    try:
        state.since = manifest_since(path / warp_type)
    except StoreError as exc:
        state.damage.append(Damage(None, str(exc)))
    for slot, record in enumerate(state.records):
        problem = _weight_stats_problem(record)
        if problem:
            state.damage.append(Damage(int(record["visit"]), problem))
        if arrays and state.since is not None and slot >= state.since:
            _check_manifest(state, slot, record, arrays)
    state.damage = list(dict.fromkeys(state.damage))
    return state


def _check_chunks(state: GroupState, deep: bool) -> None:
    index = state.index()
    damaged = {d.visit for d in state.damage}
    for name in LAYERS:
        reader = region_reader(
            state.path / state.warp_type / name, root=state.path, manifests=index
        )
        if reader is None:
            continue
        for slot, entry in enumerate(index.slots):
            if entry is None or entry[0] in damaged:
                continue
            try:
                index.manifest(slot)
            except StoreError as exc:
                state.damage.append(Damage(entry[0], str(exc)))
                continue
            for j in range(-(-state.shape[0] // state.chunk[0])):
                for i in range(-(-state.shape[1] // state.chunk[1])):
                    problem = reader.check_chunk((slot, j, i), read=deep)
                    if problem:
                        state.damage.append(Damage(entry[0], problem, name, (j, i)))


def _check_psf_files(state: GroupState, deep: bool) -> None:
    """Every PSF products file a record names is there (deep: and has its CRC)."""
    for record in state.records:
        entry = record.get(PSF_KEY)
        if entry is None:
            continue
        visit = int(record["visit"])
        try:
            path = state.path / state.warp_type / str(entry["file"])
            inside_root(state.path, path)
            if not path.is_file():
                state.damage.append(Damage(visit, f"its PSF products file {path} is missing"))
            elif deep and chunk_crc(path.read_bytes()) != int(entry["crc32c"]):
                state.damage.append(Damage(visit, f"its PSF products file {path} was altered"))
        except (StoreError, OSError, KeyError, TypeError, ValueError) as exc:
            state.damage.append(Damage(visit, f"its PSF products entry is unusable: {exc}"))


def check_store(
    path: str | os.PathLike[str], warp_type: str = "direct", *, deep: bool = False
) -> StoreReport:
    """Check a warp group: its metadata against the commit log and the chunk manifests, and
    every chunk file of every committed visit (present where written, absent where fill, a
    file inside the store); ``deep=True`` also reads every chunk and checks its CRC-32C.
    Returns a :class:`StoreReport` (``ok`` False when anything is damaged or incomplete);
    raises :class:`StoreError` only when ``path`` is no warp store at all."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"no warp store at {path}")
    try:
        state = inspect_group(path, warp_type)
    except StoreError as exc:
        if not path.exists() or "has no" in str(exc):
            raise
        return StoreReport(str(path), warp_type, 0, (), damaged=(Damage(None, str(exc)),))
    if not any(d.visit is None for d in state.damage) and state.shape != (0, 0):
        _check_chunks(state, deep)
        _check_psf_files(state, deep)
    notes = () if state.since is not None or not state.records else (OLD_STORE,)
    return StoreReport(
        str(path),
        warp_type,
        len(state.records),
        tuple(int(p["visit"]) for p in state.pending),
        state.shape,
        state.chunk,
        tuple(dict.fromkeys(state.damage)),
        notes,
        deep,
    )


def check_same_grid(path: Path, warp_type: str, attrs: Mapping[str, Any], patch: Patch) -> None:
    """Refuse a store whose grid (tract pixel box, tract WCS) is not ``patch``'s."""
    where = f"{path}/{warp_type}"
    box = attrs.get("bbox")
    if box is not None and list(box) != patch.outer_bbox.to_list():
        raise StoreError(
            f"{where} is on the tract pixel box {list(box)}, the patch is "
            f"{patch.outer_bbox.to_list()}: another patch's store"
        )
    text = attrs.get("wcs")
    if not text:
        return
    stored = wcs_from_header_string(str(text))
    ny, nx = patch.shape
    x0, y0 = patch.outer_bbox.x0, patch.outer_bbox.y0
    xs = np.array([x0, x0 + nx - 1, x0, x0 + nx - 1, x0 + nx / 2], dtype=float)
    ys = np.array([y0, y0, y0 + ny - 1, y0 + ny - 1, y0 + ny / 2], dtype=float)
    sky = patch.tract_wcs.pixel_to_world_values(xs, ys)
    back = np.asarray(stored.world_to_pixel_values(*sky))
    off = float(np.nanmax(np.hypot(back[0] - xs, back[1] - ys)))
    if not off < 0.01:
        raise StoreError(
            f"{where} was written on another WCS: the patch's pixels land up to {off:.3g} px "
            "off the store's; use the store's own grid (read_patch) or another store"
        )


def holds_visits(path: Path, warp_type: str) -> bool:
    """Whether a warp group whose metadata is incomplete could hold committed visits."""
    try:
        meta = json.loads((path / warp_type / "zarr.json").read_text())
        visits = meta.get("attributes", {}).get("visits")
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: assume the worst
    return bool(visits)


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
