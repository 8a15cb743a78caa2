"""ImagePsfMatch on simulated pairs: noise-like differences and recovered transients."""

import numpy as np
import pytest
from astropy.table import Table

import coaddx
from coaddx.diffim.config import PsfMatchConfig, snap_config
from coaddx.diffim.subtract import snap_subtract, subtract
from coaddx.model.exposure import Exposure
from coaddx.sim.simulate import enclosed_flux_fraction, simulate


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    sim = simulate(
        tmp_path_factory.mktemp("diff") / "sim", n_visits=6, shape=(768, 768), seed=5, calexps=False
    )
    ds = coaddx.open_warps(sim.warps)
    return sim, ds


def _exposure(ds, sim, i):
    return Exposure(
        ds["image"].values[i],
        ds["mask"].values[i],
        ds["variance"].values[i],
        sim.patch.wcs,
        ds.attrs["mask_planes"],
        psf_fwhm=float(ds["psf_fwhm"].values[i]),
        visit=int(ds["visit"].values[i]),
    )


def _source_mask(sim, ds, radius=12):
    """Pixels near any truth source, variable star or transient (of any visit); bright sources
    (> 1e5 nJy, whose wings and saturation bleeds reach far) get a 5x larger radius."""
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    near = np.zeros((ny, nx), bool)
    yy, xx = np.mgrid[0:ny, 0:nx]
    for name in ("sources", "variable", "transients"):
        t = Table.read(sim.truth / f"{name}.ecsv", format="ascii.ecsv")
        flux = np.asarray(t["flux"]) if "flux" in t.colnames else np.zeros(len(t))
        for x, y, f in zip(t["x_patch"], t["y_patch"], flux, strict=True):
            r = radius * (5 if f > 1e5 else 1)
            if -r <= x < nx + r and -r <= y < ny + r:
                y0, y1 = max(int(y - r), 0), min(int(y + r) + 1, ny)
                x0, x1 = max(int(x - r), 0), min(int(x + r) + 1, nx)
                near[y0:y1, x0:x1] |= (
                    (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2
                ) <= r * r
    return near


def test_difference_is_noise_away_from_sources(pair):
    sim, ds = pair
    fwhm = ds["psf_fwhm"].values
    i_t, i_s = int(np.argmin(fwhm)), int(np.argmax(fwhm))
    result = subtract(_exposure(ds, sim, i_t), _exposure(ds, sim, i_s))
    z = result.difference.image / np.sqrt(result.difference.variance)
    import zarr  # artifacts of either visit are real differences

    arts = zarr.open_group(str(sim.artifacts), mode="r")["artifacts"][:]
    clean = (
        np.isfinite(z)
        & (result.difference.mask == 0)
        & ~_source_mask(sim, ds)
        & (arts[i_t] == 0)
        & (arts[i_s] == 0)
    )
    std = float(np.std(z[clean]))
    print(
        f"\nFWHM {fwhm[i_t]:.2f} -> {fwhm[i_s]:.2f}: std(D/sigma) = {std:.3f} over {clean.sum()} "
        f"clean pixels; kernel sum {result.kernel.kernel_sum(384, 384):.4f}"
    )
    assert clean.sum() > 50000 and abs(std - 1) < 0.10
    assert abs(result.kernel.kernel_sum(384, 384) - 1) < 0.02  # both in nJy


def test_transient_flux_recovered(pair):
    sim, ds = pair
    trans = Table.read(sim.transients, format="ascii.ecsv")
    visits = ds["visit"].values
    fwhm = ds["psf_fwhm"].values
    import zarr

    arts = zarr.open_group(str(sim.artifacts), mode="r")["artifacts"][:]
    recovered = []
    for row in trans:
        i_s = int(np.flatnonzero(visits == row["visit"])[0])
        others = [i for i in range(len(visits)) if i != i_s]
        i_t = min(others, key=lambda i: fwhm[i])
        if fwhm[i_t] >= fwhm[i_s]:
            continue  # only convolve to a broader PSF
        result = subtract(_exposure(ds, sim, i_t), _exposure(ds, sim, i_s))
        x, y, r = float(row["x_patch"]), float(row["y_patch"]), 2.0 * fwhm[i_s]
        yy, xx = np.mgrid[0 : ds.sizes["y"], 0 : ds.sizes["x"]]
        ap = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
        if (
            not np.isfinite(result.difference.image[ap]).all()
            or arts[i_t][ap].any()
            or result.difference.mask[ap].any()
        ):  # masked pixels (e.g. BAD columns)
            continue  # the template must be clean there (no artifact of its own)
        want = row["flux"] * enclosed_flux_fraction(r, fwhm[i_s], sim.psf)
        recovered.append(result.difference.image[ap].sum() / want)
        if len(recovered) == 4:
            break
    print(f"\ninjected transients: difference flux / injected = {np.round(recovered, 4)}")
    assert len(recovered) >= 2 and np.all(np.abs(np.array(recovered) - 1) < 0.05)


def test_self_match_and_snap_preset(pair):
    sim, ds = pair
    a = _exposure(ds, sim, 0)
    # matching an image to itself: a delta kernel (delta-function basis, which can express it)
    result = snap_subtract(a, a, config=snap_config("delta-function"))
    k = result.kernel.kernel_image(100, 100)
    c = k.shape[0] // 2
    assert k[c, c] == pytest.approx(1.0, abs=0.01) and np.abs(k).sum() - abs(k[c, c]) < 0.02
    al = snap_subtract(a, a)  # AL (Gaussians of sigma >= 1) only approximates it; flux kept
    assert al.kernel.kernel_sum(100, 100) == pytest.approx(1.0, abs=0.01)
    cfg = snap_config()
    assert (cfg.spatial_kernel_order, cfg.kernel_size, cfg.al_sigmas) == (0, 7, (1.0, 2.5))
    assert snap_config("delta-function").df_regularization is None


def test_no_candidates_is_a_clear_error(pair):
    sim, ds = pair
    a = _exposure(ds, sim, 0)
    flat = Exposure(np.zeros_like(a.image), a.mask, a.variance, a.wcs, a.mask_planes, psf_fwhm=4.0)
    with pytest.raises(coaddx.InputError, match="no kernel candidates"):
        subtract(flat, flat)
    with pytest.raises(coaddx.ConfigError, match="kernel_size"):
        PsfMatchConfig(kernel_size=20)
