"""Synthetic deep-field data with known truth: direct warps, calexps and artifact catalogues.

:func:`simulate` renders ``n_visits`` exposures of one patch: static stars (Moffat or Gaussian
PSF, a few saturating) and galaxies (exponential and de Vaucouleurs profiles as Gaussian
mixtures, convolved with the visit PSF), a variable star, one-visit transients, satellite
streaks and cosmic rays, with per-visit seeing, zero point, sky, dithers and rotation of a
two-detector camera, sky + source + read noise and a matching variance plane, and the mask
planes BAD, SAT, CR, EDGE and NO_DATA. Everything is drawn from ``seed``; the outputs are
bit-identical for a seed whatever ``workers`` is.

Units. The warp store holds sky-subtracted images in nJy (variance nJy^2); calexps hold
sky-subtracted counts (electrons, gain 1) with ``PHOTCALIB`` nJy per count. Catalogue fluxes
are total fluxes in nJy: every source profile is evaluated at pixel centres inside a
truncation radius holding >= 99.9 % of its flux and normalised so that its pixels sum to the
catalogue flux (:func:`enclosed_flux_fraction` gives the fraction inside an aperture).

Geometry. Patch pixels and detector pixels are related by exact homographies (the map between
two gnomonic projections is projective), so warps and calexps render the same sky. The warp
and artifact stores' ``wcs`` attribute is the tract WCS (design.md): array pixel (row i,
column j) is tract pixel (``y[i]``, ``x[j]``) through the stores' coordinates. Rendering
kernels live in :mod:`coaddx.kernels.render`, scene planning in :mod:`coaddx._simscene`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from ._simscene import (
    AB_ZERO_NJY,
    EDGE_WIDTH,
    FULL_WELL,
    GAIN,
    MOFFAT_BETA,
    PIXEL_SCALE,
    READ_NOISE,
    Detector,
    Scene,
    Visit,
    apply_h,
    jacobian_h,
    plan_scene,
    seeded_rng,
    without_artifacts,
)
from .errors import ConfigError, StoreError
from .kernels.interp import interpolate_over_defects
from .kernels.render import (
    add_gaussians,
    add_points,
    add_streak,
    add_tracks,
    bad_and_saturate,
    coverage,
    finalize,
    flag_disks,
    galaxy_components,
    moffat_alpha,
    noise,
)
from .masks import mask_planes as default_mask_planes
from .psf import psf_image as _psf_image
from .skymap import Patch, Tract, wcs_to_header_string

__all__ = ["ARTIFACT_BITS", "Simulation", "enclosed_flux_fraction", "psf_image", "simulate"]

#: Bit codes of the ``truth/artifacts.zarr`` cube (visit, y, x).
ARTIFACT_BITS: dict[str, int] = {
    "streak": 1,
    "transient": 2,
    "cosmic_ray": 4,
    "masked_cosmic_ray": 8,
}

_PROFILES = ("exp", "dev")

T_Psf = Literal["moffat", "gaussian"]


# -- public helpers ------------------------------------------------------------------------


def enclosed_flux_fraction(
    radius: float, fwhm: float, psf: T_Psf = "moffat", beta: float = MOFFAT_BETA
) -> float:
    """Fraction of a point source's flux inside a circle of ``radius`` pixels.

    For the untruncated profile; the simulated profiles hold >= 99.9 % of their flux inside
    their truncation radius, renormalised, so the true fraction is at most 0.1 % higher.

    Examples
    --------
    >>> round(enclosed_flux_fraction(25.0, 5.0), 4)
    0.9986
    """
    if psf == "moffat":
        alpha = moffat_alpha(fwhm, beta)
        return 1.0 - (1.0 + (radius / alpha) ** 2) ** (1.0 - beta)
    sigma = fwhm / 2.3548200450309493
    return 1.0 - math.exp(-0.5 * (radius / sigma) ** 2)


def psf_image(fwhm: float, psf: T_Psf = "moffat", size: int | None = None) -> np.ndarray:
    """The simulated PSF sampled at pixel centres on an odd ``size`` grid, unit sum
    (:func:`coaddx.psf.psf_image` with the simulator's Moffat beta)."""
    return _psf_image(fwhm, psf, size, MOFFAT_BETA)


# -- rendering one frame (the patch grid of a visit, or one detector) ------------------------


@dataclass(frozen=True)
class _Frame:
    shape: tuple[int, int]
    to_frame: np.ndarray  # patch pixel -> frame pixel
    cover: np.ndarray  # (n_det, 3, 3): frame pixel -> detector pixel
    det_ids: tuple[int, ...]
    scale: float  # output units per count
    cr_detector: int | None  # only this detector's cosmic rays (calexps)


def _render_sources(
    model: np.ndarray, art: np.ndarray, scene: Scene, v: Visit, frame: _Frame
) -> None:
    calib, fwhm = v.meta["photo_calib"], v.meta["psf_fwhm"]
    eps = 0.01 * math.sqrt(v.meta["sky_counts"] / GAIN + READ_NOISE**2)
    st, tr = scene.stars, v.transients
    px = np.r_[st["x"], scene.variable[0], tr[:, 0]]
    py = np.r_[st["y"], scene.variable[1], tr[:, 1]]
    flux = np.r_[st["flux"], v.variable_flux, tr[:, 2]] / calib
    add_points(model, *apply_h(frame.to_frame, px, py), flux, fwhm, scene.psf, eps, MOFFAT_BETA)
    gal = scene.galaxies
    gx, gy = apply_h(frame.to_frame, gal["x"], gal["y"])
    jac = jacobian_h(frame.to_frame, gal["x"], gal["y"])
    add_gaussians(
        model,
        *galaxy_components(
            gal, gx, gy, jac, gal["flux"] / calib, fwhm, scene.psf, eps, MOFFAT_BETA
        ),
    )
    if tr.size:
        tx, ty = apply_h(frame.to_frame, tr[:, 0], tr[:, 1])
        flag_disks(art, tx, ty, np.full(tx.size, fwhm), np.uint8(ARTIFACT_BITS["transient"]))


def _render_artifacts(model: np.ndarray, art: np.ndarray, v: Visit, frame: _Frame) -> None:
    calib = v.meta["photo_calib"]
    for xa, ya, xb, yb, width, peak in v.streaks:
        (fa, fb), (ga, gb) = apply_h(frame.to_frame, np.array([xa, xb]), np.array([ya, yb]))
        add_streak(
            model,
            art,
            fa,
            ga,
            fb,
            gb,
            peak / calib,
            width / 2.3548200450309493,
            width,
            np.uint8(ARTIFACT_BITS["streak"]),
        )
    crs = v.crs if frame.cr_detector is None else v.crs[v.crs[:, 6] == frame.cr_detector]
    if crs.size:
        x0, y0 = apply_h(frame.to_frame, crs[:, 0], crs[:, 1])
        x1, y1 = apply_h(frame.to_frame, crs[:, 2], crs[:, 3])
        bits = np.where(
            crs[:, 5] > 0, ARTIFACT_BITS["masked_cosmic_ray"], ARTIFACT_BITS["cosmic_ray"]
        ).astype(np.uint8)
        add_tracks(model, art, x0, y0, x1, y1, crs[:, 4], bits)


def _coverage_code(scene: Scene, frame: _Frame) -> np.ndarray:
    code = np.zeros(frame.shape, dtype=np.uint8)
    bad = scene.bad[np.isin(scene.bad[:, 0], frame.det_ids)]
    index = np.array([frame.det_ids.index(int(d)) for d in bad[:, 0]], dtype=np.int64)
    n = len(frame.det_ids)
    h_rows, w_cols = scene.det_shape
    coverage(
        code,
        frame.cover,
        np.full(n, float(w_cols)),
        np.full(n, float(h_rows)),
        float(EDGE_WIDTH),
        index,
        bad[:, 1].copy(),
        bad[:, 2].copy(),
        bad[:, 3].copy(),
        bad[:, 4] > 0,
    )
    return code


def _render(
    scene: Scene, v: Visit, frame: _Frame, rng: np.random.Generator, planes: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One frame of one visit: (image, variance, mask, artifact bits)."""
    model = np.zeros(frame.shape, dtype=np.float32)
    art = np.zeros(frame.shape, dtype=np.uint8)
    _render_sources(model, art, scene, v, frame)
    _render_artifacts(model, art, v, frame)
    code = _coverage_code(scene, frame)
    sky = v.meta["sky_counts"]
    sky_sigma = math.sqrt(sky / GAIN + READ_NOISE**2)
    bad_and_saturate(model, code, sky, FULL_WELL, 30.0 * sky_sigma)
    image = rng.standard_normal(frame.shape, dtype=np.float32)
    noise(model, image, sky, READ_NOISE**2, GAIN)
    mask = np.empty(frame.shape, dtype=np.int32)
    bit = {name: np.int32(1 << planes[name]) for name in ("NO_DATA", "BAD", "SAT", "EDGE", "CR")}
    finalize(
        image,
        model,
        code,
        art,
        mask,
        frame.scale,
        bit["NO_DATA"],
        bit["BAD"],
        bit["SAT"],
        bit["EDGE"],
        bit["CR"],
    )
    image, model, mask = _isr_interpolate(
        image, model, mask, bit["BAD"], bit["NO_DATA"], bit["SAT"], np.int32(1 << planes["INTRP"])
    )
    return image, model, mask, art


def _isr_interpolate(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    bad: int,
    no_data: int,
    sat: int,
    intrp: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ISR leaves in an LSST calexp: detector defects (BAD: hot and dead columns) are
    interpolated over along rows (coaddx's InterpImage) and flagged INTRP; they keep BAD and
    their variance.
    Pixels outside the detectors stay NO_DATA / NaN and are never used as data; saturated
    defects keep their values (SAT is what stacking acts on there)."""
    if not (mask & bad).any():
        return image, variance, mask
    img, _, msk = interpolate_over_defects(
        image, variance, mask, bad_bits=int(bad | no_data), intrp_bit=int(intrp), fallback=0.0
    )
    keep = (mask & (no_data | sat)) != 0  # outside the detectors, and saturated defects
    img[keep], msk[keep] = image[keep], mask[keep]
    return img, variance, msk  # the defects keep their (inflated) variance


def _warp_frame(scene: Scene, v: Visit) -> _Frame:
    cover = np.array([d.to_det for d in v.detectors]).reshape(-1, 3, 3)
    return _Frame(
        scene.patch.shape,
        np.eye(3),
        cover,
        tuple(d.id for d in v.detectors),
        v.meta["photo_calib"],
        None,
    )


def _calexp_frame(scene: Scene, det: Detector) -> _Frame:
    return _Frame(scene.det_shape, det.to_det, np.eye(3)[None], (det.id,), 1.0, det.id)


def _calexp_metadata(v: Visit, det: Detector) -> dict[str, Any]:
    keys = (
        "band",
        "mjd",
        "exptime",
        "airmass",
        "parallactic_angle",
        "photo_calib",
        "psf_fwhm",
        "zero_point",
        "sky_counts",
        "gain",
        "read_noise",
        "saturation",
    )
    return {"visit": v.visit, "detector": det.id, **{k: v.meta[k] for k in keys}}


def _render_visit(
    scene: Scene, v: Visit, seed: int, planes: dict[str, int], calexp_dir: Path | None
) -> tuple[tuple[np.ndarray, ...], list[Path]]:
    warp = _render(scene, v, _warp_frame(scene, v), seeded_rng(seed, 1, v.index), planes)
    paths = []
    if calexp_dir is not None:
        from .io.fits import write_calexp

        psf = psf_image(v.meta["psf_fwhm"], scene.psf)  # type: ignore[arg-type]
        for det in v.detectors:
            image, var, mask, _ = _render(
                scene, v, _calexp_frame(scene, det), seeded_rng(seed, 2, v.index, det.id), planes
            )
            path = calexp_dir / f"calexp_{v.visit}_{det.id}.fits"
            write_calexp(
                path,
                image,
                mask,
                var,
                det.wcs,
                mask_planes=planes,
                metadata=_calexp_metadata(v, det),
                psf=psf,
            )
            paths.append(path)
    return warp, paths


# -- truth catalogues -----------------------------------------------------------------------


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
    return Table(
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


def _truth_tables(scene: Scene) -> dict[str, Table]:
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
    rows = {"index": [v.index for v in scene.visits], "visit": [v.visit for v in scene.visits]}
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
    return Table(rows)


def _store_wcs(patch: Patch) -> str:
    """The stores' ``wcs`` attribute: the tract WCS as a FITS header string (design.md).

    Array pixel (row i, column j) is tract pixel (``y[i]``, ``x[j]``).
    """
    return wcs_to_header_string(patch.tract_wcs)


def _create_artifacts(path: Path, scene: Scene) -> Any:
    import zarr
    from zarr.codecs import ZstdCodec

    ny, nx = scene.patch.shape
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    arr = root.create_array(
        "artifacts",
        shape=(len(scene.visits), ny, nx),
        dtype="u1",
        chunks=(1, min(512, ny), min(512, nx)),
        fill_value=0,
        compressors=[ZstdCodec(level=3)],
        dimension_names=("visit", "y", "x"),
    )
    coords = {
        "visit": np.array([v.visit for v in scene.visits], dtype=np.int64),
        "y": scene.patch.y,
        "x": scene.patch.x,
    }
    for name, values in coords.items():
        root.create_array(name, shape=values.shape, dtype="i8", dimension_names=(name,))[:] = values
    root.attrs.update(
        {
            "bits": ARTIFACT_BITS,
            "wcs": _store_wcs(scene.patch),
            "description": "per-visit artifact truth on the patch grid: 1 streak "
            "(within its FWHM of the line), 2 transient (within the "
            "PSF FWHM), 4 unmasked cosmic ray, 8 masked cosmic ray",
        }
    )
    return arr


# -- the public entry point -----------------------------------------------------------------


@dataclass(frozen=True)
class Simulation:
    """What :func:`simulate` wrote: paths, the patch and the per-visit metadata.

    Attributes
    ----------
    out, warps, truth : Path
        The output folder, its warp store (group ``direct``) and its truth folder.
    calexps : tuple of Path
        ``calexp/calexp_<visit>_<detector>.fits`` files (empty with ``calexps=False``).
    patch, tract : Patch, Tract
        The simulated grid (the store's ``x``, ``y`` are ``patch.x``, ``patch.y``; its
        ``wcs`` attribute is ``patch.tract_wcs``).
    visits : astropy.table.Table
        Per-visit metadata (also ``truth/visits.ecsv``): visit, mjd, band, airmass,
        parallactic_angle, exptime, psf_fwhm (px), photo_calib (nJy/count), zero_point (AB
        mag of 1 count), sky_level (nJy/px), sky_counts, noise_sigma (sky-only nJy/px),
        detectors, dithers, variable_flux and artifact counts.

    Truth tables are ECSV files under ``truth`` (:meth:`read_truth`); positions are given as
    sky (``ra``, ``dec``), tract pixels (``x``, ``y``: the store's coordinates) and
    patch-array pixels (``x_patch``, ``y_patch``: column, row of the store arrays). Fluxes
    are total fluxes in nJy.
    """

    out: Path
    warps: Path
    calexps: tuple[Path, ...]
    truth: Path
    patch: Patch = field(repr=False)
    tract: Tract = field(repr=False)
    visits: Table = field(repr=False, compare=False)
    seed: int = 0
    psf: str = "moffat"

    @property
    def sources(self) -> Path:
        return self.truth / "sources.ecsv"

    @property
    def variable(self) -> Path:
        return self.truth / "variable.ecsv"

    @property
    def transients(self) -> Path:
        return self.truth / "transients.ecsv"

    @property
    def streaks(self) -> Path:
        return self.truth / "streaks.ecsv"

    @property
    def artifacts(self) -> Path:
        return self.truth / "artifacts.zarr"

    def read_truth(self, name: str) -> Table:
        """One truth table: ``sources``, ``variable``, ``transients``, ``streaks``, ``visits``."""
        return Table.read(self.truth / f"{name}.ecsv", format="ascii.ecsv")


def _check_args(n_visits: int, shape: tuple[int, int], psf: str, workers: int | None) -> None:
    if int(n_visits) < 1:
        raise ConfigError(f"simulate: n_visits must be >= 1, got {n_visits}")
    if len(shape) != 2 or min(shape) < 64:
        raise ConfigError(f"simulate: shape must be (rows, columns) >= 64 each, got {shape}")
    if psf not in ("moffat", "gaussian"):
        raise ConfigError(f"simulate: psf must be 'moffat' or 'gaussian', got {psf!r}")
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"simulate: workers must be >= 1, got {workers}")


def _prepare_output(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise StoreError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    (tmp / "truth").mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _progress_callback(progress: Callable[[int, int], None] | bool | None):
    if progress is True:
        return lambda done, total: print(f"simulate: {done}/{total} visits", file=sys.stderr)
    return progress or None


def _write_visits(
    scene: Scene,
    tmp: Path,
    seed: int,
    workers: int,
    calexps: bool,
    progress: Callable[[int, int], None] | None,
) -> list[Path]:
    from .io.zarr import WarpStore

    patch, planes = scene.patch, default_mask_planes()
    attrs = {
        "tract": scene.tract.tract_id,
        "patch": patch.name,
        "patch_index": patch.index,
        "bbox": patch.outer_bbox.to_list(),
        "inner_bbox": patch.inner_bbox.to_list(),
        "bunit": "nJy",
        "pixel_scale": PIXEL_SCALE,
        "simulation": {"seed": seed, "psf": scene.psf, "band": scene.band},
    }
    store = WarpStore.create(
        tmp / "warps.zarr",
        warp_type="direct",
        shape=patch.shape,
        mask_planes=planes,
        wcs=_store_wcs(patch),
        x=patch.x,
        y=patch.y,
        attrs=attrs,
        chunk=512,
    )
    art_arr = _create_artifacts(tmp / "truth" / "artifacts.zarr", scene)
    calexp_dir = tmp / "calexp" if calexps else None
    paths: list[Path] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        queue: deque = deque()
        for v in scene.visits:
            queue.append((v, pool.submit(_render_visit, scene, v, seed, planes, calexp_dir)))
            while len(queue) > workers or (queue and v is scene.visits[-1]):
                done, future = queue.popleft()
                (image, var, mask, art), written = future.result()
                store.append_visit(done.visit, image, var, mask, dict(done.meta))
                art_arr[done.index] = art
                paths += written
                if progress:
                    progress(done.index + 1, len(scene.visits))
    store.close({"operation": "coaddx.simulate", "seed": seed, "n_visits": len(scene.visits)})
    return paths


def simulate(
    out: str | os.PathLike[str],
    *,
    n_visits: int = 16,
    shape: tuple[int, int] = (1024, 1024),
    seed: int = 0,
    psf: T_Psf = "moffat",
    calexps: bool = True,
    artifacts: bool = True,
    n_stars: int | None = None,
    n_galaxies: int | None = None,
    band: str = "r",
    workers: int | None = None,
    progress: Callable[[int, int], None] | bool | None = None,
    overwrite: bool = False,
) -> Simulation:
    """Simulate ``n_visits`` exposures of one patch with known truth.

    Parameters
    ----------
    out : path-like
        Output folder (built under a temporary name, then moved into place):
        ``warps.zarr`` (direct warps, nJy), ``calexp/calexp_<visit>_<detector>.fits``
        (counts), ``truth/`` (``sources``, ``variable``, ``transients``, ``streaks``,
        ``visits`` ECSV tables and ``artifacts.zarr``) and ``simulation.json``.
    n_visits : int
        Number of visits (ids 1000, 1001, ...).
    shape : (int, int)
        Patch outer shape (rows, columns); the tract is built so that its central patch has
        exactly this shape (border 100 px, or shape // 4 below 400 px).
    seed : int
        Everything is drawn from this seed; the outputs do not depend on ``workers``.
    psf : {"moffat", "gaussian"}
        PSF profile (Moffat beta = 3); FWHM 3.5-6 px varying per visit.
    calexps : bool
        Also write the per-detector calexp FITS files (one or two detectors per visit).
    artifacts : bool
        Add streaks, transients and cosmic rays (False: none; the variable star stays).
    n_stars, n_galaxies : int, optional
        Sources over the patch area (default 200 and 500 per 1024^2 pixels); the catalogue
        covers every pixel any detector sees at the same density.
    band : str
        Band name written into the metadata.
    workers : int, optional
        Threads rendering visits in parallel (default: the CPU count). Appends are sequential.
    progress : callable(done, total) or bool, optional
        Called after each visit is written; True prints to stderr.
    overwrite : bool
        Replace an existing non-empty ``out``.

    Returns
    -------
    Simulation

    Examples
    --------
    >>> sim = simulate("sim", n_visits=4, shape=(256, 256), calexps=False)  # doctest: +SKIP
    >>> sim.read_truth("transients")["visit", "x_patch", "y_patch", "flux"]  # doctest: +SKIP
    """
    shape = (int(shape[0]), int(shape[1]))
    _check_args(n_visits, shape, psf, workers)
    workers = int(workers or os.cpu_count() or 1)
    out = Path(out)
    scene = plan_scene(int(seed), int(n_visits), shape, psf, band, n_stars, n_galaxies)
    if not artifacts:
        scene = without_artifacts(scene)
    tmp = _prepare_output(out, overwrite)
    try:
        tables = _truth_tables(scene)
        for name, table in tables.items():
            table.write(tmp / "truth" / f"{name}.ecsv", format="ascii.ecsv")
        params = {
            "n_visits": n_visits,
            "shape": list(shape),
            "seed": seed,
            "psf": psf,
            "calexps": calexps,
            "artifacts": artifacts,
            "n_stars": n_stars,
            "n_galaxies": n_galaxies,
            "band": band,
        }
        (tmp / "simulation.json").write_text(json.dumps(params, indent=1))
        paths = _write_visits(scene, tmp, int(seed), workers, calexps, _progress_callback(progress))
        _consolidate(tmp / "truth" / "artifacts.zarr")
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Simulation(
        out=out,
        warps=out / "warps.zarr",
        calexps=tuple(out / p.relative_to(tmp) for p in paths),
        truth=out / "truth",
        patch=scene.patch,
        tract=scene.tract,
        visits=tables["visits"],
        seed=int(seed),
        psf=psf,
    )


def _consolidate(path: Path) -> None:
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(path))
