"""HealSparse property maps of a coadd (issue 16) against a brute-force numpy reduction over the
coadd pixels, each pixel centre placed on the sky with astropy's ``all_pix2world``."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

import coaddx
from coaddx.coadd.config import AssembleConfig
from coaddx.model.skymap import wcs_to_header_string
from coaddx.testing import random_warps

healsparse = pytest.importorskip("healsparse")
hpgeom = pytest.importorskip("hpgeom")

NSIDE = 4096  # ~0.86 arcmin: ~14 x 14 coadd pixels of 3.6 arcsec per HEALPix pixel
FLOATS = ("n_image", "first_mjd", "last_mjd", "mean_mjd", "mean_psf_fwhm")


def tiny_coadd(n_visits=3, shape=(36, 44), seed=2, epochs=True):
    ds = random_warps(n_visits, shape, seed=seed, mask_frac=0.3)
    rng = np.random.default_rng(seed)
    ds["mjd"] = ("visit", 60000.0 + np.sort(rng.uniform(0, 400, n_visits)))
    ds["psf_fwhm"] = ("visit", rng.uniform(2.0, 4.0, n_visits))
    weights = np.linspace(0.5, 2.0, n_visits)
    weights[0] = 0.0  # visit 0 is never used: no bit 0 anywhere
    coadd = coaddx.assemble(
        ds, AssembleConfig(interp=None, epoch_planes=epochs), weights=weights
    ).compute()
    coadd = coadd.assign_coords(x=coadd["x"] + 7, y=coadd["y"] + 3)  # a patch inside its tract
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval, wcs.wcs.crpix, wcs.wcs.cdelt = [150.0, 2.0], [20.0, 15.0], [-1e-3, 1e-3]
    coadd.attrs["wcs"] = wcs_to_header_string(wcs)
    return coadd, wcs, (7, 3)


def brute_force(coadd, wcs, origin):
    ny, nx = coadd["n_image"].shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = wcs.all_pix2world(xx.ravel() + origin[0], yy.ravel() + origin[1], 0)
    pix = hpgeom.angle_to_pixel(NSIDE, ra, dec, nest=True, lonlat=True)
    want = {k: {} for k in (*FLOATS, "input_map")}
    for p in np.unique(pix):  # loop over HEALPix pixels: a reference, not the method
        sel = pix == p
        want["n_image"][p] = coadd["n_image"].values.ravel()[sel].mean()
        for key, fn in (
            ("first_mjd", np.min),
            ("last_mjd", np.max),
            ("mean_mjd", np.mean),
            ("mean_psf_fwhm", np.mean),
        ):
            v = coadd[key].values.ravel()[sel].astype(np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                want[key][p] = fn(v)
        words = coadd["input_bitmap"].values.reshape(coadd["input_bitmap"].shape[0], -1)[:, sel]
        bits = np.bitwise_or.reduce(words, axis=1)
        if bits.any():
            want["input_map"][p] = bits
    return np.unique(pix), want


def test_property_maps_equal_brute_force():
    coadd, wcs, origin = tiny_coadd()
    maps = coaddx.property_maps(coadd, NSIDE, nside_coverage=64)
    assert set(maps) == {*FLOATS, "input_map"}
    touched, want = brute_force(coadd, wcs, origin)
    assert 6 <= touched.size <= 30
    np.testing.assert_array_equal(np.sort(maps["n_image"].valid_pixels), touched)
    for key in FLOATS:
        m = maps[key]
        assert m.nside_sparse == NSIDE and m.nside_coverage == 64
        pix = np.array(sorted(want[key]))
        np.testing.assert_array_equal(np.sort(m.valid_pixels), pix)
        ref = np.array([want[key][p] for p in pix])
        if key in ("first_mjd", "last_mjd"):
            np.testing.assert_array_equal(m[pix], ref)
        else:
            np.testing.assert_allclose(m[pix], ref, rtol=1e-12)
    imap = maps["input_map"]
    assert imap.is_wide_mask_map and imap.wide_mask_maxbits == 8  # 3 bits round up to a byte
    pix = np.array(sorted(want["input_map"]))
    np.testing.assert_array_equal(np.sort(imap.valid_pixels), pix)
    for v in range(3):
        expect = np.array(
            [bool((want["input_map"][p][0] >> np.uint64(v)) & np.uint64(1)) for p in pix]
        )
        np.testing.assert_array_equal(imap.check_bits_pix(pix, [v]), expect)
    assert not imap.check_bits_pix(pix, [0]).any()  # the zero-weight visit
    assert imap.check_bits_pix(pix, [1]).any() and imap.check_bits_pix(pix, [2]).any()


def test_more_than_64_visits_and_row_blocks_and_the_store(tmp_path, monkeypatch):
    coadd, wcs, origin = tiny_coadd(n_visits=70, shape=(30, 40), seed=5)
    base = coaddx.property_maps(coadd, NSIDE)
    monkeypatch.setattr("coaddx.coadd.property_maps._BLOCK_PIXELS", 37)  # one row per block
    blocked = coaddx.property_maps(coadd, NSIDE)
    _, want = brute_force(coadd, wcs, origin)
    for key in base:
        pix = np.sort(base[key].valid_pixels)
        np.testing.assert_array_equal(np.sort(blocked[key].valid_pixels), pix)
        np.testing.assert_allclose(blocked[key][pix], base[key][pix], rtol=1e-14)  # sum order
    imap = base["input_map"]
    pix = np.array(sorted(want["input_map"]))
    for v in (1, 63, 64, 69):
        expect = [
            bool((want["input_map"][p][v // 64] >> np.uint64(v % 64)) & np.uint64(1)) for p in pix
        ]
        np.testing.assert_array_equal(imap.check_bits_pix(pix, [v]), expect)
    coaddx.write_coadd(coadd, tmp_path / "c.zarr")
    from_store = coaddx.property_maps(tmp_path / "c.zarr", NSIDE)
    paths = coaddx.write_property_maps(from_store, tmp_path / "maps")
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        f"{k}.fits" for k in base
    )
    for key, path in paths.items():
        back = healsparse.HealSparseMap.read(str(path))
        pix = np.sort(base[key].valid_pixels)
        np.testing.assert_array_equal(np.sort(back.valid_pixels), pix)
        np.testing.assert_array_equal(from_store[key][pix], blocked[key][pix])  # same blocks
        np.testing.assert_array_equal(back[pix], from_store[key][pix])


def test_without_epoch_planes_only_n_image_and_bad_nside():
    coadd, wcs, origin = tiny_coadd(epochs=False)
    maps = coaddx.property_maps(coadd, NSIDE)
    assert list(maps) == ["n_image"]
    touched, want = brute_force_n_image(coadd, wcs, origin)
    np.testing.assert_array_equal(np.sort(maps["n_image"].valid_pixels), touched)
    np.testing.assert_allclose(maps["n_image"][touched], want, rtol=1e-12)
    for bad in (0, 1000, 2**30, 4.0, True):
        with pytest.raises(coaddx.ConfigError, match="nside must be a power of 2"):
            coaddx.property_maps(coadd, bad)
    with pytest.raises(coaddx.ConfigError, match="nside_coverage"):
        coaddx.property_maps(coadd, 16, nside_coverage=32)
    del coadd.attrs["wcs"]
    with pytest.raises(coaddx.InputError, match="no 'wcs'"):
        coaddx.property_maps(coadd, NSIDE)


def brute_force_n_image(coadd, wcs, origin):
    ny, nx = coadd["n_image"].shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = wcs.all_pix2world(xx.ravel() + origin[0], yy.ravel() + origin[1], 0)
    pix = hpgeom.angle_to_pixel(NSIDE, ra, dec, nest=True, lonlat=True)
    n = coadd["n_image"].values.ravel()
    touched = np.unique(pix)
    return touched, np.array([n[pix == p].mean() for p in touched])


def test_a_clear_error_without_healsparse(monkeypatch):
    coadd, _, _ = tiny_coadd(epochs=False)
    monkeypatch.setattr("coaddx.coadd.property_maps.healsparse", None)
    with pytest.raises(coaddx.ConfigError, match=r"pip install 'coaddx\[maps\]'"):
        coaddx.property_maps(coadd, NSIDE)
