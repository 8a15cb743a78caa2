"""The epoch and property planes of a coadd and its inputs table (issue 16), against numpy
brute force over the warp cube read back from the store."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

import coaddx
from coaddx.coadd.config import AssembleConfig
from coaddx.io.inputs import INPUT_COLUMNS
from coaddx.model.masks import bitmask, mask_planes
from coaddx.model.skymap import wcs_to_header_string
from coaddx.testing import random_warps

BIT = {k: 1 << v for k, v in mask_planes().items()}
ON = AssembleConfig(epoch_planes=True)
EPOCH = ("first_mjd", "last_mjd", "mean_mjd", "mean_psf_fwhm", "input_bitmap", "contributed")


def with_metadata(ds, seed=0):
    rng = np.random.default_rng(seed)
    n = ds.sizes["visit"]
    ds["mjd"] = ("visit", 60000.0 + np.sort(rng.uniform(0, 400, n)))
    ds["exptime"] = ("visit", np.full(n, 30.0))
    ds["band"] = ("visit", np.array(["r"] * n))
    ds["photo_calib"] = ("visit", rng.uniform(0.5, 2.0, n))
    ds["detectors"] = ("visit", np.array(["1,2"] * n))
    return ds


def brute_force(ds, weights, alt, bad):
    """First / last / weight-mean MJD, weight-mean FWHM and the used flags, in numpy."""
    mask = np.asarray(ds["mask"].values, np.int64) | alt
    w = np.asarray(weights, np.float64)
    used = ((mask & bad) == 0) & (np.isfinite(w) & (w > 0))[:, None, None]
    t = np.asarray(ds["mjd"].values)[:, None, None]
    f = np.asarray(ds["psf_fwhm"].values)[:, None, None]
    wc = np.where(used, w[:, None, None], 0.0)
    n = used.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "first_mjd": np.where(n > 0, np.where(used, t, np.inf).min(axis=0), np.nan),
            "last_mjd": np.where(n > 0, np.where(used, t, -np.inf).max(axis=0), np.nan),
            "mean_mjd": np.where(n > 0, (wc * t).sum(axis=0) / wc.sum(axis=0), np.nan),
            "mean_psf_fwhm": np.where(n > 0, (wc * f).sum(axis=0) / wc.sum(axis=0), np.nan),
            "used": used,
        }


def bitmap_flags(bitmap, n):
    return np.stack([(bitmap[v // 64] >> np.uint64(v % 64)) & np.uint64(1) for v in range(n)])


@pytest.mark.parametrize("n_visits", [7, 70])
def test_epoch_planes_equal_brute_force_from_the_store(tmp_path, n_visits):
    ds = with_metadata(random_warps(n_visits, (36, 44), seed=n_visits), seed=1)
    coaddx.write_warps(ds, tmp_path / "w.zarr")
    warps = coaddx.open_warps(tmp_path / "w.zarr")
    alt = np.zeros(ds["mask"].shape, np.int64)
    alt[2, 5:20, 3:30] = BIT["CLIPPED"]  # CompareWarp-style clipped artifacts are not used
    alt[-1, :, 10:12] = BIT["CLIPPED"]
    cfg = AssembleConfig(
        bad_mask_planes=("NO_DATA", "BAD", "SAT", "EDGE", "CLIPPED"), epoch_planes=True
    )
    weights = np.linspace(0.5, 2.0, n_visits)
    weights[3] = 0.0  # left out: never used, not contributed
    coadd = coaddx.assemble(warps, cfg, weights=weights, alt_masks=alt.astype(np.int32))
    coaddx.write_coadd(coadd, tmp_path / "c.zarr")
    got = coaddx.open_coadd(tmp_path / "c.zarr")
    cube = warps.compute()
    bad = bitmask(cube.attrs["mask_planes"], cfg.bad_mask_planes, strict=False)
    assert bad & BIT["CLIPPED"]
    want = brute_force(cube, weights, alt, bad)
    for key in ("first_mjd", "last_mjd"):
        np.testing.assert_array_equal(got[key].values, want[key])
    for key in ("mean_mjd", "mean_psf_fwhm"):
        np.testing.assert_allclose(
            got[key].values, want[key], rtol=1e-6 if "fwhm" in key else 1e-13
        )
    assert got["first_mjd"].dtype == np.float64 and got["mean_psf_fwhm"].dtype == np.float32
    bitmap = got["input_bitmap"].values
    assert bitmap.shape == (-(-n_visits // 64), 36, 44) and bitmap.dtype == np.uint64
    np.testing.assert_array_equal(bitmap_flags(bitmap, n_visits).astype(bool), want["used"])
    np.testing.assert_array_equal(want["used"].sum(axis=0), got["n_image"].values)
    assert not want["used"][2, 5:20, 3:30].any()
    np.testing.assert_array_equal(got["contributed"].values, want["used"].any(axis=(1, 2)))
    assert not got["contributed"].values[3]
    assert np.isnan(got["mean_mjd"].values[got["n_image"].values == 0]).all()


def test_epoch_planes_do_not_depend_on_subregion_or_chunking():
    ds = with_metadata(random_warps(70, (50, 60), seed=4))
    base = coaddx.assemble(ds, AssembleConfig(interp=None, epoch_planes=True)).compute()
    assert base["input_bitmap"].shape[0] == 2
    for sub in (8, 16, 33):
        other = coaddx.assemble(
            ds, AssembleConfig(interp=None, subregion_size=sub, epoch_planes=True)
        ).compute()
        xr.testing.assert_identical(base[list(EPOCH)].drop_attrs(), other[list(EPOCH)].drop_attrs())
    chunked = ds.chunk({"visit": 9, "y": 17, "x": 40})
    other = coaddx.assemble(
        chunked, AssembleConfig(interp=None, subregion_size=(24, 12), epoch_planes=True)
    ).compute()
    xr.testing.assert_identical(base[list(EPOCH)].drop_attrs(), other[list(EPOCH)].drop_attrs())


def test_epoch_planes_are_lazy_until_written(tmp_path):
    coaddx.write_warps(with_metadata(random_warps(4, (32, 32))), tmp_path / "p.zarr")
    ds = coaddx.open_warps(tmp_path / "p.zarr")

    def refuse(*args, **kwargs):
        raise AssertionError("assemble computed something")

    with dask.config.set(scheduler=refuse):
        coadd = coaddx.assemble(ds.drop_vars("variance_meanclip"), ON)  # lazy weights too
        assert all(dask.is_dask_collection(coadd[v].data) for v in EPOCH)
    coaddx.write_coadd(coadd, tmp_path / "c.zarr")
    assert set(EPOCH) <= set(coaddx.open_coadd(tmp_path / "c.zarr").data_vars)


def test_epoch_planes_switch_off_and_stores_without_metadata_still_stack(tmp_path):
    ds = random_warps(5, (20, 24), seed=3)  # no mjd: a store written without visit metadata
    coaddx.write_warps(ds.drop_vars("psf_fwhm"), tmp_path / "old.zarr")
    coadd = coaddx.assemble(coaddx.open_warps(tmp_path / "old.zarr"), ON).compute()
    assert "input_bitmap" in coadd and "contributed" in coadd
    assert not {"first_mjd", "mean_mjd", "mean_psf_fwhm"} & set(coadd.data_vars)
    off = coaddx.assemble(with_metadata(ds)).compute()  # off by default
    assert not set(EPOCH) & set(off.data_vars)
    on = coaddx.assemble(with_metadata(ds), ON).compute()
    core = ["image", "variance", "mask", "n_image"]
    xr.testing.assert_identical(on[core].drop_attrs(), off[core].drop_attrs())
    partial = with_metadata(ds)
    partial["mjd"].values[1] = np.nan
    with pytest.warns(coaddx.InputWarning, match=r"visit\(s\) \[101\] have no MJD"):
        some = coaddx.assemble(partial, ON)
    assert "first_mjd" not in some and "mean_psf_fwhm" in some
    with pytest.raises(coaddx.ConfigError, match="epoch_planes"):
        AssembleConfig(epoch_planes="yes")


def test_inputs_table_matches_the_store_records(tmp_path):
    ds = with_metadata(random_warps(6, (24, 24), seed=5))
    coaddx.write_warps(ds, tmp_path / "w.zarr")
    warps = coaddx.open_warps(tmp_path / "w.zarr")
    weights = np.array([1.0, 0.0, 2.0, 1.0, 3.0, 1.0])
    coaddx.write_coadd(coaddx.assemble(warps, ON, weights=weights), tmp_path / "c.zarr")
    table = coaddx.coadd_inputs(tmp_path / "c.zarr")
    assert table.colnames == list(INPUT_COLUMNS)
    assert len(table) == 12  # two detectors per visit
    np.testing.assert_array_equal(table["visit"], np.repeat(ds["visit"].values, 2))
    np.testing.assert_array_equal(table["detector"], np.tile([1, 2], 6))
    np.testing.assert_array_equal(table["mjd"], np.repeat(ds["mjd"].values, 2))
    np.testing.assert_array_equal(table["psf_fwhm"], np.repeat(ds["psf_fwhm"].values, 2))
    np.testing.assert_array_equal(table["weight"], np.repeat(weights, 2))
    np.testing.assert_allclose(
        table["zero_point"], np.repeat(31.4 - 2.5 * np.log10(ds["photo_calib"].values), 2)
    )
    # the zero point reproduces the record's calibration: nJy per count
    np.testing.assert_allclose(
        10 ** (-0.4 * (table["zero_point"] - 31.4)), np.repeat(ds["photo_calib"].values, 2)
    )
    assert (table["band"] == "r").all() and (table["exptime"] == 30.0).all()
    assert list(table["contributed"]) == [True, True, False, False] + [True] * 8
    assert (table["footprint"] == "").all() and table.meta["CONTRIB"] == "bitmap"


def test_inputs_table_takes_footprints_and_reads_coadds_without_it(tmp_path):
    ds = with_metadata(random_warps(2, (16, 16), seed=6))
    ds["footprints"] = ("visit", np.array(['{"1": [[0, 0], [9, 0], [9, 9]], "2": [[1, 1]]}', ""]))
    coadd = coaddx.assemble(ds, ON)
    table = coaddx.coadd_inputs(coadd)
    assert (
        table["footprint"][0] == "[[0, 0], [9, 0], [9, 9]]" and table["footprint"][1] == "[[1, 1]]"
    )
    assert table["footprint"][2] == ""
    old = coaddx.assemble(ds, AssembleConfig(epoch_planes=False))
    del old.attrs["inputs"]  # what a coadd written before the inputs table holds
    wcs = WCS(naxis=2)
    wcs.wcs.ctype, wcs.wcs.crval, wcs.wcs.cdelt = ["RA---TAN", "DEC--TAN"], [10, 5], [1e-4, 1e-4]
    old.attrs["wcs"] = wcs_to_header_string(wcs)
    coaddx.write_coadd(old, tmp_path / "old.zarr")
    table = coaddx.coadd_inputs(tmp_path / "old.zarr")
    assert list(table["visit"]) == [100, 101] and table.meta["CONTRIB"] == "weight"
    assert np.isnan(table["mjd"]).all() and list(table["detector"]) == [-1, -1]
    out = coaddx.export_fits(tmp_path / "old.zarr", tmp_path / "old.fits")
    with fits.open(out) as hdul:
        assert hdul[-1].name == "INPUTS" and "MEAN_MJD" not in hdul
