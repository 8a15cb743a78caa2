"""CalibrateTask on one exposure (algorithms.md 7): the astrometry pass, the main detection and
measurement, the photometric zero point.

:func:`calibrate` takes an Exposure and a reference catalogue and returns a
:class:`Calibration`: the exposure with the fitted TAN-SIP WCS, the measured photometric
calibration and its DETECTED plane (nothing else of the mask, and neither the image nor the
variance, changes), the source table, and the astrometric and photometric results. A PHOTCALIB
of the input is not used: fluxes are measured in image units and the zero point is what is
being measured. Failures of required steps raise :class:`~coaddx.errors.CalibrationError`
naming the exposure and the figure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from coaddx.calibrate.astrometry import AstrometryResult, fit_astrometry
from coaddx.calibrate.config import CalibrateConfig
from coaddx.calibrate.sources import measure_sources
from coaddx.constants import FWHM_TO_SIGMA
from coaddx.errors import CalibrationError, ConfigError, InputError
from coaddx.kernels.photocal import ZeroPoint, zero_point
from coaddx.model.catalog import ReferenceCatalog
from coaddx.model.exposure import Exposure, nJy_per_count

__all__ = ["Calibration", "Photometry", "calibrate", "overlapping", "reference_near"]

_MAG_PER_LN = 2.5 / math.log(10.0)  # 1.0857: magnitude error per relative flux error


@dataclass(frozen=True)
class Photometry:
    """The zero point (AB mag of one image count), its formal error (the error of the mean, as
    LSST), the stars kept and the resulting ``photo_calib`` (nJy per count)."""

    zero_point: float
    zero_point_err: float
    n_stars: int
    photo_calib: float


@dataclass(frozen=True)
class Calibration:
    """:func:`calibrate`'s result (see the module docstring)."""

    exposure: Exposure
    sources: Any  # astropy Table
    astrometry: AstrometryResult | None
    photometry: Photometry | None
    timings: dict[str, float] = field(default_factory=dict, compare=False)


def reference_near(
    reference: ReferenceCatalog, wcs: Any, shape: tuple[int, int], margin_pix: float
) -> np.ndarray:
    """Which reference stars fall on an image of ``shape`` with ``wcs``, or within
    ``margin_pix`` of it (a boolean array)."""
    ny, nx = shape
    if len(reference) == 0:
        return np.zeros(0, bool)
    with np.errstate(invalid="ignore"):
        x, y = wcs.all_world2pix(reference.ra, reference.dec, 0, quiet=True)
    keep = np.isfinite(x) & np.isfinite(y)
    keep &= (x > -margin_pix) & (x < nx - 1 + margin_pix)
    keep &= (y > -margin_pix) & (y < ny - 1 + margin_pix)
    return keep


def overlapping(
    exposure: Exposure, reference: ReferenceCatalog, *, margin_pix: float
) -> ReferenceCatalog:
    """The reference stars that fall on the exposure (its header WCS) or within ``margin_pix``
    of it, at the exposure's epoch; ``CalibrationError`` when none do."""
    ref = reference.at_epoch(exposure.mjd)
    keep = reference_near(ref, exposure.wcs, exposure.shape, margin_pix)
    if not keep.any():
        raise CalibrationError(
            f"{exposure.where}: none of the {len(ref)} stars of {ref.source} falls on the "
            f"exposure (its header WCS, with a {margin_pix:g} px margin)"
        )
    return ref.select(keep)


def _clean(sources: Any) -> np.ndarray:
    """Photometric quality: no edge, saturated or bad pixel in the aperture."""
    return ~(sources["flag_saturated"] | sources["flag_edge"] | sources["flag_bad"])


def _good_centroid(sources: Any) -> np.ndarray:
    """Astrometric quality: off the edge, no saturated or bad pixel at the centre."""
    bad = sources["flag_saturated_center"] | sources["flag_bad_center"]
    return ~(bad | sources["flag_edge"])


def _astrometry(
    exposure: Exposure, ref: ReferenceCatalog, config: CalibrateConfig, timings: dict[str, float]
) -> AstrometryResult:
    t0 = time.perf_counter()
    s: Any = None
    for threshold in (config.astrometry_threshold, config.astrometry_fallback_threshold):
        measured = measure_sources(
            exposure, threshold=threshold, aperture_radius=config.aperture_radius
        )
        s = measured.sources[_good_centroid(measured.sources)]
        if len(s) >= config.astrometry_min_sources:
            break
    t1 = time.perf_counter()
    timings["astrometry detection"] = t1 - t0
    try:
        return _fit(exposure, ref, config, s)
    finally:
        timings["astrometric fit"] = time.perf_counter() - t1


def _fit(
    exposure: Exposure, ref: ReferenceCatalog, config: CalibrateConfig, s: Any
) -> AstrometryResult:
    return fit_astrometry(
        np.asarray(s["x"], np.float64),
        np.asarray(s["y"], np.float64),
        ref.ra,
        ref.dec,
        exposure.wcs,
        exposure.shape,
        config,
        ref_mag=ref.mag,
        flux=np.asarray(s["flux"], np.float64),
        where=exposure.where,
    )


def _photometry(
    sources: Any, ref: ReferenceCatalog, scale_arcsec: float, config: CalibrateConfig, where: str
) -> tuple[ZeroPoint, np.ndarray, np.ndarray]:
    """getZeroPoint of the isolated, unresolved, unflagged S/N >= min_snr stars matched to the
    reference; returns the result, the source indices and the reference indices used."""
    column = "flux" if config.photometry_flux == "aperture" else "psf_flux"
    flux = np.asarray(sources[column], np.float64)
    err = np.asarray(sources[f"{column}_err"], np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / err
    usable = _clean(sources) & np.asarray(sources["unresolved"]) & (snr >= config.min_snr)
    usable &= np.asarray(sources["neighbour_dist"]) > config.min_separation_pix
    idx = np.flatnonzero(usable)
    if idx.size == 0:
        raise CalibrationError(
            f"{where}: no photometric star (isolated, unresolved, S/N >= "
            f"{config.min_snr}, unflagged) among {len(sources)} sources"
        )
    cat = SkyCoord(ref.ra * u.deg, ref.dec * u.deg)
    src = SkyCoord(np.asarray(sources["ra"])[idx] * u.deg, np.asarray(sources["dec"])[idx] * u.deg)
    j, sep, _ = src.match_to_catalog_sky(cat)
    ok = sep.arcsec < config.match_radius_pix * scale_arcsec
    idx, j = idx[ok], j[ok]
    if idx.size == 0:
        raise CalibrationError(f"{where}: no photometric star matches {ref.source}")
    inst = -2.5 * np.log10(flux[idx])
    inst_err = np.hypot(_MAG_PER_LN * err[idx] / flux[idx], config.mag_err_floor)
    if config.reference_weights == "catalog" and ref.mag_err is not None:
        inst_err = np.hypot(inst_err, np.nan_to_num(ref.mag_err[j]))
    zp = zero_point(
        ref.mag[j],
        inst,
        inst_err,
        n_sigma=config.n_sigma,
        sigma_max=config.sigma_max,
        n_iter=config.n_iter,
        use_median=config.use_median,
    )
    return zp, idx[zp.good], j[zp.good]


def calibrate(
    exposure: Exposure, reference_catalog: ReferenceCatalog, config: CalibrateConfig | None = None
) -> Calibration:
    """Calibrate one exposure against a reference catalogue (see the module docstring)."""
    config = config if config is not None else CalibrateConfig()
    if not isinstance(config, CalibrateConfig):
        raise ConfigError(f"config must be a CalibrateConfig, got {type(config).__name__}")
    if not isinstance(exposure, Exposure):
        raise InputError(f"calibrate needs a coaddx.Exposure, got {type(exposure).__name__}")
    timings: dict[str, float] = {}
    ref = overlapping(exposure, reference_catalog, margin_pix=config.max_offset_pix)
    astro: AstrometryResult | None = None
    wcs = exposure.wcs
    if config.do_astrometry:
        try:
            astro = _astrometry(exposure, ref, config, timings)
            wcs = astro.wcs
        except CalibrationError:
            if config.require_astrometry:
                raise
    fitted = replace(exposure, wcs=wcs)
    fwhm = exposure.psf_fwhm if math.isfinite(exposure.psf_fwhm) else float("nan")
    grow = config.n_sigma_to_grow * fwhm * FWHM_TO_SIGMA if math.isfinite(fwhm) else 0.0
    t0 = time.perf_counter()
    measured = measure_sources(
        fitted,
        threshold=config.detection_threshold,
        aperture_radius=config.aperture_radius,
        grow=grow,
    )
    sources = measured.sources
    n = len(sources)
    sources["used_astrometry"] = np.zeros(n, bool)
    sources["used_photometry"] = np.zeros(n, bool)
    if astro is not None and n:
        cat = SkyCoord(ref.ra[astro.matches[:, 1]] * u.deg, ref.dec[astro.matches[:, 1]] * u.deg)
        src = SkyCoord(np.asarray(sources["ra"]) * u.deg, np.asarray(sources["dec"]) * u.deg)
        _, sep, _ = src.match_to_catalog_sky(cat)
        scale = math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
        sources["used_astrometry"] = sep.arcsec < 0.5 * scale
    t1 = time.perf_counter()
    timings["detection + measurement"] = t1 - t0
    photometry: Photometry | None = None
    photo_calib = exposure.photo_calib
    metadata = dict(exposure.metadata)
    if config.do_photo_cal:
        scale = math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
        try:
            zp, used, _ = _photometry(sources, ref, scale, config, exposure.where)
            photo_calib = nJy_per_count(zp.zp)
            photometry = Photometry(zp.zp, zp.sigma, zp.ngood, photo_calib)
            sources["used_photometry"][used] = True
            # zero_point (header MAGZERO of the coaddx layout, as the DECam reader's) is of
            # one count, like photo_calib; LSST's MAGZERO is of one count per second
            metadata["zero_point"] = zp.zp
            metadata.pop("magzero", None)
            if math.isfinite(exposure.exptime) and exposure.exptime > 0:
                metadata["magzero"] = zp.zp - 2.5 * math.log10(exposure.exptime)
            metadata["magzero_rms"] = zp.sigma
            metadata["magzero_nobj"] = zp.ngood
        except CalibrationError:
            if config.require_photo_cal:
                raise
    timings["photometric calibration"] = time.perf_counter() - t1
    planes = exposure.mask_planes
    mask = exposure.mask.copy()
    if "DETECTED" in planes:
        bit = np.int32(1 << planes["DETECTED"])
        mask = np.where(measured.footprints, mask | bit, mask & ~bit).astype(exposure.mask.dtype)
    out = replace(fitted, mask=mask, photo_calib=photo_calib, metadata=metadata)
    return Calibration(out, sources, astro, photometry, timings)
