"""Source measurement (algorithms.md 7, step 2): PSF fluxes against the truth and a brute-force
least-squares fit, aperture fluxes corrected to total, the nearest-neighbour distance."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

import coaddx
from coaddx.calibrate.sources import measure_sources, psf_photometry
from coaddx.constants import FWHM_TO_SIGMA
from coaddx.model.exposure import Exposure

FWHM = 4.0
SIGMA = FWHM * FWHM_TO_SIGMA
NOISE = 5.0


def _gaussian(shape, x0, y0, flux):
    """Unit-flux circular Gaussians integrated over each pixel (erf), scaled by ``flux``."""
    from scipy.special import erf

    ny, nx = shape
    ex = np.arange(nx + 1) - 0.5
    ey = np.arange(ny + 1) - 0.5
    cx = 0.5 * (1 + erf((ex[None, :] - x0[:, None]) / (np.sqrt(2) * SIGMA)))
    cy = 0.5 * (1 + erf((ey[None, :] - y0[:, None]) / (np.sqrt(2) * SIGMA)))
    px, py = np.diff(cx, axis=1), np.diff(cy, axis=1)
    return np.einsum("s,sy,sx->yx", flux, py, px)


def _psf_stamp(half=12):
    x = np.array([float(half)])
    return _gaussian((2 * half + 1, 2 * half + 1), x, x, np.ones(1))


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(5)
    side = 20
    gy, gx = np.mgrid[0:side, 0:side]
    x0 = 20.0 + 30.0 * gx.ravel() + rng.uniform(-0.5, 0.5, side * side)
    y0 = 20.0 + 30.0 * gy.ravel() + rng.uniform(-0.5, 0.5, side * side)
    flux = 10 ** rng.uniform(3.5, 5.0, side * side)
    shape = (side * 30 + 10, side * 30 + 10)
    truth = _gaussian(shape, x0, y0, flux)
    image = truth + rng.normal(0.0, NOISE, shape)
    variance = np.full(shape, NOISE**2)
    return x0, y0, flux, truth, image, variance


def test_psf_flux_is_unbiased_with_honest_errors(field):
    x0, y0, flux, _, image, variance = field
    usable = np.ones(image.shape, bool)
    measured, err = psf_photometry(image, variance, usable, _psf_stamp(), x0, y0)
    # The formal error of a fixed-position PSF fit: 1 / sqrt(sum P^2 / sigma^2).
    expected_err = NOISE / np.sqrt((_psf_stamp() ** 2).sum())
    np.testing.assert_allclose(err, expected_err, rtol=2e-3)
    pull = (measured - flux) / err
    assert abs(np.mean(pull)) < 0.15
    assert 0.9 < np.std(pull) < 1.1
    bright = flux > 3e4
    assert abs(np.median(measured[bright] / flux[bright]) - 1) < 1e-3


def test_psf_flux_equals_brute_force_least_squares(field):
    """One star, one masked pixel: the same as numpy's weighted lstsq on the stamp."""
    x0, y0, _, _, image, variance = field
    usable = np.ones(image.shape, bool)
    k = 37
    iy, ix = round(y0[k]), round(x0[k])
    usable[iy + 1, ix - 2] = False
    psf = _psf_stamp()
    measured, err = psf_photometry(image, variance, usable, psf, x0[k : k + 1], y0[k : k + 1])
    # Brute force: the PSF as an analytic Gaussian at the centroid (not an interpolated image).
    half = 12
    sl = np.s_[iy - half : iy + half + 1, ix - half : ix + half + 1]
    model = _gaussian(image.shape, x0[k : k + 1], y0[k : k + 1], np.ones(1))[sl]
    model /= model.sum()
    ok = usable[sl].ravel()
    w = 1 / np.sqrt(variance[sl].ravel()[ok])
    a = (model.ravel()[ok] * w)[:, None]
    b = image[sl].ravel()[ok] * w
    amp = np.linalg.lstsq(a, b, rcond=None)[0][0]
    np.testing.assert_allclose(measured[0], amp, rtol=2e-4)
    np.testing.assert_allclose(err[0], 1 / np.linalg.norm(a), rtol=2e-4)


def test_measured_sources_carry_psf_and_corrected_aperture_fluxes(field):
    x0, y0, flux, _, image, variance = field
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, -5.0]
    wcs.wcs.crpix = [300.0, 300.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    planes = coaddx.mask_planes()
    exposure = Exposure(
        image,
        np.zeros(image.shape, np.int32),
        variance,
        wcs,
        planes,
        psf=_psf_stamp(),
        psf_fwhm=FWHM,
    )
    sources = measure_sources(exposure, threshold=5.0, aperture_radius=8.0).sources
    # Match the detections to the truth (every star is 30 px from the next).
    d = np.hypot(sources["x"][:, None] - x0[None, :], sources["y"][:, None] - y0[None, :])
    nearest = d.argmin(axis=1)
    matched = d.min(axis=1) < 1.0
    assert matched.sum() >= 395
    true = flux[nearest[matched]]
    bright = true > 3e4
    for column in ("psf_flux", "flux"):
        ratio = np.asarray(sources[column])[matched][bright] / true[bright]
        assert abs(np.median(ratio) - 1) < 3e-3, column
    # The neighbour distance is the nearest other detection's (brute force).
    xy = np.column_stack([sources["x"], sources["y"]])
    brute = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(brute, np.inf)
    np.testing.assert_allclose(sources["neighbour_dist"], brute.min(axis=1), rtol=1e-12)
    assert np.all(np.isfinite(sources["psf_flux_err"]) & (sources["psf_flux_err"] > 0))
