"""One visit of MakeWarp: its detectors warped, composited ("last good pixel wins", afw's
copyGoodPixels), optionally PSF-matched, and written into the visit's reserved store slots
with the weight statistics the coadd steps ask for. :func:`warp_visit` is the body of one
per-visit task (:func:`coaddx.graph.warp.visit_tasks`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coaddx.errors import CoaddxError, InputError
from coaddx.io.zarr.psf_products import PSF_KEY, write_psf_products
from coaddx.io.zarr.recovery import save_written
from coaddx.io.zarr.warp_store import WarpStore
from coaddx.kernels.no_data import any_finite
from coaddx.model.exposure import Exposure
from coaddx.model.masks import bitmask
from coaddx.model.psf import model_psf
from coaddx.model.skymap import Box, Patch
from coaddx.warp.config import ModelPsfMatchConfig, WarpConfig
from coaddx.warp.exposure import blank_layers, warp_exposure_box
from coaddx.warp.inputs import WarpInput, file_crc32c
from coaddx.warp.psf_matched import psf_match_warp, warped_psf
from coaddx.warp.psf_products import visit_psf_products
from coaddx.warp.weights import visit_weight_stats

__all__ = ["VISIT_FIELDS", "visit_metadata", "warp_visit"]

#: Per-visit metadata taken from the visit's first exposure.
VISIT_FIELDS = (
    "band",
    "mjd",
    "exptime",
    "airmass",
    "parallactic_angle",
    "psf_fwhm",
    "elevation",
    "rotation_angle",
    "temperature",
    "pressure",
    "humidity",
)

_Warped = tuple[Box, np.ndarray, np.ndarray, np.ndarray]


def visit_metadata(exposures: Sequence[Exposure], items: Sequence[WarpInput]) -> dict[str, Any]:
    """The visit record's metadata: the first exposure's fields, the mean PSF FWHM, the
    detectors and the input files with their CRC-32C (non-finite numbers as None)."""
    first = exposures[0]
    meta: dict[str, Any] = {k: getattr(first, k) for k in VISIT_FIELDS}
    meta["photo_calib"] = float(first.photo_calib)
    fwhm = [e.psf_fwhm for e in exposures if np.isfinite(e.psf_fwhm)]
    meta["psf_fwhm"] = float(np.mean(fwhm)) if fwhm else float("nan")
    meta["detectors"] = ",".join(str(e.detector) for e in exposures)
    meta["inputs"] = [
        {"path": str(i.source), "crc32c": file_crc32c(i.source)}
        if isinstance(i.source, Path)
        else {"path": i.name}
        for i in items
    ]
    return {
        k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in meta.items()
    }


def _copy_good(dest: Sequence[np.ndarray], src: Sequence[np.ndarray], no_data: int) -> None:
    good = (src[2] & no_data) == 0  # copyGoodPixels: later detectors overwrite overlaps
    for d, s in zip(dest, src, strict=True):
        d[good] = s[good]


def _union(warped: Sequence[_Warped]) -> Box:
    return Box(
        min(w[0].x0 for w in warped),
        min(w[0].y0 for w in warped),
        max(w[0].x1 for w in warped),
        max(w[0].y1 for w in warped),
    )


def _composite(warped: Sequence[_Warped], union: Box, no_data: int) -> Sequence[np.ndarray]:
    """The direct warp of the visit over the union box of its detectors' boxes."""
    if len(warped) == 1:  # one detector: its box is the visit's data
        return warped[0][1:]
    direct = blank_layers(union.shape, no_data)  # copyGoodPixels, in detector order
    for box, *arrays in warped:
        rows, cols = box.slices(origin=union)
        _copy_good([p[rows, cols] for p in direct], arrays, no_data)
    return direct


def _psf_matched(
    pairs: Sequence[tuple[Exposure, _Warped]],
    patch: Patch,
    planes: dict[str, int],
    psf_config: ModelPsfMatchConfig | None,
) -> list[np.ndarray]:
    """Each detector's warp matched to the model PSF over the whole patch, composited."""
    no_data = bitmask(planes, "NO_DATA")
    out = blank_layers(patch.shape, no_data)
    for exp, (box, *arrays) in pairs:
        full = blank_layers(patch.shape, no_data)
        rows, cols = box.slices()
        for d, arr in zip(full, arrays, strict=True):
            d[rows, cols] = arr
        matched = psf_match_warp(
            full[0], full[1], full[2], warped_psf(exp, patch), planes, psf_config
        )
        _copy_good(out, matched, no_data)
    return out


def _psf_products(
    warp_type: str,
    exposures: Sequence[Exposure],
    patch: Patch,
    psf_config: ModelPsfMatchConfig | None,
) -> dict[str, np.ndarray] | None:
    """The visit's PSF products for ``warp_type`` (:mod:`coaddx.warp.psf_products`): the
    calexp PSFs for direct warps, the model PSF (footprints shrunk by the matching kernel's
    half-width) for PSF-matched ones; None when a detector has no PSF at all (the visit is
    then written without PSF products, and a CoaddPsf over it names it as missing)."""
    try:
        if warp_type == "psf_matched":
            cfg = psf_config or ModelPsfMatchConfig()
            return visit_psf_products(
                exposures,
                patch,
                model=model_psf(cfg.model_psf_fwhm),
                shrink=float(cfg.kernel_size // 2),
            )
        return visit_psf_products(exposures, patch)
    except InputError:
        return None


def _write(
    items: Sequence[WarpInput],
    patch: Patch,
    config: WarpConfig,
    stores: dict[str, WarpStore],
    slots: dict[str, int],
    psf_config: ModelPsfMatchConfig | None,
) -> dict[str, Any]:
    visit = items[0].visit
    planes = next(iter(stores.values())).mask_planes  # the groups of one store share them
    no_data = bitmask(planes, "NO_DATA")
    exposures = [i.read() for i in items]
    pairs = [(e, warp_exposure_box(e, patch, config, planes)) for e in exposures]
    kept = [(e, w) for e, w in pairs if w is not None]
    warped = [w for _, w in kept]
    if not warped:
        return {"visit": visit, "error": "no pixel of the visit lands on the patch"}
    union = _union(warped)
    image, variance, mask = (np.asarray(a) for a in _composite(warped, union, no_data))
    if not any_finite(image):
        return {"visit": visit, "error": "no pixel of the visit lands on the patch"}
    meta = visit_metadata(exposures, items)
    records = {}
    if "direct" in slots:  # absent when only the psf_matched warp is (re)written
        stats = visit_weight_stats(
            np.asarray(variance, np.float32), np.asarray(mask, np.int32), planes
        )
        pixels = stores["direct"].write_slot_box(
            slots["direct"], union.x0, union.y0, image, variance, mask, weight_stats=stats
        )
        records["direct"] = {"visit": visit, **meta, **pixels}
    if "psf_matched" in slots:
        m_image, m_var, m_mask = _psf_matched(kept, patch, planes, psf_config)
        region = union.slices()
        stats = visit_weight_stats(
            m_var.astype(np.float32)[region], m_mask.astype(np.int32)[region], planes
        )
        pixels = stores["psf_matched"].write_slot(
            slots["psf_matched"], m_image, m_var, m_mask, data_region=region, weight_stats=stats
        )
        records["psf_matched"] = {"visit": visit, **meta, **pixels}
    for t, record in records.items():  # the PSF products: written before the record is saved
        products = _psf_products(t, [e for e, _ in kept], patch, psf_config)
        if products is not None:
            record[PSF_KEY] = write_psf_products(stores[t].path, t, visit, products)
    for t, record in records.items():  # kept by the next run if the driver dies before commit
        save_written(stores[t].path, t, slots[t], record)
    return {"visit": visit, "records": records}


def warp_visit(
    items: Sequence[WarpInput],
    patch: Patch,
    config: WarpConfig,
    store_path: str,
    slots: dict[str, int],
    psf_config: ModelPsfMatchConfig | None = None,
) -> dict[str, Any]:
    """Task body: read, calibrate, warp and composite one visit (and PSF-match each detector's
    warp when a psf_matched slot is given); write the visit's slots. Returns ``{"visit",
    "records": {warp_type: record}}`` or, when the visit failed, ``{"visit", "error"}``: a
    failed visit does not spoil the others."""
    visit = items[0].visit
    try:
        stores = {t: WarpStore(store_path, t) for t in slots}
        return _write(items, patch, config, stores, slots, psf_config)
    except Exception as exc:  # a failed visit must not spoil the others: report it instead
        kind = "" if isinstance(exc, CoaddxError) else f"{type(exc).__name__}: "
        return {"visit": visit, "error": f"{kind}{exc}"}
