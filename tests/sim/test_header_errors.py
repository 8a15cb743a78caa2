"""simulate(wcs_error=, zero_point_error=): same pixels, perturbed headers, a reference
catalogue of the true stars."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

import coaddx
from coaddx.constants import AB_ZERO_NJY
from coaddx.io.fits.exposure import read_calexp

KW = {"n_visits": 2, "shape": (256, 256), "seed": 4, "artifacts": False}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    clean = coaddx.simulate(root / "clean", **KW)
    bad = coaddx.simulate(root / "bad", **KW, wcs_error=2.0, zero_point_error=0.1)
    return clean, bad


def test_pixels_are_unchanged_and_headers_carry_the_drawn_errors(pair):
    clean, bad = pair
    errors = bad.read_truth("calexp_errors")
    assert len(errors) == len(bad.calexps) == len(clean.calexps)
    for a, b in zip(clean.calexps, bad.calexps, strict=True):
        ca, cb = read_calexp(a), read_calexp(b)
        for plane in ("image", "mask", "variance"):
            np.testing.assert_array_equal(ca[plane], cb[plane])
        meta = cb["metadata"]
        (row,) = errors[
            (errors["visit"] == meta["visit"]) & (errors["detector"] == meta["detector"])
        ]
        # PHOTCALIB and MAGZERO moved together by dmag
        dmag = -2.5 * math.log10(meta["photo_calib"] / ca["metadata"]["photo_calib"])
        assert dmag == pytest.approx(row["dmag"], abs=1e-9)
        assert meta["zero_point"] == pytest.approx(
            AB_ZERO_NJY - 2.5 * math.log10(meta["photo_calib"])
        )
        # the reference pixel's sky moved by 2" towards the drawn position angle
        crpix = np.asarray(ca["wcs"].wcs.crpix) - 1
        sa = SkyCoord(*ca["wcs"].all_pix2world([crpix], 0)[0], unit="deg")
        sb = SkyCoord(*cb["wcs"].all_pix2world([crpix], 0)[0], unit="deg")
        assert sa.separation(sb).arcsec == pytest.approx(2.0, rel=1e-6)
        assert sa.position_angle(sb).deg % 360 == pytest.approx(row["pa_deg"], abs=1e-3)
        assert abs(row["rotation_deg"]) <= 0.1 and abs(row["scale"]) <= 1e-3
    assert np.std(errors["dmag"]) > 0.02


def test_reference_catalogue_holds_the_true_stars(pair):
    _, bad = pair
    ref = coaddx.read_reference_catalog(bad.refcat)
    stars = bad.read_truth("sources")
    stars = stars[stars["type"] == "star"]
    np.testing.assert_allclose(ref.ra, stars["ra"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ref.mag, stars["mag"], rtol=0, atol=1e-12)


def test_negative_or_nan_errors_are_refused(tmp_path):
    with pytest.raises(coaddx.ConfigError, match="wcs_error"):
        coaddx.simulate(tmp_path / "a", **KW, wcs_error=-1.0)
    with pytest.raises(coaddx.ConfigError, match="zero_point_error"):
        coaddx.simulate(tmp_path / "b", **KW, zero_point_error=float("nan"))
