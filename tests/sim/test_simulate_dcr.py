"""Tests of coaddx.simulate(..., dcr=True): chromatic stars shifted by refraction per visit."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from astropy.io import fits
from scipy.integrate import quad

import coaddx
from coaddx.errors import ConfigError
from coaddx.io.fits.exposure import read_calexp
from coaddx.model.masks import bitmask
from coaddx.model.refraction import LSST_SITE
from coaddx.model.skymap import wcs_from_header_string
from coaddx.sim.simulate import simulate
from coaddx.warp.store import open_warps

LAM, BW, N = 476.31, 147.0, 6  # g band; 6 sub-filters keep the sub-filter model within 0.03 px
SEED = 39  # a scene with a bright, unsaturated, isolated star (checked below)
KW = dict(n_visits=6, shape=(256, 256), seed=SEED, n_stars=80, n_galaxies=0, artifacts=False)
BOX = 11  # centroid box half-width (px)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate(
        tmp_path_factory.mktemp("dcr") / "out",
        **KW,
        calexps=True,
        workers=2,
        dcr=True,
        effective_wavelength=LAM,
        bandwidth=BW,
        n_subfilters=N,
    )


@pytest.fixture(scope="module")
def warps(sim):
    ds = open_warps(sim.warps)
    return ds, ds["image"].values, ds["mask"].values


def _zenith_angle_in_patch(wcs, parallactic_angle, x, y):
    """Direction (deg, as (dy, dx) = (cos, sin)) of position angle ``parallactic_angle``
    (east of north) in the pixel frame of ``wcs``, by finite differences of the WCS."""
    ra, dec = wcs.wcs_pix2world([[x, y]], 0)[0]
    step = 1.0 / 3600.0
    q = math.radians(parallactic_angle)
    ra2 = ra + step * math.sin(q) / math.cos(math.radians(dec))
    dec2 = dec + step * math.cos(q)
    x2, y2 = wcs.wcs_world2pix([[ra2, dec2]], 0)[0]
    return math.degrees(math.atan2(x2 - x, y2 - y))


def _centroid(image, x, y):
    """First moment (row, column) in a (2 BOX + 1)^2 box, recentred three times."""
    for _ in range(3):
        i0, j0 = round(y), round(x)
        box = image[i0 - BOX : i0 + BOX + 1, j0 - BOX : j0 + BOX + 1]
        rows, cols = np.mgrid[i0 - BOX : i0 + BOX + 1, j0 - BOX : j0 + BOX + 1]
        y, x = (box * rows).sum() / box.sum(), (box * cols).sum() / box.sum()
    return np.array([y, x])


def _predicted_shift(star, visit):
    """Flux-weighted mean (dy, dx) of the sub-filter shifts of coaddx.dcr_shifts."""
    shifts = coaddx.dcr_shifts(
        effective_wavelength=LAM,
        bandwidth=BW,
        n_subfilters=N,
        elevation=float(visit["elevation"]),
        parallactic_angle=float(visit["theta"]),  # theta checked against the WCS below
        pixel_scale=0.2,
    )
    flux = np.array([star[f"flux_sub{k}"] for k in range(N)])
    return (flux[:, None] * shifts).sum(axis=0) / flux.sum()


def test_dcr_truth_subfilter_fluxes(sim):
    src = sim.read_truth("sources")
    sub = np.stack([np.asarray(src[f"flux_sub{k}"]) for k in range(N)], axis=1)
    np.testing.assert_allclose(sub.sum(axis=1), src["flux"], rtol=1e-10)
    stars = src[src["type"] == "star"]
    alpha = np.asarray(stars["alpha"])
    assert alpha.min() < -3.0 and alpha.max() > 3.0 and np.all(np.abs(alpha) <= 4.0)
    ratio = np.asarray(stars["flux_sub0"] / stars[f"flux_sub{N - 1}"])
    blue, red = alpha < 0, alpha > 0
    print(f"bluest/reddest flux ratio: blue stars {ratio[blue].min():.3f}-{ratio[blue].max():.3f}")
    print(f"                           red stars  {ratio[red].min():.3f}-{ratio[red].max():.3f}")
    assert ratio[blue].min() > 1.0 > ratio[red].max()
    assert np.all(np.diff(ratio[np.argsort(alpha)]) < 0)  # bluer is always bluer
    # independent check: the integral of (lambda / lambda_eff) ** alpha over each sub-filter
    edges = LAM - BW / 2 + BW * np.arange(N + 1) / N
    for star in stars[np.argsort(alpha)[[0, len(alpha) // 2, -1]]]:
        w = [
            quad(lambda lam, a=star["alpha"]: (lam / LAM) ** a, lo, hi)[0]
            for lo, hi in itertools.pairwise(edges)
        ]
        expected = star["flux"] * np.array(w) / sum(w)
        np.testing.assert_allclose([star[f"flux_sub{k}"] for k in range(N)], expected, rtol=1e-9)
    galaxies_flat = src[src["type"] == "galaxy"]
    assert len(galaxies_flat) == 0  # n_galaxies=0 here; galaxies are flat (alpha = 0)


def test_dcr_visit_conditions(sim, warps):
    ds, _, _ = warps
    vis = sim.read_truth("visits")
    for name in ("elevation", "parallactic_angle", "airmass"):
        assert ds[name].dims == ("visit",), name
        np.testing.assert_allclose(ds[name].values, vis[name], rtol=0, atol=1e-12)
    airmass = ds["airmass"].values
    assert np.all((airmass >= 1.0) & (airmass <= 2.0))
    np.testing.assert_allclose(ds["elevation"].values, np.degrees(np.arcsin(1 / airmass)))
    q = ds["parallactic_angle"].values
    assert np.all((q >= -180.0) & (q < 180.0)) and np.ptp(q) > 90.0
    wcs = wcs_from_header_string(ds.attrs["wcs"])
    x0, y0 = np.asarray(wcs.wcs.crpix) - 1.0
    for v in vis:
        theta = _zenith_angle_in_patch(wcs, v["parallactic_angle"], x0, y0)
        assert abs((v["theta"] - theta + 180.0) % 360.0 - 180.0) < 1e-3
    dcr = ds.attrs["simulation"]["dcr"]
    assert dcr["effective_wavelength"] == LAM and dcr["bandwidth"] == BW
    assert dcr["n_subfilters"] == N and dcr["weather"] is None
    assert dcr["observatory"] == {
        "latitude": LSST_SITE.latitude,
        "longitude": LSST_SITE.longitude,
        "height": LSST_SITE.height,
    }
    # calexp headers carry the elevation too
    path = sim.calexps[0]
    visit = int(path.stem.split("_")[1])
    elevation = read_calexp(path)["metadata"].get("elevation")
    if elevation is None:
        header = fits.getheader(path, 0)
        elevation = next(header[k] for k in header if "ELEV" in k)
    assert elevation == pytest.approx(float(vis[vis["visit"] == visit]["elevation"][0]))


def _bright_isolated_star(sim, masks, planes):
    src = sim.read_truth("sources")
    bad = bitmask(planes, ["NO_DATA", "BAD", "SAT", "EDGE", "INTRP"])
    xs, ys, fs = (np.asarray(src[k]) for k in ("x_patch", "y_patch", "flux"))
    for star in src[np.argsort(-fs)]:
        x, y = star["x_patch"], star["y_patch"]
        if star["saturated"] or star["type"] != "star" or not BOX + 4 < x < 256 - BOX - 4:
            continue
        if not BOX + 4 < y < 256 - BOX - 4 or star["flux"] < 2e5:
            continue
        d = np.hypot(xs - x, ys - y)
        if ((d > 0) & (d < 30) & (fs > 0.003 * star["flux"])).any():
            continue
        if ((d < 70) & np.asarray(src["saturated"])).any():
            continue
        i0, j0 = round(y), round(x)
        cut = masks[:, i0 - BOX - 3 : i0 + BOX + 4, j0 - BOX - 3 : j0 + BOX + 4]
        good = np.flatnonzero(~((cut & bad) != 0).any(axis=(1, 2)))
        if good.size >= 2:
            return star, good
    raise AssertionError("the scene has no bright isolated star seen in two visits")


def test_dcr_star_centroid_moves_with_refraction(sim, warps):
    ds, images, masks = warps
    vis = sim.read_truth("visits")
    star, good = _bright_isolated_star(sim, masks, ds.attrs["mask_planes"])
    pos = np.array([star["y_patch"], star["x_patch"]])
    measured = {i: _centroid(images[i], pos[1], pos[0]) for i in good}
    predicted = {i: _predicted_shift(star, vis[i]) for i in good}
    pairs = [(a, b) for a in good for b in good if a < b]
    a, b = max(pairs, key=lambda p: np.hypot(*(predicted[p[0]] - predicted[p[1]])))
    moved = measured[a] - measured[b]
    expected = predicted[a] - predicted[b]
    print(
        f"star {star['id']} (flux {star['flux']:.3g} nJy, alpha {star['alpha']:.2f}), visits "
        f"{vis['visit'][a]} (airmass {vis['airmass'][a]:.2f}) - {vis['visit'][b]} (airmass "
        f"{vis['airmass'][b]:.2f}): moved (dy, dx) = {np.round(moved, 3)} px, "
        f"predicted {np.round(expected, 3)} px"
    )
    assert np.hypot(*expected) > 0.2  # a real movement, not noise
    np.testing.assert_allclose(moved, expected, atol=0.05)
    for i in good:  # every visit: centroid = truth + shift, to noise and neighbours
        np.testing.assert_allclose(measured[i] - pos, predicted[i], atol=0.06)


def test_dcr_calexps_carry_the_same_shift(sim, warps):
    ds, images, masks = warps
    vis = sim.read_truth("visits")
    star, good = _bright_isolated_star(sim, masks, ds.attrs["mask_planes"])
    wcs = wcs_from_header_string(ds.attrs["wcs"])
    x0, y0 = ds["x"].values[0], ds["y"].values[0]
    checked = 0
    for path in sim.calexps:
        visit = int(path.stem.split("_")[1])
        i = int(np.flatnonzero(vis["visit"] == visit)[0])
        if i not in good:
            continue
        cal = read_calexp(path)
        ra, dec = wcs.wcs_pix2world([[star["x"], star["y"]]], 0)[0]
        u, v = cal["wcs"].wcs_world2pix([[ra, dec]], 0)[0]
        h, w = cal["image"].shape
        if not (BOX + 4 < u < w - BOX - 4 and BOX + 4 < v < h - BOX - 4):
            continue
        cy, cx = _centroid(np.nan_to_num(cal["image"]), u, v)
        sky = cal["wcs"].wcs_pix2world([[cx, cy]], 0)[0]
        px, py = wcs.wcs_world2pix([sky], 0)[0]
        warp_c = _centroid(images[i], star["x_patch"], star["y_patch"])
        np.testing.assert_allclose([py - y0, px - x0], warp_c, atol=0.05)
        checked += 1
    assert checked >= 1


def test_dcr_detected_plane(sim, warps):
    ds, images, masks = warps
    planes = ds.attrs["mask_planes"]
    det = (masks & bitmask(planes, ["DETECTED"])) != 0
    nodata = (masks & bitmask(planes, ["NO_DATA"])) != 0
    assert not (det & nodata).any()
    frac = det.sum(axis=(1, 2)) / (~nodata).sum(axis=(1, 2))
    assert np.all((frac > 0.01) & (frac < 0.5))
    vis = sim.read_truth("visits")
    src = sim.read_truth("sources")
    stars = src[(src["flux"] > 2e4) & src["in_patch"]]
    for i in range(len(vis)):
        for star in stars:
            r, c = round(star["y_patch"]), round(star["x_patch"])
            if not nodata[i, r, c]:
                assert det[i, r, c]
        # pure sky far from every source is not detected
        sigma = float(vis["noise_sigma"][i])
        sky = images[i][masks[i] == 0]
        robust = 1.4826 * np.median(np.abs(sky - np.median(sky)))
        assert abs(robust / sigma - 1.0) < 0.1, (robust, sigma)


def test_dcr_leaves_the_rest_of_the_scene_unchanged(sim, tmp_path):
    plain = simulate(tmp_path / "plain", **KW, calexps=False, workers=2)
    a, b = plain.read_truth("visits"), sim.read_truth("visits")
    for name in ("mjd", "sky_counts", "dither_x", "dither_y", "rotation"):
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.allclose(a["airmass"], b["airmass"])
    sa, sb = plain.read_truth("sources"), sim.read_truth("sources")
    for name in ("x_patch", "y_patch"):
        np.testing.assert_array_equal(sa[name], sb[name])
    faint = sa["flux"] <= 5e5  # the few saturating stars scale with the (DCR) seeing
    assert faint.sum() >= len(sa) - 3
    np.testing.assert_array_equal(sa["flux"][faint], sb["flux"][faint])
    assert "alpha" not in sa.colnames and "flux_sub0" not in sa.colnames
    ds = open_warps(plain.warps)
    assert "elevation" not in ds and "dcr" not in ds.attrs["simulation"]
    assert not (ds["mask"].values & bitmask(ds.attrs["mask_planes"], ["DETECTED"])).any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(dcr=True), "effective_wavelength and bandwidth"),
        (dict(dcr=True, effective_wavelength=LAM), "bandwidth"),
        (dict(dcr=True, bandwidth=BW), "effective_wavelength"),
        (dict(dcr=True, effective_wavelength=LAM, bandwidth=0.0), "bandwidth"),
        (dict(dcr=True, effective_wavelength=200.0, bandwidth=BW), "within"),
        (dict(dcr=True, effective_wavelength="g", bandwidth=BW), "effective_wavelength"),
        (dict(dcr=True, effective_wavelength=LAM, bandwidth=BW, n_subfilters=0), "n_subfilters"),
        (dict(dcr=True, effective_wavelength=LAM, bandwidth=BW, n_subfilters=2.5), "n_subfilters"),
        (dict(effective_wavelength=LAM, bandwidth=BW), "without dcr=True"),
    ],
)
def test_dcr_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        simulate(tmp_path / "x", n_visits=2, shape=(128, 128), calexps=False, **kwargs)
    assert not (tmp_path / "x").exists()
