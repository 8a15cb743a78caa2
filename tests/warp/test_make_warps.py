"""make_warps end to end: simulated calexps and real DECam cutouts, store semantics."""

from dataclasses import replace

import dask
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table

import coaddx
from coaddx.io.fits.exposure import read_exposure, write_exposure
from coaddx.io.zarr.warp_store import WarpStore, check_store, read_patch
from coaddx.model.skymap import Patch, make_tan_wcs
from coaddx.sim.simulate import enclosed_flux_fraction, simulate
from coaddx.warp.make_warps import WarpConfig, make_warps


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate(
        tmp_path_factory.mktemp("mw") / "sim",
        n_visits=5,
        shape=(320, 320),
        seed=21,
        calexps=True,
        n_stars=300,
        n_galaxies=20,
        artifacts=False,
    )


@pytest.fixture(scope="module")
def warped(sim, tmp_path_factory):
    store = tmp_path_factory.mktemp("mw_store") / "warps.zarr"
    result = make_warps(sim.calexps, sim.patch, store)
    return result, coaddx.open_warps(store)


def test_every_visit_is_warped_and_matches_the_simulated_warps(sim, warped):
    result, ds = warped
    truth = coaddx.open_warps(sim.warps)
    assert sorted(result.written) == sorted(truth["visit"].values.tolist())
    assert not result.failed and ds.attrs["wcs"] == truth.attrs["wcs"]
    np.testing.assert_array_equal(ds["x"].values, truth["x"].values)
    ds = ds.sel(visit=truth["visit"].values)
    # same sky, independent noise: where both have data the difference is noise-like
    both = np.isfinite(ds["image"].values) & np.isfinite(truth["image"].values)
    assert both.mean() > 0.5
    pull = (ds["image"].values - truth["image"].values)[both] / np.sqrt(
        ds["variance"].values + truth["variance"].values
    )[both]
    print(
        f"\nwarped calexps vs simulated warps: pull median {np.median(pull):.3f}, "
        f"MAD-sigma {1.4826 * np.median(np.abs(pull - np.median(pull))):.3f}"
    )
    assert abs(np.median(pull)) < 0.05
    # Lanczos-3 correlates the warped noise, so the per-pixel pull is narrower than 1
    assert 0.6 < 1.4826 * np.median(np.abs(pull - np.median(pull))) < 1.1
    for key in ("psf_fwhm", "airmass", "mjd"):
        np.testing.assert_allclose(ds[key].values, truth[key].values, rtol=1e-6)


def test_star_fluxes_and_positions_survive_warping(sim, warped):
    _, ds = warped
    src = Table.read(sim.sources, format="ascii.ecsv")
    stars = src[
        (src["type"] == "star")
        & src["in_patch"]
        & ~src["saturated"]
        & (src["neighbor_dist"] > 16)
        & (src["flux"] > 1e4)
    ]
    img = ds["image"].values
    ref = coaddx.open_warps(sim.warps).sel(visit=ds["visit"].values)["image"].values
    yy, xx = np.mgrid[0 : img.shape[1], 0 : img.shape[2]]
    offsets, ratios, vs_sim = [], [], []
    for s in stars:
        xc, yc = float(s["x_patch"]), float(s["y_patch"])
        ap = (xx - xc) ** 2 + (yy - yc) ** 2 <= 8**2
        for v in range(img.shape[0]):
            stamp = img[v][ap]
            if not np.isfinite(stamp).all():
                continue
            vs_sim.append(stamp.sum() / ref[v][ap].sum())
            fwhm = float(ds["psf_fwhm"].values[v])
            ratios.append(stamp.sum() / (s["flux"] * enclosed_flux_fraction(8, fwhm, sim.psf)))
            w = np.clip(stamp, 0, None)
            offsets.append(
                np.hypot((w * xx[ap]).sum() / w.sum() - xc, (w * yy[ap]).sum() / w.sum() - yc)
            )
    print(
        f"\n{len(ratios)} star measurements: median aperture flux / expected "
        f"{np.median(ratios):.4f}, median centroid offset {np.median(offsets):.4f} px"
    )
    assert len(ratios) >= 10
    print(f"aperture flux warped calexp / simulated warp: median {np.median(vs_sim):.4f}")
    # flux conserved through calibration and warping: same sky rendered directly on the patch
    assert abs(np.median(vs_sim) - 1) < 0.01
    assert abs(np.median(ratios) - 1) < 0.02  # vs truth (neighbours' wings add ~1 %)
    assert np.median(offsets) < 0.1


def test_reuse_skips_done_visits_and_finishes_interrupted_ones(sim, tmp_path):
    store = tmp_path / "w.zarr"
    first = make_warps(sim.calexps[:3], sim.patch, store)
    again = make_warps(sim.calexps, sim.patch, store)
    assert set(again.reused) == set(first.written)
    assert set(first.written) | set(again.written) == set(sim.visits["visit"])
    with pytest.raises(coaddx.StoreError, match="already"):
        make_warps(sim.calexps, sim.patch, store, reuse=False)
    # an interrupted run: slots reserved, nothing committed -> the rerun finishes them
    store2 = tmp_path / "w2.zarr"
    make_warps(sim.calexps[:1], sim.patch, store2)
    ws = WarpStore(store2)
    ws.reserve([int(v) for v in sim.visits["visit"][1:]])
    assert check_store(store2).incomplete
    make_warps(sim.calexps, sim.patch, store2)
    assert check_store(store2).ok
    assert coaddx.open_warps(store2).sizes["visit"] == len(sim.visits)


def test_failed_visit_does_not_spoil_the_others(sim, tmp_path):
    broken = tmp_path / "broken.fits"
    exp = read_exposure(sim.calexps[0])
    write_exposure(exp, broken)
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) - 200_000])  # headers intact, pixels truncated
    others = [p for p in sim.calexps if read_exposure(p).visit != exp.visit]
    result = make_warps([broken, *others], sim.patch, tmp_path / "w.zarr")
    assert exp.visit in result.failed and str(exp.visit) not in result.written
    ds = coaddx.open_warps(tmp_path / "w.zarr")
    assert exp.visit not in ds["visit"].values and ds.sizes["visit"] == len(result.written)
    assert check_store(tmp_path / "w.zarr").ok


def test_patch_from_store_and_bad_inputs(sim, warped, tmp_path):
    result, _ = warped
    patch = read_patch(result.store)
    assert patch.shape == sim.patch.shape and patch.outer_bbox == sim.patch.outer_bbox
    with pytest.raises(coaddx.InputError, match="no such exposure"):
        make_warps([tmp_path / "nope.fits"], sim.patch, tmp_path / "x.zarr")
    with pytest.raises(coaddx.ConfigError, match="kernel"):
        WarpConfig(kernel="cubic")
    far = Patch.from_wcs(make_tan_wcs(SkyCoord(10, 10, unit="deg"), (50, 50), 0.2), (100, 100))
    nothing = make_warps(sim.calexps, far, tmp_path / "far.zarr")
    assert not nothing.written and len(nothing.not_overlapping) == len(sim.calexps)


def test_store_chunk_setting_sets_the_chunk_of_a_new_store(sim, tmp_path):
    with dask.config.set({"coaddx.store-chunk": 64}):
        result = make_warps(sim.calexps[:1], sim.patch, tmp_path / "w.zarr")
    assert result.written and check_store(tmp_path / "w.zarr").chunk == (64, 64)


def _real(real_data, case):
    files = sorted((real_data / "legacypipe-decam" / case / "images").rglob("*_ooi_*.fits"))
    exposures = []
    for f in files:
        exp = read_exposure(f)
        good = (exp.mask == 0) & np.isfinite(exp.variance)
        sky = float(np.median(exp.image[good]))  # CP images are not sky-subtracted
        exposures.append(type(exp)(**{**exp.__dict__, "image": exp.image - sky}))
    return exposures


def _warp_stack(exposures, centre_pixel, shape, tmp_path):
    centre = exposures[0].wcs.pixel_to_world(*centre_pixel)
    patch = Patch.from_wcs(make_tan_wcs(centre, (shape[1] / 2, shape[0] / 2), 0.262), shape)
    config = WarpConfig(border=0, allow_mixed_bands=True)  # testcase3 has g, r and z visits
    result = make_warps(exposures, patch, tmp_path / "w.zarr", config=config)
    assert len(result.written) == len(exposures) and not result.failed
    ds = coaddx.open_warps(tmp_path / "w.zarr")
    return patch, ds, coaddx.assemble(ds, coaddx.AssembleConfig(interp=None)).compute()


def _centroid(img, x0, y0, r=4):
    yy, xx = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
    w = np.clip(img[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1], 0, None)
    return (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()


@pytest.mark.realdata
def test_real_decam_star_lands_where_every_wcs_says(real_data, tmp_path):
    """testcase3: 8 DECam visits (g, r, z; TPV WCSs), warped onto one TAN patch and stacked."""
    exposures = _real(real_data, "testcase3")
    patch, _ds, coadd = _warp_stack(exposures, (20, 25), (80, 80), tmp_path)
    img = coadd["image"].values
    full = coadd["n_image"].values == len(exposures)
    y0, x0 = np.unravel_index(np.argmax(np.where(full, np.nan_to_num(img), -np.inf)), img.shape)
    star = patch.wcs.pixel_to_world(*_centroid(img, x0, y0))
    seps = []
    for exp in exposures:  # the star's centroid in each exposure's own pixels, through its WCS
        px, py = exp.wcs.world_to_pixel(star)
        own = exp.wcs.pixel_to_world(*_centroid(exp.image, round(float(px)), round(float(py))))
        seps.append(own.separation(star).arcsec)
    print(
        f"\nreal DECam testcase3: star position, coadd vs each exposure: {np.round(seps, 3)} arcsec"
    )
    assert np.median(seps) < 0.07 and max(seps) < 0.15  # 0.27 px and 0.57 px of 0.262"


@pytest.mark.realdata
def test_real_decam_masked_pixels_are_excluded(real_data, tmp_path):
    """testcase6: 6 visits on a saturated star (SAT and bleed codes in the DQ planes)."""
    exposures = _real(real_data, "testcase6")
    _, ds, coadd = _warp_stack(exposures, (50, 50), (140, 140), tmp_path)
    p = coaddx.mask_planes()
    bit = {k: 1 << v for k, v in p.items()}
    mask, image = ds["mask"].values, ds["image"].values
    rejected = (mask & (bit["SAT"] | bit["BAD"])) != 0
    assert rejected.sum() > 1000
    ok = ~rejected & np.isfinite(image) & ((mask & (bit["NO_DATA"] | bit["EDGE"])) == 0)
    w = coadd["weight"].values[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        brute = np.where(ok, image * w, 0).sum(0) / np.where(ok, w, 0).sum(0)
    # pixels where some visit was masked and nothing was sigma-clipped: the coadd is the weighted
    # mean of the unmasked visits only, and says so in n_image
    sel = rejected.any(0) & ok.any(0) & ((coadd["mask"].values & bit["CLIPPED"]) == 0)
    assert sel.sum() > 500
    np.testing.assert_allclose(coadd["image"].values[sel], brute[sel], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(coadd["n_image"].values[sel], ok.sum(0)[sel])
    assert (coadd["mask"].values[sel] & bit["REJECTED"]).all()


def test_dcr_observing_fields_travel_from_calexp_headers_to_the_store(sim, tmp_path):
    """elevation, rotation_angle and the weather of each visit's calexp headers come out of
    open_warps as per-visit variables (what assemble_dcr reads)."""
    paths = []
    for i, path in enumerate(p for p in sim.calexps if read_exposure(p).detector == 0):
        exp = read_exposure(path)
        fields = {
            "elevation": 40.0 + i,
            "rotation_angle": 5.0 * i,
            "temperature": 10.0 + i,
            "pressure": 74000.0 + 10 * i,
            "humidity": 20.0 + i,
        }
        paths.append(write_exposure(replace(exp, **fields), tmp_path / f"c{i}.fits"))
    make_warps(paths, sim.patch, tmp_path / "w.zarr")
    ds = coaddx.open_warps(tmp_path / "w.zarr")
    by_visit = {int(read_exposure(p).visit): read_exposure(p) for p in paths}
    for name in ("elevation", "rotation_angle", "temperature", "pressure", "humidity"):
        got = {int(v): float(x) for v, x in zip(ds["visit"].values, ds[name].values, strict=True)}
        assert got == {v: getattr(e, name) for v, e in by_visit.items()}, name
