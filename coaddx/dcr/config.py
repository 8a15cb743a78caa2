"""DcrAssembleCoaddConfig in snake_case (algorithms.md 4.1): the only home of its defaults.

``effective_wavelength`` and ``bandwidth`` (nm) are required, as in LSST. LSST's ``None``
defaults that depend on the number of sub-filters stay ``None`` here and are resolved by
:attr:`DcrConfig.max_iterations`, :attr:`DcrConfig.min_iterations` and :attr:`DcrConfig.gain`.
The site and the weather default (``None``: the altitude rule of 4.2) travel with the config;
``pixel_scale`` (arcsec/px) serves Datasets without a ``wcs`` attribute (LSST's tract scale).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from coaddx.coadd.compare_warp.config import CompareWarpConfig
from coaddx.model.masks import DEFAULT_MASK_PLANES
from coaddx.model.refraction import LSST_SITE, WAVELENGTH_RANGE, Observatory, Weather
from coaddx.validation import check, check_number, plane_names

__all__ = ["DcrConfig"]

_CLS = "DcrConfig"


@dataclass(frozen=True, kw_only=True)
class DcrConfig:
    """DcrAssembleCoadd configuration (LSST names in :mod:`coaddx.lsst` to come).

    Parameters mirror DcrAssembleCoaddConfig: ``n_subfilters`` (dcrNumSubfilters),
    ``max_num_iter`` / ``min_num_iter`` (None: 3 N and N), ``convergence_threshold``,
    ``use_convergence``, ``base_gain`` (None: 1 / (N - 1)), ``use_progressive_gain``,
    ``do_airmass_weight``, ``model_weights_width``, ``use_model_weights``,
    ``split_subfilters``, ``split_threshold`` (px), ``regularize_model_iterations`` and
    ``regularize_model_frequency`` (0 disables), ``convergence_mask_planes``,
    ``regularization_width`` (px), ``image_interp_order`` (spline order of the shifts),
    ``accelerate_model`` and ``do_calculate_psf``; ``bad_mask_planes`` (the andMask: NO_DATA,
    BAD, SAT; CLIPPED deliberately not) and ``subregion_size`` (the tiles of the solve: they
    set the work per task and the memory, not the result, which does not depend on them);
    ``find_artifacts`` and ``artifacts`` (CompareWarp's findArtifacts on the direct warps with
    the input coadd as its template, 4.5: its NO_DATA spans are rejected, its CLIPPED spans
    deliberately not).
    """

    effective_wavelength: float
    bandwidth: float
    n_subfilters: int = 3
    max_num_iter: int | None = None
    min_num_iter: int | None = None
    convergence_threshold: float = 0.001
    use_convergence: bool = True
    base_gain: float | None = None
    use_progressive_gain: bool = True
    do_airmass_weight: bool = False
    model_weights_width: float = 3.0
    use_model_weights: bool = True
    split_subfilters: bool = True
    split_threshold: float = 0.1
    regularize_model_iterations: float = 2.0
    regularize_model_frequency: float = 4.0
    convergence_mask_planes: tuple[str, ...] = ("DETECTED",)
    regularization_width: int = 2
    image_interp_order: int = 1
    accelerate_model: float = 3.0
    do_calculate_psf: bool = False
    observatory: Observatory = LSST_SITE
    weather: Weather | None = None
    pixel_scale: float = 0.2
    bad_mask_planes: tuple[str, ...] = ("NO_DATA", "BAD", "SAT")
    subregion_size: tuple[int, int] = (512, 512)
    find_artifacts: bool = True
    artifacts: CompareWarpConfig = dataclasses.field(default_factory=CompareWarpConfig)

    def __post_init__(self) -> None:
        lo, hi = WAVELENGTH_RANGE
        check_number(self.effective_wavelength, _CLS, "effective_wavelength", lo, hi)
        check_number(self.bandwidth, _CLS, "bandwidth", 0.0)
        check(
            self.bandwidth > 0
            and lo <= self.effective_wavelength - self.bandwidth / 2
            and self.effective_wavelength + self.bandwidth / 2 <= hi,
            _CLS,
            "bandwidth",
            f"must be > 0 with the band inside {lo}-{hi} nm, got {self.bandwidth} nm around "
            f"{self.effective_wavelength} nm",
        )
        check_number(self.n_subfilters, _CLS, "n_subfilters", 2, 100, integer=True)
        for name in ("max_num_iter", "min_num_iter"):
            if getattr(self, name) is not None:
                check_number(getattr(self, name), _CLS, name, 1, 10_000, integer=True)
        check(
            self.min_iterations <= self.max_iterations,
            _CLS,
            "min_num_iter",
            f"must not exceed max_num_iter ({self.min_iterations} > {self.max_iterations})",
        )
        check_number(self.convergence_threshold, _CLS, "convergence_threshold", 0.0)
        if self.base_gain is not None:
            check_number(self.base_gain, _CLS, "base_gain", 0.0)
            check(self.base_gain > 0, _CLS, "base_gain", f"must be > 0, got {self.base_gain}")
        for name in (
            "use_convergence",
            "use_progressive_gain",
            "do_airmass_weight",
            "use_model_weights",
            "split_subfilters",
            "do_calculate_psf",
            "find_artifacts",
        ):
            value = getattr(self, name)
            check(isinstance(value, bool), _CLS, name, f"must be True or False, got {value!r}")
        for name in (
            "model_weights_width",
            "split_threshold",
            "regularize_model_iterations",
            "regularize_model_frequency",
            "pixel_scale",
        ):
            check_number(getattr(self, name), _CLS, name, 0.0)
        check(self.pixel_scale > 0, _CLS, "pixel_scale", f"must be > 0, got {self.pixel_scale}")
        check_number(self.regularization_width, _CLS, "regularization_width", 1, 1000, integer=True)
        check_number(self.image_interp_order, _CLS, "image_interp_order", 1, 5, integer=True)
        check_number(self.accelerate_model, _CLS, "accelerate_model", 1.0)
        planes = plane_names(
            self.convergence_mask_planes, _CLS, "convergence_mask_planes", DEFAULT_MASK_PLANES
        )
        object.__setattr__(self, "convergence_mask_planes", planes)
        bad = plane_names(self.bad_mask_planes, _CLS, "bad_mask_planes", DEFAULT_MASK_PLANES)
        object.__setattr__(self, "bad_mask_planes", bad)
        size: Any = self.subregion_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        check(
            isinstance(size, (tuple, list))
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 16 for v in size),
            _CLS,
            "subregion_size",
            f"must be two integers >= 16 (tile rows, columns), got {self.subregion_size!r}",
        )
        object.__setattr__(self, "subregion_size", (int(size[0]), int(size[1])))
        check(
            isinstance(self.observatory, Observatory),
            _CLS,
            "observatory",
            f"must be a coaddx.Observatory, got {self.observatory!r}",
        )
        check(
            isinstance(self.artifacts, CompareWarpConfig),
            _CLS,
            "artifacts",
            f"must be a coaddx.CompareWarpConfig, got {type(self.artifacts).__name__}",
        )
        check(
            self.weather is None or isinstance(self.weather, Weather),
            _CLS,
            "weather",
            f"must be None or a coaddx.Weather, got {self.weather!r}",
        )

    @property
    def max_iterations(self) -> int:
        """maxNumIter, or 3 N when it is None."""
        return self.max_num_iter if self.max_num_iter is not None else 3 * self.n_subfilters

    @property
    def min_iterations(self) -> int:
        """minNumIter, or N when it is None."""
        return self.min_num_iter if self.min_num_iter is not None else self.n_subfilters

    @property
    def gain(self) -> float:
        """baseGain, or 1 / (N - 1) when it is None."""
        return self.base_gain if self.base_gain is not None else 1.0 / (self.n_subfilters - 1)

    @property
    def regularization_max_diff(self) -> float:
        """maxDiff of the frequency regularisation, sqrt(regularize_model_frequency)."""
        return math.sqrt(self.regularize_model_frequency)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for provenance."""
        out = dataclasses.asdict(self)
        out["convergence_mask_planes"] = list(self.convergence_mask_planes)
        out["bad_mask_planes"] = list(self.bad_mask_planes)
        out["subregion_size"] = list(self.subregion_size)
        out["artifacts"] = self.artifacts.to_dict()
        return out
