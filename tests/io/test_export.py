"""export_fits: LSST-style FITS from a coadd store, written chunk by chunk, atomically."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import coaddx
from coaddx.cli.main import main
from coaddx.errors import CoaddxError, SchemaError, StoreError
from coaddx.model.skymap import wcs_from_header_string


@pytest.fixture(scope="module")
def coadd_store(tmp_path_factory):
    """A coadd of simulated warps on a patch that is not at the tract origin, stored in
    several chunks per plane."""
    out = tmp_path_factory.mktemp("export")
    sim = coaddx.simulate(
        out / "sim", n_visits=5, shape=(200, 280), seed=9, calexps=False, n_stars=30, n_galaxies=8
    )
    with dask.config.set({"coaddx.memory-per-task": "64MiB"}):
        coadd = coaddx.assemble(
            coaddx.open_warps(sim.warps),
            coaddx.AssembleConfig(subregion_size=64, epoch_planes=True),
        )
    path = coaddx.write_coadd(coadd, out / "coadd.zarr")
    assert len(coaddx.open_coadd(path)["image"].chunks[0]) > 1
    return path


def test_export_fits_round_trips_through_read_exposure(coadd_store, tmp_path):
    out = coaddx.export_fits(coadd_store, tmp_path / "coadd.fits")
    store = coaddx.open_coadd(coadd_store)
    exposure = coaddx.read_exposure(out)
    assert exposure.metadata["layout"] == "lsst" and exposure.photo_calib == 1.0
    np.testing.assert_array_equal(exposure.image, store["image"].values)
    np.testing.assert_array_equal(exposure.variance, store["variance"].values)
    np.testing.assert_array_equal(exposure.mask, store["mask"].values)
    assert exposure.mask_planes == store.attrs["mask_planes"]
    # the FITS WCS maps array pixels where the store's tract WCS maps tract pixels (x, y)
    tract = wcs_from_header_string(store.attrs["wcs"])
    x0, y0 = int(store["x"][0]), int(store["y"][0])
    assert (x0, y0) != (0, 0)
    rows, cols = np.array([0, 17, 199]), np.array([0, 250, 279])
    got = exposure.wcs.pixel_to_world_values(cols, rows)
    want = tract.pixel_to_world_values(cols + x0, rows + y0)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=1e-10)


def test_export_fits_hdus_read_with_astropy(coadd_store, tmp_path):
    out = coaddx.export_fits(coadd_store, tmp_path / "coadd.fits")
    store = coaddx.open_coadd(coadd_store)
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == [
            "PRIMARY",
            "IMAGE",
            "MASK",
            "VARIANCE",
            "N_IMAGE",
            "FIRST_MJD",
            "LAST_MJD",
            "MEAN_MJD",
            "MEAN_PSF_FWHM",
            "INPUTS",
        ]
        for name in ("first_mjd", "last_mjd", "mean_mjd", "mean_psf_fwhm"):
            hdu = hdul[name.upper()]
            np.testing.assert_array_equal(hdu.data, store[name].values)
            assert hdu.header["LTV1"] == -int(store["x"][0])
        assert hdul["MEAN_MJD"].data.dtype == np.dtype(">f8")
        table = coaddx.coadd_inputs(store)
        rows = hdul["INPUTS"].data
        np.testing.assert_array_equal(rows["visit"], table["visit"])
        np.testing.assert_array_equal(rows["mjd"], table["mjd"])
        np.testing.assert_array_equal(rows["weight"], table["weight"])
        np.testing.assert_array_equal(rows["contributed"], table["contributed"])
        assert hdul[0].header["NVISIT"] == 5
        assert hdul["IMAGE"].header["BUNIT"] == "nJy"
        assert hdul["IMAGE"].data.dtype == np.dtype(">f4")
        assert hdul["MASK"].data.dtype == np.dtype(">i4")
        for name, bit in store.attrs["mask_planes"].items():
            assert hdul["MASK"].header[f"MP_{name}"] == bit
        np.testing.assert_array_equal(hdul["N_IMAGE"].data, store["n_image"].values)
        assert hdul["IMAGE"].header["LTV1"] == -int(store["x"][0])
        assert hdul["IMAGE"].header["CRVAL2A"] == int(store["y"][0])
        parent = WCS(hdul["MASK"].header, key="A")  # LSST's pixel WCS of the parent (tract)
        np.testing.assert_allclose(
            parent.wcs_pix2world([[0, 0]], 0)[0], [int(store["x"][0]), int(store["y"][0])]
        )
    assert not list(tmp_path.glob(".coadd.fits.tmp-*"))


def test_export_fits_refuses_to_overwrite_and_keeps_the_old_file(coadd_store, tmp_path):
    out = tmp_path / "coadd.fits"
    out.write_bytes(b"precious")
    with pytest.raises(StoreError, match="exists"):
        coaddx.export_fits(coadd_store, out)
    assert out.read_bytes() == b"precious"
    coaddx.export_fits(coadd_store, out, overwrite=True)
    assert fits.getdata(out, "IMAGE").shape == (200, 280)


def test_export_fits_failure_leaves_no_file(coadd_store, tmp_path):
    def boom(delayed):
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        coaddx.export_fits(coadd_store, tmp_path / "c.fits", compute=boom)
    assert list(tmp_path.iterdir()) == []


def test_export_fits_bad_inputs(tmp_path, coadd_store):
    with pytest.raises(StoreError, match="no coadd store"):
        coaddx.export_fits(tmp_path / "missing.zarr", tmp_path / "x.fits")
    ds = coaddx.open_coadd(coadd_store).drop_vars("variance")
    coaddx.write_coadd(ds, tmp_path / "partial.zarr")
    with pytest.raises(SchemaError, match="lacks \\['variance'\\]"):
        coaddx.export_fits(tmp_path / "partial.zarr", tmp_path / "x.fits")
    assert not (tmp_path / "x.fits").exists()
    assert issubclass(StoreError, CoaddxError)


def test_cli_export_fits(coadd_store, tmp_path, capsys):
    out = tmp_path / "c.fits"
    assert main(["export-fits", str(coadd_store), str(out), "--no-progress"]) == 0
    assert "written" in capsys.readouterr().out
    np.testing.assert_array_equal(
        fits.getdata(out, "VARIANCE"), coaddx.open_coadd(coadd_store)["variance"].values
    )
    assert main(["export-fits", str(coadd_store), str(out), "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err
