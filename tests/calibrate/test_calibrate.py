"""calibrate() on a simulated exposure whose header WCS is shifted by 2", rotated by 0.1 degree
and scaled by 1e-3 about the image centre, with its zero point unknown (algorithms.md 7)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS, Sip
from astropy.wcs.utils import fit_wcs_from_points

import coaddx
from coaddx.calibrate.calibrate import calibrate
from coaddx.calibrate.config import CalibrateConfig
from coaddx.constants import AB_ZERO_NJY
from coaddx.io.fits.exposure import read_exposure, write_exposure
from coaddx.model.catalog import ReferenceCatalog


def _grid(shape, step=16):
    gy, gx = np.mgrid[0 : shape[0] : step, 0 : shape[1] : step]
    return gx.ravel().astype(float), gy.ravel().astype(float)


def _sep(wcs_a, wcs_b, shape):
    x, y = _grid(shape, 32)
    a = SkyCoord(*wcs_a.all_pix2world(x, y, 0), unit="deg")
    b = SkyCoord(*wcs_b.all_pix2world(x, y, 0), unit="deg")
    return a.separation(b).arcsec


def _perturbed(wcs, *, shift_arcsec, rotation_deg, scale):
    """A TAN WCS ``wcs`` shifted in RA, rotated and scaled about its reference pixel."""
    out = WCS(naxis=2)
    out.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    out.wcs.crpix = wcs.wcs.crpix
    th = math.radians(rotation_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    out.wcs.cd = rot @ wcs.pixel_scale_matrix * (1 + scale)
    ra, dec = wcs.wcs.crval
    out.wcs.crval = [ra + shift_arcsec / 3600 / math.cos(math.radians(dec)), dec]
    out.wcs.set()
    return out


def _with_sip(wcs, shape, corner_px):
    """``wcs`` (TAN) with order-2 SIP terms that move the farthest corner by ``corner_px``."""
    out = wcs.deepcopy()
    out.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[2, 0], a[1, 1], a[0, 2] = 0.6, -0.4, 0.3
    b[2, 0], b[1, 1], b[0, 2] = -0.2, 0.5, 0.7
    ny, nx = shape
    corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]], float)
    offsets = corners - (np.asarray(wcs.wcs.crpix) - 1.0)
    unit = Sip(a, b, None, None, out.wcs.crpix)
    out.sip = unit
    k = corner_px / np.hypot(*(out.sip_pix2foc(corners, 0) - offsets).T).max()
    out.sip = Sip(a * k, b * k, None, None, out.wcs.crpix)
    out.wcs.set()
    return out


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    sim = coaddx.simulate(
        tmp_path_factory.mktemp("cal") / "sim",
        n_visits=1,
        shape=(1024, 1024),
        seed=3,
        artifacts=False,
        n_stars=1500,
        n_galaxies=200,
    )
    exp = read_exposure(sim.calexps[0])
    ny, nx = exp.shape
    x, y = _grid(exp.shape)
    # the truth as a TAN WCS centred on the detector (8e-6" from the simulator's over the image)
    true = fit_wcs_from_points(
        (x, y), SkyCoord(*exp.wcs.all_pix2world(x, y, 0), unit="deg"), proj_point="center"
    )
    true.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    true.wcs.crval = exp.wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0]
    true.wcs.set()
    assert _sep(true, exp.wcs, exp.shape).max() < 1e-4
    bad = _perturbed(true, shift_arcsec=2.0, rotation_deg=0.1, scale=1e-3)
    stars = sim.read_truth("sources")
    stars = stars[stars["type"] == "star"]
    rng = np.random.default_rng(0)
    mag = np.asarray(stars["mag"]) + rng.normal(0, 0.01, len(stars))
    ref = ReferenceCatalog(
        np.asarray(stars["ra"]), np.asarray(stars["dec"]), mag, mag_err=np.full(len(stars), 0.01)
    )
    perturbed = replace(exp, wcs=bad, photo_calib=5.0)  # PHOTCALIB is what is measured
    return exp, true, perturbed, ref


def test_wcs_and_zero_point_are_recovered(case):
    exp, true, perturbed, ref = case
    assert 1.9 < _sep(perturbed.wcs, true, exp.shape).max() < 3.0  # the header is 2" off
    cal = calibrate(perturbed, ref)
    s = _sep(cal.exposure.wcs, true, exp.shape)
    dzp = 2.5 * math.log10(cal.photometry.photo_calib / exp.photo_calib)
    print(
        f'\nWCS vs truth: rms {np.sqrt(np.mean(s**2)):.4f}", max {s.max():.4f}" '
        f'({cal.astrometry.n_used} matches, fit rms {cal.astrometry.rms_arcsec:.4f}"); zero '
        f"point off by {dzp * 1000:.2f} mmag ({cal.photometry.n_stars} stars, formal error "
        f"{cal.photometry.zero_point_err * 1000:.2f} mmag)"
    )
    assert np.sqrt(np.mean(s**2)) < 0.02 and s.max() < 0.05
    assert abs(dzp) < 0.005
    assert cal.exposure.metadata["magzero_nobj"] == cal.photometry.n_stars
    assert cal.exposure.metadata["magzero"] == pytest.approx(
        cal.photometry.zero_point - 2.5 * math.log10(exp.exptime)
    )
    # only DETECTED changes; image and variance come back as given
    det = np.int32(1 << exp.mask_planes["DETECTED"])
    assert not np.any((cal.exposure.mask ^ perturbed.mask) & ~det)
    assert np.any(cal.exposure.mask & det)
    np.testing.assert_array_equal(cal.exposure.image, perturbed.image)
    np.testing.assert_array_equal(cal.exposure.variance, perturbed.variance)
    assert cal.sources["used_photometry"].sum() == cal.photometry.n_stars
    assert cal.sources["used_astrometry"].sum() >= 0.8 * cal.astrometry.n_used


def test_sip_distortion_of_5_px_is_recovered(case):
    """The stars stay on their pixels, but their sky positions are those of a TAN-SIP WCS
    whose distortion reaches 5 px at the corners; the header is the perturbed TAN WCS."""
    exp, true, perturbed, ref = case
    sip = _with_sip(true, exp.shape, 5.0)
    x, y = true.all_world2pix(ref.ra, ref.dec, 0)
    ref_sip = ReferenceCatalog(*sip.all_pix2world(x, y, 0), ref.mag, mag_err=ref.mag_err)
    assert _sep(sip, true, exp.shape).max() > 0.9  # 5 px of 0.2"
    cal = calibrate(perturbed, ref_sip)
    s = _sep(cal.exposure.wcs, sip, exp.shape)
    print(f'\nSIP: WCS vs truth rms {np.sqrt(np.mean(s**2)):.4f}", max {s.max():.4f}"')
    assert np.sqrt(np.mean(s**2)) < 0.02 and s.max() < 0.05
    assert cal.exposure.wcs.sip is not None


def test_lsst_weights_reach_8_mmag(case):
    exp, _, perturbed, ref = case
    cal = calibrate(perturbed, ref, CalibrateConfig(reference_weights="lsst"))
    assert abs(2.5 * math.log10(cal.photometry.photo_calib / exp.photo_calib)) < 0.008


def test_psf_fluxes_give_the_same_zero_point(case):
    exp, _, perturbed, ref = case
    cal = calibrate(perturbed, ref, CalibrateConfig(photometry_flux="psf"))
    dzp = 2.5 * math.log10(cal.photometry.photo_calib / exp.photo_calib)
    print(f"\nPSF fluxes: zero point off by {dzp * 1000:.2f} mmag ({cal.photometry.n_stars} stars)")
    assert abs(dzp) < 0.005
    used = np.asarray(cal.sources["used_photometry"])
    ratio = np.asarray(cal.sources["psf_flux"])[used] / np.asarray(cal.sources["flux"])[used]
    assert abs(np.median(ratio) - 1) < 0.005


def test_the_fitted_wcs_and_calibration_survive_a_round_trip(case, tmp_path):
    _, _, perturbed, ref = case
    cal = calibrate(perturbed, ref)
    path = write_exposure(cal.exposure, tmp_path / "calibrated.fits")
    back = read_exposure(path)
    assert _sep(back.wcs, cal.exposure.wcs, back.shape).max() < 1e-3
    assert back.photo_calib == pytest.approx(cal.exposure.photo_calib, rel=1e-12)
    # the header's zero points agree with PHOTCALIB: MAGZERO of one count (as the DECam
    # reader's), COADDX MAGZERO of one count per second (LSST's)
    head = fits.getheader(path, 0)
    assert head["PHOTCALIB"] == pytest.approx(cal.photometry.photo_calib, rel=1e-12)
    zp = AB_ZERO_NJY - 2.5 * math.log10(head["PHOTCALIB"])
    assert head["MAGZERO"] == pytest.approx(zp, abs=1e-9)
    assert head["COADDX MAGZERO"] == pytest.approx(zp - 2.5 * math.log10(head["EXPTIME"]))
    assert back.metadata["magzero_nobj"] == cal.photometry.n_stars


def test_failures_are_clear_errors(case):
    _exp, _, perturbed, ref = case
    far = ReferenceCatalog(ref.ra + 10.0, ref.dec, ref.mag)
    with pytest.raises(coaddx.CalibrationError, match="none of the"):
        calibrate(perturbed, far)
    few = ref.select(np.argsort(ref.mag)[:3])
    with pytest.raises(coaddx.CalibrationError, match="min_matches"):
        calibrate(perturbed, few)
    # optional astrometry keeps the header WCS when it fails
    kept = calibrate(perturbed, few, CalibrateConfig(require_astrometry=False, do_photo_cal=False))
    assert kept.astrometry is None and kept.exposure.wcs is perturbed.wcs
    with pytest.raises(coaddx.CalibrationError, match="no photometric star"):
        calibrate(perturbed, ref, CalibrateConfig(min_snr=1e9))
    with pytest.raises(coaddx.ConfigError, match="reference_weights"):
        CalibrateConfig(reference_weights="median")
    with pytest.raises(coaddx.ConfigError, match="photometry_flux"):
        CalibrateConfig(photometry_flux="kron")
