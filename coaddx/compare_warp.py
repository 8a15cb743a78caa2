"""CompareWarpAssembleCoadd: artifact rejection against a static-sky template (algorithms.md 3).

A PSF-matched MEANCLIP template is built with :func:`coaddx.assemble`; every PSF-matched warp
(variance rescaled by ScaleVariance) is differenced with it and detected in both signs; the
footprints are counted into the epoch-count image, filtered by the temporal/spatial rule and
the containment veto, and the surviving ones are masked CLIPPED in that visit's direct warp,
which is then stacked with a weighted MEAN. Everything is one lazy dask graph.

Layout of the work (see docs/design-notes.md, "CompareWarp: tiles with halos, then one visit
plane per labelling task"): difference and detection run on ``S x S`` tiles of one visit with a
halo of ``grow + min_pixels - 1`` pixels (exact); the footprint rules label one visit's whole
plane of packed one-byte flags, so footprints that cross tiles are whole whatever ``S`` is; the
epoch count and the PSF-matched ``n_image`` are tree sums over visits; the final stack reads
``(all visits, S, S)`` subregions as AssembleCoadd does. No task holds every visit of the patch.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr

from . import graph
from .assemble import (  # assemble's building blocks: the final stack takes lazy weights
    as_dask_cube,
    assemble,
    check_variance_plane,
    coadd_dataset,
    finish_planes,
    stack_bits,
    visit_weights,
)
from .config import AssembleConfig
from .errors import CoaddxError, ConfigError, InputError, SchemaError
from .io.zarr import open_warps
from .kernels import detect as kd
from .masks import bitmask, merge_mask_planes
from .plan import StackPlan, plan_stack
from .runtime import memory_per_task
from .validate import validate_warps

__all__ = [
    "LSST_COMPARE_WARP_NAMES",
    "CompareWarpConfig",
    "DetectionConfig",
    "MaskStreaksConfig",
    "ScaleVarianceConfig",
    "assemble_compare_warp",
]

log = logging.getLogger("coaddx.compare_warp")


def _check(cond: bool, cls: str, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{cls}.{name}: {msg}")


def _number(
    value: Any, cls: str, name: str, lo: float, hi: float = float("inf"), integer: bool = False
) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and lo <= value <= hi
    _check(
        ok,
        cls,
        name,
        f"must be {'an integer' if integer else 'a number'} in [{lo}, {hi}], got {value!r}",
    )


def _planes(value: Any, cls: str, name: str) -> tuple[str, ...]:
    out = (value,) if isinstance(value, str) else tuple(value)
    _check(
        all(isinstance(p, str) and p for p in out), cls, name, f"expects plane names, got {value!r}"
    )
    return out


@dataclass(frozen=True, kw_only=True)
class DetectionConfig:
    """SourceDetectionTask as CompareWarp uses it (algorithms.md 1.7), no smoothing.

    Parameters
    ----------
    threshold_value : float
        Pixels with ``±value >= threshold_value * sqrt(variance)`` are detected.
    threshold_type : {"pixel_stdev"}
        The only type CompareWarp uses.
    threshold_polarity : {"positive", "negative", "both"}
    min_pixels : int
        Footprints with fewer pixels (8-connected, before growth) are dropped.
    n_sigma_to_grow : float
        Footprints grow by ``int(n_sigma_to_grow * sigma_psf + 0.5)`` pixels; touching ones
        merge.
    isotropic_grow : bool
        Grow with a circle (True) or a square.
    temp_local_background : int or None
        Bin size of a background subtracted before thresholding (doTempLocalBackground with
        tempLocalBackground.binSize); None: none.
    re_estimate_background : bool
        LSST's reEstimateBackground; it refits the exposure's background after detection and
        changes no footprint, so it is recorded for parity only.
    """

    threshold_value: float = 5.0
    threshold_type: Literal["pixel_stdev"] = "pixel_stdev"
    threshold_polarity: Literal["positive", "negative", "both"] = "positive"
    min_pixels: int = 1
    n_sigma_to_grow: float = 2.4
    isotropic_grow: bool = True
    temp_local_background: int | None = None
    re_estimate_background: bool = False

    def __post_init__(self) -> None:
        cls = "DetectionConfig"
        _number(self.threshold_value, cls, "threshold_value", 1e-6)
        _check(
            self.threshold_type == "pixel_stdev",
            cls,
            "threshold_type",
            f"only 'pixel_stdev' is supported, got {self.threshold_type!r}",
        )
        _check(
            self.threshold_polarity in ("positive", "negative", "both"),
            cls,
            "threshold_polarity",
            f"must be positive, negative or both, got {self.threshold_polarity!r}",
        )
        _number(self.min_pixels, cls, "min_pixels", 1, 1_000_000, integer=True)
        _number(self.n_sigma_to_grow, cls, "n_sigma_to_grow", 0, 100)
        if self.temp_local_background is not None:
            _number(
                self.temp_local_background, cls, "temp_local_background", 4, 1 << 16, integer=True
            )


@dataclass(frozen=True, kw_only=True)
class ScaleVarianceConfig:
    """ScaleVarianceTask (algorithms.md 1.5): the empirical variance rescaling of each warp."""

    mask_planes: tuple[str, ...] = (
        "DETECTED",
        "DETECTED_NEGATIVE",
        "BAD",
        "SAT",
        "NO_DATA",
        "INTRP",
    )
    limit: float = 10.0
    bin_size: int = 32

    def __post_init__(self) -> None:
        cls = "ScaleVarianceConfig"
        object.__setattr__(self, "mask_planes", _planes(self.mask_planes, cls, "mask_planes"))
        _number(self.limit, cls, "limit", 1.0)
        _number(self.bin_size, cls, "bin_size", 4, 1 << 16, integer=True)


@dataclass(frozen=True, kw_only=True)
class MaskStreaksConfig:
    """The straight-line finder used by ``do_filter_morphological`` (scikit-image's Hough
    transform on the positive detections of a difference; see
    :func:`coaddx.kernels.detect.streak_mask`)."""

    min_length: int = 100
    theta_step: float = 0.25
    max_width: int = 40
    max_streaks: int = 10

    def __post_init__(self) -> None:
        cls = "MaskStreaksConfig"
        _number(self.min_length, cls, "min_length", 10, 1 << 20, integer=True)
        _number(self.theta_step, cls, "theta_step", 0.01, 10.0)
        _number(self.max_width, cls, "max_width", 1, 1000, integer=True)
        _number(self.max_streaks, cls, "max_streaks", 1, 1000, integer=True)


def _default_assemble() -> AssembleConfig:
    return AssembleConfig(
        statistic="mean",
        bad_mask_planes=("NO_DATA", "BAD", "SAT"),
        remove_mask_planes=("NOT_DEBLENDED", "EDGE"),
    )


def _default_template() -> AssembleConfig:
    return AssembleConfig(
        statistic="meanclip",
        sigma_clip=2.5,
        clip_iter=3,
        bad_mask_planes=("NO_DATA",),
        calc_error_from_input_variance=True,
    )


@dataclass(frozen=True, kw_only=True)
class CompareWarpConfig:
    """CompareWarpAssembleCoaddConfig with LSST's defaults (algorithms.md 3.1).

    Parameters
    ----------
    assemble : AssembleConfig
        The final stack of the direct warps (MEAN; bad planes NO_DATA, BAD, SAT, to which
        CLIPPED is added; EDGE and NOT_DEBLENDED removed).
    template : AssembleConfig
        The static-sky model from the PSF-matched warps (2.5 sigma, 3-iteration MEANCLIP over
        NO_DATA only, NO_DATA interpolated).
    detect, detect_template : DetectionConfig
        Detection on the differences (7.5 sigma, both signs, >= 4 px, grown 0.4 sigma_psf) and
        of bright template sources for the containment veto (300 sigma, grown 2.4 sigma_psf).
    detect_template_iter_multiplier, max_detect_template_iter
        LSST's retry of template detection on TooManyMaskedPixelsError; coaddx's detection has
        no such failure, so these are validated and recorded only.
    max_num_epochs, max_fraction_epochs_low, max_fraction_epochs_high, spatial_threshold
        The temporal/spatial filter: a footprint is an artifact when more than
        ``spatial_threshold`` of its pixels have ``0 < epoch_count <= int(min(low N̄,
        max_num_epochs + high N̄))`` (N̄: its mean PSF-matched n_image).
    do_scale_warp_variance, scale_variance
        Rescale each PSF-matched warp's variance empirically before detection.
    do_preserve_contained_by_source
        Keep footprints lying wholly inside a bright template footprint.
    do_prefilter_artifacts, prefilter_artifacts_mask_planes, prefilter_artifacts_ratio
        Drop footprints whose fraction of pixels without these planes is not above the ratio.
    do_filter_morphological, streak_mask_name, grow_streak_fp, mask_streaks
        Mask straight streaks found by a Hough transform (set ``streak_mask_name`` and
        CLIPPED), grown by ``int(grow_streak_fp * sigma_psf)``.
    subregion_size
        ``(rows, columns)`` of the tiles of every stage (template, detection, final stack);
        None: planned from ``coaddx.memory-per-task``. Results do not depend on it.
    """

    assemble: AssembleConfig = field(default_factory=_default_assemble)
    template: AssembleConfig = field(default_factory=_default_template)
    detect: DetectionConfig = field(
        default_factory=lambda: DetectionConfig(
            threshold_value=7.5, threshold_polarity="both", min_pixels=4, n_sigma_to_grow=0.4
        )
    )
    detect_template: DetectionConfig = field(
        default_factory=lambda: DetectionConfig(
            threshold_value=300.0,
            n_sigma_to_grow=2.4,
            temp_local_background=64,
            re_estimate_background=True,
        )
    )
    detect_template_iter_multiplier: float = 1.25
    max_detect_template_iter: int = 10
    max_num_epochs: int = 2
    max_fraction_epochs_low: float = 0.4
    max_fraction_epochs_high: float = 0.03
    spatial_threshold: float = 0.5
    do_scale_warp_variance: bool = True
    scale_variance: ScaleVarianceConfig = field(default_factory=ScaleVarianceConfig)
    do_preserve_contained_by_source: bool = True
    do_prefilter_artifacts: bool = True
    prefilter_artifacts_mask_planes: tuple[str, ...] = ("NO_DATA", "BAD", "SUSPECT")
    prefilter_artifacts_ratio: float = 0.05
    do_filter_morphological: bool = False
    streak_mask_name: str = "STREAK"
    grow_streak_fp: float = 5.0
    mask_streaks: MaskStreaksConfig = field(default_factory=MaskStreaksConfig)
    subregion_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        cls = "CompareWarpConfig"
        for name, kind in (
            ("assemble", AssembleConfig),
            ("template", AssembleConfig),
            ("detect", DetectionConfig),
            ("detect_template", DetectionConfig),
            ("scale_variance", ScaleVarianceConfig),
            ("mask_streaks", MaskStreaksConfig),
        ):
            _check(
                isinstance(getattr(self, name), kind),
                cls,
                name,
                f"must be a {kind.__name__}, got {getattr(self, name)!r}",
            )
        _check(
            "NO_DATA" in self.template.bad_mask_planes,
            cls,
            "template",
            "bad_mask_planes must include NO_DATA",
        )
        _number(self.detect_template_iter_multiplier, cls, "detect_template_iter_multiplier", 1.0)
        _number(
            self.max_detect_template_iter, cls, "max_detect_template_iter", 1, 1000, integer=True
        )
        _number(self.max_num_epochs, cls, "max_num_epochs", 0, 1 << 20, integer=True)
        for name in (
            "max_fraction_epochs_low",
            "max_fraction_epochs_high",
            "spatial_threshold",
            "prefilter_artifacts_ratio",
        ):
            _number(getattr(self, name), cls, name, 0.0, 1.0)
        _number(self.grow_streak_fp, cls, "grow_streak_fp", 0.0, 1000.0)
        for name in (
            "do_scale_warp_variance",
            "do_preserve_contained_by_source",
            "do_prefilter_artifacts",
            "do_filter_morphological",
        ):
            _check(
                isinstance(getattr(self, name), bool),
                cls,
                name,
                f"must be True or False, got {getattr(self, name)!r}",
            )
        object.__setattr__(
            self,
            "prefilter_artifacts_mask_planes",
            _planes(self.prefilter_artifacts_mask_planes, cls, "prefilter_artifacts_mask_planes"),
        )
        _check(
            isinstance(self.streak_mask_name, str) and bool(self.streak_mask_name),
            cls,
            "streak_mask_name",
            f"must be a plane name, got {self.streak_mask_name!r}",
        )
        if self.subregion_size is not None:  # validated (and normalised) the AssembleConfig way
            size = AssembleConfig(subregion_size=self.subregion_size).subregion_size
            object.__setattr__(self, "subregion_size", size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> CompareWarpConfig:
        return dataclasses.replace(self, **changes)


#: LSST CompareWarpAssembleCoaddConfig field -> coaddx CompareWarpConfig field.
LSST_COMPARE_WARP_NAMES: dict[str, str] = {
    "assembleStaticSkyModel": "template",
    "detect": "detect",
    "detectTemplate": "detect_template",
    "detectTemplateIterMultiplier": "detect_template_iter_multiplier",
    "maxDetectTemplateIter": "max_detect_template_iter",
    "maxNumEpochs": "max_num_epochs",
    "maxFractionEpochsLow": "max_fraction_epochs_low",
    "maxFractionEpochsHigh": "max_fraction_epochs_high",
    "spatialThreshold": "spatial_threshold",
    "doScaleWarpVariance": "do_scale_warp_variance",
    "scaleWarpVariance": "scale_variance",
    "doPreserveContainedBySource": "do_preserve_contained_by_source",
    "doPrefilterArtifacts": "do_prefilter_artifacts",
    "prefilterArtifactsMaskPlanes": "prefilter_artifacts_mask_planes",
    "prefilterArtifactsRatio": "prefilter_artifacts_ratio",
    "doFilterMorphological": "do_filter_morphological",
    "streakMaskName": "streak_mask_name",
    "growStreakFp": "grow_streak_fp",
    "maskStreaks": "mask_streaks",
    "subregionSize": "subregion_size",
}


# -- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    """Normalised inputs: the direct warps, the PSF-matched warps of the direct visits (in
    their order, for the template), per-visit planes of the PSF-matched cubes for the whole-
    visit tasks (``scale``) and the tiled ones (``tiles``), the plan and the PSF size."""

    direct: xr.Dataset
    matched: xr.Dataset
    scale: dict[str, da.Array]
    tiles: dict[str, da.Array]
    position: dict[int, int]
    plan: StackPlan
    detect_tile: tuple[int, int]
    sigma_psf: float

    @property
    def tile(self) -> tuple[int, int]:
        return self.plan.subregion


#: Planned bytes per pixel of a detection task (one visit): PSF-matched planes, template
#: planes, their haloed copies, the scaled variance, flags, footprint masks and labels.
DETECT_BYTES_PER_PIXEL = 64


def _detection_tile(
    plan: StackPlan, shape: tuple[int, int], explicit: bool, budget: int
) -> tuple[int, int]:
    """Tiles of the per-visit detection: the stacking subregion when the user fixed it, else
    the largest multiple of it whose single-visit working set fits the per-task budget (a task
    holds one visit, not all of them, so the tiles can be much larger: fewer tasks and halos)."""
    if explicit:
        return plan.subregion
    side = int((budget / DETECT_BYTES_PER_PIXEL) ** 0.5)
    return tuple(min(n, max(s, side // s * s)) for s, n in zip(plan.subregion, shape, strict=True))


def _psf_sigma(matched: xr.Dataset) -> float:
    """sigma_psf of the PSF-matched warps: adaptive moments of the model PSF (``model_psf_fwhm``
    attribute), else a Gaussian of the widest per-visit ``psf_fwhm``."""
    from .psfmatch import model_psf

    fwhm = matched.attrs.get("model_psf_fwhm")
    if fwhm is not None and np.isfinite(float(fwhm)) and float(fwhm) > 0:
        f = float(fwhm)
        return kd.adaptive_sigma(model_psf(f, 2 * int(4 * f) + 1))
    if "psf_fwhm" in matched and np.isfinite(matched["psf_fwhm"].values).any():
        return float(np.nanmax(matched["psf_fwhm"].values)) / 2.3548200450309493
    raise InputError(
        "psf_matched: no 'model_psf_fwhm' attribute and no per-visit 'psf_fwhm' "
        "variable, so the PSF size that footprints grow by is unknown"
    )


def _same_grid(direct: xr.Dataset, matched: xr.Dataset) -> None:
    shapes = [tuple(ds.sizes[d] for d in ("y", "x")) for ds in (direct, matched)]
    if shapes[0] != shapes[1]:
        raise SchemaError(
            f"direct warps are {shapes[0][0]} x {shapes[0][1]} but psf_matched "
            f"warps are {shapes[1][0]} x {shapes[1][1]}; they must share a grid"
        )
    for d in ("y", "x"):
        if (
            d in direct.coords
            and d in matched.coords
            and not np.array_equal(direct[d].values, matched[d].values)
        ):
            raise SchemaError(f"direct and psf_matched warps have different {d} coordinates")


def _store_view(ds: xr.Dataset, chunks: dict[str, int]) -> xr.Dataset | None:
    """``ds`` opened again from its warp store with other ``chunks`` when ``ds`` is an untouched
    :func:`coaddx.open_warps` view, else None. Each consumer then reads its own chunks, so a
    chunk read for the template is not held in memory until the detection of every visit."""
    path, warp_type = ds.attrs.get("store"), ds.attrs.get("warp_type")
    data = ds["image"].data
    if not path or warp_type not in ("direct", "psf_matched") or not isinstance(data, da.Array):
        return None
    size = dict(zip(("visit", "y", "x"), data.chunksize, strict=True))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            same = open_warps(path, warp_type, chunks=size)
            if any(same[v].data.name != ds[v].data.name for v in ("image", "variance", "mask")):
                return None  # selected or changed since it was opened
            return open_warps(path, warp_type, chunks=chunks)
    except CoaddxError:
        return None


def _planes_for(ds: xr.Dataset, chunks: tuple[int, int, int]) -> dict[str, da.Array]:
    view = _store_view(ds, dict(zip(("visit", "y", "x"), chunks, strict=True)))
    src = view if view is not None else ds
    return {
        v: src[v].data if isinstance(src[v].data, da.Array) else as_dask_cube(src[v], chunks)
        for v in ("image", "variance", "mask")
    }


def _inputs(direct: xr.Dataset, psf_matched: xr.Dataset, config: CompareWarpConfig) -> _Inputs:
    validate_warps(direct, where="assemble_compare_warp: direct")
    validate_warps(psf_matched, where="assemble_compare_warp: psf_matched")
    _same_grid(direct, psf_matched)
    visits = [int(v) for v in direct["visit"].values]
    position = {int(v): i for i, v in enumerate(psf_matched["visit"].values)}
    present = tuple(v in position for v in visits)
    if not any(present):
        raise InputError(f"no PSF-matched warp for any direct visit {visits}")
    n, ny, nx = (direct.sizes[d] for d in ("visit", "y", "x"))
    data = direct["image"].data
    storage = (
        int(data.chunksize[1]) if isinstance(data, da.Array) and data.chunks[0] == (n,) else None
    )
    plan = plan_stack(
        n,
        (ny, nx),
        budget_bytes=memory_per_task(),
        storage_chunk=storage,
        subregion=config.subregion_size,
    )
    matched = psf_matched.sel(visit=[v for v, p in zip(visits, present, strict=True) if p])
    tile = _detection_tile(plan, (ny, nx), config.subregion_size is not None, memory_per_task())
    return _Inputs(
        direct,
        matched,
        _planes_for(psf_matched, (1, ny, nx)),
        _planes_for(psf_matched, (1, *tile)),
        position,
        plan,
        tile,
        _psf_sigma(psf_matched),
    )


# -- graph pieces ---------------------------------------------------------------------------------


def _plane(cube: da.Array, index: int, tile: tuple[int, int]) -> da.Array:
    """One visit's plane of a warp cube as a 2-D dask array in ``tile`` chunks (slicing a
    store-backed array reads only that visit)."""
    return cube[index].rechunk(tile)


def _template_footprints(
    image: da.Array, variance: da.Array, cfg: DetectionConfig, sigma_psf: float
) -> da.Array:
    """Bright positive template footprints, grown, as one boolean plane."""
    return da.map_blocks(
        _template_footprint_plane,
        image.rechunk(-1),
        variance.rechunk(-1),
        cfg=cfg,
        grow=kd.n_grow(cfg.n_sigma_to_grow, sigma_psf),
        dtype=bool,
    )


def _template_footprint_plane(
    image: np.ndarray, variance: np.ndarray, *, cfg: DetectionConfig, grow: int
) -> np.ndarray:
    img = image.astype(np.float64)
    if cfg.temp_local_background is not None:
        img = img - kd.background_model(img, np.isfinite(img), cfg.temp_local_background)
    signs = (
        ("positive", "negative") if cfg.threshold_polarity == "both" else (cfg.threshold_polarity,)
    )
    out = np.zeros(img.shape, bool)
    for s in signs:
        out |= kd.footprint_mask(
            img, variance, threshold=cfg.threshold_value, polarity=s, min_pixels=cfg.min_pixels
        )
    return kd.dilate(out, grow, cfg.isotropic_grow)


def _scale_plane(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    *,
    bad_bits: int,
    limit: float,
    bin_size: int,
) -> np.ndarray:
    """ScaleVariance of one visit; a failure is logged and ignored (factor 1), as in LSST."""
    try:
        factor = kd.scale_variance_factor(
            image, variance, mask, bad_bits=bad_bits, limit=limit, bin_size=bin_size
        )
    except kd.ExceedsMaxVarianceScaleError as exc:
        log.warning("ScaleVariance failed (%s); the variance is not rescaled", exc)
        factor = 1.0
    return np.asarray(factor, dtype=np.float64)


def _variance_scale(inp: _Inputs, index: int, config: CompareWarpConfig) -> da.Array:
    """ScaleVariance factor (0-d) of PSF-matched warp ``index``: a task over its whole plane."""
    if not config.do_scale_warp_variance:
        return da.from_array(np.asarray(1.0))
    m = inp.matched
    shape = tuple(m.sizes[d] for d in ("y", "x"))
    planes = [_plane(inp.scale[v], index, shape) for v in ("image", "variance", "mask")]
    sv = config.scale_variance
    return da.map_blocks(
        _scale_plane,
        *planes,
        dtype=np.float64,
        drop_axis=[0, 1],
        chunks=(),
        bad_bits=bitmask(m.attrs["mask_planes"], sv.mask_planes, strict=False),
        limit=float(sv.limit),
        bin_size=int(sv.bin_size),
    )


def _detect_visit(
    inp: _Inputs,
    index: int | None,
    template: tuple[da.Array, da.Array],
    scale: da.Array,
    config: CompareWarpConfig,
) -> da.Array:
    """Packed flags (uint8, 2-D, tile chunks) of one visit's difference with the template."""
    tile, m = inp.detect_tile, inp.matched
    shape = tuple(m.sizes[d] for d in ("y", "x"))
    planes = m.attrs["mask_planes"]
    if index is None:  # no PSF-matched warp: the whole visit is a NO_DATA span
        return da.full(shape, kd.NAN_SPAN, dtype=np.uint8, chunks=tile)
    image, variance, mask = (
        _plane(inp.tiles[v], index, tile) for v in ("image", "variance", "mask")
    )
    cfg = config.detect
    grow = kd.n_grow(cfg.n_sigma_to_grow, inp.sigma_psf)
    return da.map_overlap(
        kd.detect_tile,
        image,
        variance * scale.astype(np.float32),
        mask,
        *template,
        depth=grow + int(cfg.min_pixels) - 1,
        boundary="none",
        dtype=np.uint8,
        threshold=float(cfg.threshold_value),
        polarity=cfg.threshold_polarity,
        min_pixels=int(cfg.min_pixels),
        grow=grow,
        isotropic=cfg.isotropic_grow,
        bad_bits=bitmask(planes, config.assemble.bad_mask_planes, strict=False),
        prefilter_bits=bitmask(planes, config.prefilter_artifacts_mask_planes, strict=False),
        edge_bit=bitmask(planes, "EDGE", strict=False),
    )


def _prefilter_ratio(config: CompareWarpConfig) -> float | None:
    return float(config.prefilter_artifacts_ratio) if config.do_prefilter_artifacts else None


def _epoch_count(packed: list[da.Array], config: CompareWarpConfig) -> da.Array:
    """Sum over visits of each visit's kept candidates (a tree reduction of whole planes)."""
    kept = [
        da.map_blocks(
            kd.kept_candidates, p.rechunk(-1), prefilter_ratio=_prefilter_ratio(config), dtype=bool
        )
        for p in packed
    ]
    return da.stack(kept).sum(axis=0, dtype=np.int32, split_every=4)


def _artifacts(
    packed: list[da.Array],
    epoch: da.Array,
    n_image: da.Array,
    template_fp: da.Array,
    inp: _Inputs,
    config: CompareWarpConfig,
) -> da.Array:
    """Per-visit artifact flags (:data:`kd.ARTIFACT`, :data:`kd.STREAK`), (visit, y, x) uint8
    with one whole plane per chunk."""
    streaks = dataclasses.asdict(config.mask_streaks) if config.do_filter_morphological else None
    kwargs = {
        "prefilter_ratio": _prefilter_ratio(config),
        "max_num_epochs": int(config.max_num_epochs),
        "low": float(config.max_fraction_epochs_low),
        "high": float(config.max_fraction_epochs_high),
        "spatial_threshold": float(config.spatial_threshold),
        "streaks": streaks,
        "streak_grow": int(config.grow_streak_fp * inp.sigma_psf),
    }
    veto = template_fp if config.do_preserve_contained_by_source else None
    planes = [
        da.map_blocks(
            kd.visit_artifacts,
            p.rechunk(-1),
            epoch,
            n_image.rechunk(-1),
            veto,
            dtype=np.uint8,
            **kwargs,
        )
        for p in packed
    ]
    return da.stack(planes)


def _apply_alt_masks(
    mask: np.ndarray,
    packed: np.ndarray,
    art: np.ndarray,
    *,
    clear: int,
    no_data: int,
    clipped: int,
    edge: int,
    streak: int,
) -> np.ndarray:
    """applyAltMaskPlanes (algorithms.md 3.5): clear the bad-pixel bits inside the NO_DATA
    spans, then set NO_DATA, CLIPPED (artifacts), STREAK and EDGE on their spans."""
    nan = (packed & kd.NAN_SPAN) != 0
    out = np.where(nan, mask & np.int32(~clear), mask).astype(np.int32)
    for cond, bit in (
        (nan, no_data),
        ((art & kd.ARTIFACT) != 0, clipped),
        ((art & kd.STREAK) != 0, streak),
        ((packed & kd.EDGE_SPAN) != 0, edge),
    ):
        out |= np.where(cond, np.int32(bit), np.int32(0))
    return out


def _final_coadd(
    inp: _Inputs, packed: da.Array, art: da.Array, config: CompareWarpConfig
) -> tuple[dict[str, da.Array], Any, Any, AssembleConfig]:
    """Weighted MEAN of the direct warps with the alternative masks (CLIPPED rejected), then
    SENSOR_EDGE | INEXACT_PSF wherever some visit's PSF-matched warp has EDGE."""
    direct = inp.direct
    n = direct.sizes["visit"]
    chunks = (n, *inp.tile)
    planes_in = merge_mask_planes(direct.attrs["mask_planes"], (config.streak_mask_name,))
    base = config.assemble.replace(subregion_size=inp.tile)
    cfg = base.replace(bad_mask_planes=tuple(dict.fromkeys((*base.bad_mask_planes, "CLIPPED"))))
    bits = stack_bits(planes_in, cfg)
    check_variance_plane(direct, bitmask(bits.planes, base.bad_mask_planes, strict=False))
    p = bits.planes
    image, variance, mask = (as_dask_cube(direct[v], chunks) for v in ("image", "variance", "mask"))
    mask = da.map_blocks(
        _apply_alt_masks,
        mask,
        packed.rechunk(chunks),
        art.rechunk(chunks),
        dtype=np.int32,
        clear=bitmask(p, base.bad_mask_planes, strict=False),
        no_data=bitmask(p, "NO_DATA"),
        clipped=bitmask(p, "CLIPPED"),
        edge=bitmask(p, "EDGE"),
        streak=bitmask(p, config.streak_mask_name),
    )
    weights = visit_weights(direct, base, bits.planes)  # prepareInputs: before the alt masks
    stacked = graph.stack(
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
    out = finish_planes(stacked, bits, cfg)
    edge_any = ((packed & kd.EDGE_SPAN) != 0).any(axis=0).rechunk(out["mask"].chunks)
    out["mask"] = out["mask"] | da.where(
        edge_any, np.int32(bitmask(p, ("SENSOR_EDGE", "INEXACT_PSF"))), np.int32(0)
    )
    return out, weights, bits, cfg


# -- the step -------------------------------------------------------------------------------------


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
    return _build(direct, psf_matched, config)


Stage = Callable[[str, tuple[da.Array, ...]], tuple[da.Array, ...]]


def _build(
    direct: xr.Dataset,
    psf_matched: xr.Dataset,
    config: CompareWarpConfig | None,
    stage: Stage | None = None,
) -> xr.Dataset:
    """The graph of :func:`assemble_compare_warp`. ``stage(name, arrays)`` sees the arrays of
    each stage in order (template, scale variance, detection, filtering) and returns the ones
    to build on; the benchmark persists and times them there."""
    config = config if config is not None else CompareWarpConfig()
    if not isinstance(config, CompareWarpConfig):
        raise ConfigError(f"config must be a CompareWarpConfig, got {type(config).__name__}")
    stage = stage or (lambda name, arrays: arrays)
    inp = _inputs(direct, psf_matched, config)
    template = assemble(inp.matched, config.template.replace(subregion_size=inp.tile))
    *t_planes, template_fp = stage(
        "template",
        (
            *(template[v].data.rechunk(inp.detect_tile) for v in ("image", "variance")),
            _template_footprints(
                *(template[v].data for v in ("image", "variance")),
                config.detect_template,
                inp.sigma_psf,
            ),
        ),
    )
    index = [inp.position.get(int(v)) for v in direct["visit"].values]
    scales = stage(
        "scale variance",
        tuple(
            da.from_array(np.asarray(np.nan)) if i is None else _variance_scale(inp, i, config)
            for i in index
        ),
    )
    packed = stage(
        "detection",
        tuple(
            _detect_visit(inp, i, tuple(t_planes), s, config)
            for i, s in zip(index, scales, strict=True)
        ),
    )
    cube = da.stack(packed)
    n_image = ((cube & kd.GOOD) != 0).sum(axis=0, dtype=np.int32, split_every=4)
    epoch = _epoch_count(list(packed), config)
    art = _artifacts(list(packed), epoch, n_image, template_fp, inp, config)
    n_image, epoch, art = stage("filtering", (n_image, epoch, art))
    out, weights, bits, cfg = _final_coadd(inp, cube, art, config)
    ds = coadd_dataset(out, weights, direct, bits, cfg, inp.plan)
    ds["epoch_count"] = (("y", "x"), epoch.rechunk(inp.tile))
    ds["psf_matched_n_image"] = (("y", "x"), n_image.rechunk(inp.tile))
    ds["artifact_mask"] = (("visit", "y", "x"), ((art & kd.ARTIFACT) != 0).rechunk((1, *inp.tile)))
    if config.do_filter_morphological:
        ds["streak_mask"] = (("visit", "y", "x"), ((art & kd.STREAK) != 0).rechunk((1, *inp.tile)))
    ds["variance_scale"] = ("visit", da.stack(scales).rechunk(-1))
    ds.attrs.update(
        statistic=cfg.statistic,
        config=config.to_dict(),
        provenance={
            **ds.attrs["provenance"],
            "operation": "assemble_compare_warp",
            "psf_matched_inputs": psf_matched.attrs.get("store", "in-memory"),
            "sigma_psf": inp.sigma_psf,
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return ds
