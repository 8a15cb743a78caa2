"""fit_tan_sip against a known TAN-SIP WCS and against astropy's fit_wcs_from_points."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS, Sip
from astropy.wcs.utils import fit_wcs_from_points

import coaddx
from coaddx.calibrate.wcs_fit import fit_tan_sip

SHAPE = (2048, 1024)  # rows, columns
CRPIX = ((SHAPE[1] + 1) / 2, (SHAPE[0] + 1) / 2)


def sip_wcs(strength=10.0):
    """A TAN-SIP WCS (0.263"/px, rotated 20 degrees) whose order-2 SIP terms move the
    corners by 3.4-5.2 pixels (``strength`` 10; 0 gives plain TAN)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crpix = CRPIX
    w.wcs.crval = [52.5, -27.8]
    th = np.radians(20.0)
    s = 0.263 / 3600
    w.wcs.cd = s * np.array([[-np.cos(th), np.sin(th)], [np.sin(th), np.cos(th)]])
    r2 = (SHAPE[0] / 2) ** 2 + (SHAPE[1] / 2) ** 2
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[2, 0], a[1, 1], a[0, 2] = 0.6, -0.4, 0.3
    b[2, 0], b[1, 1], b[0, 2] = -0.2, 0.5, 0.7
    k = strength / r2
    w.sip = Sip(a * k, b * k, None, None, w.wcs.crpix)
    w.wcs.set()
    return w


def _sep(a, b, x, y):
    pa = SkyCoord(*a.all_pix2world(x, y, 0), unit="deg")
    pb = SkyCoord(*b.all_pix2world(x, y, 0), unit="deg")
    return pa.separation(pb).arcsec


def _grid(step=64):
    gy, gx = np.mgrid[0 : SHAPE[0] : step, 0 : SHAPE[1] : step]
    return gx.ravel().astype(float), gy.ravel().astype(float)


def test_sip_distortion_is_about_5_px_at_the_corners():
    w = sip_wcs()
    corners = np.array([[0.0, 0.0], [SHAPE[1] - 1.0, SHAPE[0] - 1.0], [0.0, SHAPE[0] - 1.0]])
    offsets = corners - (np.array(CRPIX) - 1.0)  # (u, v) from the reference pixel
    shift = np.hypot(*(w.sip_pix2foc(corners, 0) - offsets).T)  # the SIP terms, px
    assert np.all((3.0 < shift) & (shift < 7.0)), shift


def test_noise_free_points_give_back_the_wcs_exactly():
    true = sip_wcs()
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, SHAPE[1] - 1, 200), rng.uniform(0, SHAPE[0] - 1, 200)
    ra, dec = true.all_pix2world(x, y, 0)
    start = (true.wcs.crval[0] + 3e-3, true.wcs.crval[1] - 2e-3)  # ~10" off
    fit = fit_tan_sip(x, y, ra, dec, crpix=CRPIX, crval=start, order=2)
    np.testing.assert_allclose(fit.wcs.crval, true.wcs.crval, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fit.wcs.cd, true.wcs.cd, rtol=1e-9)
    np.testing.assert_allclose(fit.sip.a, true.sip.a, rtol=0, atol=1e-13)
    np.testing.assert_allclose(fit.sip.b, true.sip.b, rtol=0, atol=1e-13)
    assert _sep(fit, true, *_grid()).max() < 1e-6


def test_noisy_points_agree_with_astropy_fit_wcs_from_points():
    true = sip_wcs()
    rng = np.random.default_rng(2)
    n = 300
    x, y = rng.uniform(0, SHAPE[1] - 1, n), rng.uniform(0, SHAPE[0] - 1, n)
    ra, dec = true.all_pix2world(x, y, 0)
    xn, yn = x + rng.normal(0, 0.05, n), y + rng.normal(0, 0.05, n)  # 0.05 px centroids
    ours = fit_tan_sip(xn, yn, ra, dec, crpix=CRPIX, crval=tuple(true.wcs.crval), order=2)
    theirs = fit_wcs_from_points(
        (xn, yn), SkyCoord(ra, dec, unit="deg"), proj_point="center", sip_degree=2
    )
    gx, gy = _grid()
    print(
        f'\nvs truth: ours {_sep(ours, true, gx, gy).max():.5f}", '
        f'astropy {_sep(theirs, true, gx, gy).max():.5f}"; '
        f'ours vs astropy {_sep(ours, theirs, gx, gy).max():.6f}"'
    )
    # least-squares fits of the same model (astropy also frees CRPIX) to the same points:
    # as close to the truth, and within the 0.013" centroid noise of each other
    rms = lambda a, b: np.sqrt(np.mean(_sep(a, b, gx, gy) ** 2))  # noqa: E731
    assert rms(ours, true) <= 1.1 * rms(theirs, true)
    assert _sep(ours, theirs, gx, gy).max() < 0.01
    assert _sep(ours, true, gx, gy).max() < 0.01


def test_plain_tan_and_too_few_stars():
    true = sip_wcs(strength=0.0)
    x, y = _grid(256)
    ra, dec = true.all_pix2world(x, y, 0)
    fit = fit_tan_sip(x, y, ra, dec, crpix=CRPIX, crval=tuple(true.wcs.crval), order=1)
    assert fit.sip is None and fit.wcs.ctype[0] == "RA---TAN"
    assert _sep(fit, true, *_grid()).max() < 1e-6
    with pytest.raises(coaddx.CalibrationError, match="needs 6 stars, got 5"):
        fit_tan_sip(x[:5], y[:5], ra[:5], dec[:5], crpix=CRPIX, crval=(52.5, -27.8), order=2)
    with pytest.raises(coaddx.CalibrationError, match="degenerate"):
        line = np.arange(10.0)
        fit_tan_sip(
            line,
            2 * line,
            *true.all_pix2world(line, 2 * line, 0),
            crpix=CRPIX,
            crval=(52.5, -27.8),
            order=2,
        )
