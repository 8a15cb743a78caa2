"""The CoaddPsf end to end: calexps with known PSFs -> make_warps (PSF products in the warp
store) -> assemble -> coaddx.coadd_psf, against analytic truth (issue 16)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.wcs import WCS

import coaddx
from coaddx.cli.demo import psf_fwhm_map, psf_rows
from coaddx.cli.quicklook import quicklook_png
from coaddx.errors import InputError, StoreError
from coaddx.model.masks import mask_planes
from coaddx.model.skymap import Patch

SCALE = 0.2 / 3600.0  # deg per pixel
PATCH = (120, 130)  # rows, columns


def tan_wcs(crpix: tuple[float, float], theta_deg: float, scale: float = 1.0) -> WCS:
    """TAN WCS at (150, 2) deg, pixel scale ``scale`` * 0.2", rotated by ``theta_deg``. All
    share the tangent point, so exposure -> patch pixel maps are exactly affine:
    p_patch = CD_p^-1 CD_e (p_e - crpix_e) + crpix_p."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]  # 0-based crpix given
    t = math.radians(theta_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    w.wcs.cd = SCALE * scale * (np.diag([-1.0, 1.0]) @ rot)
    w.wcs.set()
    return w


def gaussian(cov: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Unit-sum Gaussian of covariance ``cov`` ((x, y) order) at the pixel centres of a
    centred odd grid."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    d = np.stack([xx - nx // 2, yy - ny // 2], -1)
    g = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d))
    return g / g.sum()


#: visit -> (detector shape, crpix of the tangent point in detector pixels (0-based), rotation
#: deg, pixel scale, PSF sigma px, coadd weight)
VISITS = {
    1: ((90, 100), (40.0, 50.0), 0.0, 1.0, 1.6, 1.0),
    2: ((100, 80), (20.0, 70.0), 35.0, 1.05, 2.1, 2.0),
    3: ((110, 110), (60.0, 45.0), -70.0, 0.95, 2.6, 3.0),
}
PATCH_CRPIX = (60.0, 55.0)


def affine(visit: int) -> np.ndarray:
    """The exact Jacobian d patch / d exposure of a visit."""
    _, _, theta, scale, _, _ = VISITS[visit]
    return np.linalg.inv(tan_wcs(PATCH_CRPIX, 0.0).wcs.cd) @ tan_wcs((0, 0), theta, scale).wcs.cd


def to_patch(visit: int, ex: np.ndarray, ey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    crpix = VISITS[visit][1]
    j = affine(visit)
    d = np.stack([np.asarray(ex) - crpix[0], np.asarray(ey) - crpix[1]])
    p = j @ d.reshape(2, -1)
    return p[0] + PATCH_CRPIX[0], p[1] + PATCH_CRPIX[1]


def to_exposure(visit: int, x: float, y: float) -> tuple[float, float]:
    crpix = VISITS[visit][1]
    e = np.linalg.solve(affine(visit), [x - PATCH_CRPIX[0], y - PATCH_CRPIX[1]])
    return float(e[0] + crpix[0]), float(e[1] + crpix[1])


def inside(visit: int, x: float, y: float) -> bool:
    (ny, nx), *_ = VISITS[visit]
    ex, ey = to_exposure(visit, x, y)
    return -0.5 <= ex < nx - 0.5 and -0.5 <= ey < ny - 0.5


def truth(x: float, y: float, shape: tuple[int, int], skip: tuple[int, ...] = ()) -> np.ndarray:
    """The weighted analytic sum of the Gaussians J C J^T of the visits containing (x, y)."""
    out, total = np.zeros(shape), 0.0
    for v, (_, _, _, _, sigma, w) in VISITS.items():
        if v in skip or not inside(v, x, y):
            continue
        j = affine(v)
        out += w * gaussian(j @ (sigma**2 * np.eye(2)) @ j.T, shape)
        total += w
    return out / total


@pytest.fixture(scope="module")
def psf_coadd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coadd_psf")
    rng = np.random.default_rng(5)
    exposures = []
    for v, (shape, crpix, theta, scale, sigma, _) in VISITS.items():
        exposures.append(
            coaddx.Exposure(
                image=rng.normal(0.0, 1.0, shape).astype(np.float32),
                mask=np.zeros(shape, np.int32),
                variance=np.ones(shape, np.float32),
                wcs=tan_wcs(crpix, theta, scale),
                mask_planes=mask_planes(),
                psf=gaussian(sigma**2 * np.eye(2), (41, 41)),
                visit=v,
                detector=0,
                psf_fwhm=2.3548 * sigma,
            )
        )
    patch = Patch.from_wcs(tan_wcs(PATCH_CRPIX, 0.0), PATCH)
    store = tmp / "warps.zarr"
    result = coaddx.make_warps(exposures, patch, store)
    assert result.written == (1, 2, 3)
    warps = coaddx.open_warps(store)
    weights = {v: VISITS[v][5] for v in VISITS}
    return store, coaddx.assemble(warps, weights=weights)


POINTS = [(60.0, 55.0), (20.3, 30.7), (100.0, 90.0), (75.5, 20.25), (40.0, 100.0)]


@pytest.mark.parametrize(("x", "y"), POINTS)
def test_coadd_psf_is_the_weighted_analytic_sum(psf_coadd, x, y):
    _, coadd = psf_coadd
    got = coaddx.coadd_psf(coadd, x, y)
    ref = truth(x, y, got.shape)
    assert got.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.abs(got - ref).max() < 1e-3 * ref.max()


def test_the_points_see_different_sets_of_visits():
    sets = {tuple(v for v in VISITS if inside(v, x, y)) for x, y in POINTS}
    assert len(sets) >= 3, sets


@pytest.mark.parametrize("visit", [2, 3])
def test_psf_changes_exactly_at_the_footprint_edge(psf_coadd, visit):
    """Across a rotated detector's edge (x = nx - 0.5 in its frame) the CoaddPsf drops that
    visit within 0.01 px: just inside it is the sum with it, just outside the sum without."""
    _, coadd = psf_coadd
    (ny, nx), *_ = VISITS[visit]
    model = coadd.coadd_psf.model
    found = 0
    for ey in np.linspace(5.0, ny - 6.0, 9):
        xi, yi = (float(a[0]) for a in to_patch(visit, [nx - 0.5 - 0.01], [ey]))
        xo, yo = (float(a[0]) for a in to_patch(visit, [nx - 0.5 + 0.01], [ey]))
        if not (0 <= min(xi, xo) and max(xi, xo) < PATCH[1] - 1 and 0 <= min(yi, yo)):
            continue
        if max(yi, yo) >= PATCH[0] - 1:
            continue
        assert inside(visit, xi, yi) and not inside(visit, xo, yo)
        rows_in, rows_out = model.contributing(xi, yi), model.contributing(xo, yo)
        assert visit in set(model.visit[rows_in]) and visit not in set(model.visit[rows_out])
        if not any(inside(v, xo, yo) for v in VISITS):
            with pytest.raises(InputError, match="no input image"):
                coaddx.coadd_psf(coadd, xo, yo)
            continue
        a, b = coaddx.coadd_psf(coadd, xi, yi), coaddx.coadd_psf(coadd, xo, yo)
        ra, rb = truth(xi, yi, a.shape), truth(xo, yo, b.shape)
        assert np.abs(a - ra).max() < 1e-3 * ra.max()
        assert np.abs(b - rb).max() < 1e-3 * rb.max()
        found += 1
    assert found >= 2


def test_average_position_and_fwhm_map(psf_coadd):
    _, coadd = psf_coadd
    model = coadd.coadd_psf.model
    # the detector centres on the patch, weighted: CoaddPsf's average position
    centres = []
    for v, ((ny, nx), *_) in VISITS.items():
        px, py = to_patch(v, [(nx - 1) / 2.0], [(ny - 1) / 2.0])
        centres.append((px[0], py[0]))
    w = np.array([VISITS[v][5] for v in VISITS])
    want = (np.array(centres) * w[:, None]).sum(axis=0) / w.sum()
    assert model.average_position == pytest.approx(tuple(want), abs=1e-6)
    assert np.array_equal(coaddx.coadd_psf(coadd), model.image(*model.average_position))
    fmap = coaddx.coadd_psf_fwhm(coadd, bin_size=20)
    assert fmap.shape == (6, 7)
    x0 = float(coadd["x"].values[0])
    y0 = float(coadd["y"].values[0])
    for j in (0, 3, 5):
        for i in (1, 4, 6):
            x, y = float(fmap["x"][i]) - x0, float(fmap["y"][j]) - y0
            if not any(inside(v, x, y) for v in VISITS):
                assert np.isnan(fmap.values[j, i])
                continue
            ref = truth(x, y, (61, 61))
            assert fmap.values[j, i] == pytest.approx(
                coaddx.kernels.coadd_psf.psf_fwhm(ref), rel=1e-3
            )


def test_psf_products_travel_with_the_coadd_store(psf_coadd, tmp_path):
    _, coadd = psf_coadd
    path = coaddx.write_coadd(coadd, tmp_path / "coadd.zarr")
    back = coaddx.open_coadd(path)
    for x, y in POINTS[:2]:
        assert np.array_equal(coaddx.coadd_psf(back, x, y), coaddx.coadd_psf(coadd, x, y))
    assert back.coadd_psf.model is back.coadd_psf.model  # cached with the Dataset


def test_fits_export_carries_the_psf_and_the_fwhm_map(psf_coadd, tmp_path):
    from astropy.io import fits

    _, coadd = psf_coadd
    path = coaddx.write_coadd(coadd, tmp_path / "coadd.zarr")
    out = coaddx.export_fits(path, tmp_path / "coadd.fits")
    with fits.open(out) as hdul:
        names = [h.name for h in hdul]
        assert names[:4] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
        assert names[-3:] == ["PSF", "PSF_FWHM", "INPUTS"]  # the inputs table comes last
        psf = hdul["PSF"].data
        x, y = hdul["PSF"].header["PSF_X"], hdul["PSF"].header["PSF_Y"]
        assert (x, y) == ((PATCH[1] - 1) / 2.0, (PATCH[0] - 1) / 2.0)
        ref = truth(x, y, psf.shape)
        assert np.abs(psf - ref).max() < 1e-3 * ref.max()
        fmap = coaddx.coadd_psf_fwhm(coaddx.open_coadd(path))
        assert np.array_equal(hdul["PSF_FWHM"].data, fmap.values.astype(np.float32), equal_nan=True)
        assert hdul["PSF_FWHM"].header["BINSIZE"] == fmap.attrs["bin_size"]
        # the map's WCS puts map pixel (0, 0) on the sky where the coadd has array pixel (x0, y0)
        image_wcs = WCS(hdul["IMAGE"].header)
        map_wcs = WCS(hdul["PSF_FWHM"].header)
        sky_a = image_wcs.pixel_to_world_values(fmap.attrs["x0"], fmap.attrs["y0"])
        sky_b = map_wcs.pixel_to_world_values(0.0, 0.0)
        assert np.allclose(sky_a, sky_b, atol=1e-9)


def test_store_records_and_checks_the_psf_products(psf_coadd):
    store, _ = psf_coadd
    meta = json.loads((store / "direct" / "zarr.json").read_text())
    entry = meta["attributes"]["visits"][0]["psf_products"]
    assert entry["file"] == "psf_products/1.npz" and entry["detectors"] == [0]
    assert coaddx.check_store(store, deep=True).ok


def test_altered_psf_products_are_found(psf_coadd, tmp_path):
    import shutil

    store, _ = psf_coadd
    copy = tmp_path / "warps.zarr"
    shutil.copytree(store, copy)
    f = copy / "direct" / "psf_products" / "2.npz"
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))
    report = coaddx.check_store(copy, deep=True)
    assert report.damaged_visits == (2,)
    with pytest.raises(StoreError, match=r"visit 2: its PSF products file .* was altered"):
        coaddx.open_warps(copy)
    f.unlink()
    assert "missing" in str(coaddx.check_store(copy).damaged[0])


def test_a_store_without_psf_products_stacks_and_names_what_is_missing(psf_coadd, tmp_path):
    """A store written before coaddx stored PSF products (write_warps writes none; neither did
    make_warps before): it opens and stacks; only the CoaddPsf raises, naming the visits."""
    store, coadd = psf_coadd
    warps = coaddx.open_warps(store)
    old = warps.drop_vars(
        [k for k in warps.data_vars if str(k).startswith("psf_") and k != "psf_fwhm"]
    )
    coaddx.write_warps(old.load(), tmp_path / "old.zarr")
    back = coaddx.open_warps(tmp_path / "old.zarr")
    assert "psf_images" not in back
    stacked = coaddx.assemble(back, weights={v: VISITS[v][5] for v in VISITS})
    np.testing.assert_array_equal(stacked["image"].values, coadd["image"].values)
    with pytest.raises(StoreError, match=r"no PSF products for visit\(s\) \[1, 2, 3\].*old\.zarr"):
        coaddx.coadd_psf(stacked, 60.0, 55.0)
    with pytest.raises(StoreError, match="no PSF products"):
        coaddx.coadd_psf_fwhm(stacked)


def test_compare_warp_coadds_leave_out_visits_clipped_at_the_point(psf_coadd):
    """A coadd with per-visit artifact masks (CompareWarp's): where visit 3 was CLIPPED, its
    PSF is not in the CoaddPsf; elsewhere it is; where every covering visit was clipped, all
    are used (LSST's rule)."""
    _, coadd = psf_coadd
    x, y = 60.0, 55.0  # covered by visits 1, 2 and 3
    assert all(inside(v, x, y) for v in VISITS)
    art = np.zeros((3, *PATCH), np.int32)
    art[2, 50:60, 55:65] = 1  # visit 3 clipped around (60, 55)
    clipped = coadd.assign(artifact_mask=(("visit", "y", "x"), art))
    got = coaddx.coadd_psf(clipped, x, y)
    ref = truth(x, y, got.shape, skip=(3,))
    assert np.abs(got - ref).max() < 1e-3 * ref.max()
    assert np.abs(got - truth(x, y, got.shape)).max() > 1e-2 * ref.max()  # it matters
    far = coaddx.coadd_psf(clipped, 40.0, 40.0)
    assert np.array_equal(far, coaddx.coadd_psf(coadd, 40.0, 40.0))
    art[:, 50:60, 55:65] = 1  # all clipped: LSST's sum over all
    every = coadd.assign(artifact_mask=(("visit", "y", "x"), art))
    assert np.array_equal(coaddx.coadd_psf(every, x, y), coaddx.coadd_psf(coadd, x, y))


def test_psf_matched_warps_carry_the_model_psf(tmp_path):
    """PSF-matched warps: the products hold the model PSF (double Gaussian of 7.7 px) at every
    node, the footprint shrunk by the matching kernel's half-width (its pixels there are
    NO_DATA)."""
    from coaddx.model.footprint import points_in_polygon
    from coaddx.model.psf import model_psf

    shape, crpix, theta, scale, sigma, _ = VISITS[2]
    exposure = coaddx.Exposure(
        image=np.zeros(shape, np.float32),
        mask=np.zeros(shape, np.int32),
        variance=np.ones(shape, np.float32),
        wcs=tan_wcs(crpix, theta, scale),
        mask_planes=mask_planes(),
        psf=gaussian(sigma**2 * np.eye(2), (41, 41)),
        visit=2,
    )
    patch = Patch.from_wcs(tan_wcs(PATCH_CRPIX, 0.0), PATCH)
    store = tmp_path / "w.zarr"
    coaddx.make_warps([exposure], patch, store, warp_types=("direct", "psf_matched"))
    direct = coaddx.open_warps(store, "direct")
    matched = coaddx.open_warps(store, "psf_matched")
    model = model_psf(7.7)
    images = matched["psf_images"].values[0]
    c = (images.shape[-1] - model.shape[0]) // 2
    for j in range(3):
        for i in range(3):
            np.testing.assert_allclose(images[j, i, c : c + 23, c : c + 23], model, atol=1e-7)
    half = coaddx.ModelPsfMatchConfig().kernel_size // 2
    (ny, nx) = shape
    ex, ey = np.array([half - 0.5 - 0.05, nx / 2.0]), np.array([ny / 2.0, ny / 2.0])
    px, py = to_patch(2, ex, ey)
    assert points_in_polygon(px, py, direct["psf_polygon"].values[0]).all()
    assert points_in_polygon(px, py, matched["psf_polygon"].values[0]).tolist() == [False, True]


def test_fits_export_of_a_coadd_without_psf_products_has_no_psf_hdus(psf_coadd, tmp_path):
    from astropy.io import fits

    _, coadd = psf_coadd
    bare = coadd.drop_vars([k for k in coadd.data_vars if str(k).startswith("psf_")])
    path = coaddx.write_coadd(bare, tmp_path / "bare.zarr")
    with fits.open(coaddx.export_fits(path, tmp_path / "bare.fits")) as hdul:
        names = [h.name for h in hdul]
        assert names == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "N_IMAGE", "INPUTS"]


def test_the_inputs_table_carries_each_detector_footprint(psf_coadd):
    """coadd_inputs' footprint column is the valid polygon the PSF products store (before, it
    was empty for every coadd make_warps wrote)."""
    _, coadd = psf_coadd
    table = coaddx.coadd_inputs(coadd)
    assert sorted(table["visit"]) == [1, 2, 3]
    for row in table:
        k = int(np.flatnonzero(coadd["psf_visit"].values == row["visit"])[0])
        want = coadd["psf_polygon"].values[k]
        got = np.asarray(json.loads(row["footprint"]))
        assert got.shape[1] == 2 and len(got) >= 3
        assert np.array_equal(got, want[: len(got)])
        assert np.all(want[len(got) :] == got[-1])  # only the padding was dropped
        assert all(inside(row["visit"], x, y) for x, y in got.mean(axis=0, keepdims=True))


def test_the_demo_summary_and_quicklook_show_the_fwhm_map(psf_coadd, tmp_path):
    """The demo's quick-look panel and summary row of the CoaddPsf FWHM: the map of
    coadd_psf_fwhm, between the narrowest and widest input PSF (Gaussian sigma 1.6..2.6 px)."""
    _, coadd = psf_coadd
    fwhm = psf_fwhm_map(coadd)
    assert np.array_equal(fwhm.values, coaddx.coadd_psf_fwhm(coadd).values, equal_nan=True)
    finite = fwhm.values[np.isfinite(fwhm.values)]
    assert finite.size and finite.min() > 2.3548 * 1.6 * 0.98 and finite.max() < 2.3548 * 2.6 * 1.02
    ((label, text),) = psf_rows(fwhm)
    assert label == "CoaddPsf FWHM" and text.startswith(f"{np.median(finite):.2f} px median")
    bare = coadd.drop_vars([v for v in coadd.variables if str(v).startswith("psf_")])
    assert psf_fwhm_map(bare) is None and psf_rows(None) == []
    png = quicklook_png(
        tmp_path / "q.png", {"coadd": coadd["image"].values}, maps={"FWHM": fwhm.values}
    )
    assert png.stat().st_size > 5_000
