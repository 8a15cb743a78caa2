"""DcrAssembleCoadd against simulated truth (issue 12): a g-band patch whose stars have a
spread of spectral slopes, each visit refracted at its own airmass (1.0-2.0) and parallactic
angle. The sub-filter fluxes of bright isolated stars are compared with the true ones, and each
high-airmass visit is differenced (AL PSF matching, the same kernel candidates) with the plain
coadd and with its DCR template."""

from __future__ import annotations

import numpy as np
import pytest

import coaddx
from coaddx.model.exposure import Exposure
from coaddx.model.skymap import shift_wcs, wcs_from_header_string

G_BAND = {"effective_wavelength": 476.31, "bandwidth": 147.0}
APERTURE = 10  # px: about two FWHM of the worst seeing
STAR_RADIUS = 5  # px: the star pixels of the residual test, about one FWHM
#: At least 10 updates: on this simulation the patch-wide metric (its DETECTED pixels are
#: mostly faint outskirts, where noise and the visits' different seeing dominate) stops
#: improving after the first update, so LSST's loop control with minNumIter = N stops after 4
#: updates while the colours are still converging (docs/design-notes.md, "DcrAssembleCoadd").
ITERATIONS = {"min_num_iter": 10, "max_num_iter": 10}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    sim = coaddx.simulate(
        tmp_path_factory.mktemp("dcr") / "sim",
        n_visits=20,
        n_stars=400,
        n_galaxies=250,
        shape=(1024, 1024),
        dcr=True,
        artifacts=False,
        calexps=False,
        seed=0,
        **G_BAND,
    )
    direct = coaddx.open_warps(sim.warps)
    template = coaddx.assemble(direct).persist()
    dcr = coaddx.assemble_dcr(direct, template, coaddx.DcrConfig(**G_BAND, **ITERATIONS))
    return sim, direct, template, dcr.persist()


def _bright_isolated(sim, direct):
    src = sim.read_truth("sources")
    y0, x0 = int(direct["y"][0]), int(direct["x"][0])
    keep = (
        (src["type"] == "star")
        & src["in_patch"]
        & ~src["saturated"]
        & (src["flux"] > 1.5e4)
        & (src["neighbor_dist"] > 20)
    )
    stars = src[keep]
    ny, nx = direct.sizes["y"], direct.sizes["x"]
    iy = np.round(np.asarray(stars["y"]) - y0).astype(int)
    ix = np.round(np.asarray(stars["x"]) - x0).astype(int)
    inside = (iy >= APERTURE) & (iy < ny - APERTURE) & (ix >= APERTURE) & (ix < nx - APERTURE)
    return stars[inside], iy[inside], ix[inside]


def _fractions(images: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[-APERTURE : APERTURE + 1, -APERTURE : APERTURE + 1]
    disk = yy**2 + xx**2 <= APERTURE**2
    out = []
    for y, x in zip(iy, ix, strict=True):
        box = images[:, y - APERTURE : y + APERTURE + 1, x - APERTURE : x + APERTURE + 1]
        flux = (box * disk).sum(axis=(1, 2))
        out.append(flux / flux.sum())
    return np.array(out)


def test_subfilter_fluxes_of_bright_stars_follow_truth(run):
    sim, direct, _, dcr = run
    stars, iy, ix = _bright_isolated(sim, direct)
    assert len(stars) >= 8, len(stars)
    got = _fractions(dcr["image"].values, iy, ix)
    truth = np.stack([np.asarray(stars[f"flux_sub{k}"]) for k in range(3)], axis=1)
    truth = truth / truth.sum(axis=1, keepdims=True)
    err = np.abs(got - truth)
    colour = np.abs((got[:, 0] - got[:, 2]) - (truth[:, 0] - truth[:, 2]))
    flat = np.abs(1 / 3 - truth).max(axis=1)
    print(
        f"\n{len(stars)} bright isolated stars: per-sub-filter fraction error max "
        f"{err.max():.3f}, median {np.median(err.max(axis=1)):.3f}; bluest-reddest error "
        f"median {np.median(colour):.3f}, max {colour.max():.3f}; template/N would be off by "
        f"{np.median(flat):.3f} (median), {flat.max():.3f} (max)"
    )
    assert err.max() < 0.12
    assert np.median(err.max(axis=1)) < 0.08
    assert np.median(colour) < 0.08 and colour.max() < 0.12
    # colour order: every blue star's bluest/reddest ratio above every red star's, as in truth
    ratio = got[:, 0] / got[:, 2]
    blue, red = np.asarray(stars["alpha"]) < -1.0, np.asarray(stars["alpha"]) > 1.0
    assert blue.any() and red.any()
    assert ratio[blue].min() > ratio[red].max()
    assert (truth[blue, 0] / truth[blue, 2]).min() > (truth[red, 0] / truth[red, 2]).max()


def _exposure(image, variance, mask, wcs, planes, fwhm):
    return Exposure(
        np.where(np.isfinite(image), image, 0.0).astype(np.float32),
        np.asarray(mask, np.int32),
        np.where(np.isfinite(variance), variance, 1e12).astype(np.float32),
        wcs,
        dict(planes),
        psf_fwhm=fwhm,
    )


def test_dcr_template_beats_the_plain_coadd_at_high_airmass(run):
    sim, direct, template, dcr = run
    _, iy, ix = _bright_isolated(sim, direct)
    y0, x0 = int(direct["y"][0]), int(direct["x"][0])
    wcs = shift_wcs(wcs_from_header_string(direct.attrs["wcs"]), x0, y0)
    planes = direct.attrs["mask_planes"]
    ny, nx = direct.sizes["y"], direct.sizes["x"]
    yy, xx = np.mgrid[0:ny, 0:nx]
    star = np.zeros((ny, nx), bool)
    for y, x in zip(iy, ix, strict=True):
        star |= (yy - y) ** 2 + (xx - x) ** 2 <= STAR_RADIUS**2
    plain = template["image"].values
    t_var, t_mask = template["variance"].values, template["mask"].values
    fwhm_t = float(np.median(direct["psf_fwhm"].values))
    candidates = np.stack([ix, iy], axis=1)
    bad = coaddx.model.masks.bitmask(planes, ("NO_DATA", "BAD", "SAT"))
    ratios = {}
    for i in np.flatnonzero(direct["airmass"].values >= 1.5):
        v = direct.isel(visit=int(i))
        science = _exposure(
            v["image"].values,
            v["variance"].values,
            v["mask"].values,
            wcs,
            planes,
            float(v["psf_fwhm"]),
        )
        model = coaddx.dcr_template(
            dcr, elevation=float(v["elevation"]), parallactic_angle=float(v["parallactic_angle"])
        ).values
        good = star & ((v["mask"].values & bad) == 0)
        # LSST's "auto" mode: convolve whichever image has the narrower PSF
        cfg = coaddx.PsfMatchConfig(convolve_template=float(v["psf_fwhm"]) >= fwhm_t)
        diffs = [
            coaddx.subtract(
                _exposure(image, t_var, t_mask, wcs, planes, fwhm_t),
                science,
                cfg,
                candidates=candidates,
            ).difference.image
            for image in (plain, model)
        ]
        good &= np.isfinite(diffs[0]) & np.isfinite(diffs[1])  # the kernel's border
        rms = [float(np.sqrt(np.mean(d[good] ** 2))) for d in diffs]
        ratios[f"{int(v['visit'])} (airmass {float(v['airmass']):.2f})"] = rms[1] / rms[0]
    print(
        "\nrms residual over star pixels, DCR template / plain coadd, per visit at airmass >= 1.5:"
    )
    print({k: round(r, 3) for k, r in ratios.items()})
    assert len(ratios) >= 4 and max(ratios.values()) <= 0.7
