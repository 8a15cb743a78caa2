"""Bad inputs and configs (issue 14): each gives one clear coaddx error naming the file or field
(or follows a documented, tested rule), and leaves the input files byte for byte unchanged."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

import coaddx
from coaddx.calibrate.config import CalibrateConfig
from coaddx.coadd.compare_warp.config import (
    CompareWarpConfig,
    DetectionConfig,
    ScaleVarianceConfig,
)
from coaddx.coadd.config import AssembleConfig, InterpConfig
from coaddx.constants import IQR_TO_SIGMA
from coaddx.dcr.config import DcrConfig
from coaddx.diffim.config import PsfMatchConfig
from coaddx.graph.interp import interpolate_rows
from coaddx.io.fits.exposure import read_exposure, write_calexp, write_exposure
from coaddx.model.skymap import Patch, make_tan_wcs
from coaddx.testing import random_warps
from coaddx.warp.config import ModelPsfMatchConfig, WarpConfig
from coaddx.warp.exposure import warp_exposure, warp_exposure_box
from coaddx.warp.make_warps import make_warps

CENTRE = SkyCoord(150.0, 2.0, unit="deg")
SHAPE = (32, 32)
PLANES = coaddx.mask_planes()
BIT = {k: 1 << v for k, v in PLANES.items()}


def _wcs(scale=0.2):
    return make_tan_wcs(CENTRE, (15.5, 15.5), scale)


PATCH = Patch.from_wcs(make_tan_wcs(CENTRE, (19.5, 19.5), 0.2), (40, 40))


def _exposure(visit=1, detector=0, band="r", image=None, variance=None, wcs=None):
    rng = np.random.default_rng(visit * 100 + detector)
    img = rng.normal(0.0, 1.0, SHAPE).astype(np.float32) if image is None else image
    var = np.ones(SHAPE, np.float32) if variance is None else variance
    return coaddx.Exposure(
        img,
        np.zeros(SHAPE, np.int32),
        var,
        wcs if wcs is not None else _wcs(),
        dict(PLANES),
        visit=visit,
        detector=detector,
        band=band,
    )


def _calexp(path: Path, **kwargs) -> Path:
    return write_exposure(_exposure(**kwargs), path)


def _lsst_file(path: Path, visit) -> Path:
    """The LSST layout: unnamed primary (no BAND), IMAGE / MASK / VARIANCE as HDUs 1-3."""
    primary = fits.PrimaryHDU()
    primary.header["VISIT"] = visit
    primary.header["DETECTOR"] = 0
    mask_header = fits.Header()
    for name, bit in PLANES.items():
        mask_header[f"HIERARCH MP_{name}"] = bit
    fits.HDUList(
        [
            primary,
            fits.ImageHDU(np.ones(SHAPE, np.float32), header=_wcs().to_header(), name="IMAGE"),
            fits.ImageHDU(np.zeros(SHAPE, np.int32), header=mask_header, name="MASK"),
            fits.ImageHDU(np.ones(SHAPE, np.float32), name="VARIANCE"),
        ]
    ).writeto(path)
    return path


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (the inputs), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


# -- configs: every field checked on construction -------------------------------------------

_DCR = {"effective_wavelength": 500.0, "bandwidth": 100.0}

CONFIG_CASES = [
    (AssembleConfig, {"sigma_clip": True}, "sigma_clip"),  # ran as 1 sigma
    (AssembleConfig, {"sigma_clip": "3"}, "sigma_clip"),
    (AssembleConfig, {"clip_iter": True}, "clip_iter"),
    (AssembleConfig, {"bad_mask_planes": ("NO_DATA", "NOPE")}, "bad_mask_planes"),
    (AssembleConfig, {"mask_propagation_thresholds": {"SAT": True}}, "mask_propagation"),
    (AssembleConfig, {"mask_propagation_thresholds": {"NOPE": 0.1}}, "mask_propagation"),
    (AssembleConfig, {"mask_propagation_thresholds": 0.1}, "mask_propagation"),  # TypeError
    (AssembleConfig, {"calc_error_from_input_variance": 1}, "calc_error_from_input"),
    (AssembleConfig, {"subregion_size": 3.5}, "subregion_size"),  # TypeError
    (InterpConfig, {"fallback_value_type": "USER", "fallback_user_value": -1.0}, "negative"),
    (InterpConfig, {"fallback_user_value": "0"}, "fallback_user_value"),
    (InterpConfig, {"fallback_user_value": float("nan")}, "fallback_user_value"),
    (InterpConfig, {"plane": "NOPE"}, "InterpConfig.plane"),
    (InterpConfig, {"transpose": 1}, "transpose"),
    (InterpConfig, {"negative_fallback_allowed": "yes"}, "negative_fallback_allowed"),
    (WarpConfig, {"grow_full_mask_planes": ("NOPE",)}, "grow_full_mask_planes"),
    (WarpConfig, {"border": True}, "border"),
    (WarpConfig, {"interp_length": 2.5}, "interp_length"),
    (WarpConfig, {"calibrate": "no"}, "calibrate"),
    (WarpConfig, {"allow_mixed_bands": 1}, "allow_mixed_bands"),
    (WarpConfig, {"kernel": 3}, "kernel"),
    (ModelPsfMatchConfig, {"model_psf_fwhm": True}, "model_psf_fwhm"),
    (ModelPsfMatchConfig, {"kernel_size": "21"}, "kernel_size"),  # TypeError
    (ModelPsfMatchConfig, {"kernel_norm_penalty": "x"}, "kernel_norm_penalty"),  # TypeError
    (ModelPsfMatchConfig, {"al_sigmas": (1.0, "a", 3.0)}, "al_sigmas"),
    (PsfMatchConfig, {"kernel_size": "21"}, "kernel_size"),  # TypeError
    (PsfMatchConfig, {"bad_mask_planes": ("NOPE",)}, "bad_mask_planes"),
    (PsfMatchConfig, {"max_ksum_sigma": True}, "max_ksum_sigma"),
    (PsfMatchConfig, {"fit_for_background": "yes"}, "fit_for_background"),
    (PsfMatchConfig, {"df_stencil": 7}, "df_stencil"),
    (PsfMatchConfig, {"spatial_kernel_order": 1.5}, "spatial_kernel_order"),
    (PsfMatchConfig, {"df_regularization": "nope"}, "df_regularization"),
    (DetectionConfig, {"isotropic_grow": "yes"}, "isotropic_grow"),
    (DetectionConfig, {"threshold_value": True}, "threshold_value"),
    (ScaleVarianceConfig, {"mask_planes": ("NOPE",)}, "ScaleVarianceConfig.mask_planes"),
    (CompareWarpConfig, {"prefilter_artifacts_mask_planes": ("NOPE",)}, "prefilter"),
    (CompareWarpConfig, {"spatial_threshold": True}, "spatial_threshold"),
    (DcrConfig, {**_DCR, "convergence_mask_planes": ("NOPE",)}, "convergence_mask_planes"),
    (DcrConfig, {**_DCR, "bad_mask_planes": ("NOPE",)}, "DcrConfig.bad_mask_planes"),
    (DcrConfig, {**_DCR, "n_subfilters": True}, "n_subfilters"),
    (CalibrateConfig, {"sip_order": True}, "sip_order"),
    (CalibrateConfig, {"min_snr": "10"}, "min_snr"),
]


@pytest.mark.parametrize(
    "cls, kwargs, field", CONFIG_CASES, ids=[f"{c.__name__}-{f}" for c, _, f in CONFIG_CASES]
)
def test_config_field_is_validated(cls, kwargs, field):
    with pytest.raises(coaddx.ConfigError, match=field) as err:
        cls(**kwargs)
    assert cls.__name__ in str(err.value)


def test_assemble_config_from_dict_with_an_unknown_interp_field():
    data = AssembleConfig().to_dict()
    data["interp"]["fallback"] = 1.0
    with pytest.raises(coaddx.ConfigError, match=r"AssembleConfig.interp.*fallback"):
        AssembleConfig.from_dict(data)


def test_make_warps_refuses_a_config_that_is_not_a_warp_config(inputs, tmp_path):
    path = _calexp(inputs / "c.fits")
    before = _digest(inputs)
    with pytest.raises(coaddx.ConfigError, match="WarpConfig"):
        make_warps([path], PATCH, tmp_path / "w.zarr", config={"kernel": "lanczos3"})
    assert _digest(inputs) == before and not (tmp_path / "w.zarr").exists()


def test_negative_user_fallback_is_allowed_when_asked():
    """InterpImageConfig.validate: negative USER only with negativeFallbackAllowed; then used."""
    InterpConfig(
        fallback_value_type="USER", fallback_user_value=-5.0, negative_fallback_allowed=True
    )
    image = np.full((6, 8), 3.0, np.float32)
    mask = np.zeros((6, 8), np.int32)
    mask[2] = BIT["NO_DATA"]
    out, _, out_mask = interpolate_rows(
        *(da.from_array(a) for a in (image, np.ones_like(image), mask)),
        bad_bits=BIT["NO_DATA"],
        intrp_bit=BIT["INTRP"],
        kind="USER",
        user_value=-5.0,
        negative_allowed=True,
    )
    np.testing.assert_array_equal(out.compute()[2], -5.0)
    assert (out_mask.compute()[2] & BIT["INTRP"]).all()


def _brute_meanclip(values, n_iter, k=3.0):
    """MEANCLIP by the book: pass 0 about the median (k * 0.7413 IQR), then about the clipped
    mean (k * its standard deviation), each pass over the whole sample."""
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    centre, half = med, k * IQR_TO_SIGMA * (q3 - q1)
    for _ in range(n_iter):
        kept = x[np.abs(x - centre) <= half]
        centre, half = kept.mean(), k * kept.std(ddof=1)
    return centre


def test_meanclip_fallback_uses_afw_three_iterations():
    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 10.0, (40, 50)).astype(np.float32)
    tail = rng.random(image.shape) < 0.25
    image[tail] += rng.exponential(40.0, tail.sum()).astype(np.float32)
    mask = np.zeros(image.shape, np.int32)
    mask[7] = BIT["NO_DATA"]  # a whole bad row gets the fallback
    three, two = _brute_meanclip(image, 3), _brute_meanclip(image, 2)
    assert abs(three - two) > 1e-3 * three  # the data tell 2 from 3 iterations
    out, _, _ = interpolate_rows(
        *(da.from_array(a) for a in (image, np.ones_like(image), mask)),
        bad_bits=BIT["NO_DATA"],
        intrp_bit=BIT["INTRP"],
        kind="MEANCLIP",
    )
    np.testing.assert_allclose(out.compute()[7], three, rtol=1e-6)


def test_remove_mask_planes_naming_a_plane_the_data_lack_warns_and_goes_on():
    ds = random_warps(4, (16, 20), seed=2)
    before = {v: ds[v].values.copy() for v in ("image", "variance", "mask")}
    with pytest.warns(coaddx.InputWarning, match="'GHOST'"):
        got = coaddx.assemble(ds, AssembleConfig(remove_mask_planes=("NOT_DEBLENDED", "GHOST")))
        got = got.compute()
    with warnings.catch_warnings():
        warnings.simplefilter("error", coaddx.InputWarning)
        ref = coaddx.assemble(ds, AssembleConfig(remove_mask_planes=("NOT_DEBLENDED",))).compute()
    for v in ("image", "variance", "mask", "n_image"):
        np.testing.assert_array_equal(got[v].values, ref[v].values)
    for v, arr in before.items():
        np.testing.assert_array_equal(ds[v].values, arr)


# -- exposure files: header values -----------------------------------------------------------


@pytest.mark.parametrize(
    "keyword, value",
    [("VISIT", "abc"), ("VISIT", 1000.7), ("DETECTOR", 2.5), ("DETECTOR", "x1")],
)
def test_read_exposure_refuses_a_non_integer_id(inputs, keyword, value):
    path = _calexp(inputs / "c.fits")
    fits.setval(path, keyword, value=value, ext=0)
    before = _digest(inputs)
    with pytest.raises(coaddx.InputError, match=keyword) as err:
        read_exposure(path)
    assert str(path) in str(err.value) and repr(value) in str(err.value)
    assert _digest(inputs) == before


@pytest.mark.parametrize("value", ["abc", 1000.7])
def test_make_warps_refuses_a_non_integer_visit(inputs, tmp_path, value):
    """The header pass of make_warps (a raw ValueError for 'abc'; 1000.7 was truncated)."""
    path = _calexp(inputs / "c.fits")
    fits.setval(path, "VISIT", value=value, ext=0)
    before = _digest(inputs)
    with pytest.raises(coaddx.InputError, match="VISIT") as err:
        make_warps([path], PATCH, tmp_path / "w.zarr")
    assert str(path) in str(err.value)
    assert _digest(inputs) == before and not (tmp_path / "w.zarr").exists()


@pytest.mark.parametrize("value", ["abc", 1000.7])
def test_lsst_layout_refuses_a_non_integer_visit(inputs, value):
    """The LSST layout took a non-integer VISIT for visit 0."""
    path = _lsst_file(inputs / "lsst.fits", value)
    before = _digest(inputs)
    with pytest.raises(coaddx.InputError, match="VISIT") as err:
        read_exposure(path)
    assert str(path) in str(err.value)
    assert _digest(inputs) == before


def test_lsst_layout_with_an_integral_float_visit_reads(inputs):
    assert read_exposure(_lsst_file(inputs / "lsst.fits", 1002.0)).visit == 1002


def test_write_calexp_refuses_a_non_integer_visit(tmp_path):
    exp = _exposure()
    with pytest.raises(coaddx.InputError, match="visit") as err:
        write_calexp(
            tmp_path / "c.fits",
            exp.image,
            exp.mask,
            exp.variance,
            exp.wcs,
            mask_planes=PLANES,
            metadata={"visit": 1000.7, "detector": 0, "band": "r"},
        )
    assert "1000.7" in str(err.value) and not list(tmp_path.iterdir())


def test_a_file_without_a_visit_keyword(inputs, tmp_path):
    path = _lsst_file(inputs / "lsst.fits", 5)
    with fits.open(path, mode="update") as hdul:
        del hdul[0].header["VISIT"]
    before = _digest(inputs)
    with pytest.raises(coaddx.InputError, match="VISIT") as err:
        make_warps([path], PATCH, tmp_path / "w.zarr")
    assert str(path) in str(err.value) and _digest(inputs) == before


def test_a_file_that_is_not_fits(inputs, tmp_path):
    path = inputs / "c.fits"
    path.write_bytes(b"not a FITS file at all" * 100)
    before = _digest(inputs)
    with pytest.raises(coaddx.InputError) as err:
        make_warps([path], PATCH, tmp_path / "w.zarr")
    assert str(path) in str(err.value) and _digest(inputs) == before


# -- exposure files: the WCS -----------------------------------------------------------------


def _nan_wcs(card):
    w = _wcs()
    if card == "CRVAL":
        w.wcs.crval = [np.nan, 2.0]
    elif card == "CRPIX":
        w.wcs.crpix = [np.inf, 16.5]
    else:
        w.wcs.cd = [[np.nan, 0.0], [0.0, 1e-4]]
    return w


@pytest.mark.parametrize("card", ["CRVAL", "CRPIX", "CD"])
def test_non_finite_wcs_of_an_exposure_is_unreadable(tmp_path, card):
    """Reported as "not overlapping" before."""
    exp = _exposure(wcs=_nan_wcs(card))
    with pytest.raises(coaddx.InputError, match=f"unreadable WCS.*{card}") as err:
        make_warps([exp], PATCH, tmp_path / "w.zarr")
    assert "visit 1 detector 0" in str(err.value) and not (tmp_path / "w.zarr").exists()


def test_non_finite_crval_in_a_file_is_an_unreadable_wcs(inputs, tmp_path):
    path = _calexp(inputs / "c.fits")
    with fits.open(path, mode="update") as hdul:
        hdul["IMAGE"].header["CRVAL1"] = 9.87654321e107  # wcslib's UNDEFINED: NaN once read
    before = _digest(inputs)
    for call in (
        lambda: read_exposure(path),
        lambda: make_warps([path], PATCH, tmp_path / "w.zarr"),
    ):
        with pytest.raises(coaddx.InputError, match=r"unreadable WCS.*CRVAL") as err:
            call()
        assert str(path) in str(err.value)
    assert _digest(inputs) == before and not (tmp_path / "w.zarr").exists()


def test_an_unparsable_nan_card_is_an_unreadable_wcs(inputs, tmp_path):
    path = _calexp(inputs / "c.fits")
    raw = path.read_bytes()
    at = raw.index(b"CRVAL1  =")
    path.write_bytes(
        raw[:at] + b"CRVAL1  = ".ljust(10) + b"NAN".rjust(20).ljust(70) + raw[at + 80 :]
    )
    before = _digest(inputs)
    with pytest.raises(coaddx.InputError, match="unreadable WCS") as err:
        make_warps([path], PATCH, tmp_path / "w.zarr")
    assert str(path) in str(err.value) and _digest(inputs) == before


def test_write_exposure_refuses_a_non_finite_wcs(tmp_path):
    with pytest.raises(coaddx.InputError, match=r"unreadable WCS.*CRVAL"):
        write_exposure(_exposure(wcs=_nan_wcs("CRVAL")), tmp_path / "c.fits")
    assert not list(tmp_path.iterdir())


# -- pixels: no finite pixel, non-finite and non-positive variance ------------------------------


@pytest.mark.parametrize("layer", ["image", "variance", "variance<=0"])
def test_an_exposure_without_a_usable_pixel_fails_its_visit_with_that_message(
    inputs, tmp_path, layer
):
    """Reported as "no pixel of the visit lands on the patch" before."""
    if layer == "variance<=0":
        kwargs = {"variance": np.zeros(SHAPE, np.float32)}
    else:
        kwargs = {layer: np.full(SHAPE, np.nan, np.float32)}
    bad = _calexp(inputs / "nan.fits", visit=2, **kwargs)
    good = _calexp(inputs / "good.fits", visit=3)
    before = _digest(inputs)
    result = make_warps([bad, good], PATCH, tmp_path / "w.zarr")
    assert result.written == (3,) and set(result.failed) == {2}
    assert str(bad) in result.failed[2] and "no finite pixel" in result.failed[2]
    with pytest.raises(coaddx.InputError, match="no finite pixel"):
        warp_exposure_box(read_exposure(bad), PATCH)
    assert _digest(inputs) == before


def test_non_finite_and_non_positive_variance_pixels_are_left_out():
    """The documented rule (warp_exposure_box): NaN / inf variance -> NO_DATA; variance <= 0 ->
    NO_DATA and BAD (LSST IsrTask.maskNegativeVariance); the other pixels are untouched."""
    variance = np.ones(SHAPE, np.float32)
    variance[5, 5], variance[10, 20], variance[20, 10], variance[25, 25] = 0, -3, np.nan, np.inf
    exp, clean = _exposure(variance=variance), _exposure()
    given = (exp.image.copy(), exp.variance.copy(), exp.mask.copy())
    patch = Patch.from_wcs(_wcs(), SHAPE)  # the exposure's own grid: pixel (y, x) -> (y, x)
    config = WarpConfig(kernel="nearest", interp_length=0)
    image, var, mask = warp_exposure(exp, patch, config)
    ref_image, ref_var, ref_mask = warp_exposure(clean, patch, config)
    for y, x in ((5, 5), (10, 20)):
        assert mask[y, x] & BIT["NO_DATA"] and mask[y, x] & BIT["BAD"]
        assert np.isnan(image[y, x]) and np.isnan(var[y, x])
    for y, x in ((20, 10), (25, 25)):
        assert mask[y, x] & BIT["NO_DATA"] and not mask[y, x] & BIT["BAD"]
        assert np.isnan(image[y, x]) and np.isnan(var[y, x])
    others = np.ones(SHAPE, bool)  # beyond the bilinear footprint of the four pixels left out
    for y, x in ((5, 5), (10, 20), (20, 10), (25, 25)):
        others[y - 1 : y + 2, x - 1 : x + 2] = False
    assert np.isfinite(ref_image[others]).sum() > 850
    np.testing.assert_array_equal(image[others], ref_image[others])
    np.testing.assert_array_equal(var[others], ref_var[others])
    np.testing.assert_array_equal(mask[others], ref_mask[others])
    for a, b in zip(given, (exp.image, exp.variance, exp.mask), strict=True):
        np.testing.assert_array_equal(a, b)


# -- the set of inputs: duplicates, bands, pixel scales ------------------------------------------


def test_two_files_with_the_same_visit_and_detector(inputs, tmp_path):
    a = _calexp(inputs / "a.fits", visit=7, detector=1)
    b = _calexp(inputs / "b.fits", visit=7, detector=1)
    before = _digest(inputs)
    with pytest.raises(coaddx.InputError, match="visit 7 detector 1") as err:
        make_warps([a, b], PATCH, tmp_path / "w.zarr")
    assert str(a) in str(err.value) and str(b) in str(err.value)
    assert _digest(inputs) == before and not (tmp_path / "w.zarr").exists()


@pytest.mark.parametrize("how", ["same path", "relative path", "symlink"])
def test_the_same_file_given_twice(inputs, tmp_path, how, monkeypatch):
    path = _calexp(inputs / "a.fits")
    if how == "same path":
        other = path
    elif how == "relative path":
        monkeypatch.chdir(inputs)
        other = Path("a.fits")
    else:
        other = inputs / "link.fits"
        os.symlink(path, other)
    before = _digest(inputs)
    with pytest.raises(coaddx.InputError, match="given twice") as err:
        make_warps([path, other], PATCH, tmp_path / "w.zarr")
    assert str(other) in str(err.value)
    assert _digest(inputs) == before and not (tmp_path / "w.zarr").exists()


def test_the_same_exposure_object_twice_and_two_objects_of_one_detector(tmp_path):
    exp = _exposure(visit=4)
    with pytest.raises(coaddx.InputError, match="given twice"):
        make_warps([exp, exp], PATCH, tmp_path / "w.zarr")
    with pytest.raises(coaddx.InputError, match="both visit 4 detector 0"):
        make_warps([exp, _exposure(visit=4)], PATCH, tmp_path / "w.zarr")
    assert not (tmp_path / "w.zarr").exists()


def test_visits_of_different_bands_are_refused_unless_asked(inputs, tmp_path):
    r = _calexp(inputs / "r.fits", visit=1, band="r")
    g = _calexp(inputs / "g.fits", visit=2, band="g")
    before = _digest(inputs)
    with pytest.raises(coaddx.InputError, match="allow_mixed_bands") as err:
        make_warps([r, g], PATCH, tmp_path / "w.zarr")
    assert all(s in str(err.value) for s in ("'g'", "'r'", str(r), str(g)))
    assert not (tmp_path / "w.zarr").exists()
    result = make_warps(
        [r, g], PATCH, tmp_path / "w.zarr", config=WarpConfig(allow_mixed_bands=True)
    )
    assert sorted(result.written) == [1, 2] and not result.failed
    bands = coaddx.open_warps(tmp_path / "w.zarr")["band"].values.tolist()
    assert sorted(bands) == ["g", "r"]
    assert _digest(inputs) == before


def test_a_visit_whose_detectors_carry_different_bands(inputs, tmp_path):
    a = _calexp(inputs / "a.fits", visit=5, detector=0, band="r")
    b = _calexp(inputs / "b.fits", visit=5, detector=1, band="i")
    before = _digest(inputs)
    for config in (WarpConfig(), WarpConfig(allow_mixed_bands=True)):
        with pytest.raises(coaddx.InputError, match=r"visit 5.*different bands") as err:
            make_warps([a, b], PATCH, tmp_path / "w.zarr", config=config)
        assert str(a) in str(err.value) and str(b) in str(err.value)
    assert _digest(inputs) == before and not (tmp_path / "w.zarr").exists()


def test_a_pixel_scale_far_from_the_patch_warns_naming_the_file(inputs, tmp_path):
    """1000x the patch's scale got 4e11 times the weight without a word; now an InputWarning
    (documented in check_selection); a DECam-like 0.262 vs 0.2 arcsec says nothing."""
    far = write_exposure(_exposure(visit=1, wcs=_wcs(200.0)), inputs / "far.fits")
    near = write_exposure(_exposure(visit=2, wcs=_wcs(0.262)), inputs / "near.fits")
    before = _digest(inputs)
    with pytest.warns(coaddx.InputWarning, match="factor 1e\\+03") as record:
        make_warps([far, near], PATCH, tmp_path / "w.zarr")
    assert len(record) == 1 and str(far) in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", coaddx.InputWarning)
        make_warps([near], PATCH, tmp_path / "w2.zarr")
    assert _digest(inputs) == before


@pytest.mark.realdata
def test_the_three_files_of_one_decam_cp_exposure_are_one_input(real_data, tmp_path):
    """Each of *_ooi_*, *_oow_*, *_ood_* reads the whole CP exposure: two of them are the same
    exposure given twice (they were composited twice before)."""
    folder = real_data / "legacypipe-decam" / "testcase3" / "images"
    files = sorted(folder.rglob("c4d_140818_232043_oo[id]_*.fits"))
    assert len(files) == 2
    before = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    with pytest.raises(coaddx.InputError, match="given twice") as err:
        make_warps(files, PATCH, tmp_path / "w.zarr")
    assert all(str(f) in str(err.value) for f in files)
    assert {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files} == before


@pytest.mark.parametrize("value", [1000.7, True, "x1"])
def test_an_in_memory_exposure_refuses_a_non_integer_visit(value):
    """Exposure(visit=1000.7) was truncated to 1000, and True became visit 1."""
    wcs = make_tan_wcs(SkyCoord(150.0, 2.0, unit="deg"), (4.0, 4.0), 0.2)
    with pytest.raises(coaddx.InputError, match=r"visit = .* is not an integer"):
        coaddx.Exposure(
            np.zeros((8, 8)),
            np.zeros((8, 8), np.int32),
            np.ones((8, 8)),
            wcs,
            coaddx.mask_planes(),
            visit=value,
        )
    assert (
        coaddx.Exposure(
            np.zeros((8, 8)),
            np.zeros((8, 8), np.int32),
            np.ones((8, 8)),
            wcs,
            coaddx.mask_planes(),
            visit=1000.0,
        ).visit
        == 1000
    )
