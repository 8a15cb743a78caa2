"""CalibrateConfig in snake_case (algorithms.md 7): the only home of the calibration's defaults.

LSST's CalibrateTask defaults with its subtasks' (FitTanSipWcsTask, AstrometryTask, the
detection of the astrometry pass and of the main pass, PhotoCalTask) flattened into one frozen
dataclass. ``reference_weights`` chooses the zero-point weights: ``"catalog"`` (default) adds
the reference catalogue's magnitude errors in quadrature when it has them; ``"lsst"`` uses the
instrumental errors only, as LSST's getZeroPoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from coaddx.validation import check, check_number

__all__ = ["CalibrateConfig"]

_CLS = "CalibrateConfig"


@dataclass(frozen=True, kw_only=True)
class CalibrateConfig:
    """CalibrateTask configuration.

    Steps: ``do_astrometry`` / ``require_astrometry``, ``do_photo_cal`` /
    ``require_photo_cal`` (a required step that fails raises CalibrationError; an optional one
    keeps the input WCS / calibration). Astrometry pass: detection at
    ``astrometry_threshold`` sigma, repeated at ``astrometry_fallback_threshold`` when it
    gives fewer than ``astrometry_min_sources`` usable sources (a sparse field: not LSST's;
    0 switches it off); the offset search up to ``max_offset_pix`` px and
    ``max_rotation_deg`` degrees; matches within ``match_radius_pix``; a TAN-SIP fit of order
    ``sip_order`` with ``fit_iterations`` fits, ``rejection_iterations`` rejections at
    ``rejection_sigma`` each, ``max_scatter_arcsec`` and ``max_mean_distance_arcsec`` limits,
    ``min_matches`` at least. Main pass: detection at ``detection_threshold`` sigma grown by
    ``n_sigma_to_grow`` PSF sigmas, apertures of ``aperture_radius`` px corrected to total.
    Photometry: stars with S/N >= ``min_snr``, unresolved and isolated (``min_separation_pix``),
    getZeroPoint with ``n_sigma``, ``sigma_max``, ``n_iter``, ``use_median``, ``mag_err_floor``
    and the ``reference_weights``, on the ``photometry_flux``: ``"aperture"`` (the aperture
    flux corrected to total, LSST's calibration flux) or ``"psf"`` (the PSF flux).
    """

    do_astrometry: bool = True
    require_astrometry: bool = True
    do_photo_cal: bool = True
    require_photo_cal: bool = True
    astrometry_threshold: float = 50.0
    astrometry_min_sources: int = 30
    astrometry_fallback_threshold: float = 10.0
    match_radius_pix: float = 3.0
    max_offset_pix: float = 250.0
    max_rotation_deg: float = 1.0
    sip_order: int = 2
    fit_iterations: int = 3
    rejection_iterations: int = 1
    rejection_sigma: float = 3.0
    max_scatter_arcsec: float = 10.0
    max_mean_distance_arcsec: float = 0.5
    min_matches: int = 6
    detection_threshold: float = 5.0
    n_sigma_to_grow: float = 2.4
    aperture_radius: float = 12.0
    min_snr: float = 10.0
    min_separation_pix: float = 15.0
    n_sigma: float = 3.0
    sigma_max: float | None = 0.25
    n_iter: int = 20
    use_median: bool = True
    mag_err_floor: float = 0.0
    reference_weights: Literal["catalog", "lsst"] = "catalog"
    photometry_flux: Literal["aperture", "psf"] = "aperture"

    def __post_init__(self) -> None:
        for name in (
            "do_astrometry",
            "require_astrometry",
            "do_photo_cal",
            "require_photo_cal",
            "use_median",
        ):
            value = getattr(self, name)
            check(isinstance(value, bool), _CLS, name, f"must be True or False, got {value!r}")
        for name in (
            "astrometry_threshold",
            "astrometry_fallback_threshold",
            "match_radius_pix",
            "max_offset_pix",
            "max_rotation_deg",
            "rejection_sigma",
            "max_scatter_arcsec",
            "max_mean_distance_arcsec",
            "detection_threshold",
            "n_sigma_to_grow",
            "aperture_radius",
            "min_snr",
            "min_separation_pix",
            "n_sigma",
            "mag_err_floor",
        ):
            check_number(getattr(self, name), _CLS, name, 0.0)
        for name in ("match_radius_pix", "aperture_radius", "n_sigma", "detection_threshold"):
            value = getattr(self, name)
            check(value > 0, _CLS, name, f"must be > 0, got {value}")
        check_number(self.sip_order, _CLS, "sip_order", 0, 9, integer=True)
        check_number(self.fit_iterations, _CLS, "fit_iterations", 1, 100, integer=True)
        check_number(self.rejection_iterations, _CLS, "rejection_iterations", 0, 100, integer=True)
        check_number(self.min_matches, _CLS, "min_matches", 3, 10**6, integer=True)
        check_number(
            self.astrometry_min_sources, _CLS, "astrometry_min_sources", 0, 10**6, integer=True
        )
        check_number(self.n_iter, _CLS, "n_iter", 1, 1000, integer=True)
        if self.sigma_max is not None:
            check_number(self.sigma_max, _CLS, "sigma_max", 0.0)
        check(
            self.reference_weights in ("catalog", "lsst"),
            _CLS,
            "reference_weights",
            f"must be 'catalog' or 'lsst', got {self.reference_weights!r}",
        )

        check(
            self.photometry_flux in ("aperture", "psf"),
            _CLS,
            "photometry_flux",
            f"must be 'aperture' or 'psf', got {self.photometry_flux!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for provenance."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> CalibrateConfig:
        return dataclasses.replace(self, **changes)
