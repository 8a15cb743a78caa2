"""Stacking the simulator's data against its ground truth: fluxes and artifacts.

The figures are printed (``pytest -s``) and asserted with stated tolerances.
"""

import numpy as np
import pytest
import zarr

import coaddx
from coaddx.coadd.config import AssembleConfig
from coaddx.sim.simulate import ARTIFACT_BITS, enclosed_flux_fraction, simulate

SHAPE = (640, 640)


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    sim = simulate(
        tmp_path_factory.mktemp("truth") / "sim",
        n_visits=24,
        shape=SHAPE,
        seed=3,
        calexps=False,
        n_stars=500,
        workers=2,
    )
    warps = coaddx.open_warps(sim.warps)
    planes = warps.attrs["mask_planes"]
    art = zarr.open_group(str(sim.artifacts), mode="r")["artifacts"][:]
    unmasked = ARTIFACT_BITS["streak"] | ARTIFACT_BITS["transient"] | ARTIFACT_BITS["cosmic_ray"]
    truth_mask = np.where((art & unmasked) != 0, 1 << planes["BAD"], 0).astype(np.int32)
    coadds = {
        "meanclip": coaddx.assemble(warps).compute(),
        "mean": coaddx.assemble(warps, AssembleConfig(statistic="mean")).compute(),
        # the ideal: a plain mean with every injected artifact pixel masked from the truth
        "clean": coaddx.assemble(
            warps, AssembleConfig(statistic="mean"), alt_masks=truth_mask
        ).compute(),
    }
    return sim, warps, art, coadds


def test_meanclip_recovers_static_star_fluxes(stacked):
    sim, _warps, _, coadds = stacked
    src, visits = sim.read_truth("sources"), sim.read_truth("visits")
    r = 8.0
    sel = (
        (src["type"] == "star")
        & src["in_patch"]
        & ~src["saturated"]
        & (src["neighbor_dist"] > 2 * r)
        & (src["flux"] > 2e3)
    )
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    coadd = coadds["meanclip"]
    w = coadd["weight"].values
    frac = np.array([enclosed_flux_fraction(r, f, sim.psf) for f in visits["psf_fwhm"]])
    ratios, pulls = [], []
    for s in src[sel]:
        xc, yc = float(s["x_patch"]), float(s["y_patch"])
        if not (r + 2 < xc < SHAPE[1] - r - 2 and r + 2 < yc < SHAPE[0] - r - 2):
            continue
        ap = (xx - xc) ** 2 + (yy - yc) ** 2 <= r * r
        if (coadd["mask"].values[ap] & (1 << coadd.attrs["mask_planes"]["NO_DATA"])).any():
            continue
        flux = coadd["image"].values[ap].sum()
        err = np.sqrt(coadd["variance"].values[ap].sum())
        expected = s["flux"] * np.sum(w * frac) / w.sum()
        ratios.append(flux / expected)
        pulls.append((flux - expected) / err)
    ratios, pulls = np.array(ratios), np.array(pulls)
    print(
        f"\n{len(ratios)} isolated stars: median coadd/truth flux {np.median(ratios):.4f}, "
        f"MAD {np.median(np.abs(ratios - np.median(ratios))):.4f}, "
        f"median pull {np.median(pulls):.2f}"
    )
    assert len(ratios) >= 15
    assert abs(np.median(ratios) - 1) < 0.01  # static-star fluxes within 1 % (median)
    # most stars individually: within 3 % or 4 sigma of the aperture noise
    good = (np.abs(ratios - 1) < 0.03) | (np.abs(pulls) < 4)
    print(f"{good.mean():.0%} of them within 3 % or 4 sigma")
    assert good.mean() > 0.85


@pytest.mark.parametrize("kind", ["streak", "transient", "cosmic_ray"])
def test_meanclip_removes_artifacts_that_the_mean_keeps(stacked, kind):
    _, warps, art, coadds = stacked
    clean = coadds["clean"]["image"].values
    sigma = np.sqrt(coadds["clean"]["variance"].values)
    excess = (warps["image"].values - clean[None]) / np.sqrt(warps["variance"].values)
    # pixels where the artifact is bright (> 10 sigma) in the visit it is in, off sources
    # (where seeing differences between visits make any clipped mean differ from the mean)
    off_source = np.abs(clean) < 5 * sigma
    bright = (
        (((art & ARTIFACT_BITS[kind]) != 0) & (excess > 10)).any(axis=0)
        & np.isfinite(sigma)
        & off_source
    )
    kept = {name: (coadds[name]["image"].values - clean)[bright] for name in ("mean", "meanclip")}
    fraction = kept["meanclip"].sum() / kept["mean"].sum()
    mean_pull = np.median(kept["mean"] / sigma[bright])
    clip_pull = np.median(np.abs(kept["meanclip"]) / sigma[bright])
    print(
        f"\n{kind}: {bright.sum()} bright pixels; the plain mean keeps them at a median "
        f"{mean_pull:.1f} sigma, MEANCLIP keeps {100 * fraction:.1f} % of that flux "
        f"(median |residual| {clip_pull:.2f} sigma)"
    )
    assert bright.sum() > 50
    assert mean_pull > 2.0
    assert abs(fraction) < 0.05
