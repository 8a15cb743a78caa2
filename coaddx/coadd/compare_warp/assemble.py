"""CompareWarpAssembleCoadd: artifact rejection against a static-sky template (algorithms.md 3).

A PSF-matched MEANCLIP template is built with :func:`coaddx.assemble`; every PSF-matched warp
(variance rescaled by ScaleVariance) is differenced with it and detected in both signs; the
footprints are counted into the epoch-count image, filtered by the temporal/spatial rule and
the containment veto, and the surviving ones are masked CLIPPED in that visit's direct warp,
which is then stacked with a weighted MEAN. Everything is one lazy dask graph.

Layout of the work (see docs/design-notes.md, "CompareWarp: tiles with halos, then one visit
plane per labelling task"): one task per visit finds its ScaleVariance factor and detects its
difference on ``S x S`` tiles with a halo of ``grow + min_pixels - 1`` pixels (exact), writing
its packed one-byte flags to a scratch store; the footprint rules label one visit's whole
plane of them, so footprints that cross tiles are whole whatever ``S`` is; the epoch count and
the PSF-matched ``n_image`` are tree sums over visits; each visit's artifacts and spans go
back to the scratch store as one byte per pixel, which the final stack reads with its
``(all visits, S, S)`` subregions as AssembleCoadd does. No task holds every visit of the patch,
and nothing held between tasks grows with the number of visits.

The step composes named pieces: :mod:`~coaddx.coadd.compare_warp.config` (the configuration),
:mod:`~coaddx.coadd.compare_warp.inputs` (checks and plans),
:mod:`~coaddx.coadd.compare_warp.stages` (template, ScaleVariance, detection, filtering) and,
here, the final stack with the alternative masks (:func:`compare_warp_coadd`).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import xarray as xr

from coaddx.coadd.assemble import (
    StackBits,
    check_variance_layer,
    coadd_dataset,
    finish_layers,
    stack_bits,
    visit_weights,
)
from coaddx.coadd.compare_warp.config import CompareWarpConfig
from coaddx.coadd.compare_warp.stages import CompareWarpStages, compare_warp_stages
from coaddx.coadd.config import AssembleConfig
from coaddx.coadd.epochs import add_epoch_layers, epoch_layers
from coaddx.graph.artifacts import apply_spans, set_where, spans_flag
from coaddx.graph.cube import LAYERS, LazyArray, array_names, as_dask_cube, rechunked
from coaddx.graph.stack import stack
from coaddx.kernels.artifacts import SPAN_ARTIFACT, SPAN_STREAK
from coaddx.model.masks import bitmask, merge_mask_planes

__all__ = ["MASK_VISITS", "assemble_compare_warp", "compare_warp_coadd", "final_stack"]

#: Visits per chunk of the ``(visit, y, x)`` artifact and streak masks (one ``S x S`` subregion
#: each): one byte per pixel-visit, so a block is ``MASK_VISITS * S * S`` bytes whatever the
#: number of visits, and writing the store costs a chunk per MASK_VISITS visits (written one
#: visit per chunk, the 64-visit 1024^2 benchmark spent ~1 s on 256 chunk writes).
MASK_VISITS = 8


def assemble_compare_warp(
    direct: xr.Dataset, psf_matched: xr.Dataset, config: CompareWarpConfig | None = None
) -> xr.Dataset:
    """Coadd direct warps with LSST CompareWarp artifact rejection (lazy).

    Parameters
    ----------
    direct, psf_matched : xarray.Dataset
        Warps over ``(visit, y, x)`` on one grid (from :func:`coaddx.open_warps` with
        ``warp_type="direct"`` and ``"psf_matched"``, or built in memory). Visits of
        ``psf_matched`` are matched to those of ``direct`` by id; a direct visit without a
        PSF-matched warp is wholly NO_DATA for the stack. The PSF size comes from the
        ``model_psf_fwhm`` attribute of ``psf_matched`` (else its per-visit ``psf_fwhm``).
    config : CompareWarpConfig, optional
        LSST's defaults.

    Returns
    -------
    xarray.Dataset
        Lazy ``image``, ``variance``, ``mask``, ``n_image``, ``epoch_count`` and
        ``psf_matched_n_image`` over ``(y, x)``; ``artifact_mask`` (bool) over
        ``(visit, y, x)``, True where that visit's pixel was CLIPPED as an artifact (and
        ``streak_mask``, the streaks among them, with ``do_filter_morphological``);
        ``weight`` and ``variance_scale`` (the ScaleVariance factors) over ``visit``;
        attributes as :func:`coaddx.assemble`.

    Examples
    --------
    >>> coadd = coaddx.assemble_compare_warp(coaddx.open_warps("patch.zarr"),
    ...     coaddx.open_warps("patch.zarr", "psf_matched"))               # doctest: +SKIP
    >>> coaddx.write_coadd(coadd, "coadd.zarr")                             # doctest: +SKIP
    """
    return compare_warp_coadd(compare_warp_stages(direct, psf_matched, config))


def final_stack(
    stages: CompareWarpStages,
) -> tuple[dict[str, LazyArray], Any, StackBits, AssembleConfig, dict[str, LazyArray]]:
    """Weighted MEAN of the direct warps with the alternative masks (CLIPPED rejected), then
    SENSOR_EDGE | INEXACT_PSF wherever some visit's PSF-matched warp has EDGE. Returns the
    coadd planes, the weights, the mask bits, the AssembleConfig it stacked with and the
    epoch planes (:func:`coaddx.coadd.epochs.epoch_layers` of the masks it stacked, CLIPPED
    inputs not used; empty when ``epoch_planes`` is off)."""
    inp, config = stages.inputs, stages.config
    direct = inp.direct
    chunks = (direct.sizes["visit"], *inp.tile)
    planes_in = merge_mask_planes(direct.attrs["mask_planes"], (config.streak_mask_name,))
    base = config.assemble.replace(subregion_size=inp.tile)
    cfg = base.replace(bad_mask_planes=tuple(dict.fromkeys((*base.bad_mask_planes, "CLIPPED"))))
    bits = stack_bits(planes_in, cfg)
    check_variance_layer(direct, bitmask(bits.planes, base.bad_mask_planes, strict=False))
    p = bits.planes
    image, variance, mask = (as_dask_cube(direct[v], chunks) for v in LAYERS)
    mask = apply_spans(
        mask,
        stages.scratch,
        stages.done,
        clear=bitmask(p, base.bad_mask_planes, strict=False),
        no_data=bitmask(p, "NO_DATA"),
        clipped=bitmask(p, "CLIPPED"),
        edge=bitmask(p, "EDGE"),
        streak=bitmask(p, config.streak_mask_name),
    )
    weights = visit_weights(direct, base, bits.planes)  # prepareInputs: before the alt masks
    stacked = stack(
        image,
        variance,
        mask,
        weights,
        statistic=cfg.statistic,
        sigma_clip=float(cfg.sigma_clip),
        clip_iter=int(cfg.clip_iter),
        error_mode=cfg.error_mode,
        **bits.kernel_kwargs(),
    )
    out = finish_layers(stacked, bits, cfg)
    out["mask"] = set_where(out["mask"], stages.edge, bitmask(p, ("SENSOR_EDGE", "INEXACT_PSF")))
    epochs = epoch_layers(direct, mask, weights, bad_mask=bits.bad_mask) if cfg.epoch_planes else {}
    return out, weights, bits, cfg, epochs


def compare_warp_coadd(stages: CompareWarpStages) -> xr.Dataset:
    """The CompareWarp coadd Dataset of :func:`assemble_compare_warp` from its stages: the
    final stack, the epoch count, the per-visit artifact (and streak) masks, the ScaleVariance
    factors and the attributes."""
    inp, config = stages.inputs, stages.config
    out, weights, bits, cfg, epochs = final_stack(stages)
    ds = add_epoch_layers(coadd_dataset(out, weights, inp.direct, bits, cfg, inp.plan), epochs)
    visit_chunks = (min(MASK_VISITS, inp.direct.sizes["visit"]), *inp.tile)
    ds["epoch_count"] = (("y", "x"), rechunked(stages.epoch_count, inp.tile))
    ds["psf_matched_n_image"] = (("y", "x"), rechunked(stages.n_image, inp.tile))
    scratch, done = stages.scratch, stages.done
    ds["artifact_mask"] = (
        ("visit", "y", "x"),
        spans_flag(scratch, done, visit_chunks, SPAN_ARTIFACT),
    )
    if config.do_filter_morphological:
        ds["streak_mask"] = (
            ("visit", "y", "x"),
            spans_flag(scratch, done, visit_chunks, SPAN_STREAK),
        )
    ds["variance_scale"] = ("visit", stages.variance_scale)
    ds.attrs.update(
        statistic=cfg.statistic,
        config=config.to_dict(),
        provenance={
            **ds.attrs["provenance"],
            "operation": "assemble_compare_warp",
            "psf_matched_inputs": inp.matched.attrs.get("store", "in-memory"),
            "sigma_psf": inp.sigma_psf,
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    scratch.bind(array_names(ds))  # write_coadd removes the scratch store when it is done
    return ds
