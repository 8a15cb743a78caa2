"""Scene planning for :func:`coaddx.sim.simulate.simulate`: grid, camera, catalogue and visits.

Everything here is small and drawn up front from the seed (the pixels are rendered elsewhere):
the tract and patch, per-visit conditions and dithered two-detector placements (exact
homographies between patch and detector pixels), the source catalogue, the variable star,
transients, streaks, cosmic rays and BAD columns. Positions are patch-array pixels
(column x, row y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from coaddx.constants import AB_ZERO_NJY, FWHM_TO_SIGMA, MOFFAT_BETA
from coaddx.errors import ConfigError
from coaddx.model.skymap import Patch, Tract, make_tan_wcs
from coaddx.sim.chromatic import AIRMASS_RANGE, ALPHA_RANGE, DcrSpec, visit_shifts
from coaddx.sim.render import moffat_alpha

PIXEL_SCALE = 0.2  # arcsec per pixel
CENTER = (150.0, 2.0)  # tract centre, degrees
EXPTIME = 30.0  # s
GAIN = 1.0  # electrons per count
READ_NOISE = 8.0  # electrons
FULL_WELL = 90_000.0  # electrons
EDGE_WIDTH = 3  # EDGE pixels inside each detector border
CR_RATE = 100.0  # cosmic rays per Mpix per exposure
FIRST_VISIT = 1000


@dataclass(frozen=True)
class Detector:
    """One detector of a visit: its WCS and the map from patch pixels to its pixels."""

    id: int
    wcs: WCS
    to_det: np.ndarray  # 3x3 homography: patch pixel -> detector pixel


@dataclass(frozen=True)
class Visit:
    """One visit: conditions (``meta``), detectors and its one-visit sources/artifacts."""

    index: int
    visit: int
    meta: dict[str, Any]
    detectors: tuple[Detector, ...]
    variable_flux: float
    transients: np.ndarray  # (n, 3) x_patch, y_patch, flux nJy
    streaks: np.ndarray  # (n, 6) xa, ya, xb, yb (patch), width FWHM px, peak nJy/px
    crs: np.ndarray  # (n, 7) x0, y0, x1, y1 (patch), energy counts, masked, detector
    dcr_theta: float | None = None  # DCR mode: direction to the zenith in the patch frame, deg
    dcr_shift: np.ndarray | None = None  # DCR mode: (n_bins, 2) dy, dx patch px per fine bin


@dataclass(frozen=True)
class Scene:
    """Everything :func:`plan_scene` draws: grid, camera, catalogue and visits."""

    tract: Tract
    patch: Patch
    psf: str
    band: str
    det_shape: tuple[int, int]  # (rows, columns)
    bad: np.ndarray  # (n, 5) detector, column, row0, row1, hot
    stars: dict[str, np.ndarray]
    galaxies: dict[str, np.ndarray]
    variable: tuple[float, float]
    visits: tuple[Visit, ...] = field(default=())
    dcr: DcrSpec | None = None  # DCR mode: the band's fine bins (stars carry "alpha")


def seeded_rng(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for ``key`` under ``seed`` (SeedSequence spawn key)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def make_patch(shape: tuple[int, int]) -> tuple[Tract, Patch]:
    """A tract whose central patch has outer shape ``shape`` (rows, columns), and that patch."""
    ny, nx = shape
    border = 100 if min(shape) >= 400 else min(shape) // 4
    inner = (nx - 2 * border, ny - 2 * border)
    radius = 1.25 * max(inner) * PIXEL_SCALE / 3600.0
    tract = Tract(
        CENTER,
        radius=radius,
        pixel_scale=PIXEL_SCALE,
        patch_inner_dimensions=inner,
        patch_border=border,
    )
    nxp, nyp = tract.num_patches
    patch = tract.patch(nxp // 2, nyp // 2)
    if patch.shape != (ny, nx):
        raise ConfigError(f"simulate: no patch of outer shape {shape} (got {patch.shape})")
    return tract, patch


def fit_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map src -> dst (points (n, 2)), normalised DLT."""

    def norm(p: np.ndarray) -> np.ndarray:
        m = p.mean(axis=0)
        s = math.sqrt(2.0) / np.mean(np.hypot(*(p - m).T))
        return np.array([[s, 0, -s * m[0]], [0, s, -s * m[1]], [0, 0, 1.0]])

    ts, td = norm(src), norm(dst)
    ps = (ts @ np.c_[src, np.ones(len(src))].T).T
    pd = (td @ np.c_[dst, np.ones(len(dst))].T).T
    rows = []
    for (x, y, _), (uu, vv, _) in zip(ps, pd, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -uu * x, -uu * y, -uu])
        rows.append([0, 0, 0, x, y, 1, -vv * x, -vv * y, -vv])
    h = np.linalg.svd(np.asarray(rows))[2][-1].reshape(3, 3)
    h = np.linalg.inv(td) @ h @ ts
    return h / h[2, 2]


def apply_h(h: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the 3x3 homography ``h`` to points ``(x, y)``."""
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    return (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w, (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w


def jacobian_h(h: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d(u, v)/d(x, y) of the homography at each point: (n, 2, 2)."""
    uu, vv = apply_h(h, x, y)
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    jac = np.empty((np.size(x), 2, 2))
    jac[:, 0, 0], jac[:, 0, 1] = (h[0, 0] - uu * h[2, 0]) / w, (h[0, 1] - uu * h[2, 1]) / w
    jac[:, 1, 0], jac[:, 1, 1] = (h[1, 0] - vv * h[2, 0]) / w, (h[1, 1] - vv * h[2, 1]) / w
    return jac


def make_detector(
    det_id: int, center_xy: np.ndarray, rotation: float, patch_wcs: WCS, det_shape: tuple[int, int]
) -> Detector:
    """Detector ``det_id`` centred on patch pixel ``center_xy``: TAN WCS and homography."""
    h_rows, w_cols = det_shape
    ra, dec = patch_wcs.wcs_pix2world([center_xy], 0)[0]
    wcs = make_tan_wcs(
        SkyCoord(ra * u.deg, dec * u.deg),
        ((w_cols - 1) / 2, (h_rows - 1) / 2),
        PIXEL_SCALE,
        rotation,
    )
    gu, gv = np.meshgrid(np.linspace(0, w_cols - 1, 5), np.linspace(0, h_rows - 1, 5))
    det_xy = np.c_[gu.ravel(), gv.ravel()]
    patch_xy = patch_wcs.wcs_world2pix(wcs.wcs_pix2world(det_xy, 0), 0)
    to_det = fit_homography(patch_xy, det_xy)
    resid = np.hypot(*(np.array(apply_h(to_det, *patch_xy.T)) - det_xy.T))
    if resid.max() > 1e-5:
        raise RuntimeError(f"TAN-TAN homography residual {resid.max():.1e} px")  # pragma: no cover
    return Detector(det_id, wcs, to_det)


def det_footprint(det: Detector, det_shape: tuple[int, int]) -> np.ndarray:
    """Detector corners in patch pixels: (4, 2)."""
    h_rows, w_cols = det_shape
    corners = np.array(
        [[-0.5, -0.5], [w_cols - 0.5, -0.5], [w_cols - 0.5, h_rows - 0.5], [-0.5, h_rows - 0.5]]
    )
    return np.c_[apply_h(np.linalg.inv(det.to_det), *corners.T)]


def visit_detectors(
    rng: np.random.Generator, patch: Patch, det_shape: tuple[int, int], gap: int
) -> tuple[tuple[Detector, ...], list[float]]:
    """Dithered, rotated detectors of one visit that overlap the patch, and the dither."""
    ny, nx = patch.shape
    _h_rows, w_cols = det_shape
    dx, dy = rng.uniform(-0.06, 0.06, 2) * (nx, ny)
    rotation = float(rng.uniform(-1.0, 1.0))
    if rng.random() < 0.2:  # a visit at the edge of the focal plane: one detector only
        dx = float(rng.choice([-1, 1])) * (nx / 2 + 10 - gap / 2 + rng.uniform(0, 0.1 * nx))
    centre = np.array([(nx - 1) / 2 + dx, (ny - 1) / 2 + dy])
    rot = math.radians(rotation)
    axis = np.array([math.cos(rot), math.sin(rot)])
    dets = []
    for det_id, side in ((0, -1), (1, 1)):
        det = make_detector(
            det_id, centre + side * (w_cols + gap) / 2 * axis, rotation, patch.wcs, det_shape
        )
        fp = det_footprint(det, det_shape)
        if (
            fp[:, 0].max() > 0
            and fp[:, 0].min() < nx - 1
            and fp[:, 1].max() > 0
            and fp[:, 1].min() < ny - 1
        ):
            dets.append(det)
    return tuple(dets), [float(dx), float(dy), rotation]


def visit_conditions(
    rng: np.random.Generator, n: int, band: str, dcr_rng: np.random.Generator | None = None
) -> list[dict[str, Any]]:
    """Per-visit observing conditions: mjd, airmass, seeing, zero point, sky, noise.

    With ``dcr_rng`` (DCR mode) the airmass is uniform in :data:`AIRMASS_RANGE` and the
    parallactic angle uniform in [-180, 180) degrees, both drawn from ``dcr_rng`` (``rng``
    draws exactly as without it), and ``elevation`` = degrees(arcsin(1 / airmass)) (a
    plane-parallel atmosphere) is added.
    """
    mjd = 60000.0 + np.sort(rng.uniform(0.0, 400.0, n))
    airmass = 1.0 / np.cos(np.radians(rng.uniform(0.0, 55.0, n)))
    if dcr_rng is not None:
        airmass = dcr_rng.uniform(*AIRMASS_RANGE, n)
    fwhm = np.clip(rng.lognormal(math.log(4.0), 0.15, n) * airmass**0.6, 3.5, 6.0)
    zero_point = 32.1 - 0.12 * (airmass - 1.0) - rng.exponential(0.05, n) + rng.normal(0.0, 0.02, n)
    calib = 10.0 ** (-0.4 * (zero_point - AB_ZERO_NJY))
    sky = rng.uniform(600.0, 2500.0, n)
    parangle = rng.uniform(-90.0, 90.0, n)
    if dcr_rng is not None:
        parangle = dcr_rng.uniform(-180.0, 180.0, n)
    out = []
    for i in range(n):
        noise = math.sqrt(sky[i] / GAIN + READ_NOISE**2) * calib[i]
        out.append(
            {
                "mjd": float(mjd[i]),
                "band": band,
                "airmass": float(airmass[i]),
                "parallactic_angle": float(parangle[i]),
                "exptime": EXPTIME,
                "psf_fwhm": float(fwhm[i]),
                "photo_calib": float(calib[i]),
                "zero_point": float(zero_point[i]),
                "sky_level": float(sky[i] * calib[i]),
                "sky_counts": float(sky[i]),
                "noise_sigma": float(noise),
                "gain": GAIN,
                "read_noise": READ_NOISE,
                "saturation": FULL_WELL,
            }
        )
        if dcr_rng is not None:
            out[-1]["elevation"] = math.degrees(math.asin(1.0 / airmass[i]))
    return out


def peak_fraction(fwhm: float, psf: str) -> float:
    """Peak pixel value of a unit-flux point source."""
    if psf == "moffat":
        return (MOFFAT_BETA - 1.0) / (math.pi * moffat_alpha(fwhm, MOFFAT_BETA) ** 2)
    return 1.0 / (2.0 * math.pi * (fwhm * FWHM_TO_SIGMA) ** 2)


def power_law(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """Fluxes with N(>F) proportional to F^-slope between lo and hi."""
    a, b = lo**-slope, hi**-slope
    return (a - rng.uniform(0.0, 1.0, n) * (a - b)) ** (-1.0 / slope)


def make_sources(
    rng: np.random.Generator,
    region: np.ndarray,
    patch: Patch,
    n_stars: int,
    n_galaxies: int,
    sat_flux: float,
) -> tuple[dict, dict]:
    """Stars (a few saturating) and galaxies over ``region`` (patch pixels)."""
    (x0, y0), (x1, y1) = region
    ny, nx = patch.shape
    scale = (x1 - x0) * (y1 - y0) / (nx * ny)
    ns, ng = round(n_stars * scale), round(n_galaxies * scale)
    n_bright = max(2, n_stars // 100)
    stars = {
        "x": np.r_[rng.uniform(x0, x1, ns), rng.uniform(0.15, 0.85, n_bright) * nx],
        "y": np.r_[rng.uniform(y0, y1, ns), rng.uniform(0.15, 0.85, n_bright) * ny],
        "flux": np.r_[
            power_law(rng, ns, 300.0, 5e5, 0.6), sat_flux * 10 ** rng.uniform(0.3, 1.2, n_bright)
        ],
    }
    re = 10 ** rng.uniform(math.log10(0.8), math.log10(6.0), ng)
    flux = power_law(rng, ng, 200.0, 2e5, 0.8)
    galaxies = {
        "x": rng.uniform(x0, x1, ng),
        "y": rng.uniform(y0, y1, ng),
        "flux": flux,
        "r_e": np.clip(re * (flux / 1e3) ** 0.15, 0.5, 15.0),
        "q": rng.uniform(0.3, 1.0, ng),
        "pa": rng.uniform(0.0, 180.0, ng),
        "profile": (rng.random(ng) < 0.3).astype(np.int64),
    }
    return stars, galaxies


def isolated(x: float, y: float, trees: list[tuple[cKDTree, float]]) -> bool:
    """True when no source of any tree lies within that tree's radius of ``(x, y)``."""
    return all(not tree.query_ball_point((x, y), r) for tree, r in trees)


def isolation_trees(stars: dict, galaxies: dict, sat_flux: float) -> list[tuple[cKDTree, float]]:
    """KD-trees of sources by flux class, each with its exclusion radius (px)."""
    xs = np.r_[stars["x"], galaxies["x"]]
    ys = np.r_[stars["y"], galaxies["y"]]
    fs = np.r_[stars["flux"], galaxies["flux"]]
    out = []
    for lo, hi, radius in ((500.0, 1e5, 15.0), (1e5, sat_flux, 60.0), (sat_flux, np.inf, 150.0)):
        sel = (fs > lo) & (fs <= hi)
        if sel.any():
            out.append((cKDTree(np.c_[xs[sel], ys[sel]]), radius))
    return out


def covered(
    visit_dets: tuple[Detector, ...],
    det_shape: tuple[int, int],
    bad: np.ndarray,
    x: float,
    y: float,
    margin: float,
) -> bool | None:
    """True inside a detector (``margin`` px from its edges) and away from its BAD columns;
    None inside but on a BAD column; False outside the detectors."""
    h_rows, w_cols = det_shape
    for det in visit_dets:
        pu, pv = apply_h(det.to_det, np.array([x]), np.array([y]))
        uu, vv = float(pu[0]), float(pv[0])
        if margin <= uu <= w_cols - 1 - margin and margin <= vv <= h_rows - 1 - margin:
            cols = bad[bad[:, 0] == det.id, 1]
            return True if np.all(np.abs(cols - uu) > 15.0) else None
    return False


def draw_transients(rng, n_total, n_visits, patch, dets, det_shape, bad, trees, variable):
    """Isolated, well-covered one-visit transients: per visit (n, 3) x, y, flux nJy."""
    ny, nx = patch.shape
    per_visit: list[list[list[float]]] = [[] for _ in range(n_visits)]
    for _ in range(n_total):
        i = int(rng.integers(n_visits))
        for _attempt in range(2000):
            x, y = rng.uniform(0.05, 0.95) * nx, rng.uniform(0.05, 0.95) * ny
            if (
                math.hypot(x - variable[0], y - variable[1]) > 25.0
                and isolated(x, y, trees)
                and covered(dets[i], det_shape, bad, x, y, 12.0) is True
            ):
                per_visit[i].append([x, y, float(10 ** rng.uniform(4.3, 5.0))])
                break
    return [np.asarray(t, dtype=np.float64).reshape(-1, 3) for t in per_visit]


def draw_streaks(rng, conds, patch) -> list[np.ndarray]:
    """Satellite streaks (about 15 % of visits): per visit (n, 6) xa, ya, xb, yb, width, peak."""
    ny, nx = patch.shape
    has = rng.random(len(conds)) < 0.15
    if not has.any() and len(conds) >= 2:
        has[int(rng.integers(len(conds)))] = True
    out = []
    for i, cond in enumerate(conds):
        if not has[i]:
            out.append(np.zeros((0, 6)))
            continue
        angle = rng.uniform(0.0, math.pi)
        cx, cy = rng.uniform(0.2, 0.8) * nx, rng.uniform(0.2, 0.8) * ny
        reach = 2.0 * max(nx, ny)
        d = reach * np.array([math.cos(angle), math.sin(angle)])
        width = cond["psf_fwhm"] * rng.uniform(1.0, 1.6)
        peak = cond["noise_sigma"] * rng.uniform(3.0, 20.0)
        out.append(np.array([[cx - d[0], cy - d[1], cx + d[0], cy + d[1], width, peak]]))
    return out


def draw_crs(rng, dets: tuple[Detector, ...], det_shape: tuple[int, int]) -> np.ndarray:
    """Cosmic-ray tracks of one visit in patch pixels: (n, 7), see :class:`Visit`."""
    h_rows, w_cols = det_shape
    rows = []
    for det in dets:
        n = rng.poisson(CR_RATE * h_rows * w_cols / 1e6)
        uu, vv = rng.uniform(0, w_cols - 1, n), rng.uniform(0, h_rows - 1, n)
        length = np.where(rng.random(n) < 0.7, rng.uniform(0, 2, n), rng.uniform(2, 25, n))
        angle = rng.uniform(0, 2 * math.pi, n)
        u1, v1 = uu + length * np.cos(angle), vv + length * np.sin(angle)
        inv = np.linalg.inv(det.to_det)
        (xa, ya), (xb, yb) = apply_h(inv, uu, vv), apply_h(inv, u1, v1)
        energy = 10 ** rng.uniform(2.0, 3.5, n) * np.maximum(length, 1.0)
        masked = (rng.random(n) < 0.85).astype(np.float64)
        rows.append(np.c_[xa, ya, xb, yb, energy, masked, np.full(n, det.id)])
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def variable_flux(rng: np.random.Generator, mjd: np.ndarray) -> np.ndarray:
    """Flux (nJy) of the periodic variable star at each ``mjd``."""
    period, phase = rng.uniform(0.8, 5.0), rng.uniform(0.0, 2 * math.pi)
    return 3e4 * 10 ** (-0.4 * 1.2 * np.sin(2 * math.pi * mjd / period + phase))


def plan_scene(
    seed: int,
    n_visits: int,
    shape: tuple[int, int],
    psf: str,
    band: str,
    n_stars: int | None,
    n_galaxies: int | None,
    dcr: DcrSpec | None = None,
) -> Scene:
    """Draw the whole scene (catalogue, camera, visits) from ``seed``.

    With ``dcr`` the DCR draws (airmass, parallactic angle, star colours) come from their own
    generators, so everything else is drawn exactly as without it.
    """
    rng = seeded_rng(seed, 0)
    tract, patch = make_patch(shape)
    ny, nx = shape
    det_shape = (math.ceil(1.04 * ny), math.ceil(0.52 * nx))
    gap = max(6, round(0.012 * nx))
    bad = bad_columns(seeded_rng(seed, 0, 1), det_shape)
    conds = visit_conditions(rng, n_visits, band, None if dcr is None else seeded_rng(seed, 4))
    placed = [visit_detectors(rng, patch, det_shape, gap) for _ in range(n_visits)]
    dets = [p[0] for p in placed]
    feet = np.concatenate([det_footprint(d, det_shape) for ds in dets for d in ds])
    region = np.array([feet.min(axis=0) - 20, feet.max(axis=0) + 20])
    sat_fluxes = [
        c["photo_calib"] * (FULL_WELL - c["sky_counts"]) / peak_fraction(c["psf_fwhm"], psf)
        for c in conds
    ]
    sat_flux = max(sat_fluxes)  # bright stars saturate in every visit
    area = nx * ny / 1024**2
    stars, galaxies = make_sources(
        rng,
        region,
        patch,
        round(200 * area) if n_stars is None else n_stars,
        round(500 * area) if n_galaxies is None else n_galaxies,
        sat_flux,
    )
    trees = isolation_trees(stars, galaxies, sat_flux)
    variable = place_variable(rng, patch, trees, dets, det_shape, bad)
    var_flux = variable_flux(rng, np.array([c["mjd"] for c in conds]))
    n_tr = max(1, round(2 * n_visits * area))
    trans = draw_transients(rng, n_tr, n_visits, patch, dets, det_shape, bad, trees, variable)
    streaks = draw_streaks(rng, conds, patch)
    visits = []
    for i, cond in enumerate(conds):
        crs = draw_crs(seeded_rng(seed, 3, i), dets[i], det_shape)
        theta, shift = None, None
        if dcr is not None:
            theta, shift = visit_shifts(
                dcr, cond["elevation"], cond["parallactic_angle"], patch.tract_wcs, PIXEL_SCALE
            )
        meta = {
            **cond,
            "n_detectors": len(dets[i]),
            "detectors": [d.id for d in dets[i]],
            "dither": placed[i][1],
            "psf": psf,
        }
        visits.append(
            Visit(
                i,
                FIRST_VISIT + i,
                meta,
                dets[i],
                float(var_flux[i]),
                trans[i],
                streaks[i],
                crs,
                theta,
                shift,
            )
        )
    stars["saturated"] = stars["flux"] >= min(sat_fluxes)  # in one visit at least
    if dcr is not None:
        stars["alpha"] = seeded_rng(seed, 5).uniform(*ALPHA_RANGE, stars["x"].size)
    return Scene(
        tract, patch, psf, band, det_shape, bad, stars, galaxies, variable, tuple(visits), dcr
    )


def bad_columns(rng: np.random.Generator, det_shape: tuple[int, int]) -> np.ndarray:
    """BAD columns of the two detectors: (n, 5) detector, column, row0, row1, hot."""
    h_rows, w_cols = det_shape
    rows = []
    for det_id in (0, 1):
        for j in range(int(rng.integers(2, 5))):
            col = int(rng.integers(EDGE_WIDTH + 5, w_cols - EDGE_WIDTH - 5))
            start = 0 if rng.random() < 0.5 else int(rng.integers(0, h_rows // 2))
            hot = j == 0 or rng.random() < 0.5  # hot columns: +30 sigma; dead: x 0.1
            rows.append([det_id, col, start, h_rows, float(hot)])
    return np.asarray(rows, dtype=np.float64)


def place_variable(rng, patch: Patch, trees, dets, det_shape, bad) -> tuple[float, float]:
    """An isolated place near the patch centre that no BAD column crosses, observed (away
    from detector edges) in as many visits as possible."""
    ny, nx = patch.shape
    best, best_n = (nx / 2.0, ny / 2.0), -1
    for _ in range(2000):
        x, y = rng.uniform(0.25, 0.75) * nx, rng.uniform(0.25, 0.75) * ny
        if not isolated(x, y, trees):
            continue
        cover = [covered(d, det_shape, bad, x, y, 15.0) for d in dets]
        n_covered = sum(c is True for c in cover)
        if None not in cover and n_covered > best_n:
            best, best_n = (float(x), float(y)), n_covered
            if best_n == len(dets):
                break
    return best


def without_artifacts(scene: Scene) -> Scene:
    """The scene with no transients, streaks or cosmic rays."""
    visits = tuple(
        replace(v, transients=np.zeros((0, 3)), streaks=np.zeros((0, 6)), crs=np.zeros((0, 7)))
        for v in scene.visits
    )
    return replace(scene, visits=visits)
