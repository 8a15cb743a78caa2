"""The simulator's truth catalogues: sources, the variable star, transients, streaks, visits.

Positions are given as sky (``ra``, ``dec``), tract pixels (``x``, ``y``: the stores'
coordinates) and patch-array pixels (``x_patch``, ``y_patch``); fluxes are total fluxes in nJy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from coaddx.constants import AB_ZERO_NJY
from coaddx.model.skymap import Patch
from coaddx.sim.chromatic import subfilter_fractions
from coaddx.sim.scene import Scene

__all__ = ["truth_tables"]

_PROFILES = ("exp", "dev")


def _positions(patch: Patch, x: np.ndarray, y: np.ndarray, suffix: str = "") -> dict:
    ra, dec = patch.wcs.wcs_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return {
        f"ra{suffix}": ra,
        f"dec{suffix}": dec,
        f"x{suffix}": x + patch.outer_bbox.x0,
        f"y{suffix}": y + patch.outer_bbox.y0,
        f"x{suffix}_patch": x,
        f"y{suffix}_patch": y,
    }


def _mag(flux: np.ndarray) -> np.ndarray:
    return AB_ZERO_NJY - 2.5 * np.log10(flux)


def _sources_table(scene: Scene) -> Table:
    st, gal = scene.stars, scene.galaxies
    ns, ng = st["x"].size, gal["x"].size
    x, y = np.r_[st["x"], gal["x"]], np.r_[st["y"], gal["y"]]
    flux = np.r_[st["flux"], gal["flux"]]
    ny, nx = scene.patch.shape
    dist = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=2)[0][:, 1]
    table = Table(
        {
            "id": np.arange(ns + ng),
            "type": np.r_[["star"] * ns, ["galaxy"] * ng],
            "profile": np.r_[["psf"] * ns, np.array(_PROFILES)[gal["profile"]]],
            **_positions(scene.patch, x, y),
            "flux": flux,
            "mag": _mag(flux),
            "r_e": np.r_[np.zeros(ns), gal["r_e"]],
            "q": np.r_[np.ones(ns), gal["q"]],
            "pa": np.r_[np.zeros(ns), gal["pa"]],
            "in_patch": (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5),
            "saturated": np.r_[st["saturated"], np.zeros(ng, bool)],
            "neighbor_dist": dist,
        }
    )
    if scene.dcr is not None:  # stars coloured, galaxies flat
        alpha = np.r_[st["alpha"], np.zeros(ng)]
        table["alpha"] = alpha
        sub = flux[:, None] * subfilter_fractions(scene.dcr, alpha)
        for k in range(scene.dcr.n_subfilters):
            table[f"flux_sub{k}"] = sub[:, k]
    return table


def truth_tables(scene: Scene) -> dict[str, Table]:
    vs = scene.visits
    vx, vy = scene.variable
    var = Table(
        {
            "visit": [v.visit for v in vs],
            "mjd": [v.meta["mjd"] for v in vs],
            **{
                k: np.full(len(vs), val[0])
                for k, val in _positions(scene.patch, np.array([vx]), np.array([vy])).items()
            },
            "flux": [v.variable_flux for v in vs],
        }
    )
    tr = np.concatenate([v.transients for v in vs])
    tvis = np.concatenate([np.full(len(v.transients), v.visit) for v in vs])
    trans = Table(
        {
            "id": np.arange(len(tr)),
            "visit": tvis,
            **_positions(scene.patch, tr[:, 0], tr[:, 1]),
            "flux": tr[:, 2],
            "mag": _mag(tr[:, 2]),
        }
    )
    sk = np.concatenate([v.streaks for v in vs])
    svis = np.concatenate([np.full(len(v.streaks), v.visit) for v in vs])
    streaks = Table(
        {
            "id": np.arange(len(sk)),
            "visit": svis,
            **_positions(scene.patch, sk[:, 0], sk[:, 1], "_start"),
            **_positions(scene.patch, sk[:, 2], sk[:, 3], "_end"),
            "width": sk[:, 4],
            "surface_brightness": sk[:, 5],
        }
    )
    units = {
        "flux": "nJy",
        "surface_brightness": "nJy",
        "width": "pix",
        "r_e": "pix",
        "pa": "deg",
        "neighbor_dist": "pix",
    }
    if scene.dcr is not None:
        units.update({f"flux_sub{k}": "nJy" for k in range(scene.dcr.n_subfilters)})
        units.update({k: "deg" for k in ("elevation", "parallactic_angle", "theta")})
    out = {
        "sources": _sources_table(scene),
        "variable": var,
        "transients": trans,
        "streaks": streaks,
        "visits": _visits_table(scene),
    }
    for table in out.values():
        for name in table.colnames:
            if name in units:
                table[name].unit = units[name]
            elif name.startswith(("ra", "dec")):
                table[name].unit = "deg"
    return out


def _visits_table(scene: Scene) -> Table:
    keys = (
        "mjd",
        "band",
        "airmass",
        "parallactic_angle",
        "exptime",
        "psf_fwhm",
        "photo_calib",
        "zero_point",
        "sky_level",
        "sky_counts",
        "noise_sigma",
    )
    rows: dict[str, list[Any]] = {
        "index": [v.index for v in scene.visits],
        "visit": [v.visit for v in scene.visits],
    }
    for key in keys:
        rows[key] = [v.meta[key] for v in scene.visits]
    rows["n_detectors"] = [v.meta["n_detectors"] for v in scene.visits]
    rows["detectors"] = [",".join(str(d) for d in v.meta["detectors"]) for v in scene.visits]
    for i, name in enumerate(("dither_x", "dither_y", "rotation")):
        rows[name] = [v.meta["dither"][i] for v in scene.visits]
    rows["variable_flux"] = [v.variable_flux for v in scene.visits]
    rows["n_transients"] = [len(v.transients) for v in scene.visits]
    rows["n_streaks"] = [len(v.streaks) for v in scene.visits]
    rows["n_cosmic_rays"] = [len(v.crs) for v in scene.visits]
    if scene.dcr is not None:
        rows["elevation"] = [v.meta["elevation"] for v in scene.visits]
        rows["theta"] = [v.dcr_theta for v in scene.visits]
    return Table(rows)
