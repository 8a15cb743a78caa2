"""AssembleCoadd: stack warps with weights, clipping and mask propagation (algorithms.md 2).

``assemble`` validates its inputs, composes one lazy graph from :mod:`coaddx.graph`'s builders
(per-visit weights, blockwise stack over subregions of all visits, coadd mask bits,
interpolation over NO_DATA) and returns a lazy Dataset; nothing is read or computed until the
result is written or ``.compute()``-d. Its building blocks (:func:`stack_bits`,
:func:`visit_weights`, :func:`check_variance_layer`, :func:`finish_layers`,
:func:`coadd_dataset`) are public: CompareWarp stacks its direct warps with them.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from coaddx.coadd.config import AssembleConfig
from coaddx.coadd.epochs import add_epoch_layers, epoch_layers
from coaddx.coadd.psf import copy_psf_products
from coaddx.coadd.weights import cached_variance_meanclip, weight_statistic
from coaddx.errors import ConfigError, InputError, InputWarning, SchemaError
from coaddx.graph.cube import LAYERS, LazyArray, as_dask_cube
from coaddx.graph.interp import interpolate_rows
from coaddx.graph.stack import finish_coadd_mask, stack, weights_from_variance
from coaddx.graph.weights import visit_meanclip
from coaddx.io.inputs import input_records
from coaddx.io.schema import validate_warps
from coaddx.io.zarr.warps import stored_mask
from coaddx.model.masks import DEFAULT_MASK_PLANES, bitmask, merge_mask_planes
from coaddx.plan import StackPlan, plan_warp_stack
from coaddx.settings import memory_per_task

__all__ = [
    "COADD_PLANES",
    "StackBits",
    "assemble",
    "check_variance_layer",
    "coadd_dataset",
    "finish_layers",
    "plan_warps",
    "planes_bit",
    "stack_bits",
    "visit_weights",
]

#: Planes every coadd has (added to the inputs' dictionary when missing).
COADD_PLANES = ("NO_DATA", "EDGE", "INTRP", "CLIPPED", "SENSOR_EDGE", "INEXACT_PSF", "REJECTED")


@dataclass(frozen=True)
class StackBits:
    """Bit values the stacking kernel needs, resolved from a mask-plane dictionary."""

    planes: dict[str, int]
    bad_mask: int
    propagate_bits: tuple[int, ...]
    propagate_thresholds: tuple[float, ...]
    map_from: tuple[int, ...]
    map_to: tuple[int, ...]
    clipped: int
    no_data: int
    remove: int

    def kernel_kwargs(self) -> dict[str, Any]:
        return dict(
            bad_mask=self.bad_mask,
            propagate_bits=self.propagate_bits,
            propagate_thresholds=self.propagate_thresholds,
            clipped_bit=self.clipped,
            map_from=self.map_from,
            map_to=self.map_to,
            no_data_bit=self.no_data,
            remove_bits=self.remove,
        )


def _known(names: tuple[str, ...], planes: Mapping[str, int], field: str) -> None:
    unknown = [n for n in names if n not in planes and n not in DEFAULT_MASK_PLANES]
    if unknown:
        raise ConfigError(
            f"AssembleConfig.{field}: unknown mask plane(s) {unknown}; the data "
            f"define {sorted(planes)}"
        )


def _missing_removed(names: tuple[str, ...], planes: Mapping[str, int]) -> None:
    """removeMaskPlanes: a plane the data lack is skipped with an :class:`InputWarning` (LSST
    logs it and goes on)."""
    for name in names:
        if name not in planes:
            warnings.warn(
                f"AssembleConfig.remove_mask_planes: the inputs have no mask plane {name!r} "
                f"to remove (their planes: {', '.join(sorted(planes))}); skipped",
                InputWarning,
                stacklevel=4,
            )


def stack_bits(input_planes: Mapping[str, int], config: AssembleConfig) -> StackBits:
    """Resolve the andMask, propagation thresholds and the REJECTED/SENSOR_EDGE/CLIPPED map."""
    _known(config.bad_mask_planes, input_planes, "bad_mask_planes")
    _missing_removed(config.remove_mask_planes, input_planes)
    _known(tuple(config.mask_propagation_thresholds), input_planes, "mask_propagation_thresholds")
    planes = merge_mask_planes(input_planes, COADD_PLANES)
    bad = bitmask(planes, config.bad_mask_planes, strict=False)
    prop = [
        (bitmask(planes, p), t)
        for p, t in config.mask_propagation_thresholds.items()
        if p in planes
    ]
    no_data, edge, clipped = (bitmask(planes, p) for p in ("NO_DATA", "EDGE", "CLIPPED"))
    mask_map = (
        (bad & ~no_data & ~edge & ~clipped, planes_bit(planes, "REJECTED")),
        (edge, planes_bit(planes, "SENSOR_EDGE")),
        (clipped, clipped),
    )
    return StackBits(
        planes=planes,
        bad_mask=bad,
        propagate_bits=tuple(b for b, _ in prop),
        propagate_thresholds=tuple(float(t) for _, t in prop),
        map_from=tuple(f for f, _ in mask_map),
        map_to=tuple(t for _, t in mask_map),
        clipped=clipped,
        no_data=no_data,
        remove=bitmask(planes, config.remove_mask_planes, strict=False),
    )


def planes_bit(planes: Mapping[str, int], name: str) -> int:
    """The bit value of plane ``name``."""
    return 1 << int(planes[name])


def _given_weights(warps: xr.Dataset, weights: Any) -> np.ndarray:
    visits = warps["visit"].values
    if isinstance(weights, Mapping):
        missing = [int(v) for v in visits if int(v) not in weights]
        if missing:
            raise InputError(f"weights: no weight given for visit(s) {missing}")
        w = np.asarray([weights[int(v)] for v in visits], dtype=np.float64)
    elif isinstance(weights, xr.DataArray) and "visit" in weights.dims:
        w = np.asarray(weights.sel(visit=visits).values, dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != visits.shape:
        raise InputError(f"weights: expected {visits.size} values (one per visit), got {w.size}")
    bad = [int(v) for v, x in zip(visits, w, strict=True) if not np.isfinite(x) or x < 0]
    if bad:
        raise InputError(
            f"weights: visit(s) {bad} have a negative or non-finite weight "
            "(use 0 to leave a visit out)"
        )
    return w


def check_variance_layer(warps: xr.Dataset, bad_mask: int) -> None:
    """NaN or negative variance under a good, finite pixel is bad input (checked eagerly for
    in-memory data; the warp store refuses such visits when they are written)."""
    if any(warps[v].chunks is not None for v in LAYERS):
        return
    image, variance, mask = (np.asarray(warps[v].values) for v in LAYERS)
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(image) & ((mask & bad_mask) == 0) & ~(variance >= 0)
    if bad.any():
        per_visit = bad.reshape(bad.shape[0], -1).sum(axis=1)
        visits = [int(v) for v, k in zip(warps["visit"].values, per_visit, strict=True) if k]
        raise InputError(
            f"variance is NaN or negative under {int(bad.sum())} good pixel(s) of visit(s) {visits}"
        )


def visit_weights(
    warps: xr.Dataset, config: AssembleConfig, planes: Mapping[str, int]
) -> np.ndarray | LazyArray:
    """Per-visit weights ``1 / MEANCLIP(variance)`` over non-bad pixels (prepareInputs).

    Uses the statistic cached in the warp store when it was computed with the same
    ``sigma_clip``, ``clip_iter`` and ``bad_mask_planes``; otherwise a lazy per-visit pass.
    Visits whose statistic is not finite or not positive get NaN: they are skipped, as LSST
    skips them.
    """
    meanvar = cached_variance_meanclip(warps, weight_statistic(config))
    if meanvar is not None:
        w = weights_from_variance(meanvar)
        skipped = [int(v) for v, x in zip(warps["visit"].values, w, strict=True) if np.isnan(x)]
        if skipped:
            warnings.warn(
                f"visit(s) {skipped} skipped: MEANCLIP of the variance plane is not "
                "finite and positive (no usable pixels)",
                stacklevel=3,
            )
        return w
    bad = bitmask(planes, config.bad_mask_planes, strict=False)
    ny, nx = warps.sizes["y"], warps.sizes["x"]
    variance, mask = (as_dask_cube(warps[v], (1, ny, nx)) for v in ("variance", "mask"))
    lazy = visit_meanclip(
        variance, mask, bad_mask=bad, sigma_clip=config.sigma_clip, clip_iter=config.clip_iter
    )
    return weights_from_variance(lazy)


def _alt_masks(alt_masks: Any, warps: xr.Dataset, chunks: tuple[int, int, int]) -> LazyArray:
    if isinstance(alt_masks, xr.DataArray):
        if alt_masks.dims != ("visit", "y", "x"):
            raise SchemaError(f"alt_masks has dims {alt_masks.dims}, expected ('visit', 'y', 'x')")
        if "visit" in alt_masks.coords:
            alt_masks = alt_masks.sel(visit=warps["visit"].values)
        arr = alt_masks
    else:
        arr = xr.DataArray(alt_masks, dims=("visit", "y", "x"))
    if arr.shape != tuple(warps.sizes[d] for d in ("visit", "y", "x")):
        raise SchemaError(
            f"alt_masks has shape {arr.shape}, the warps "
            f"{tuple(warps.sizes[d] for d in ('visit', 'y', 'x'))}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise SchemaError(f"alt_masks must hold integer mask bits, got {arr.dtype}")
    return as_dask_cube(arr.astype(np.int32), chunks)


def plan_warps(warps: xr.Dataset, subregion: tuple[int, int] | None) -> StackPlan:
    """The stacking plan of ``warps`` (:func:`coaddx.plan.plan_warp_stack` of their chunks,
    ``coaddx.memory-per-task`` and a fixed ``subregion`` when given)."""
    n, ny, nx = (warps.sizes[d] for d in ("visit", "y", "x"))
    return plan_warp_stack(
        n,
        (ny, nx),
        chunks=warps["image"].chunks,
        budget_bytes=memory_per_task(),
        subregion=subregion,
    )


def assemble(
    warps: xr.Dataset,
    config: AssembleConfig | None = None,
    *,
    weights: Any = None,
    alt_masks: Any = None,
) -> xr.Dataset:
    """Stack warps into a coadd with LSST AssembleCoadd semantics (lazy).

    Parameters
    ----------
    warps : xarray.Dataset
        ``image``, ``variance`` (float) and ``mask`` (int) over ``(visit, y, x)``, a ``visit``
        coordinate and a ``mask_planes`` attribute (from :func:`coaddx.open_warps` or built in
        memory with numpy or dask arrays).
    config : AssembleConfig, optional
        Defaults to LSST's: 3-sigma, 2-iteration MEANCLIP.
    weights : sequence, mapping visit -> weight, or DataArray over ``visit``, optional
        Per-visit weights; by default ``1 / MEANCLIP(variance plane)`` of each warp.
    alt_masks : array-like or DataArray of ints over ``(visit, y, x)``, optional
        Extra mask bits OR-ed into each visit's mask before stacking (and before ``n_image``
        is counted), e.g. CLIPPED artifact masks.

    Returns
    -------
    xarray.Dataset
        Lazy ``image``, ``variance``, ``mask``, ``n_image`` over ``(y, x)``, ``weight`` over
        ``visit``, the warps' PSF products (``psf_*`` over ``psf_input``, when they have
        them: :func:`coaddx.coadd_psf`); with ``config.epoch_planes`` also the epoch planes of
        :mod:`coaddx.coadd.epochs` (``first_mjd``, ``last_mjd``, ``mean_mjd``,
        ``mean_psf_fwhm``, ``input_bitmap`` over ``(bitmap_word, y, x)``, ``contributed``
        over ``visit``) from the same graph; attributes ``mask_planes``, ``wcs``,
        ``statistic``, ``config``, ``plan``, ``provenance`` and ``inputs``.

    Examples
    --------
    >>> coadd = coaddx.assemble(coaddx.open_warps("patch.zarr"))    # doctest: +SKIP
    >>> coaddx.write_coadd(coadd, "coadd.zarr")                     # doctest: +SKIP
    """
    config = config if config is not None else AssembleConfig()
    if not isinstance(config, AssembleConfig):
        raise ConfigError(f"config must be an AssembleConfig, got {type(config).__name__}")
    validate_warps(warps, where="assemble")
    bits = stack_bits(warps.attrs["mask_planes"], config)
    check_variance_layer(warps, bits.bad_mask)
    plan = plan_warps(warps, config.subregion_size)
    n = warps.sizes["visit"]
    chunks = (n, *plan.subregion)
    image, variance = (as_dask_cube(warps[v], chunks) for v in LAYERS[:2])
    mask = as_dask_cube(stored_mask(warps["mask"]), chunks)  # a store's 16-bit masks as they are
    if alt_masks is not None:
        mask = mask | _alt_masks(alt_masks, warps, chunks)
    w = (
        _given_weights(warps, weights)
        if weights is not None
        else visit_weights(warps, config, bits.planes)
    )
    packed = stack(
        image,
        variance,
        mask,
        w,
        statistic=config.statistic,
        sigma_clip=float(config.sigma_clip),
        clip_iter=int(config.clip_iter),
        error_mode=config.error_mode,
        **bits.kernel_kwargs(),
    )
    out = finish_layers(packed, bits, config)
    ds = coadd_dataset(out, w, warps, bits, config, plan)
    if config.epoch_planes:
        ds = add_epoch_layers(ds, epoch_layers(warps, mask, w, bad_mask=bits.bad_mask))
    return ds


def finish_layers(
    packed: LazyArray, bits: StackBits, config: AssembleConfig
) -> dict[str, LazyArray]:
    """The coadd planes from the packed stack: INEXACT_PSF / EDGE mask bits, then the
    interpolation over NO_DATA when ``config.interp`` asks for it."""
    p = bits.planes
    value, variance = packed["image"], packed["variance"]
    mask = finish_coadd_mask(
        packed["mask"],
        variance,
        inexact_from=bitmask(p, ("SENSOR_EDGE", "CLIPPED", "REJECTED")),
        inexact_bit=bitmask(p, "INEXACT_PSF"),
        edge_bit=bitmask(p, "EDGE"),
    )
    if config.interp is not None:
        ic = config.interp
        if ic.plane not in p:
            raise ConfigError(f"InterpConfig.plane: unknown mask plane {ic.plane!r}")
        value, variance, mask = interpolate_rows(
            value,
            variance,
            mask,
            bad_bits=bitmask(p, ic.plane),
            intrp_bit=bitmask(p, "INTRP"),
            kind=ic.fallback_value_type,
            user_value=ic.fallback_user_value,
            negative_allowed=ic.negative_fallback_allowed,
            transpose=ic.transpose,
        )
    return {"image": value, "variance": variance, "mask": mask, "n_image": packed["n_image"]}


def coadd_dataset(
    out: dict[str, LazyArray],
    weights: np.ndarray | LazyArray,
    warps: xr.Dataset,
    bits: StackBits,
    config: AssembleConfig,
    plan: StackPlan,
) -> xr.Dataset:
    """The coadd Dataset: planes, per-visit ``weight`` and the attributes (mask planes, WCS,
    config, plan, provenance, and the ``inputs`` records of :func:`coaddx.coadd_inputs`)."""
    coords = {d: warps[d] for d in ("y", "x") if d in warps.coords}
    ds = xr.Dataset({k: (("y", "x"), v) for k, v in out.items()}, coords=coords)
    ds["weight"] = xr.DataArray(weights, dims=("visit",), coords={"visit": warps["visit"].values})
    ds["image"].attrs["units"] = "nJy"
    ds["variance"].attrs["units"] = "nJy2"
    ds.attrs.update(
        mask_planes=bits.planes,
        wcs=warps.attrs.get("wcs"),
        statistic=config.statistic,
        config=config.to_dict(),
        plan={
            "subregion": list(plan.subregion),
            "task_bytes": plan.task_bytes,
            "budget_bytes": plan.budget_bytes,
        },
        provenance={
            "operation": "assemble",
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "inputs": warps.attrs.get("store", "in-memory"),
            "visits": [int(v) for v in warps["visit"].values],
            "warp_type": warps.attrs.get("warp_type", "direct"),
        },
        inputs=input_records(warps),
    )
    for key in ("tract", "patch", "bbox"):
        if key in warps.attrs:
            ds.attrs[key] = warps.attrs[key]
    copy_psf_products(warps, ds)  # the inputs' PSFs and footprints, for coaddx.coadd_psf
    return ds
