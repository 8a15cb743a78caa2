"""CompareWarpAssembleCoadd's frozen, validated configuration (algorithms.md 3.1): the only home
of its defaults, LSST's.

:class:`CompareWarpConfig` composes two :class:`~coaddx.coadd.config.AssembleConfig` (the final
stack and the static-sky template), two :class:`DetectionConfig` (differences, bright template
sources), a :class:`ScaleVarianceConfig` and a :class:`MaskStreaksConfig`. The LSST names are
mapped in :mod:`coaddx.lsst`; the field checks are :mod:`coaddx.validation`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from coaddx.coadd.config import AssembleConfig
from coaddx.model.masks import DEFAULT_MASK_PLANES
from coaddx.validation import check, check_bool, check_choice, check_number, plane_names

__all__ = [
    "CompareWarpConfig",
    "DetectionConfig",
    "MaskStreaksConfig",
    "ScaleVarianceConfig",
]


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
        check_number(self.threshold_value, cls, "threshold_value", 1e-6)
        check_choice(self.threshold_type, cls, "threshold_type", ("pixel_stdev",))
        check_choice(
            self.threshold_polarity, cls, "threshold_polarity", ("positive", "negative", "both")
        )
        check_number(self.min_pixels, cls, "min_pixels", 1, 1_000_000, integer=True)
        check_number(self.n_sigma_to_grow, cls, "n_sigma_to_grow", 0, 100)
        check_bool(self.isotropic_grow, cls, "isotropic_grow")
        check_bool(self.re_estimate_background, cls, "re_estimate_background")
        if self.temp_local_background is not None:
            check_number(
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
        planes = plane_names(self.mask_planes, cls, "mask_planes", DEFAULT_MASK_PLANES)
        object.__setattr__(self, "mask_planes", planes)
        check_number(self.limit, cls, "limit", 1.0)
        check_number(self.bin_size, cls, "bin_size", 4, 1 << 16, integer=True)


@dataclass(frozen=True, kw_only=True)
class MaskStreaksConfig:
    """The straight-line finder used by ``do_filter_morphological`` (scikit-image's Hough
    transform on the positive detections of a difference; see
    :func:`coaddx.kernels.streaks.streak_mask`)."""

    min_length: int = 100
    theta_step: float = 0.25
    max_width: int = 40
    max_streaks: int = 10

    def __post_init__(self) -> None:
        cls = "MaskStreaksConfig"
        check_number(self.min_length, cls, "min_length", 10, 1 << 20, integer=True)
        check_number(self.theta_step, cls, "theta_step", 0.01, 10.0)
        check_number(self.max_width, cls, "max_width", 1, 1000, integer=True)
        check_number(self.max_streaks, cls, "max_streaks", 1, 1000, integer=True)


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
            check(
                isinstance(getattr(self, name), kind),
                cls,
                name,
                f"must be a {kind.__name__}, got {getattr(self, name)!r}",
            )
        check(
            "NO_DATA" in self.template.bad_mask_planes,
            cls,
            "template",
            "bad_mask_planes must include NO_DATA",
        )
        check_number(
            self.detect_template_iter_multiplier, cls, "detect_template_iter_multiplier", 1.0
        )
        check_number(
            self.max_detect_template_iter, cls, "max_detect_template_iter", 1, 1000, integer=True
        )
        check_number(self.max_num_epochs, cls, "max_num_epochs", 0, 1 << 20, integer=True)
        for name in (
            "max_fraction_epochs_low",
            "max_fraction_epochs_high",
            "spatial_threshold",
            "prefilter_artifacts_ratio",
        ):
            check_number(getattr(self, name), cls, name, 0.0, 1.0)
        check_number(self.grow_streak_fp, cls, "grow_streak_fp", 0.0, 1000.0)
        for name in (
            "do_scale_warp_variance",
            "do_preserve_contained_by_source",
            "do_prefilter_artifacts",
            "do_filter_morphological",
        ):
            check_bool(getattr(self, name), cls, name)
        object.__setattr__(
            self,
            "prefilter_artifacts_mask_planes",
            plane_names(
                self.prefilter_artifacts_mask_planes,
                cls,
                "prefilter_artifacts_mask_planes",
                DEFAULT_MASK_PLANES,
            ),
        )
        check(
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
