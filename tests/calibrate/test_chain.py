"""The chain end to end: calexps with a header WCS 2" off (with rotation and scale errors) and
PHOTCALIB off by 0.1 mag rms -> calibrate_exposures -> make_warps -> assemble gives the coadd
that the unperturbed calexps give (the pixels are the same: only the headers differ)."""

from __future__ import annotations

import numpy as np
import pytest
import sep

import coaddx

KW = {
    "n_visits": 4,
    "shape": (768, 768),
    "seed": 5,
    "artifacts": False,
    "n_stars": 900,
    "n_galaxies": 150,
}


def _coadd(calexps, patch, store):
    coaddx.make_warps(calexps, patch, store)
    return coaddx.assemble(coaddx.open_warps(store)).compute()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    clean = coaddx.simulate(root / "clean", **KW)
    bad = coaddx.simulate(root / "bad", **KW, wcs_error=2.0, zero_point_error=0.1)
    result = coaddx.calibrate_exposures(bad.calexps, bad.refcat, root / "calibrated")
    coadds = {
        "clean": _coadd(clean.calexps, clean.patch, root / "clean.zarr"),
        "calibrated": _coadd(result.written, clean.patch, root / "calibrated.zarr"),
        "uncalibrated": _coadd(bad.calexps, clean.patch, root / "uncalibrated.zarr"),
    }
    return clean, bad, result, coadds


def _stars(sim, shape, margin=30):
    t = sim.read_truth("sources")
    ny, nx = shape
    keep = (t["type"] == "star") & ~t["saturated"] & (t["neighbor_dist"] > 20)
    keep &= (t["x_patch"] > margin) & (t["x_patch"] < nx - 1 - margin)
    keep &= (t["y_patch"] > margin) & (t["y_patch"] < ny - 1 - margin)
    keep &= t["mag"] < 23.0
    return t[keep]


def _measure(image, x, y, radius=12.0, window=8):
    """Aperture flux (sep) and second-moment FWHM (numpy) of each star."""
    data = np.ascontiguousarray(np.nan_to_num(image), np.float64)
    flux, _, _ = sep.sum_circle(data, x, y, radius, subpix=5)
    yy, xx = np.mgrid[-window : window + 1, -window : window + 1]
    fwhm = []
    for xc, yc in zip(np.rint(x).astype(int), np.rint(y).astype(int), strict=True):
        stamp = data[yc - window : yc + window + 1, xc - window : xc + window + 1]
        w = np.clip(stamp, 0, None)
        cx, cy = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
        r2 = (w * ((xx - cx) ** 2 + (yy - cy) ** 2)).sum() / w.sum()
        fwhm.append(2.3548 * np.sqrt(r2 / 2))
    return flux, np.asarray(fwhm)


def test_every_exposure_is_calibrated(chain):
    _, bad, result, _ = chain
    assert not result.failed and len(result.written) == len(bad.calexps)
    truth = {int(r["visit"]): float(r["photo_calib"]) for r in bad.visits}
    errors = bad.read_truth("calexp_errors")
    assert np.std(errors["dmag"]) > 0.03  # the headers were off
    for path in result.written:
        exp = coaddx.read_exposure(path)
        assert abs(2.5 * np.log10(exp.photo_calib / truth[exp.visit])) < 0.01
        assert path.with_name(path.stem + ".sources.fits").exists()


def test_calibrated_coadd_is_as_sharp_and_as_well_calibrated(chain):
    clean, _, _, coadds = chain
    stars = _stars(clean, coadds["clean"]["image"].shape)
    x, y = np.asarray(stars["x_patch"], float), np.asarray(stars["y_patch"], float)
    m = {k: _measure(c["image"].values, x, y) for k, c in coadds.items()}
    ratio = m["calibrated"][0] / m["clean"][0]
    fwhm = {k: float(np.median(v[1])) for k, v in m.items()}
    raw = m["uncalibrated"][0] / m["clean"][0]
    print(
        f"\n{len(stars)} stars: FWHM clean {fwhm['clean']:.3f} px, calibrated "
        f"{fwhm['calibrated']:.3f} px, uncalibrated {fwhm['uncalibrated']:.3f} px; flux ratio "
        f"calibrated/clean median {np.median(ratio):.4f} (rms {np.std(ratio):.4f}), "
        f"uncalibrated/clean median {np.median(raw):.4f} (rms {np.std(raw):.4f})"
    )
    assert len(stars) >= 20
    assert abs(fwhm["calibrated"] / fwhm["clean"] - 1) < 0.01
    assert abs(np.median(ratio) - 1) < 0.005 and np.std(ratio) < 0.01
    # the uncalibrated chain is what calibration removes: blurred and off in flux
    assert fwhm["uncalibrated"] > 1.05 * fwhm["clean"] or abs(np.median(raw) - 1) > 0.02
