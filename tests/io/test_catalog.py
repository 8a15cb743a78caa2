"""read_reference_catalog: FITS, ECSV and Parquet tables, units, proper motions, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table
from astropy.time import Time

import coaddx
from coaddx.io.catalog import read_reference_catalog
from coaddx.model.catalog import MJD_J2000


def _table(n=5):
    rng = np.random.default_rng(2)
    return Table(
        {
            "ra": rng.uniform(150, 151, n),
            "dec": rng.uniform(1, 2, n),
            "phot_g_mean_mag": rng.uniform(15, 20, n),
            "err": np.full(n, 0.01),
        }
    )


@pytest.mark.parametrize("suffix", [".fits", ".ecsv", ".parquet"])
def test_every_format_reads_the_same_numbers(tmp_path, suffix):
    t = _table()
    t.write(tmp_path / f"ref{suffix}")
    cat = read_reference_catalog(tmp_path / f"ref{suffix}", mag_err="err")
    np.testing.assert_array_equal(cat.ra, t["ra"])
    np.testing.assert_array_equal(cat.dec, t["dec"])
    np.testing.assert_array_equal(cat.mag, t["phot_g_mean_mag"])
    np.testing.assert_array_equal(cat.mag_err, t["err"])
    assert len(cat) == 5 and cat.pm_ra is None


def test_units_are_converted_and_unitless_columns_are_degrees(tmp_path):
    t = _table()
    t["ra_h"] = (t["ra"] / 15.0) * u.hourangle
    t["dec_as"] = (t["dec"] * 3600.0) * u.arcsec
    t["g"] = t["phot_g_mean_mag"] * u.mag
    t.write(tmp_path / "units.ecsv")
    cat = read_reference_catalog(tmp_path / "units.ecsv", ra="ra_h", dec="dec_as", mag="g")
    np.testing.assert_allclose(cat.ra, t["ra"], rtol=1e-12)
    np.testing.assert_allclose(cat.dec, t["dec"], rtol=1e-12)
    np.testing.assert_allclose(cat.mag, t["phot_g_mean_mag"])


def test_proper_motions_move_stars_to_the_exposure_epoch(tmp_path):
    t = Table(
        {
            "ra": [150.0, 10.0],
            "dec": [60.0, -20.0],
            "phot_g_mean_mag": [16.0, 17.0],
            "pmra": [500.0, -80.0] * u.mas / u.yr,
            "pmdec": [-1000.0, 40.0] * u.mas / u.yr,
        }
    )
    t.write(tmp_path / "pm.ecsv")
    cat = read_reference_catalog(tmp_path / "pm.ecsv", pm_ra="pmra", pm_dec="pmdec", epoch=2016.0)
    mjd = MJD_J2000 + 26.0 * 365.25  # 2026.0
    moved = cat.at_epoch(mjd)
    start = SkyCoord(
        t["ra"] * u.deg,
        t["dec"] * u.deg,
        pm_ra_cosdec=t["pmra"],
        pm_dec=t["pmdec"],
        obstime=Time(2016.0, format="jyear"),
        distance=1 * u.kpc,
        radial_velocity=0 * u.km / u.s,
    )
    want = start.apply_space_motion(new_obstime=Time(mjd, format="mjd"))
    sep = SkyCoord(moved.ra * u.deg, moved.dec * u.deg).separation(want).to_value(u.mas)
    assert sep.max() < 1.0, sep  # linear motion over 10 years: sub-mas
    assert moved.dec[0] == pytest.approx(60.0 - 10.0 / 3600, abs=1e-9)
    assert cat.at_epoch(float("nan")) is cat


def test_bad_catalogues_raise_clear_errors(tmp_path):
    t = _table()
    t.write(tmp_path / "ref.fits")
    with pytest.raises(coaddx.InputError, match=r"no column 'gmag'.*phot_g_mean_mag"):
        read_reference_catalog(tmp_path / "ref.fits", mag="gmag")
    t["bad"] = t["ra"] * u.mag
    t.write(tmp_path / "bad.fits")
    with pytest.raises(coaddx.InputError, match=r"'bad'.*not convertible to deg"):
        read_reference_catalog(tmp_path / "bad.fits", ra="bad")
    with pytest.raises(coaddx.InputError, match="no reference catalogue"):
        read_reference_catalog(tmp_path / "missing.fits")
    (tmp_path / "ref.txt").write_text("x")
    with pytest.raises(coaddx.InputError, match="suffix"):
        read_reference_catalog(tmp_path / "ref.txt")
    with pytest.raises(coaddx.InputError, match="need the catalogue epoch"):
        read_reference_catalog(tmp_path / "ref.fits", pm_ra="ra", pm_dec="dec")
    (tmp_path / "garbage.fits").write_bytes(b"not a fits file")
    with pytest.raises(coaddx.InputError, match="cannot read"):
        read_reference_catalog(tmp_path / "garbage.fits")
    t2 = _table()
    t2["dec"] = t2["dec"] + 120.0  # not declinations in degrees
    t2.write(tmp_path / "rad.fits")
    with pytest.raises(coaddx.InputError, match="declinations"):
        read_reference_catalog(tmp_path / "rad.fits")
