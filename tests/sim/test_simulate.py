"""Tests of coaddx.simulate (synthetic warps, calexps, truth) and the calexp FITS I/O."""

from __future__ import annotations

import math

import dask
import numpy as np
import pytest
import zarr
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from coaddx.errors import ConfigError, InputError, StoreError
from coaddx.io.fits.exposure import read_calexp, write_calexp
from coaddx.model.masks import bitmask, mask_planes
from coaddx.model.skymap import make_tan_wcs, wcs_from_header_string
from coaddx.sim.simulate import ARTIFACT_BITS, enclosed_flux_fraction, psf_image, simulate
from coaddx.warp.store import open_warps

PLANES = mask_planes()


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Six visits of a 448 x 448 patch with everything switched on."""
    return simulate(
        tmp_path_factory.mktemp("sim") / "out",
        n_visits=6,
        shape=(448, 448),
        seed=7,
        calexps=True,
        workers=2,
    )


@pytest.fixture(scope="module")
def warps(sim):
    ds = open_warps(sim.warps)
    art = zarr.open_group(str(sim.artifacts), mode="r")["artifacts"][:]
    return {
        "image": ds["image"].values,
        "variance": ds["variance"].values,
        "mask": ds["mask"].values,
        "visit": ds["visit"].values,
        "art": art,
    }


@pytest.fixture(scope="module")
def star_sim(tmp_path_factory):
    """Stars only (no galaxies, no artifacts): isolated stars for photometry and astrometry."""
    return simulate(
        tmp_path_factory.mktemp("stars") / "out",
        n_visits=3,
        shape=(256, 256),
        seed=11,
        n_stars=150,
        n_galaxies=0,
        artifacts=False,
        calexps=True,
    )


def _read_store(path):
    ds = open_warps(path)
    return {k: ds[k].values for k in ("image", "variance", "mask")}


# -- layout and determinism -------------------------------------------------------------


def test_simulate_layout(sim, warps):
    assert sim.warps.is_dir() and (sim.out / "simulation.json").is_file()
    for path in (sim.sources, sim.variable, sim.transients, sim.streaks):
        assert path.is_file()
    assert len(sim.visits) == 6 and list(warps["visit"]) == list(sim.visits["visit"])
    assert warps["image"].shape == (6, 448, 448) and sim.patch.shape == (448, 448)
    expected = {
        f"calexp_{v['visit']}_{d}.fits" for v in sim.visits for d in v["detectors"].split(",")
    }
    assert {p.name for p in sim.calexps} == expected
    assert all(p.parent == sim.out / "calexp" and p.is_file() for p in sim.calexps)
    art = zarr.open_group(str(sim.artifacts), mode="r")
    assert art["artifacts"].dtype == np.uint8 and art["artifacts"].chunks == (1, 448, 448)
    assert "zstd" in str(art["artifacts"].compressors).lower()
    assert dict(art.attrs["bits"]) == ARTIFACT_BITS
    ds = open_warps(sim.warps)
    assert ds.attrs["bbox"] == sim.patch.outer_bbox.to_list()
    assert np.array_equal(ds["x"].values, sim.patch.x)
    for key in (
        "mjd",
        "airmass",
        "parallactic_angle",
        "exptime",
        "psf_fwhm",
        "photo_calib",
        "sky_level",
        "zero_point",
    ):
        assert np.allclose(ds[key].values, sim.visits[key]), key
    assert 3.5 <= sim.visits["psf_fwhm"].min() and sim.visits["psf_fwhm"].max() <= 6.0


def test_simulate_store_wcs_is_tract_wcs(sim):
    """The stores' ``wcs`` is the tract WCS: with the ``x``/``y`` coordinates it puts each
    source at its catalogue pixel (design.md)."""
    src = sim.read_truth("sources")
    ds = open_warps(sim.warps)
    wcs = wcs_from_header_string(ds.attrs["wcs"])
    x, y = wcs.wcs_world2pix(src["ra"], src["dec"], 0)
    assert np.allclose(x, src["x"], atol=1e-6) and np.allclose(y, src["y"], atol=1e-6)
    col = np.interp(x, ds["x"].values, np.arange(ds.sizes["x"]))
    row = np.interp(y, ds["y"].values, np.arange(ds.sizes["y"]))
    inside = (
        (src["x_patch"] >= 0)
        & (src["x_patch"] <= ds.sizes["x"] - 1)
        & (src["y_patch"] >= 0)
        & (src["y_patch"] <= ds.sizes["y"] - 1)
    )
    assert inside.sum() > 10
    assert np.allclose(col[inside], src["x_patch"][inside], atol=1e-6)
    assert np.allclose(row[inside], src["y_patch"][inside], atol=1e-6)
    art = zarr.open_group(str(sim.artifacts), mode="r")
    assert art.attrs["wcs"] == ds.attrs["wcs"]


def test_simulate_deterministic_whatever_workers(tmp_path):
    kw = dict(n_visits=3, shape=(256, 256), calexps=False)
    a = simulate(tmp_path / "a", seed=5, workers=1, **kw)
    b = simulate(tmp_path / "b", seed=5, workers=2, **kw)
    c = simulate(tmp_path / "c", seed=6, workers=2, **kw)
    sa, sb, sc = (_read_store(s.warps) for s in (a, b, c))
    for name in ("image", "variance", "mask"):
        assert np.array_equal(sa[name], sb[name], equal_nan=True), name
    assert not np.array_equal(sa["image"], sc["image"], equal_nan=True)
    for name in ("sources", "variable", "transients", "streaks", "visits"):
        assert (a.truth / f"{name}.ecsv").read_bytes() == (b.truth / f"{name}.ecsv").read_bytes()
    art_a = zarr.open_group(str(a.artifacts), mode="r")["artifacts"][:]
    art_b = zarr.open_group(str(b.artifacts), mode="r")["artifacts"][:]
    assert np.array_equal(art_a, art_b)


# -- noise, variance and masks ------------------------------------------------------------


def test_simulate_variance_matches_noise(sim, warps):
    """In source-free, unmasked pixels std(image / sqrt(variance)) is 1 within 3 %."""
    for i, row in enumerate(sim.visits):
        var = warps["variance"][i]
        sky_var = (row["sky_counts"] + 8.0**2) * row["photo_calib"] ** 2
        free = (warps["mask"][i] == 0) & (warps["art"][i] == 0) & (var <= 1.0005 * sky_var)
        assert free.sum() > 20_000
        chi = warps["image"][i][free] / np.sqrt(var[free])
        assert abs(chi.std() - 1.0) < 0.03, (i, chi.std())
        assert abs(chi.mean()) < 0.05, (i, chi.mean())


def test_simulate_no_data_exactly_where_nan(warps):
    nodata = (warps["mask"] & bitmask(PLANES, "NO_DATA")) != 0
    assert nodata.any() and not nodata.all()
    assert np.array_equal(np.isnan(warps["image"]), nodata)
    assert np.array_equal(np.isnan(warps["variance"]), nodata)
    assert not warps["art"][nodata].any()
    assert (warps["variance"][~nodata] > 0).all()


@pytest.mark.parametrize("plane", ["SAT", "BAD", "CR", "EDGE"])
def test_simulate_mask_planes_present(warps, plane):
    assert ((warps["mask"] & bitmask(PLANES, plane)) != 0).sum() > 10


def test_simulate_saturated_stars_are_clipped(sim, warps):
    sources = sim.read_truth("sources")
    bright = sources[sources["saturated"] & sources["in_patch"]]
    assert len(bright) >= 2
    sat = bitmask(PLANES, "SAT")
    for i, row in enumerate(sim.visits):
        level = (90_000.0 - row["sky_counts"]) * row["photo_calib"]
        m = (warps["mask"][i] & sat) != 0
        assert np.nanmax(warps["image"][i][m]) < level + 6 * math.sqrt(9e4) * row["photo_calib"]
        for star in bright:
            iy, ix = round(star["y_patch"]), round(star["x_patch"])
            if np.isfinite(warps["image"][i, iy, ix]):
                assert warps["mask"][i, iy, ix] & sat


def test_simulate_cosmic_rays_masked_and_unmasked(warps):
    cr = (warps["mask"] & bitmask(PLANES, "CR")) != 0
    masked = (warps["art"] & ARTIFACT_BITS["masked_cosmic_ray"]) != 0
    unmasked = (warps["art"] & ARTIFACT_BITS["cosmic_ray"]) != 0
    assert np.array_equal(cr, masked) and unmasked.any()


# -- truth ---------------------------------------------------------------------------------


def test_simulate_transients_in_one_visit_only(sim, warps):
    transients = sim.read_truth("transients")
    assert len(transients) >= 1
    index = {int(v): i for i, v in enumerate(warps["visit"])}
    for t in transients:
        iy, ix = round(t["y_patch"]), round(t["x_patch"])
        snr = warps["image"][:, iy, ix] / np.sqrt(warps["variance"][:, iy, ix])
        own = index[int(t["visit"])]
        assert warps["mask"][own, iy, ix] == 0 and snr[own] > 5.0
        assert warps["art"][own, iy, ix] & ARTIFACT_BITS["transient"]
        others = [
            i
            for i in range(len(snr))
            if i != own and np.isfinite(snr[i]) and warps["art"][i, iy, ix] == 0
        ]
        assert others and (snr[others] < 5.0).all(), snr


def test_simulate_streak_truth_along_line(sim, warps):
    streaks = sim.read_truth("streaks")
    assert len(streaks) >= 1
    index = {int(v): i for i, v in enumerate(warps["visit"])}
    for s in streaks:
        i = index[int(s["visit"])]
        ys, xs = np.nonzero(warps["art"][i] & ARTIFACT_BITS["streak"])
        assert xs.size > 100
        x0, y0, x1, y1 = (
            s[k] for k in ("x_start_patch", "y_start_patch", "x_end_patch", "y_end_patch")
        )
        dist = np.abs((xs - x0) * (y1 - y0) - (ys - y0) * (x1 - x0)) / math.hypot(x1 - x0, y1 - y0)
        assert dist.max() <= s["width"] + 1e-6
        good = warps["mask"][i, ys, xs] == 0
        assert np.mean(warps["image"][i, ys, xs][good]) > 0.3 * s["surface_brightness"]


def test_simulate_variable_star_varies(sim, warps):
    var = sim.read_truth("variable")
    assert len(var) == len(sim.visits) and var["flux"].max() > 2 * var["flux"].min()
    iy, ix = round(var["y_patch"][0]), round(var["x_patch"][0])
    yy, xx = np.mgrid[iy - 12 : iy + 13, ix - 12 : ix + 13]
    inside = (yy - var["y_patch"][0]) ** 2 + (xx - var["x_patch"][0]) ** 2 <= 144
    measured, expected = [], []
    for i, row in enumerate(sim.visits):
        if (warps["mask"][i][yy, xx][inside] == 0).all():
            measured.append(warps["image"][i][yy, xx][inside].sum())
            expected.append(var["flux"][i] * enclosed_flux_fraction(12.0, row["psf_fwhm"]))
    # 10 % of slack for faint neighbours (none brighter than 500 nJy within 15 px)
    assert len(measured) >= 3
    assert np.allclose(measured, expected, rtol=0.1)


def _moffat_in_aperture(xs, ys, fluxes, x0, y0, radius, fwhm):
    """Sum of normalised Moffat (beta 3) profiles at the pixel centres of an aperture."""
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / 3) - 1))
    yy, xx = np.mgrid[
        round(y0 - radius) - 1 : round(y0 + radius) + 2,
        round(x0 - radius) - 1 : round(x0 + radius) + 2,
    ]
    inside = (xx - x0) ** 2 + (yy - y0) ** 2 <= radius**2
    total = 0.0
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        r2 = (xx[inside] - x) ** 2 + (yy[inside] - y) ** 2
        total += f * (2 / (math.pi * alpha**2) * (1 + r2 / alpha**2) ** -3).sum()
    return total, yy[inside], xx[inside]


def _photometry_star(sim):
    """The brightest unsaturated star whose neighbours add < 0.3 % of its peak (FWHM 6 px
    Moffat) and that lies 40 px or more from the saturated stars."""
    src = sim.read_truth("sources")
    ny, nx = sim.patch.shape
    sat = src[src["saturated"]]
    best = None
    for s in src[(src["type"] == "star") & ~src["saturated"]]:
        x, y = s["x_patch"], s["y_patch"]
        if not (30 < x < nx - 30 and 30 < y < ny - 30):
            continue
        if (np.hypot(sat["x_patch"] - x, sat["y_patch"] - y) < 40).any():
            continue
        d2 = (src["x_patch"] - x) ** 2 + (src["y_patch"] - y) ** 2
        contamination = (src["flux"] * (1 + d2 / 5.88**2) ** -3)[d2 > 0].sum() / s["flux"]
        if contamination < 3e-3 and (best is None or s["flux"] > best["flux"]):
            best = s
    return src, best


def test_simulate_star_flux_in_aperture(star_sim):
    """The pixels of a star sum to its catalogue flux: aperture r = 15 px against the truth
    (this star + neighbours, untruncated Moffat at pixel centres); tolerance 5 sigma of the
    aperture noise + 0.5 % of the flux."""
    src, star = _photometry_star(star_sim)
    assert star["flux"] > 2e4
    ds = open_warps(star_sim.warps)
    var_tab = star_sim.read_truth("variable")
    checked = 0
    for i, row in enumerate(star_sim.visits):
        xs = np.r_[src["x_patch"], var_tab["x_patch"][i]]
        ys = np.r_[src["y_patch"], var_tab["y_patch"][i]]
        flux = np.r_[src["flux"], var_tab["flux"][i]]
        expected, yy, xx = _moffat_in_aperture(
            xs, ys, flux, star["x_patch"], star["y_patch"], 15.0, row["psf_fwhm"]
        )
        image = ds["image"][i].values[yy, xx]
        if not (ds["mask"][i].values[yy, xx] == 0).all():
            continue
        sigma = math.sqrt(ds["variance"][i].values[yy, xx].sum())
        assert abs(image.sum() - expected) < 5 * sigma + 0.005 * star["flux"]
        # and the catalogue flux is the total: the aperture holds the Moffat fraction
        alone, _, _ = _moffat_in_aperture(
            [star["x_patch"]],
            [star["y_patch"]],
            [1.0],
            star["x_patch"],
            star["y_patch"],
            15.0,
            row["psf_fwhm"],
        )
        assert alone == pytest.approx(enclosed_flux_fraction(15.0, row["psf_fwhm"]), rel=2e-3)
        checked += 1
    assert checked >= 1


def _centroid(image, x, y, sigma):
    for _ in range(30):
        ix, iy, r = round(x), round(y), int(4 * sigma) + 1
        yy, xx = np.mgrid[iy - r : iy + r + 1, ix - r : ix + r + 1]
        w = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) * image[yy, xx]
        x, y = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    return x, y


def test_simulate_calexp_wcs_places_stars(star_sim):
    """The calexp WCS maps a star's catalogue sky position to its image centroid (0.05 px)."""
    _src, star = _photometry_star(star_sim)
    coord = SkyCoord(star["ra"], star["dec"], unit="deg")
    checked = 0
    for path in star_sim.calexps:
        exp = read_calexp(path)
        x, y = (float(v) for v in exp["wcs"].world_to_pixel(coord))
        ny, nx = exp["image"].shape
        if not (20 <= x < nx - 20 and 20 <= y < ny - 20):
            continue
        if exp["mask"][round(y) - 10 : round(y) + 11, round(x) - 10 : round(x) + 11].any():
            continue
        sigma = exp["metadata"]["psf_fwhm"] / 2.3548
        cx, cy = _centroid(exp["image"], x, y, sigma)
        assert math.hypot(cx - x, cy - y) < 0.05, (path.name, cx - x, cy - y)
        checked += 1
    assert checked >= 1


def test_simulate_calexp_header_and_units(sim, warps):
    exp = read_calexp(sim.calexps[0])
    meta = exp["metadata"]
    row = sim.visits[list(sim.visits["visit"]).index(meta["visit"])]
    for key in (
        "band",
        "mjd",
        "exptime",
        "airmass",
        "parallactic_angle",
        "photo_calib",
        "psf_fwhm",
    ):
        assert meta[key] == row[key], key
    assert exp["mask_planes"] == PLANES
    psf = exp["psf"]
    assert psf.shape[0] % 2 == 1 and psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(psf.argmax(), psf.shape) == (psf.shape[0] // 2, psf.shape[1] // 2)
    good = exp["mask"] == 0
    # counts: the sky-only variance is sky + read noise^2
    assert np.percentile(exp["variance"][good], 1) == pytest.approx(
        row["sky_counts"] + 64.0, rel=0.01
    )


# -- calexp FITS I/O -----------------------------------------------------------------------


@pytest.fixture
def celestial_wcs():
    return make_tan_wcs(SkyCoord(150.0, 2.0, unit="deg"), (20.0, 15.0), 0.2, rotation=0.7)


def test_write_calexp_round_trip(tmp_path, celestial_wcs):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(30, 40)).astype(np.float32)
    mask = rng.integers(0, 512, size=(30, 40)).astype(np.int32)
    variance = rng.random((30, 40)).astype(np.float32)
    meta = {
        "visit": 12,
        "detector": 3,
        "band": "i",
        "mjd": 60100.25,
        "exptime": 30.0,
        "airmass": 1.2,
        "parallactic_angle": -33.0,
        "photo_calib": 0.55,
        "psf_fwhm": 4.2,
        "sky_counts": 1200.0,
        "note_id": 7,
    }
    path = write_calexp(
        tmp_path / "c.fits",
        image,
        mask,
        variance,
        celestial_wcs,
        mask_planes=PLANES,
        metadata=meta,
        psf=np.ones((5, 5)),
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    got = read_calexp(path)
    assert np.array_equal(got["image"], image) and np.array_equal(got["mask"], mask)
    assert np.array_equal(got["variance"], variance)
    assert got["metadata"] == meta and got["mask_planes"] == PLANES
    assert got["psf"].shape == (5, 5) and got["psf"].sum() == pytest.approx(1.0)
    pix = np.array([[0.0, 0.0], [39.0, 29.0], [12.3, 7.7]])
    assert np.allclose(
        got["wcs"].wcs_pix2world(pix, 0), celestial_wcs.wcs_pix2world(pix, 0), rtol=0, atol=1e-10
    )
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", "PSF"]
        head = hdul[0].header
        assert head["VISIT"] == 12 and head["MJD-OBS"] == 60100.25 and head["PARANGLE"] == -33.0
        assert head["PHOTCALIB"] == 0.55 and head["PSFFWHM"] == 4.2
        assert hdul["MASK"].header["MP_NO_DATA"] == PLANES["NO_DATA"]
        assert hdul["IMAGE"].data.dtype.name == "float32" and hdul["MASK"].data.dtype == ">i4"


@pytest.mark.parametrize("case", ["shape", "psf", "meta", "mask_dtype"])
def test_write_calexp_rejects_bad_input(tmp_path, celestial_wcs, case):
    image = np.zeros((10, 10), np.float32)
    args = {
        "mask": np.zeros((10, 10), np.int32),
        "variance": np.ones((10, 10), np.float32),
        "psf": None,
        "meta": {"visit": 1, "detector": 0, "band": "r"},
    }
    if case == "shape":
        args["variance"] = np.ones((10, 11), np.float32)
    elif case == "psf":
        args["psf"] = np.ones((4, 5))
    elif case == "meta":
        args["meta"] = {"visit": 1, "band": "r"}
    else:
        args["mask"] = np.zeros((10, 10), np.float32)
    with pytest.raises(InputError, match=r"c\.fits"):
        write_calexp(
            tmp_path / "c.fits",
            image,
            args["mask"],
            args["variance"],
            celestial_wcs,
            mask_planes=PLANES,
            metadata=args["meta"],
            psf=args["psf"],
        )
    assert not list(tmp_path.iterdir())


def test_read_calexp_missing_hdu(tmp_path):
    path = tmp_path / "bad.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((3, 3)), name="IMAGE")]).writeto(path)
    with pytest.raises(InputError, match="MASK"):
        read_calexp(path)


# -- arguments and helpers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"n_visits": 0}, {"psf": "airy"}, {"shape": (32, 32)}, {"workers": 0}]
)
def test_simulate_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        simulate(tmp_path / "x", **{"n_visits": 1, "shape": (128, 128), **kwargs})


def test_simulate_refuses_non_empty_output(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="overwrite"):
        simulate(tmp_path / "x", n_visits=1, shape=(128, 128))
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_simulate_gaussian_psf_and_no_artifacts(tmp_path):
    sim = simulate(
        tmp_path / "g", n_visits=2, shape=(128, 128), psf="gaussian", artifacts=False, calexps=False
    )
    art = zarr.open_group(str(sim.artifacts), mode="r")["artifacts"][:]
    assert not art.any() and len(sim.read_truth("transients")) == 0
    assert isinstance(sim.read_truth("sources"), Table)


def test_psf_image_and_enclosed_fraction():
    for kind in ("moffat", "gaussian"):
        img = psf_image(4.5, kind)
        assert img.shape[0] % 2 == 1 and img.sum() == pytest.approx(1.0)
        assert img.argmax() == img.size // 2
        fractions = [enclosed_flux_fraction(r, 4.5, kind) for r in (1.0, 2.25, 5.0, 50.0)]
        assert np.all(np.diff(fractions) > 0) and fractions[-1] > 0.999
    # half of a Gaussian's light lies inside r = FWHM / 2
    assert enclosed_flux_fraction(2.25, 4.5, "gaussian") == pytest.approx(0.5, abs=1e-9)


def test_simulate_defects_are_interpolated_like_isr(warps):
    """As in an LSST calexp, detector defects (BAD, not saturated) carry interpolated values
    and INTRP: along each defect row the value is within noise of its two neighbours' mean
    (a hot column left raw would sit ~30 sky sigma above it)."""
    bad, sat, intrp = (bitmask(PLANES, p) for p in ("BAD", "SAT", "INTRP"))
    m = warps["mask"]
    defects = ((m & bad) != 0) & ((m & sat) == 0)
    assert defects.any()
    assert ((m[defects] & intrp) != 0).all()
    assert not ((m & intrp) != 0)[~defects].any()
    img, var = warps["image"], warps["variance"]
    v, y, x = np.nonzero(defects[:, :, 1:-1] & ~defects[:, :, :-2] & ~defects[:, :, 2:])
    x = x + 1  # single-pixel-wide defects with good neighbours on both sides
    ok = np.isfinite(img[v, y, x - 1]) & np.isfinite(img[v, y, x + 1])
    v, y, x = v[ok], y[ok], x[ok]
    assert v.size > 50
    z = (img[v, y, x] - 0.5 * (img[v, y, x - 1] + img[v, y, x + 1])) / np.sqrt(var[v, y, x])
    print(
        f"\n{v.size} defect pixels: median z {np.median(z):.2f}, 99th pct |z| "
        f"{np.percentile(np.abs(z), 99):.2f}"
    )
    assert abs(np.median(z)) < 0.5 and np.percentile(np.abs(z), 99) < 5


def test_the_store_chunk_setting_reaches_the_simulated_warp_store(tmp_path):
    """coaddx.store-chunk had no effect on simulate's warp store (it was fixed at 512)."""
    with dask.config.set({"coaddx.store-chunk": 128}):
        sim = simulate(tmp_path / "s", n_visits=1, shape=(256, 256), calexps=False)
    arr = zarr.open_group(str(sim.warps), mode="r")["direct"]["image"]
    assert arr.chunks == (1, 128, 128)
