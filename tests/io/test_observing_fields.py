"""The DCR observing fields (elevation, rotation_angle, temperature, pressure, humidity) of
the exposure readers: the coaddx calexp layout (round trip and read-only aliases), the LSST
layout (afw VisitInfo keywords), the DECam CP layout (synthetic headers and the real Legacy
Surveys test cases when ../shared/data/real is present), and old warp stores without them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

import coaddx
from coaddx.io.fits.exposure import read_calexp, read_exposure, write_calexp
from coaddx.io.zarr.warps import visit_variables, write_warps
from coaddx.model.masks import mask_planes, mask_planes_to_header
from coaddx.model.skymap import make_tan_wcs
from coaddx.testing import random_warps

PLANES = mask_planes()
SHAPE = (12, 14)
FIELDS = ("elevation", "rotation_angle", "temperature", "pressure", "humidity")
VALUES = {
    "elevation": 52.75,
    "rotation_angle": -101.5,
    "temperature": 6.25,
    "pressure": 73925.0,
    "humidity": 17.5,
}
HPA = 100.0  # Pa


def _wcs():
    return make_tan_wcs(SkyCoord(40.0, -20.0, unit="deg"), (7.0, 6.0), 0.2)


def _planes():
    rng = np.random.default_rng(5)
    image = rng.normal(10, 1, SHAPE).astype(np.float32)
    return image, np.zeros(SHAPE, np.int32), np.ones(SHAPE, np.float32)


def _calexp(path: Path, **extra) -> Path:
    meta = {"visit": 7, "detector": 2, "band": "g", "airmass": 1.3, **extra}
    return write_calexp(path, *_planes(), _wcs(), mask_planes=PLANES, metadata=meta)


# -- coaddx layout -------------------------------------------------------------------------------


def test_coaddx_layout_round_trip_writes_the_afw_keywords(tmp_path):
    path = _calexp(tmp_path / "c.fits", **VALUES)
    head = fits.getheader(path, 0)
    assert head["BORE-ALT"] == 52.75 and head["ROTANGLE"] == -101.5
    assert (head["AIRTEMP"], head["AIRPRESS"], head["HUMIDITY"]) == (6.25, 73925.0, 17.5)
    exp = read_exposure(path)
    assert {k: getattr(exp, k) for k in FIELDS} == VALUES
    assert not set(FIELDS) & set(exp.metadata)
    assert {k: read_calexp(path)["metadata"][k] for k in FIELDS} == VALUES
    # absent keywords read as NaN, and the other fields are untouched
    bare = read_exposure(_calexp(tmp_path / "bare.fits"))
    assert all(math.isnan(getattr(bare, k)) for k in FIELDS) and bare.airmass == 1.3


def test_coaddx_layout_reads_the_alias_keywords(tmp_path):
    path = _calexp(tmp_path / "a.fits", temperature=3.0)
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["HIERARCH BORE-ROTANG"] = 33.5
        hdul[0].header["HIERARCH ELEVATION"] = 61.0
    exp = read_exposure(path)
    assert (exp.rotation_angle, exp.elevation, exp.temperature) == (33.5, 61.0, 3.0)
    path = _calexp(tmp_path / "b.fits")
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["ALTITUDE"] = 44.0
    assert read_exposure(path).elevation == 44.0
    # the written keyword wins over an alias
    path = _calexp(tmp_path / "c.fits", elevation=70.0, rotation_angle=-5.0)
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["ALTITUDE"] = 10.0
        hdul[0].header["HIERARCH BORE-ROTANG"] = 90.0
    exp = read_exposure(path)
    assert (exp.elevation, exp.rotation_angle) == (70.0, -5.0)


# -- LSST layout ---------------------------------------------------------------------------------


def _lsst(path: Path, primary: dict, image_header: dict | None = None) -> Path:
    image, mask, variance = _planes()
    head = _wcs().to_header(relax=True)
    head.update(image_header or {})
    mask_head = fits.Header()
    for key, bit in mask_planes_to_header(PLANES).items():
        mask_head[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
    fits.HDUList(
        [
            fits.PrimaryHDU(header=fits.Header({"EXPID": 9, "DETECTOR": 3, **primary})),
            fits.ImageHDU(image, header=head, name="IMAGE"),
            fits.ImageHDU(mask, header=mask_head, name="MASK"),
            fits.ImageHDU(variance, name="VARIANCE"),
        ]
    ).writeto(path)
    return path


AFW = {
    "BORE-ALT": 58.5,
    "HIERARCH BORE-ROTANG": 12.75,
    "AIRTEMP": 9.5,
    "AIRPRESS": 74460.0,
    "HUMIDITY": 41.0,
}
AFW_VALUES = {
    "elevation": 58.5,
    "rotation_angle": 12.75,
    "temperature": 9.5,
    "pressure": 74460.0,
    "humidity": 41.0,
}


def test_lsst_layout_reads_the_afw_visitinfo_keywords(tmp_path):
    exp = read_exposure(_lsst(tmp_path / "p.fits", {"FILTER": "r", **AFW}))
    assert exp.metadata["layout"] == "lsst" and exp.visit == 9
    assert {k: getattr(exp, k) for k in FIELDS} == AFW_VALUES
    # the same keywords in the IMAGE header only
    exp = read_exposure(_lsst(tmp_path / "i.fits", {"FILTER": "r"}, AFW))
    assert {k: getattr(exp, k) for k in FIELDS} == AFW_VALUES
    # ELEVATION and ROTANGLE are accepted too
    exp = read_exposure(_lsst(tmp_path / "e.fits", {"HIERARCH ELEVATION": 30.0, "ROTANGLE": -7.0}))
    assert (exp.elevation, exp.rotation_angle) == (30.0, -7.0)


def test_lsst_layout_leaves_elevation_nan_when_only_the_airmass_is_known(tmp_path):
    exp = read_exposure(_lsst(tmp_path / "a.fits", {"HIERARCH BORE-AIRMASS": 1.5}))
    assert exp.airmass == 1.5
    assert all(math.isnan(getattr(exp, k)) for k in FIELDS)


# -- DECam CP layout -----------------------------------------------------------------------------


def _cp(folder: Path, cards: list[tuple]) -> Path:
    """A one-CCD DECam CP exposure (image, inverse variance, DQ) with ``cards`` in the primary
    header (``(keyword, value)`` or ``(keyword, value, comment)``)."""
    prim = fits.Header(
        [("EXPNUM", 4321), ("FILTER", "r DECam SDSS"), ("EXPTIME", 60.0), ("AIRMASS", 1.2)]
    )
    for card in cards:
        prim.append(card)
    head = make_tan_wcs(SkyCoord(10.0, -5.0, unit="deg"), (5.0, 6.0), 0.262).to_header()
    head.update({"CCDNUM": 5, "GAINA": 4.0, "GAINB": 4.0})
    base = "c4d_170101_000000_{}_r_ls9.fits"
    shape = (10, 9)
    planes = {
        "ooi": np.full(shape, 50.0, np.float32),
        "oow": np.full(shape, 0.1, np.float32),
        "ood": np.zeros(shape, np.int32),
    }
    for kind, data in planes.items():
        fits.HDUList([fits.PrimaryHDU(header=prim), fits.ImageHDU(data, head, name="N4")]).writeto(
            folder / base.format(kind)
        )
    return folder / base.format("ooi")


def _parallactic_reference(hour_angle_deg: float, dec: float, lat: float) -> float:
    """Position angle (east of north) of the zenith seen from the target, from unit vectors in
    the hour-angle / declination frame (x to the meridian, z to the pole): independent of the
    reader's atan2 formula."""

    def vec(lon: float, lat_: float) -> np.ndarray:
        lon, lat_ = math.radians(lon), math.radians(lat_)
        return np.array(
            [math.cos(lat_) * math.cos(lon), math.cos(lat_) * math.sin(lon), math.sin(lat_)]
        )

    target = vec(-hour_angle_deg, dec)  # west of the meridian: the "RA" (LST - H) is smaller
    zenith = vec(0.0, lat)
    north = np.array([0.0, 0.0, 1.0]) - target[2] * target
    east = np.cross([0.0, 0.0, 1.0], target)
    toward = zenith - (zenith @ target) * target
    return math.degrees(math.atan2(toward @ east, toward @ north))  # |east| = |north|


def test_decam_cp_fields_from_synthetic_headers(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    image = _cp(
        one,
        [
            ("ZD", 35.5),
            ("HA", "-01:30:00.0"),
            ("DEC", "-45:00:00.0"),
            ("OBS-LAT", -30.16606),
            ("OUTTEMP", 12.5),
            ("PRESSURE", 780.0, "[Torr] Barometric pressure (outside)"),
            ("HUMIDITY", 30.0),
        ],
    )
    exp = read_exposure(image)
    assert exp.elevation == pytest.approx(54.5) and exp.temperature == 12.5
    # DECam's "[Torr]" is hPa (the real values are ~780 at 2215 m)
    assert exp.pressure == pytest.approx(780.0 * HPA) and exp.humidity == 30.0
    want = _parallactic_reference(-22.5, -45.0, -30.16606)
    assert exp.parallactic_angle == pytest.approx(want, abs=1e-9)
    assert want < 0  # east of the meridian: the zenith is to the west of north
    assert math.isnan(exp.rotation_angle)

    two = tmp_path / "two"
    two.mkdir()
    image = _cp(
        two,
        [
            ("PARANGLE", 17.25),
            ("HA", "02:00:00"),
            ("DEC", 10.0),
            ("OUTPRESS", 1013.25, "outside pressure, mbar"),
            ("OUTHUM", 55.0),
        ],
    )
    exp = read_exposure(image)
    assert exp.parallactic_angle == 17.25  # the header's own value wins
    assert exp.pressure == pytest.approx(101325.0) and exp.humidity == 55.0
    assert math.isnan(exp.elevation) and math.isnan(exp.temperature)

    three = tmp_path / "three"
    three.mkdir()
    image = _cp(three, [("PRESSURE", 29.9, "[inHg] pressure"), ("HA", "01:00:00"), ("DEC", 0.0)])
    exp = read_exposure(image)
    assert math.isnan(exp.pressure)  # a unit the reader does not know: not guessed
    # no OBS-LAT: the CTIO latitude
    assert exp.parallactic_angle == pytest.approx(
        _parallactic_reference(15.0, 0.0, -30.16606), abs=1e-9
    )
    four = tmp_path / "four"
    four.mkdir()
    exp = read_exposure(_cp(four, [("PRESSURE", 600.0)]))
    assert exp.pressure == pytest.approx(600.0 * HPA)  # no unit named: hPa
    assert math.isnan(exp.parallactic_angle)


@pytest.mark.realdata
def test_real_decam_headers_give_the_observing_fields(real_data):
    folder = real_data / "legacypipe-decam"
    paths = sorted(folder.glob("testcase*/images/**/*_ooi_*.fits"))
    if not paths:
        pytest.skip(f"no DECam CP images under {folder}")
    for path in paths:
        head = fits.getheader(path, 0)
        exp = read_exposure(path)
        assert exp.elevation == pytest.approx(90.0 - head["ZD"]), path.name
        assert exp.temperature == head["OUTTEMP"] and exp.humidity == head["HUMIDITY"]
        # the comment says Torr, but the values are hPa: the standard atmosphere at OBS-ELEV
        # (2215 m, ~775 hPa), give or take the weather; 777 Torr would be 1036 hPa
        assert "Torr" in head.comments["PRESSURE"]
        assert exp.pressure == pytest.approx(head["PRESSURE"] * HPA)
        standard = 101325.0 * (1 - 2.25577e-5 * head["OBS-ELEV"]) ** 5.25588
        assert exp.pressure == pytest.approx(standard, rel=0.02), path.name
        # the ZD and the airmass agree (sec z)
        assert 1 / math.cos(math.radians(head["ZD"])) == pytest.approx(exp.airmass, abs=0.03)
        target = SkyCoord(head["HA"], head["DEC"], unit=("hourangle", "deg"))
        want = _parallactic_reference(target.ra.deg, target.dec.deg, head["OBS-LAT"])
        assert exp.parallactic_angle == pytest.approx(want, abs=1e-9), path.name
        assert math.isnan(exp.rotation_angle)  # the CP headers carry no sky rotation angle
    first = read_exposure(next(p for p in paths if "140818_232043" in p.name))
    assert first.elevation == pytest.approx(47.47)
    assert first.pressure == pytest.approx(77700.0)
    assert (first.temperature, first.humidity) == (19.7, 20.0)


# -- warp stores without the fields --------------------------------------------------------------


def test_old_stores_without_the_fields_still_open(tmp_path):
    old = random_warps(n_visits=3, shape=(16, 20), seed=2)
    write_warps(old, tmp_path / "w.zarr", chunk=16)
    ds = coaddx.open_warps(tmp_path / "w.zarr")
    assert ds.sizes["visit"] == 3 and not set(FIELDS) & set(ds.data_vars)
    # visits appended with the fields: the old visits read NaN
    new = random_warps(n_visits=2, shape=(16, 20), seed=3).assign_coords(visit=[200, 201])
    new["elevation"] = ("visit", [45.0, 50.0])
    write_warps(new, tmp_path / "w.zarr", chunk=16)
    ds = coaddx.open_warps(tmp_path / "w.zarr").sortby("visit")
    np.testing.assert_array_equal(ds["elevation"].values, [np.nan, np.nan, np.nan, 45.0, 50.0])
    got = visit_variables(
        [{"visit": 1, "humidity": None}, {"visit": 2}, {"visit": 3, "humidity": 9}]
    )
    np.testing.assert_array_equal(got["humidity"][1], [np.nan, np.nan, 9.0])
