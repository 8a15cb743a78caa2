"""Source detection and measurement for the calibration (algorithms.md 7, steps 1-2), with
``sep`` (SExtractor's background, extraction and aperture photometry in C: a small, well-kept
wheel already used for the kernel candidates of image differencing).

Detection runs on the background-subtracted image with the per-pixel error sqrt(variance) (a
scalar ``err`` would make sep skip its matched filter and detect at several times the
threshold). Each source gets a windowed centroid, an aperture flux of ``aperture_radius`` px
corrected to total with the PSF's curve of growth (a small uncorrected aperture is biased by
~0.1 mag), a PSF flux (the PSF image's least-squares amplitude at the centroid, as LSST's
PsfFlux), a concentration test against the PSF (unresolved or not), its nearest neighbour
and flags for the image edge and for SAT, INTRP and bad pixels inside the aperture (``flag_*``,
which the photometry excludes: masked pixels are left out of the sums) and in the 3 x 3 pixels
about the centroid (``flag_*_center``, which the astrometry excludes, as LSST's matcher
source selector).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sep
from astropy.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from coaddx.constants import FWHM_TO_SIGMA
from coaddx.errors import InputError
from coaddx.model.exposure import Exposure
from coaddx.model.masks import bitmask

__all__ = ["Measured", "measure_sources", "psf_fraction", "psf_photometry"]

_BAD = ("BAD", "NO_DATA", "CR", "SUSPECT")
#: Radius (px) of the "center" flags: the 3 x 3 pixels about the centroid, as LSST's
#: PixelFlags ``*Center`` flags.
_CENTER = 1.5


@dataclass(frozen=True)
class Measured:
    """The source table and the detection footprints (bool, the DETECTED pixels)."""

    sources: Table
    footprints: np.ndarray


def _psf_stamp(exposure: Exposure, fwhm: float) -> np.ndarray:
    if exposure.psf is not None:
        return np.asarray(exposure.psf, np.float64)
    sigma = fwhm * FWHM_TO_SIGMA
    half = max(math.ceil(6 * sigma), 3)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    psf = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    return psf / psf.sum()


def psf_fraction(psf: np.ndarray, radius: float) -> float:
    """The fraction of a (unit-sum, centred) PSF image's flux inside ``radius`` px (exact
    circle overlap, sep's sum_circle with subpixel 0)."""
    data = np.ascontiguousarray(psf, np.float64)
    c = (data.shape[1] - 1) / 2.0, (data.shape[0] - 1) / 2.0
    flux, _, _ = sep.sum_circle(data, [c[0]], [c[1]], radius, subpix=0)
    return float(flux[0] / data.sum())


def psf_photometry(
    image: np.ndarray,
    variance: np.ndarray,
    usable: np.ndarray,
    psf: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """PSF fluxes at fixed positions: the linear least-squares amplitude of the (unit-sum)
    PSF image, shifted to each centroid (a Fourier phase shift: exact for a well-sampled PSF),
    over the PSF's footprint with inverse-variance weights (masked pixels weigh 0), and its
    formal error 1 / sqrt(sum P^2 / sigma^2), as LSST's PsfFlux. NaN where no usable pixel
    overlaps.

    Vectorised over sources (``batch`` stamps at a time bound the memory)."""
    ny, nx = image.shape
    ph, pw = psf.shape
    hy, hx = ph // 2, pw // 2
    flux = np.full(x.size, np.nan)
    err = np.full(x.size, np.nan)
    spectrum = np.fft.rfft2(np.asarray(psf, np.float64))
    ky = np.fft.fftfreq(ph)[:, None]
    kx = np.fft.rfftfreq(pw)[None, :]
    oy, ox = np.mgrid[-hy : ph - hy, -hx : pw - hx]
    for start in range(0, x.size, batch):
        sx, sy = x[start : start + batch], y[start : start + batch]
        cy, cx = np.rint(sy), np.rint(sx)
        iy = cy.astype(np.int64)[:, None, None] + oy
        ix = cx.astype(np.int64)[:, None, None] + ox
        inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        iyc, ixc = np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)
        ok = inside & usable[iyc, ixc]
        weight = np.where(ok, 1.0 / np.where(ok, variance[iyc, ixc], 1.0), 0.0)
        data = np.where(ok, image[iyc, ixc], 0.0)
        # model[j] = PSF(j + delta): the PSF centre ((n - 1) / 2) lands on the centroid.
        dy = ((ph - 1) / 2.0 - hy) + (cy - sy)
        dx = ((pw - 1) / 2.0 - hx) + (cx - sx)
        phase = np.exp(2j * np.pi * (ky[None] * dy[:, None, None] + kx[None] * dx[:, None, None]))
        model = np.fft.irfft2(spectrum[None] * phase, s=(ph, pw), axes=(1, 2))
        total = model.sum(axis=(1, 2))
        model /= np.where(total > 0, total, 1.0)[:, None, None]
        norm = (weight * model * model).sum(axis=(1, 2))
        good = norm > 0
        amp = (weight * model * data).sum(axis=(1, 2)) / np.where(good, norm, 1.0)
        flux[start : start + batch] = np.where(good, amp, np.nan)
        err[start : start + batch] = np.where(
            good, 1.0 / np.sqrt(np.where(good, norm, 1.0)), np.nan
        )
    return flux, err


def _fwhm(exposure: Exposure, objects: np.ndarray) -> float:
    if math.isfinite(exposure.psf_fwhm) and exposure.psf_fwhm > 0:
        return float(exposure.psf_fwhm)
    bright = objects[np.argsort(objects["flux"])[::-1][:50]]
    if bright.size == 0:
        raise InputError(f"{exposure.where}: no PSF size (psf_fwhm) and no source to measure it")
    return float(2.3548 * np.median(np.sqrt(bright["a"] * bright["b"])))


def measure_sources(
    exposure: Exposure, *, threshold: float, aperture_radius: float, grow: float = 0.0
) -> Measured:
    """Detect at ``threshold`` sigma and measure (see the module docstring); ``grow`` px
    dilate the footprints. Pixel coordinates are 0-based (x = column, y = row)."""
    planes = exposure.mask_planes
    bad = (exposure.mask & bitmask(planes, _BAD, strict=False)) != 0
    usable = ~bad & np.isfinite(exposure.image) & np.isfinite(exposure.variance)
    usable &= exposure.variance > 0
    data = np.ascontiguousarray(np.where(usable, exposure.image, 0.0), np.float64)
    err = np.ascontiguousarray(np.sqrt(np.where(usable, exposure.variance, np.inf)), np.float64)
    try:
        back = sep.Background(data, mask=~usable, bw=64, bh=64)
        sub = data - back.back()
        objects, seg = sep.extract(
            sub,
            threshold,
            err=err,
            mask=~usable,
            minarea=5,
            segmentation_map=True,
            deblend_cont=0.005,
        )
    except Exception as exc:  # sep's C errors at the boundary
        raise InputError(f"{exposure.where}: source detection failed: {exc}") from exc
    ny, nx = exposure.shape
    fwhm = _fwhm(exposure, objects)
    psf = _psf_stamp(exposure, fwhm)
    x, y = objects["x"].astype(np.float64), objects["y"].astype(np.float64)
    if x.size:
        sigma = fwhm * FWHM_TO_SIGMA
        xw, yw, wflag = sep.winpos(sub, x, y, np.full(x.size, sigma), mask=~usable)
        ok = (wflag == 0) & (np.hypot(xw - x, yw - y) < fwhm)
        x, y = np.where(ok, xw, x), np.where(ok, yw, y)
    r = float(aperture_radius)
    flux, flux_err, aflag = sep.sum_circle(sub, x, y, r, err=err, mask=~usable, subpix=5)
    correction = 1.0 / psf_fraction(psf, r)
    inner_r = max(fwhm, 1.0)
    inner, _, _ = sep.sum_circle(sub, x, y, inner_r, err=err, mask=~usable, subpix=5)
    concentration = inner / np.where(flux != 0, flux, np.nan)
    psf_concentration = psf_fraction(psf, inner_r) / psf_fraction(psf, r)

    def touches(bits: int, radius: float = r) -> np.ndarray:
        hit = ((exposure.mask & bits) != 0).astype(np.float64)
        found, _, _ = sep.sum_circle(np.ascontiguousarray(hit), x, y, radius, subpix=1)
        return found > 0

    sat_bits, bad_bits = (
        bitmask(planes, ("SAT",), strict=False),
        bitmask(planes, _BAD, strict=False),
    )
    interp_bits = bitmask(planes, ("INTRP",), strict=False)

    edge = (x < r) | (y < r) | (x > nx - 1 - r) | (y > ny - 1 - r)
    if x.size > 1:
        distances, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        neighbour = distances[:, 1]
    else:
        neighbour = np.full(x.size, np.inf)
    psf_flux, psf_flux_err = psf_photometry(sub, exposure.variance, usable, psf, x, y)
    lon, lat = exposure.wcs.all_pix2world(x, y, 0) if x.size else (x, x)
    table = Table(
        {
            "x": x,
            "y": y,
            "ra": np.asarray(lon, np.float64),
            "dec": np.asarray(lat, np.float64),
            "flux": flux * correction,
            "flux_err": flux_err * correction,
            "aperture_flux": flux,
            "aperture_flux_err": flux_err,
            "psf_flux": psf_flux,
            "psf_flux_err": psf_flux_err,
            "peak": objects["peak"].astype(np.float64),
            "concentration": concentration,
            "unresolved": np.abs(concentration / psf_concentration - 1.0) < 0.1,
            "neighbour_dist": neighbour,
            "flag_edge": edge | ((aflag & sep.APER_TRUNC) != 0),
            "flag_saturated": touches(sat_bits),
            "flag_interpolated": touches(interp_bits),
            "flag_bad": touches(bad_bits),
            "flag_saturated_center": touches(sat_bits, _CENTER),
            "flag_interpolated_center": touches(interp_bits, _CENTER),
            "flag_bad_center": touches(bad_bits, _CENTER),
        }
    )
    table.meta.update({"APERRAD": r, "APCORR": correction, "PSFFWHM": fwhm})
    footprints = seg > 0
    if grow > 0 and footprints.any():
        k = math.ceil(grow)
        yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
        footprints = ndimage.binary_dilation(footprints, structure=xx**2 + yy**2 <= grow**2)
    return Measured(table, footprints)
