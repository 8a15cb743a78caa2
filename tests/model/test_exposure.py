"""Tests of coaddx.exposure (the Exposure data model) and the exposure readers of coaddx.io.fits:
the coaddx calexp layout, the LSST layout, the DECam Community Pipeline layout (on the real
Legacy Surveys test cases when ../shared/data/real is present)."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from coaddx.errors import InputError, MaskPlaneError
from coaddx.io.fits.exposure import (
    CP_DQ_CODES,
    decam_dq_to_mask,
    exposure_footprint,
    psfex_image,
    read_exposure,
    write_exposure,
)
from coaddx.model.exposure import Exposure, boundary_pixels, nJy_per_count
from coaddx.model.masks import bitmask, mask_planes, mask_planes_to_header
from coaddx.model.skymap import make_tan_wcs

PLANES = mask_planes()
SHAPE = (30, 40)


@pytest.fixture
def celestial_wcs() -> WCS:
    return make_tan_wcs(SkyCoord(150.0, 2.0, unit="deg"), (20.0, 15.0), 0.2, rotation=0.7)


@pytest.fixture
def exposure(celestial_wcs) -> Exposure:
    rng = np.random.default_rng(1)
    mask = np.zeros(SHAPE, np.int32)
    mask[3, 4] = bitmask(PLANES, ["SAT", "BAD"])
    mask[7, :] = bitmask(PLANES, ["NO_DATA"])
    variance = rng.uniform(1, 2, SHAPE).astype(np.float32)
    variance[7, :] = np.nan
    yy, xx = np.mgrid[-3:4, -3:4]
    return Exposure(
        rng.normal(100, 3, SHAPE).astype(np.float32),
        mask,
        variance,
        celestial_wcs,
        PLANES,
        photo_calib=0.37,
        psf=np.exp(-(xx**2 + yy**2) / 3.0),
        visit=123,
        detector=4,
        band="r",
        mjd=60001.5,
        exptime=30.0,
        airmass=1.25,
        parallactic_angle=-12.0,
        psf_fwhm=3.3,
        metadata={
            "zero_point": 30.5,
            "gain": 1.7,
            "note": "hello",
            "count": 3,
            "flag": True,
            "missing": float("nan"),
            "layout": "made",
        },
    )


def _pix(shape=SHAPE):
    ny, nx = shape
    return np.array([0.0, nx - 1, 0.4 * nx, 3.3]), np.array([0.0, ny - 1, 0.6 * ny, 1.7])


# -- the data model -------------------------------------------------------------------------------


def test_exposure_coerces_dtypes_and_normalises_psf(celestial_wcs):
    exp = Exposure(
        np.ones(SHAPE),
        np.zeros(SHAPE, np.uint16),
        np.ones(SHAPE, ">f8"),
        celestial_wcs,
        PLANES,
        psf=np.ones((5, 5)),
        visit=np.int64(7),
        band=" g ",
    )
    assert exp.image.dtype == np.float32 and exp.mask.dtype == np.int32
    assert exp.variance.dtype == np.dtype("float32") and exp.variance.dtype.isnative
    assert exp.shape == SHAPE and exp.visit == 7 and exp.band == "g"
    assert exp.psf.sum() == pytest.approx(1.0) and math.isnan(exp.mjd)


@pytest.mark.parametrize(
    "case",
    ["shape", "ndim", "mask_dtype", "wcs", "planes", "stray_bits", "photo_calib", "psf", "visit"],
)
def test_exposure_rejects_bad_input_naming_the_path(celestial_wcs, case):
    args = {
        "image": np.zeros(SHAPE),
        "mask": np.zeros(SHAPE, np.int32),
        "variance": np.ones(SHAPE),
        "wcs": celestial_wcs,
        "mask_planes": PLANES,
    }
    kw: dict = {}
    if case == "shape":
        args["variance"] = np.ones((30, 41))
    elif case == "ndim":
        args.update(image=np.zeros((2, *SHAPE)))
    elif case == "mask_dtype":
        args["mask"] = np.zeros(SHAPE, np.float32)
    elif case == "wcs":
        args["wcs"] = WCS(naxis=2)
    elif case == "planes":
        args["mask_planes"] = {"BAD": 0, "SAT": 0}
    elif case == "stray_bits":
        args["mask"] = np.full(SHAPE, 1 << 20, np.int32)
    elif case == "photo_calib":
        kw["photo_calib"] = -1.0
    elif case == "psf":
        kw["psf"] = np.ones((4, 5))
    else:
        kw["visit"] = "seven"
    with pytest.raises(InputError, match=r"some_file\.fits"):
        Exposure(**args, **kw, path=Path("/data/some_file.fits"))


def test_calibrated_multiplies_image_by_c_and_variance_by_c_squared(exposure):
    cal = exposure.calibrated()
    c = exposure.photo_calib
    assert cal.photo_calib == 1.0 and exposure.photo_calib == c  # the original is untouched
    np.testing.assert_allclose(cal.image, exposure.image * c, rtol=1e-6)
    np.testing.assert_allclose(cal.variance, exposure.variance * c**2, rtol=1e-6)
    assert np.isnan(cal.variance[7]).all() and np.array_equal(cal.mask, exposure.mask)
    assert cal.visit == exposure.visit and cal.wcs is exposure.wcs
    assert cal.calibrated().image is not cal.image  # always a new Exposure
    # the AB zero point convention: N counts at zero point zp are a source of zp - 2.5 log10 N
    zp, counts = 28.2, 1234.0
    flux = counts * nJy_per_count(zp)
    assert 31.4 - 2.5 * math.log10(flux) == pytest.approx(zp - 2.5 * math.log10(counts))
    assert nJy_per_count(31.4) == pytest.approx(1.0)


def test_footprint_sky_follows_the_outer_pixel_edges(exposure):
    sky = exposure.footprint_sky(n=2)
    assert sky.shape == (8,)
    x, y = boundary_pixels(SHAPE, 2)
    assert (x[0], y[0]) == (-0.5, -0.5) and (x[1], y[1]) == (19.5, -0.5)
    assert (x[2], y[2]) == (39.5, -0.5) and (x[4], y[4]) == (39.5, 29.5)
    corner = exposure.wcs.pixel_to_world(39.5, 29.5)
    assert sky[4].separation(corner).arcsec < 1e-6
    with pytest.raises(InputError):
        exposure.footprint_sky(n=0)


# -- coaddx layout -------------------------------------------------------------------------------


def test_write_read_exposure_round_trip(tmp_path, exposure):
    path = write_exposure(exposure, tmp_path / "calexp.fits")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic
    got = read_exposure(path)
    assert got.path == path and got.metadata["layout"] == "coaddx"
    for name in ("image", "mask", "variance"):
        np.testing.assert_array_equal(getattr(got, name), getattr(exposure, name))
    np.testing.assert_allclose(got.psf, exposure.psf, rtol=1e-6)
    for name in (
        "photo_calib",
        "visit",
        "detector",
        "band",
        "mjd",
        "exptime",
        "airmass",
        "parallactic_angle",
        "psf_fwhm",
    ):
        assert getattr(got, name) == getattr(exposure, name), name
    expected = {k: v for k, v in exposure.metadata.items() if k not in ("layout", "missing")}
    assert {k: v for k, v in got.metadata.items() if k != "layout"} == expected
    assert got.mask_planes == exposure.mask_planes
    x, y = _pix()
    np.testing.assert_allclose(
        got.wcs.all_pix2world(x, y, 0), exposure.wcs.all_pix2world(x, y, 0), rtol=0, atol=1e-10
    )
    wcs, shape = exposure_footprint(path)
    assert shape == SHAPE
    np.testing.assert_allclose(
        wcs.all_pix2world(x, y, 0), exposure.wcs.all_pix2world(x, y, 0), rtol=0, atol=1e-10
    )


def test_round_trip_in_njy_writes_no_photcalib(tmp_path, exposure):
    cal = exposure.calibrated()
    path = write_exposure(replace(cal, mjd=float("nan")), tmp_path / "njy.fits")
    with fits.open(path) as hdul:
        assert "PHOTCALIB" not in hdul[0].header and "MJD-OBS" not in hdul[0].header
        assert hdul["IMAGE"].header["BUNIT"] == "nJy"
    got = read_exposure(path)
    assert got.photo_calib == 1.0 and math.isnan(got.mjd)
    np.testing.assert_array_equal(got.image, cal.image)
    assert read_exposure(path, photo_calib=2.0).photo_calib == 2.0


# -- LSST layout ---------------------------------------------------------------------------------


def _lsst_hdus(wcs, *, primary=None, image_header=None, named=True):
    rng = np.random.default_rng(3)
    prim = fits.PrimaryHDU(header=fits.Header(primary or {}))
    head = wcs.to_header(relax=True)
    head.update(image_header or {})
    mask = np.zeros(SHAPE, np.int32)
    mask[2, 2] = 1 << PLANES["CR"]
    mask_head = fits.Header()
    for key, bit in mask_planes_to_header(PLANES).items():
        mask_head[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
    names = ("IMAGE", "MASK", "VARIANCE") if named else (None, None, None)
    return fits.HDUList(
        [
            prim,
            fits.ImageHDU(rng.normal(size=SHAPE).astype(np.float32), header=head, name=names[0]),
            fits.ImageHDU(mask, header=mask_head, name=names[1]),
            fits.ImageHDU(np.ones(SHAPE, np.float32), name=names[2]),
            fits.BinTableHDU.from_columns(
                [fits.Column("id", "K", array=np.arange(3))], name="ARCHIVE_INDEX"
            ),
        ]
    )


def test_read_lsst_layout_with_fluxmag0(tmp_path, celestial_wcs):
    hdus = _lsst_hdus(
        celestial_wcs,
        primary={
            "EXPID": 9876,
            "DETECTOR": 12,
            "FILTER": "HSC-R",
            "FLUXMAG0": 6.3e10,
            "EXPTIME": 200.0,
            "HIERARCH BORE-AIRMASS": 1.1,
            "MJD-OBS": 57000.2,
        },
        image_header={"BUNIT": "count"},
    )
    path = tmp_path / "lsst.fits"
    hdus.writeto(path)
    exp = read_exposure(path)
    assert exp.metadata["layout"] == "lsst" and exp.metadata["photo_calib_source"] == "FLUXMAG0"
    assert exp.photo_calib == pytest.approx(10 ** (0.4 * 31.4) / 6.3e10)
    assert exp.visit == 9876 and exp.detector == 12 and exp.band == "HSC-R"
    assert exp.exptime == 200.0 and exp.airmass == 1.1 and exp.mjd == 57000.2
    assert exp.mask_planes == PLANES and exp.mask[2, 2] == 1 << PLANES["CR"]
    np.testing.assert_array_equal(exp.image, hdus[1].data)
    x, y = _pix()
    np.testing.assert_allclose(
        exp.wcs.all_pix2world(x, y, 0), celestial_wcs.all_pix2world(x, y, 0), rtol=0, atol=1e-10
    )
    assert exposure_footprint(path)[1] == SHAPE


def test_read_lsst_layout_units(tmp_path, celestial_wcs):
    path = tmp_path / "njy.fits"
    _lsst_hdus(celestial_wcs, image_header={"BUNIT": "nJy"}, named=False).writeto(path)
    assert read_exposure(path).photo_calib == 1.0  # unnamed HDUs 1-3, already nJy
    path = tmp_path / "photcalib.fits"
    _lsst_hdus(celestial_wcs, primary={"HIERARCH PHOTCALIB": 0.25}).writeto(path)
    assert read_exposure(path).photo_calib == 0.25
    path = tmp_path / "uncalibrated.fits"
    _lsst_hdus(celestial_wcs, image_header={"BUNIT": "adu"}).writeto(path)
    with pytest.raises(InputError, match=r"uncalibrated.fits.*photo_calib"):
        read_exposure(path)
    assert read_exposure(path, photo_calib=3.0).photo_calib == 3.0


# -- errors ------------------------------------------------------------------------------------


def test_read_exposure_missing_hdu(tmp_path, celestial_wcs):
    hdus = _lsst_hdus(celestial_wcs)
    del hdus[3]
    path = tmp_path / "short.fits"
    hdus.writeto(path)
    with pytest.raises(InputError, match=r"short.fits.*VARIANCE"):
        read_exposure(path)


def test_read_exposure_mismatched_shapes(tmp_path, celestial_wcs):
    hdus = _lsst_hdus(celestial_wcs)
    hdus[3] = fits.ImageHDU(np.ones((30, 41), np.float32), name="VARIANCE")
    path = tmp_path / "mismatch.fits"
    hdus.writeto(path)
    with pytest.raises(InputError, match=r"mismatch.fits.*variance shape"):
        read_exposure(path)


def test_read_exposure_without_mask_planes_or_wcs(tmp_path, celestial_wcs):
    hdus = _lsst_hdus(celestial_wcs)
    for key in [k for k in hdus[2].header if k.startswith("MP_")]:
        del hdus[2].header[key]
    hdus.writeto(tmp_path / "noplanes.fits")
    with pytest.raises(InputError, match=r"noplanes.fits.*MP_"):
        read_exposure(tmp_path / "noplanes.fits")
    hdus = _lsst_hdus(celestial_wcs)
    for key in ("CTYPE1", "CTYPE2"):
        hdus[1].header[key] = "PIXEL"
    hdus.writeto(tmp_path / "nowcs.fits")
    for func in (read_exposure, exposure_footprint):
        with pytest.raises(InputError, match=r"nowcs.fits.*celestial WCS"):
            func(tmp_path / "nowcs.fits")


def test_read_exposure_garbage_unknown_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(InputError, match=r"garbage\.fits"):
        read_exposure(garbage)
    unknown = tmp_path / "unknown.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)))]).writeto(unknown)
    with pytest.raises(InputError, match=r"unknown.fits.*unknown exposure layout"):
        read_exposure(unknown)
    with pytest.raises(InputError, match=r"nothing\.fits"):
        read_exposure(tmp_path / "nothing.fits")


def _fake_cp(folder: Path, shape=(12, 10), *, ivar_shape=None, wcs=None) -> Path:
    wcs = wcs or make_tan_wcs(SkyCoord(10.0, -5.0, unit="deg"), (5.0, 6.0), 0.262)
    prim = {
        "EXPNUM": 1234,
        "FILTER": "g DECam SDSS c0001 4720.0 1520.0",
        "EXPTIME": 90.0,
        "AIRMASS": 1.2,
        "MJD-OBS": 58000.1,
        "PLVER": "V4.8.2a",
    }
    head = wcs.to_header()
    head.update({"CCDNUM": 5, "GAINA": 4.0, "GAINB": 4.0, "FWHM": 4.2, "AVSKY": 100.0})
    dq = np.zeros(shape, np.int32)
    dq[2, 3], dq[5, 5] = 3, 5
    ivar = np.full(ivar_shape or shape, 0.04, np.float32)
    ivar[2, 3] = 0.0
    base = "c4d_170101_000000_{}_g_ls9.fits"
    for kind, data in (("ooi", np.full(shape, 100.0, np.float32)), ("oow", ivar), ("ood", dq)):
        fits.HDUList(
            [fits.PrimaryHDU(header=fits.Header(prim)), fits.ImageHDU(data, header=head, name="S4")]
        ).writeto(folder / base.format(kind))
    return folder / base.format("ooi")


def test_read_decam_cp_from_any_sibling(tmp_path):
    image = _fake_cp(tmp_path)
    exps = [
        read_exposure(image.with_name(image.name.replace("ooi", k))) for k in ("ooi", "oow", "ood")
    ]
    for exp in exps:
        assert exp.path == image and exp.visit == 1234 and exp.detector == 5
        assert exp.band == "g" and exp.psf is None and exp.psf_fwhm == 4.2
        np.testing.assert_array_equal(exp.variance, exps[0].variance)
    exp = exps[0]
    assert exp.metadata["zero_point_source"].startswith("nominal")
    zp = 26.610 - 2.5 * math.log10(4.0) - 0.17 * 0.2 + 2.5 * math.log10(90.0)
    assert exp.metadata["zero_point"] == pytest.approx(zp)
    assert exp.photo_calib == pytest.approx(nJy_per_count(zp))
    # a flagged (ivar = 0) pixel keeps its plane and gets the median good variance
    good = np.isfinite(exp.variance) & ((exp.mask & bitmask(PLANES, ["SAT"])) == 0)
    assert exp.mask[2, 3] == bitmask(PLANES, ["SAT"])
    assert exp.variance[2, 3] == pytest.approx(np.median(exp.variance[good]))
    assert exp.image[2, 3] == 100.0  # kept; the mask says not to use it
    assert exp.mask[5, 5] == bitmask(PLANES, ["CR"]) and exp.variance[5, 5] == pytest.approx(25)


def test_read_decam_cp_errors(tmp_path):
    image = _fake_cp(tmp_path)
    image.with_name(image.name.replace("ooi", "oow")).unlink()
    with pytest.raises(InputError, match=r"c4d_170101_000000_ooi_g_ls9.fits.*inverse-variance"):
        read_exposure(image)
    other = tmp_path / "other"
    other.mkdir()
    image = _fake_cp(other, ivar_shape=(12, 11))
    with pytest.raises(InputError, match=r"oow_g_ls9.fits: shape \(12, 11\) differs"):
        read_exposure(image)
    with pytest.raises(InputError, match=r"no CCD extension 'N4'"):
        read_exposure(image, ccdname="N4")


def test_decam_dq_codes_and_bits_map_by_plane_name():
    dq = np.array([[0, 1, 3, 0, 1], [2, 4, 5, 6, 7], [8, 9, 0, 0, 0]])
    before = dq.copy()
    mask = decam_dq_to_mask(dq, PLANES)
    assert np.array_equal(dq, before)  # the input is not modified
    b = {name: 1 << bit for name, bit in PLANES.items()}
    assert mask[0, 1] == b["SAT"]  # BAD touching a saturated core is saturated (legacypipe)
    assert mask[0, 4] == b["BAD"]
    assert list(mask[1]) == [b["NO_DATA"], b["SAT"], b["CR"], b["BAD"], b["SUSPECT"]]
    assert mask[2, 0] == b["STREAK"] and mask[2, 1] == b["BAD"]  # unknown code 9 -> BAD
    assert set(CP_DQ_CODES) == set(range(1, 9))
    bits = decam_dq_to_mask(np.array([[1 | 16, 4, 64 | 256, 1 << 13]]), PLANES, codes=False)
    assert list(bits[0]) == [b["BAD"] | b["CR"], b["INTRP"], b["SAT"] | b["EDGE"], b["BAD"]]


def test_psfex_image_polynomial_and_resampling(tmp_path):
    yy, xx = np.mgrid[-7:8, -7:8]
    gauss = np.exp(-(xx**2 + yy**2) / 8.0)
    basis = np.stack([gauss, 0.1 * gauss * (xx > 0), np.zeros_like(gauss)])  # 1, x, y
    head = {
        "POLNAME1": "X_IMAGE",
        "POLNAME2": "Y_IMAGE",
        "POLZERO1": 100.0,
        "POLSCAL1": 50.0,
        "POLZERO2": 200.0,
        "POLSCAL2": 80.0,
        "POLDEG1": 1,
        "PSF_SAMP": 1.0,
        "PSF_FWHM": 4.7,
    }
    col = fits.Column(
        "PSF_MASK", format=f"{basis.size}E", dim="(15,15,3)", array=basis[None].astype(np.float32)
    )
    path = tmp_path / "psf.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([col], header=fits.Header(head))]
    ).writeto(path)
    psf, fwhm = psfex_image(path, x=100.0, y=200.0)
    assert fwhm == 4.7 and psf.shape == (15, 15)
    np.testing.assert_allclose(psf, gauss / gauss.sum(), rtol=1e-6)
    shifted, _ = psfex_image(path, x=150.0, y=0.0)  # dx = 1: adds the second component
    expected = gauss + 0.1 * gauss * (xx > 0)
    np.testing.assert_allclose(shifted, expected / expected.sum(), rtol=1e-6)
    with fits.open(path) as hdul:
        hdul[1].header["PSF_SAMP"] = 0.5
        hdul.writeto(tmp_path / "psf_half.fits")
    half, _ = psfex_image(tmp_path / "psf_half.fits", x=100.0, y=200.0)
    assert half.shape == (7, 7) and half.sum() == pytest.approx(1.0)
    assert np.unravel_index(half.argmax(), half.shape) == (3, 3)


# -- real DECam CP data (Legacy Surveys test cases 3 and 6) ---------------------------------------


def _cp_images(real_data: Path, case: str) -> list[Path]:
    folder = real_data / "legacypipe-decam" / case / "images"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    return sorted(folder.rglob("*_ooi_*.fits"))


@pytest.fixture
def decam(real_data) -> dict[str, list[Exposure]]:
    return {
        case: [read_exposure(p) for p in _cp_images(real_data, case)]
        for case in ("testcase3", "testcase6")
    }


@pytest.mark.realdata
def test_real_decam_visits_are_read(decam):
    assert [len(decam["testcase3"]), len(decam["testcase6"])] == [8, 6]
    for exps in decam.values():
        assert len({e.visit for e in exps}) == len(exps)  # EXPNUM: one visit each
        for e in exps:
            assert e.metadata["layout"] == "decam-cp" and e.band in ("g", "r", "z")
            assert 40 <= e.shape[0] <= 101 and 40 <= e.shape[1] <= 101
            assert e.detector > 0 and e.metadata["ccdname"][0] in "NS"
            assert 50_000 < e.mjd < 60_000 and 1.0 <= e.airmass < 2.5 and e.exptime > 0
            assert 2.0 < e.psf_fwhm < 8.0


@pytest.mark.realdata
def test_real_decam_tpv_wcs_round_trips(decam):
    for exps in decam.values():
        centres = []
        for e in exps:
            x, y = _pix(e.shape)
            ra, dec = e.wcs.all_pix2world(x, y, 0)
            xb, yb = e.wcs.all_world2pix(ra, dec, 0, tolerance=1e-10, maxiter=100)
            assert np.abs(xb - x).max() < 1e-6 and np.abs(yb - y).max() < 1e-6
            with fits.open(e.path) as hdul:
                head = hdul[1].header
            assert head["CTYPE1"] == "RA---TPV"
            tan = head.copy()
            for key in [k for k in tan if k.startswith("PV")]:
                del tan[key]
            tan["CTYPE1"], tan["CTYPE2"] = "RA---TAN", "DEC--TAN"
            # the TPV distortion is applied: without it positions move by > 1 arcsec
            moved = SkyCoord(*WCS(tan).all_pix2world(x, y, 0), unit="deg")
            assert moved.separation(SkyCoord(ra, dec, unit="deg")).arcsec.min() > 1.0
            centres.append(e.wcs.pixel_to_world((e.shape[1] - 1) / 2, (e.shape[0] - 1) / 2))
            wcs, shape = exposure_footprint(e.path)
            assert shape == e.shape and np.allclose(wcs.all_pix2world(x, y, 0), (ra, dec))
        # every visit of a test case is a cutout around the same spot
        sep = SkyCoord(centres).separation(centres[0]).arcsec
        assert sep.max() < 2.0


@pytest.mark.realdata
def test_real_decam_dq_and_ivar_are_mapped(real_data):
    seen: set[int] = set()
    for case in ("testcase3", "testcase6"):
        for path in _cp_images(real_data, case):
            exp = read_exposure(path)
            dq = fits.getdata(path.with_name(path.name.replace("_ooi_", "_ood_")), 1)
            ivar = fits.getdata(path.with_name(path.name.replace("_ooi_", "_oow_")), 1)
            for code in np.unique(dq[dq > 0]):
                seen.add(int(code))
                want = bitmask(PLANES, CP_DQ_CODES[int(code)])
                if code == 1:
                    want |= bitmask(PLANES, ["SAT"])  # BAD next to saturation -> SAT
                assert np.all(exp.mask[dq == code] & want), (path.name, code)
            good = ivar > 0
            assert np.all(np.isfinite(exp.variance[good]) & (exp.variance[good] > 0))
            np.testing.assert_allclose(exp.variance[good], 1.0 / ivar[good], rtol=1e-6)
            nodata = (exp.mask & bitmask(PLANES, ["NO_DATA"])) != 0
            flagged = ~good & (dq > 0)
            # flagged pixels keep their planes with a finite placeholder variance; only
            # unflagged pixels without data are NO_DATA
            assert np.array_equal(nodata, ~good & ~flagged) and np.isnan(exp.variance[nodata]).all()
            assert np.isfinite(exp.variance[flagged]).all()
            np.testing.assert_array_equal(exp.image, fits.getdata(path, 1))  # image unchanged
    assert {3, 4} <= seen  # testcase6 sits on a bright star: saturated cores and bleed trails


@pytest.mark.realdata
def test_real_decam_photometric_calibration_is_plausible(decam):
    """Zero points: DECam CP images are in ADU; their zero point per ADU/s is ~25 (grz).
    Asserted: 24.5 < zp - 2.5 log10(EXPTIME) < 25.6; calibrated per-pixel sky noise
    sqrt(median variance) in nJy within 10-150; and the 5-sigma point-source depth from it,
    m5 = 31.4 - 2.5 log10(5 sigma sqrt(4 pi s^2)), s = FWHM / 2.355, within 22-24.8 mag
    (single DECaLS exposures reach about g 24, r 23.5, z 22.5-23)."""
    for exps in decam.values():
        for e in exps:
            per_second = e.metadata["zero_point"] - 2.5 * math.log10(e.exptime)
            assert 24.5 < per_second < 25.6, (e.path.name, per_second)
            assert e.photo_calib == pytest.approx(nJy_per_count(e.metadata["zero_point"]))
            cal = e.calibrated()
            sigma = float(np.sqrt(np.nanmedian(cal.variance)))
            assert 10.0 < sigma < 150.0, (e.path.name, sigma)
            nea = 4 * math.pi * (e.psf_fwhm / 2.3548) ** 2
            depth = 31.4 - 2.5 * math.log10(5 * sigma * math.sqrt(nea))
            assert 22.0 < depth < 24.8, (e.path.name, depth)
            # the CP image still holds the sky: its median is about the CP's AVSKY
            assert e.metadata["background_subtracted"] is False
            assert 0.8 < np.median(e.image) / e.metadata["sky_counts"] < 1.4


@pytest.mark.realdata
def test_real_decam_psfex_psf(decam):
    for exps in decam.values():
        for e in exps:
            psf = e.psf
            assert psf is not None and psf.shape == (63, 63)
            assert psf.sum() == pytest.approx(1.0)
            assert np.unravel_index(psf.argmax(), psf.shape) == (31, 31)
            fwhm = 2 * math.sqrt((psf >= psf.max() / 2).sum() / math.pi)
            assert 0.7 < fwhm / e.psf_fwhm < 1.3, (e.path.name, fwhm, e.psf_fwhm)
            assert Path(e.metadata["psfex_path"]).is_file()


@pytest.mark.realdata
def test_real_decam_siblings_and_coaddx_round_trip(real_data, tmp_path):
    path = _cp_images(real_data, "testcase6")[0]
    copy = tmp_path / path.name  # a copy with no calib/ folder: no PSF, same pixels
    for kind in ("ooi", "oow", "ood"):
        shutil.copy(
            path.with_name(path.name.replace("_ooi_", f"_{kind}_")),
            tmp_path / path.name.replace("_ooi_", f"_{kind}_"),
        )
    original = read_exposure(path)
    from_dq = read_exposure(tmp_path / path.name.replace("_ooi_", "_ood_"))
    assert from_dq.path == copy and from_dq.psf is None
    np.testing.assert_array_equal(from_dq.mask, original.mask)
    got = read_exposure(write_exposure(original, tmp_path / "calexp.fits"))
    assert got.photo_calib == original.photo_calib and got.visit == original.visit
    np.testing.assert_array_equal(got.variance, original.variance)
    np.testing.assert_allclose(got.psf, original.psf, rtol=1e-6, atol=1e-9)
    x, y = _pix(original.shape)
    np.testing.assert_allclose(
        got.wcs.all_pix2world(x, y, 0), original.wcs.all_pix2world(x, y, 0), rtol=0, atol=1e-9
    )
    assert got.metadata["zero_point"] == original.metadata["zero_point"]
    with pytest.raises(MaskPlaneError):
        replace(original, mask_planes={"BAD": 0})  # the SAT/NO_DATA bits would be unnamed


# -- DCR observing fields (issue 12) -------------------------------------------------------------

DCR_FIELDS = {
    "elevation": 41.5,
    "rotation_angle": -12.25,
    "temperature": 8.5,
    "pressure": 74010.0,
    "humidity": 22.0,
}


def test_dcr_fields_round_trip_through_the_coaddx_layout(tmp_path, exposure):
    src = replace(exposure, **DCR_FIELDS)
    path = write_exposure(src, tmp_path / "calexp.fits")
    with fits.open(path) as hdul:
        head = hdul[0].header
        assert head["BORE-ALT"] == 41.5 and head["ROTANGLE"] == -12.25
        assert head["AIRTEMP"] == 8.5 and head["AIRPRESS"] == 74010.0 and head["HUMIDITY"] == 22
    got = read_exposure(path)
    for name, value in DCR_FIELDS.items():
        assert getattr(got, name) == value, name
        assert name not in got.metadata
    assert math.isnan(read_exposure(write_exposure(exposure, tmp_path / "b.fits")).elevation)


def test_dcr_fields_from_lsst_visitinfo_keywords(tmp_path, celestial_wcs):
    hdus = _lsst_hdus(
        celestial_wcs,
        primary={
            "EXPID": 5,
            "DETECTOR": 1,
            "FILTER": "g",
            "HIERARCH BORE-ALT": 63.0,
            "HIERARCH BORE-ROTANG": 45.0,
            "AIRTEMP": 11.0,
            "AIRPRESS": 74100.0,
            "HUMIDITY": 35.0,
        },
    )
    hdus.writeto(tmp_path / "lsst.fits")
    exp = read_exposure(tmp_path / "lsst.fits")
    assert (exp.elevation, exp.rotation_angle) == (63.0, 45.0)
    assert (exp.temperature, exp.pressure, exp.humidity) == (11.0, 74100.0, 35.0)
    alt = _lsst_hdus(
        celestial_wcs,
        primary={"EXPID": 6, "DETECTOR": 1, "FILTER": "g", "ALTITUDE": 50.0, "ROTANGLE": 3.0},
    )
    alt.writeto(tmp_path / "alt.fits")
    exp = read_exposure(tmp_path / "alt.fits")
    assert (exp.elevation, exp.rotation_angle) == (50.0, 3.0) and math.isnan(exp.pressure)


@pytest.mark.realdata
def test_real_decam_dcr_fields(real_data):
    """Elevation 90 - ZD, weather from OUTTEMP / PRESSURE (hPa) / HUMIDITY, and the
    parallactic angle from HA, DEC and OBS-LAT against astropy's position angle of the zenith
    (at hour angle 0, declination = latitude) seen from the target."""
    for path in _cp_images(real_data, "testcase6"):
        exp = read_exposure(path)
        head = fits.getheader(path, 0)
        assert exp.elevation == pytest.approx(90.0 - head["ZD"])
        assert 1 / math.sin(math.radians(exp.elevation)) == pytest.approx(exp.airmass, abs=0.02)
        assert exp.temperature == head["OUTTEMP"] and exp.humidity == head["HUMIDITY"]
        assert exp.pressure == pytest.approx(head["PRESSURE"] * 100.0)  # "[Torr]" is hPa
        ha = SkyCoord(head["HA"], head["DEC"], unit=("hourangle", "deg"))
        target = SkyCoord(-ha.ra.deg, ha.dec.deg, unit="deg")  # RA = LST - HA, LST = 0
        zenith = SkyCoord(0.0, head["OBS-LAT"], unit="deg")
        want = (target.position_angle(zenith).deg + 180.0) % 360.0 - 180.0
        assert exp.parallactic_angle == pytest.approx(want, abs=1e-6)
