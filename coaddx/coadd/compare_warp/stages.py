"""CompareWarp's stages, in order, as named lazy pieces (algorithms.md 3.2-3.4):

1. ``"template"``: the static-sky model (:func:`coaddx.assemble` of the PSF-matched warps),
   and its bright footprints (the containment veto);
2. ``"detection"``: one task per visit reads its whole PSF-matched plane, finds its
   ScaleVariance factor, differences it with the template and detects it in both signs on
   haloed tiles, writes its packed flags and its factor to the run's scratch store
   (:class:`~coaddx.io.zarr.scratch_planes.ScratchPlanes`) and returns only its share of the
   sums over visits;
3. ``"filtering"``: the sums (epoch count, PSF-matched ``n_image``, EDGE spans; a tree over
   visits), then one task per visit finds its artifacts (footprint rules on its whole plane,
   read back) and writes over its flags the byte the final stack needs.

No task holds every visit's plane: the final stack and the per-visit masks read those bytes
back per subregion. :func:`compare_warp_stages` builds the stages; its ``stage`` hook sees
each stage's arrays before the next is built on them (the benchmark persists and times them
there). The final stack is :func:`coaddx.coadd.compare_warp.assemble.compare_warp_coadd`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import xarray as xr

from coaddx.coadd.assemble import assemble
from coaddx.coadd.compare_warp.config import CompareWarpConfig
from coaddx.coadd.compare_warp.inputs import CompareWarpInputs, compare_warp_inputs
from coaddx.errors import ConfigError
from coaddx.graph import artifacts as ga
from coaddx.graph import detect as gd
from coaddx.graph.cube import LAYERS, LazyArray, as_dask_cube, rechunked
from coaddx.io.zarr.scratch_planes import ScratchPlanes
from coaddx.kernels.artifacts import ARTIFACT, STREAK
from coaddx.kernels.detect import EDGE_SPAN, NAN_SPAN, n_grow
from coaddx.model.masks import bitmask
from coaddx.settings import scratch_dir

__all__ = ["STAGES", "CompareWarpStages", "Stage", "compare_warp_stages"]

#: The stage names, in the order :func:`compare_warp_stages` builds them.
STAGES = ("template", "detection", "filtering")

#: ``stage(name, arrays) -> arrays to build on`` (e.g. ``dask.persist(*arrays)``).
Stage = Callable[[str, tuple[Any, ...]], tuple[Any, ...]]


@dataclass(frozen=True)
class CompareWarpStages:
    """The lazy pieces of a CompareWarp coadd, by stage (one entry per direct visit in
    ``counts`` and ``variance_scale``); the per-visit planes are in ``scratch``, readable
    once ``done`` is computed."""

    config: CompareWarpConfig
    inputs: CompareWarpInputs
    template: tuple[LazyArray, LazyArray]  # image, variance (whole plane)
    template_footprints: LazyArray  # bright template sources, grown (bool, one chunk)
    scratch: ScratchPlanes  # per-visit flags, then the final spans (final_spans bytes)
    counts: tuple[Any, ...]  # delayed (3, y, x) uint8 per visit (kernels.artifacts.visit_counts)
    sums: Any  # delayed (3, y, x) int32: epoch count, n_image, visits with an EDGE span
    done: LazyArray  # 0-d: every visit's final spans are in ``scratch``
    variance_scale: LazyArray  # (visit,) factors (NaN: no PSF-matched warp)
    n_image: LazyArray  # the PSF-matched n_image
    epoch_count: LazyArray
    edge: LazyArray  # some visit has an EDGE span (bool)

    @property
    def flag_cube(self) -> LazyArray:
        """The NO_DATA and EDGE spans (:data:`~coaddx.kernels.detect.NAN_SPAN`,
        :data:`~coaddx.kernels.detect.EDGE_SPAN`) over ``(visit, y, x)``, subregion chunks."""
        chunks = (self.scratch.shape[0], *self.inputs.tile)
        return ga.read_spans(self.scratch, self.done, chunks, bits=NAN_SPAN | EDGE_SPAN)

    @property
    def artifacts(self) -> LazyArray:
        """ARTIFACT | STREAK flags over ``(visit, y, x)``, subregion chunks."""
        chunks = (self.scratch.shape[0], *self.inputs.tile)
        return ga.read_spans(self.scratch, self.done, chunks, shift=6, bits=ARTIFACT | STREAK)


def _unchanged(name: str, arrays: tuple[Any, ...]) -> tuple[Any, ...]:
    return arrays


def _template(
    inp: CompareWarpInputs, config: CompareWarpConfig, given: xr.Dataset | None
) -> tuple[LazyArray, ...]:
    """The template planes, each one chunk (``given``, else the static-sky model of the
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
    return rechunked(image, -1), rechunked(variance, -1), footprints


def _detect_visit(
    inp: CompareWarpInputs,
    scratch: ScratchPlanes,
    created: Any,
    slot: int,
    index: int | None,
    template: tuple[LazyArray, LazyArray],
    config: CompareWarpConfig,
    planes_of: dict[str, list[Any]],
) -> LazyArray:
    """Direct visit ``slot``'s task (:func:`coaddx.graph.artifacts.visit_flags`): its
    ScaleVariance factor and packed flags into ``scratch``, its counts out."""
    planes = inp.matched.attrs["mask_planes"]
    ratio = float(config.prefilter_artifacts_ratio) if config.do_prefilter_artifacts else None
    if index is None:  # no PSF-matched warp: the whole visit is a NO_DATA span
        return ga.visit_flags(
            scratch,
            created,
            slot,
            None,
            template,
            scale=None,
            tile=inp.detect_tile,
            prefilter_ratio=ratio,
        )
    sv = config.scale_variance
    scale = (
        {
            "bad_bits": bitmask(planes, sv.mask_planes, strict=False),
            "limit": float(sv.limit),
            "bin_size": int(sv.bin_size),
        }
        if config.do_scale_warp_variance
        else None
    )
    image, variance, mask = (planes_of[v][index] for v in LAYERS)
    cfg = config.detect
    return ga.visit_flags(
        scratch,
        created,
        slot,
        (image, variance, mask),
        template,
        scale=scale,
        tile=inp.detect_tile,
        prefilter_ratio=ratio,
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
    sums: Any,
    template_footprints: LazyArray,
    scratch: ScratchPlanes,
    index: list[int | None],
    inp: CompareWarpInputs,
    config: CompareWarpConfig,
) -> LazyArray:
    """Every visit's artifacts against the sums, written to ``scratch``: the 0-d ``done``."""
    ratio = float(config.prefilter_artifacts_ratio) if config.do_prefilter_artifacts else None
    streaks = dataclasses.asdict(config.mask_streaks) if config.do_filter_morphological else None
    footprints = template_footprints if config.do_preserve_contained_by_source else None
    tokens = [
        ga.write_artifacts(
            scratch,
            slot,
            sums,
            footprints,
            prefilter_ratio=ratio,
            max_num_epochs=int(config.max_num_epochs),
            low=float(config.max_fraction_epochs_low),
            high=float(config.max_fraction_epochs_high),
            spatial_threshold=float(config.spatial_threshold),
            streaks=streaks,
            streak_grow=int(config.grow_streak_fp * inp.sigma_psf),
        )
        for slot, i in enumerate(index)
        if i is not None  # a visit without PSF-matched warp has no artifacts
    ]
    return ga.all_written(tokens)


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
    the input coadd and the direct warps (algorithms.md 4.5). The per-visit planes go to a
    scratch store in ``coaddx.scratch-dir`` (default ``/dev/shm`` where it has room, else the
    system's temporary folder), removed when the result is dropped. Other arguments as
    :func:`~coaddx.coadd.compare_warp.assemble.assemble_compare_warp`.
    """
    config = config if config is not None else CompareWarpConfig()
    if not isinstance(config, CompareWarpConfig):
        raise ConfigError(f"config must be a CompareWarpConfig, got {type(config).__name__}")
    stage = stage or _unchanged
    inp = compare_warp_inputs(direct, psf_matched, config)
    *planes, footprints = stage("template", _template(inp, config, template))
    t_planes = (planes[0], planes[1])
    index = [inp.index(v) for v in direct["visit"].values]
    scratch = ScratchPlanes(
        (len(index), *inp.shape), inp.tile, scratch_dir(), names=ga.SCRATCH_ARRAYS
    )
    created = ga.scratch_created(scratch)
    planes_of = {v: ga.visit_planes(inp.scale[v], inp.shape) for v in LAYERS}
    counts = stage(
        "detection",
        tuple(
            _detect_visit(inp, scratch, created, slot, i, t_planes, config, planes_of)
            for slot, i in enumerate(index)
        ),
    )
    sums = ga.sum_counts(counts)
    sums, done = stage(
        "filtering", (sums, _filtering(sums, footprints, scratch, index, inp, config))
    )
    epoch, n_image, edge = ga.sum_planes(sums, inp.shape)
    return CompareWarpStages(
        config=config,
        inputs=inp,
        template=t_planes,
        template_footprints=footprints,
        scratch=scratch,
        counts=tuple(counts),
        sums=sums,
        done=done,
        variance_scale=ga.read_values(scratch, done),
        n_image=n_image,
        epoch_count=epoch,
        edge=edge > 0,
    )
