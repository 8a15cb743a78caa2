"""MakeDirectWarp: calexps onto a patch grid, written in parallel into the warp store.

``make_warps`` selects the exposures that overlap the patch (headers only,
:mod:`coaddx.warp.inputs`), groups them by visit, and runs one task per visit
(:func:`coaddx.warp.visit.warp_visit`, wired by :mod:`coaddx.graph.warp`): read the visit's
detectors, calibrate them to nJy, warp each onto the patch (:mod:`coaddx.warp.exposure`),
composite them ("last good pixel wins", copyGoodPixels), and write the result into the
visit's own reserved slot of the store, so no two tasks write one object. Visits are
committed in order once their tasks finish; a visit that fails does not spoil the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coaddx.errors import ConfigError, StoreError
from coaddx.graph.warp import run_visit_tasks
from coaddx.io.zarr.lock import store_lock
from coaddx.io.zarr.manifest import commit_log
from coaddx.io.zarr.recovery import clear_written, written_records
from coaddx.io.zarr.warp_store import WarpStore, check_store
from coaddx.model.exposure import Exposure
from coaddx.model.geometry import exposure_overlaps
from coaddx.model.masks import mask_planes, merge_mask_planes
from coaddx.model.skymap import Patch
from coaddx.settings import store_chunk
from coaddx.warp.config import ModelPsfMatchConfig, WarpConfig
from coaddx.warp.exposure import warp_exposure, warp_exposure_box
from coaddx.warp.inputs import WarpInput, check_selection, warp_inputs
from coaddx.warp.visit import warp_visit

__all__ = [
    "WarpConfig",
    "WarpResult",
    "make_warps",
    "open_warp_store",
    "warp_exposure",
    "warp_exposure_box",
]


@dataclass(frozen=True)
class WarpResult:
    """What :func:`make_warps` did."""

    store: Path
    written: tuple[int, ...]
    reused: tuple[int, ...]
    not_overlapping: tuple[str, ...]
    failed: dict[int, str] = field(default_factory=dict)
    #: committed visits found damaged (:func:`coaddx.check_store`) and rewritten in place
    repaired: tuple[int, ...] = ()
    #: visits an interrupted run had written whole but not committed, committed without
    #: warping them again (:mod:`coaddx.io.zarr.recovery`)
    recovered: tuple[int, ...] = ()


def _recover(ws: WarpStore) -> list[int]:
    """Commit the pending visits of an interrupted run whose chunks are all whole; release
    the other pending slots (they are redone)."""
    _, pending = commit_log(ws.group.attrs, ws.where)
    slots = {int(p["visit"]): int(p["index"]) for p in pending}
    found = written_records(ws.path, ws.warp_type, slots)
    if slots:
        ws.commit_in_order([r for _, r in found.values()], {v: s for v, (s, _) in found.items()})
    clear_written(ws.path, ws.warp_type)
    return sorted(found)


def open_warp_store(
    store: str | os.PathLike[str],
    patch: Patch,
    planes: Mapping[str, int],
    warp_type: str,
    psf_config: ModelPsfMatchConfig | None = None,
) -> WarpStore:
    """The ``warp_type`` group of the patch store, created on the patch grid when absent with
    the ``coaddx.store-chunk`` storage chunk (and ``model_psf_fwhm`` for psf_matched)."""
    extra = (
        {"model_psf_fwhm": psf_config.model_psf_fwhm}
        if warp_type == "psf_matched" and psf_config is not None
        else {}
    )
    return WarpStore.for_patch(
        store, patch, warp_type=warp_type, mask_planes=planes, chunk=store_chunk(), attrs=extra
    )


def _warp_types(warp_types: Sequence[str]) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(warp_types))
    if not types or types[0] != "direct" or not set(types) <= {"direct", "psf_matched"}:
        raise ConfigError(
            f"warp_types must start with 'direct' and may add 'psf_matched', got "
            f"{tuple(warp_types)}"
        )
    return types


def _store_planes(selected: Sequence[WarpInput]) -> dict[str, int]:
    """The default mask planes plus those of in-memory exposures (files are read in tasks)."""
    planes = mask_planes()
    for i in selected:
        if isinstance(i.source, Exposure):
            planes = merge_mask_planes(planes, i.source.mask_planes)
    return planes


def _by_visit(selected: Sequence[WarpInput]) -> dict[int, list[WarpInput]]:
    by_visit: dict[int, list[WarpInput]] = {}
    for i in sorted(selected, key=lambda i: (i.visit, i.detector)):
        by_visit.setdefault(i.visit, []).append(i)
    return by_visit


def _damaged(
    stores: Mapping[str, WarpStore], by_visit: Mapping[int, Any], deep: bool
) -> dict[str, list[int]]:
    """The committed visits of each store that :func:`check_store` finds damaged (to rewrite);
    a :class:`StoreError` for damage that rewriting this run's visits cannot repair."""
    out: dict[str, list[int]] = {}
    for t, ws in stores.items():
        report = check_store(ws.path, t, deep=deep)
        fix = f"see 'coaddx check {ws.path}'; repair or delete the store"
        if report.store_damage:
            raise StoreError(f"{ws.where} is damaged: {report.store_damage[0]} ({fix})")
        lost = [v for v in report.damaged_visits if v not in by_visit]
        if lost:
            raise StoreError(
                f"{ws.where}: committed visit(s) {lost} are damaged and not among the "
                f"exposures given, so they cannot be rewritten: give their exposures ({fix})"
            )
        out[t] = list(report.damaged_visits)
    return out


def make_warps(
    exposures: Iterable[str | os.PathLike[str] | Exposure],
    patch: Patch,
    store: str | os.PathLike[str],
    *,
    config: WarpConfig | None = None,
    reuse: bool = True,
    warp_types: Sequence[str] = ("direct",),
    psf_config: ModelPsfMatchConfig | None = None,
    compute: Callable[..., Any] | None = None,
    deep_check: bool = False,
) -> WarpResult:
    """Warp every exposure that overlaps ``patch`` into the warp store, one task per visit.

    Parameters
    ----------
    exposures : iterable of paths or :class:`Exposure`
        Calexp files (any layout :func:`coaddx.read_exposure` reads) or Exposures; several
        detectors of one visit are composited.
    patch : Patch
        A tract patch, or any grid from :meth:`Patch.from_wcs`.
    store : path
        The patch warp store (created if absent, with ``coaddx.store-chunk`` chunks).
    reuse : bool
        Skip visits already committed in the store, rewrite visits whose writing was
        interrupted and rewrite, in place, committed visits that :func:`coaddx.check_store`
        finds damaged (a missing or altered chunk file, an edited record); with False, a
        visit already in the store is an error.
    warp_types : sequence of {"direct", "psf_matched"}
        With "psf_matched", each detector's warp is also matched to the model PSF
        (ModelPsfMatch, :class:`coaddx.ModelPsfMatchConfig`, 7.7 px double Gaussian)
        and written to the ``psf_matched`` group in the same task.
    compute : callable, optional
        Runs the tasks (``dask.compute`` by default; the CLI passes one with a progress bar).
    deep_check : bool
        With ``reuse``, read every chunk of the store and check its CRC before deciding what
        to rewrite (``check_store(deep=True)``); by default only the metadata and the presence
        of every chunk file are checked (chunks are checked as they are read anyway).

    Returns
    -------
    WarpResult
    """
    config = config or WarpConfig()
    if not isinstance(patch, Patch):
        raise ConfigError(f"patch must be a coaddx.Patch, got {type(patch).__name__}")
    if not isinstance(config, WarpConfig):
        raise ConfigError(f"config must be a coaddx.WarpConfig, got {type(config).__name__}")
    store = Path(store)
    items = warp_inputs(exposures)
    selected = [
        i
        for i in items
        if exposure_overlaps(i.wcs, i.shape, patch.wcs, patch.shape, border=config.border)
    ]
    missing = tuple(i.name for i in items if i not in selected)
    check_selection(selected, patch, config)
    types = _warp_types(warp_types)
    psf_config = psf_config or ModelPsfMatchConfig()
    with store_lock(store, "make_warps"):  # one writer at a time (io/zarr/lock.py)
        planes = _store_planes(selected)
        stores = {t: open_warp_store(store, patch, planes, t, psf_config) for t in types}
        by_visit = _by_visit(selected)
        recovered = {t: _recover(ws) for t, ws in stores.items()} if reuse else {}
        repair = _damaged(stores, by_visit, deep_check) if reuse else {t: [] for t in types}
        done = {
            t: {int(r["visit"]) for r in ws.visits} - set(repair[t]) for t, ws in stores.items()
        }
        complete = set.intersection(*done.values())
        if complete & set(by_visit) and not reuse:
            raise StoreError(
                f"visit(s) {sorted(complete & set(by_visit))} are already in {store}; "
                "use reuse=True to skip them"
            )
        todo = {t: [v for v in by_visit if v not in done[t] and v not in repair[t]] for t in types}
        visits = sorted(set().union(*todo.values(), *repair.values()))
        slots = {t: (stores[t].reserve(todo[t]) if todo[t] else {}) for t in types}
        fixing = {t: (stores[t].reserve_repairs(repair[t]) if repair[t] else {}) for t in types}
        arguments = [
            (
                by_visit[v],
                patch,
                config,
                str(store),
                {t: {**slots[t], **fixing[t]}[v] for t in types if v in slots[t] or v in fixing[t]},
                psf_config,
            )
            for v in visits
        ]
        results = run_visit_tasks(warp_visit, arguments, compute)
        failed = {int(r["visit"]): r["error"] for r in results if "error" in r}
        for t in types:
            good = [r["records"][t] for r in results if "records" in r and t in r["records"]]
            stores[t].commit_repairs([r for r in good if int(r["visit"]) in fixing[t]], fixing[t])
            good = [r for r in good if int(r["visit"]) not in fixing[t]]
            stores[t].commit_in_order(good, slots[t])
            clear_written(stores[t].path, t)
            stores[t].add_provenance(
                {
                    "operation": "make_warps",
                    "config": config.to_dict(),
                    "visits": [int(r["visit"]) for r in good],
                    "failed": failed,
                }
            )
    written = tuple(int(r["visit"]) for r in results if "records" in r)
    repaired = tuple(sorted({v for t in types for v in fixing[t]} & set(written)))
    kept = set.intersection(*(set(v) for v in recovered.values())) if recovered else set()
    reused = tuple(sorted(complete & set(by_visit) - kept))
    return WarpResult(
        store, written, reused, missing, failed, repaired, tuple(sorted(kept & set(by_visit)))
    )
