"""CompareWarp's stages, in order, as named lazy pieces (algorithms.md 3.2-3.4):

1. ``"template"``: the static-sky model (:func:`coaddx.assemble` of the PSF-matched warps) in
   detection tiles, and its bright footprints (the containment veto);
2. ``"scale variance"``: each visit's ScaleVariance factor (one task per visit plane);
3. ``"detection"``: each visit's difference with the template, detected in both signs on tiles
   with halos (packed per-pixel flags);
4. ``"filtering"``: the PSF-matched ``n_image`` and the epoch count (tree sums over visits),
   then each visit's artifacts (footprint rules on its whole plane).

:func:`compare_warp_stages` builds them; its ``stage`` hook sees each stage's arrays before the
next is built on them (the benchmark persists and times them there). The final stack is
:func:`coaddx.coadd.compare_warp.assemble.compare_warp_coadd`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import xarray as xr

from coaddx.coadd.assemble import assemble
from coaddx.coadd.compare_warp.config import CompareWarpConfig
from coaddx.coadd.compare_warp.inputs import CompareWarpInputs, compare_warp_inputs
from coaddx.errors import ConfigError
from coaddx.graph import artifacts as ga
from coaddx.graph import detect as gd
from coaddx.graph.cube import (
    LAYERS,
    LazyArray,
    as_dask_cube,
    constant,
    rechunked,
    stack_visits,
    visit_slice,
)
from coaddx.graph.scale_variance import scale_variance_factor
from coaddx.kernels.detect import n_grow
from coaddx.model.masks import bitmask

__all__ = ["STAGES", "CompareWarpStages", "Stage", "compare_warp_stages"]

#: The stage names, in the order :func:`compare_warp_stages` builds them.
STAGES = ("template", "scale variance", "detection", "filtering")

#: ``stage(name, arrays) -> arrays to build on`` (e.g. ``dask.persist(*arrays)``).
Stage = Callable[[str, tuple[LazyArray, ...]], tuple[LazyArray, ...]]


@dataclass(frozen=True)
class CompareWarpStages:
    """The lazy pieces of a CompareWarp coadd, by stage (one entry per direct visit in
    ``variance_scale`` and ``flags``)."""

    config: CompareWarpConfig
    inputs: CompareWarpInputs
    template: tuple[LazyArray, LazyArray]  # image, variance in detection tiles
    template_footprints: LazyArray  # bright template sources, grown (bool, one chunk)
    variance_scale: tuple[LazyArray, ...]  # 0-d factors (NaN: no PSF-matched warp)
    flags: tuple[LazyArray, ...]  # packed detection flags (uint8) per visit
    flag_cube: LazyArray  # the flags stacked over visits
    n_image: LazyArray  # the PSF-matched n_image
    epoch_count: LazyArray
    artifacts: LazyArray  # ARTIFACT | STREAK flags over (visit, y, x)


def _unchanged(name: str, arrays: tuple[LazyArray, ...]) -> tuple[LazyArray, ...]:
    return arrays


def _template(
    inp: CompareWarpInputs, config: CompareWarpConfig, given: xr.Dataset | None
) -> tuple[LazyArray, ...]:
    """The template planes in detection tiles (``given``, else the static-sky model of the
    PSF-matched warps), and its bright footprints."""
    if given is None:
        template = assemble(inp.matched, config.template.replace(subregion_size=inp.tile))
        image, variance = (template[v].data for v in ("image", "variance"))
    else:
        image, variance = (
            as_dask_cube(given[v].expand_dims("visit"), (1, *inp.tile))[0]
            for v in ("image", "variance")
        )
    cfg = config.detect_template
    footprints = gd.template_footprints(
        image,
        variance,
        threshold=cfg.threshold_value,
        polarity=cfg.threshold_polarity,
        min_pixels=cfg.min_pixels,
        grow=n_grow(cfg.n_sigma_to_grow, inp.sigma_psf),
        isotropic=cfg.isotropic_grow,
        background_bin=cfg.temp_local_background,
    )
    return rechunked(image, inp.detect_tile), rechunked(variance, inp.detect_tile), footprints


def _variance_scale(
    inp: CompareWarpInputs, index: int | None, config: CompareWarpConfig
) -> LazyArray:
    """ScaleVariance factor (0-d) of PSF-matched warp ``index``: a task over its whole plane
    (1 when switched off, NaN without a PSF-matched warp)."""
    if index is None:
        return constant(float("nan"))
    if not config.do_scale_warp_variance:
        return constant(1.0)
    sv = config.scale_variance
    image, variance, mask = (visit_slice(inp.scale[v], index, inp.shape) for v in LAYERS)
    return scale_variance_factor(
        image,
        variance,
        mask,
        bad_bits=bitmask(inp.matched.attrs["mask_planes"], sv.mask_planes, strict=False),
        limit=float(sv.limit),
        bin_size=int(sv.bin_size),
    )


def _detect_visit(
    inp: CompareWarpInputs,
    index: int | None,
    template: tuple[LazyArray, LazyArray],
    scale: LazyArray,
    config: CompareWarpConfig,
) -> LazyArray:
    """Packed flags (uint8, 2-D, detection tiles) of one visit's difference with the template."""
    tile = inp.detect_tile
    if index is None:  # no PSF-matched warp: the whole visit is a NO_DATA span
        return gd.no_data_flags(inp.shape, tile)
    image, variance, mask = (visit_slice(inp.tiles[v], index, tile) for v in LAYERS)
    t_image, t_variance = template
    planes = inp.matched.attrs["mask_planes"]
    cfg = config.detect
    return gd.detect_tile(
        image,
        variance,
        mask,
        t_image,
        t_variance,
        scale,
        threshold=float(cfg.threshold_value),
        polarity=cfg.threshold_polarity,
        min_pixels=int(cfg.min_pixels),
        grow=n_grow(cfg.n_sigma_to_grow, inp.sigma_psf),
        isotropic=cfg.isotropic_grow,
        bad_bits=bitmask(planes, config.assemble.bad_mask_planes, strict=False),
        prefilter_bits=bitmask(planes, config.prefilter_artifacts_mask_planes, strict=False),
        edge_bit=bitmask(planes, "EDGE", strict=False),
    )


def _filtering(
    flags: tuple[LazyArray, ...],
    cube: LazyArray,
    template_footprints: LazyArray,
    inp: CompareWarpInputs,
    config: CompareWarpConfig,
) -> tuple[LazyArray, LazyArray, LazyArray]:
    """The PSF-matched n_image, the epoch count and every visit's artifacts."""
    ratio = float(config.prefilter_artifacts_ratio) if config.do_prefilter_artifacts else None
    n_image = ga.good_count(cube)
    epoch = ga.epoch_count(flags, prefilter_ratio=ratio)
    streaks = dataclasses.asdict(config.mask_streaks) if config.do_filter_morphological else None
    artifacts = ga.visit_artifacts(
        flags,
        epoch,
        n_image,
        template_footprints if config.do_preserve_contained_by_source else None,
        prefilter_ratio=ratio,
        max_num_epochs=int(config.max_num_epochs),
        low=float(config.max_fraction_epochs_low),
        high=float(config.max_fraction_epochs_high),
        spatial_threshold=float(config.spatial_threshold),
        streaks=streaks,
        streak_grow=int(config.grow_streak_fp * inp.sigma_psf),
    )
    return n_image, epoch, artifacts


def compare_warp_stages(
    direct: xr.Dataset,
    psf_matched: xr.Dataset,
    config: CompareWarpConfig | None = None,
    *,
    stage: Stage | None = None,
    template: xr.Dataset | None = None,
) -> CompareWarpStages:
    """The lazy pieces of :func:`~coaddx.coadd.compare_warp.assemble.assemble_compare_warp`,
    stage by stage (:data:`STAGES`).

    ``stage(name, arrays)``, when given, sees the arrays of each stage in order and returns the
    ones the next stages are built on (``lambda name, a: dask.persist(*a)`` computes the work
    stage by stage). ``template``, when given (a coadd on the same grid with ``image`` and
    ``variance``), replaces the static-sky model: DcrAssembleCoadd finds its artifacts with
    the input coadd and the direct warps (algorithms.md 4.5). Other arguments as
    :func:`~coaddx.coadd.compare_warp.assemble.assemble_compare_warp`.
    """
    config = config if config is not None else CompareWarpConfig()
    if not isinstance(config, CompareWarpConfig):
        raise ConfigError(f"config must be a CompareWarpConfig, got {type(config).__name__}")
    stage = stage or _unchanged
    inp = compare_warp_inputs(direct, psf_matched, config)
    *planes, footprints = stage("template", _template(inp, config, template))
    index = [inp.index(v) for v in direct["visit"].values]
    scales = stage("scale variance", tuple(_variance_scale(inp, i, config) for i in index))
    flags = stage(
        "detection",
        tuple(
            _detect_visit(inp, i, (planes[0], planes[1]), s, config)
            for i, s in zip(index, scales, strict=True)
        ),
    )
    cube = stack_visits(flags)
    n_image, epoch, artifacts = stage("filtering", _filtering(flags, cube, footprints, inp, config))
    return CompareWarpStages(
        config=config,
        inputs=inp,
        template=(planes[0], planes[1]),
        template_footprints=footprints,
        variance_scale=tuple(scales),
        flags=tuple(flags),
        flag_cube=cube,
        n_image=n_image,
        epoch_count=epoch,
        artifacts=artifacts,
    )
