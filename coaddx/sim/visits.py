"""Rendering one visit of a simulated scene: its patch-grid warp and its detectors' calexps.

A frame is the patch grid of a visit (the warp, in nJy) or one detector (a calexp, in counts);
both are rendered from the same scene through exact homographies, with the same sources,
artifacts, defects and noise model (:mod:`coaddx.sim.render` holds the numba kernels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from coaddx.constants import FWHM_TO_SIGMA, MOFFAT_BETA
from coaddx.io.fits.exposure import write_calexp
from coaddx.kernels.interp import interpolate_over_defects
from coaddx.model.psf import psf_image as model_psf_image
from coaddx.sim.chromatic import band_fractions, detected_mask
from coaddx.sim.header_errors import HeaderError, perturb_wcs
from coaddx.sim.render import (
    add_gaussians,
    add_points,
    add_streak,
    add_tracks,
    bad_and_saturate,
    coverage,
    finalize,
    flag_disks,
    galaxy_components,
    noise,
)
from coaddx.sim.scene import (
    EDGE_WIDTH,
    FULL_WELL,
    GAIN,
    READ_NOISE,
    Detector,
    Scene,
    Visit,
    apply_h,
    jacobian_h,
    seeded_rng,
)

__all__ = ["ARTIFACT_BITS", "T_Psf", "psf_image", "render_visit"]

#: Bit codes of the ``truth/artifacts.zarr`` cube (visit, y, x).
ARTIFACT_BITS: dict[str, int] = {
    "streak": 1,
    "transient": 2,
    "cosmic_ray": 4,
    "masked_cosmic_ray": 8,
}

T_Psf = Literal["moffat", "gaussian"]


def psf_image(fwhm: float, psf: T_Psf = "moffat", size: int | None = None) -> np.ndarray:
    """The simulated PSF sampled at pixel centres on an odd ``size`` grid, unit sum
    (:func:`coaddx.model.psf.psf_image` with the simulator's Moffat beta)."""
    return model_psf_image(fwhm, psf, size, MOFFAT_BETA)


@dataclass(frozen=True)
class _Frame:
    shape: tuple[int, int]
    to_frame: np.ndarray  # patch pixel -> frame pixel
    cover: np.ndarray  # (n_det, 3, 3): frame pixel -> detector pixel
    det_ids: tuple[int, ...]
    scale: float  # output units per count
    cr_detector: int | None  # only this detector's cosmic rays (calexps)


def _chromatic(
    scene: Scene, v: Visit, x: np.ndarray, y: np.ndarray, flux: np.ndarray, alpha: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DCR mode: each source split into the fine wavelength bins of the band, each bin
    offset in the patch frame by its refraction (:mod:`coaddx.sim.chromatic`)."""
    assert scene.dcr is not None and v.dcr_shift is not None
    frac = band_fractions(scene.dcr, alpha)  # (n, n_bins)
    dy, dx = v.dcr_shift[:, 0], v.dcr_shift[:, 1]
    return (
        (x[:, None] + dx[None, :]).ravel(),
        (y[:, None] + dy[None, :]).ravel(),
        (flux[:, None] * frac).ravel(),
    )


def _render_sources(
    model: np.ndarray, art: np.ndarray, scene: Scene, v: Visit, frame: _Frame
) -> None:
    calib, fwhm = v.meta["photo_calib"], v.meta["psf_fwhm"]
    eps = 0.01 * math.sqrt(v.meta["sky_counts"] / GAIN + READ_NOISE**2)
    st, tr = scene.stars, v.transients
    px = np.r_[st["x"], scene.variable[0], tr[:, 0]]
    py = np.r_[st["y"], scene.variable[1], tr[:, 1]]
    flux = np.r_[st["flux"], v.variable_flux, tr[:, 2]] / calib
    gal = scene.galaxies
    if scene.dcr is not None:  # stars coloured, the rest flat (alpha = 0)
        alpha = np.r_[st["alpha"], np.zeros(1 + len(tr))]
        px, py, flux = _chromatic(scene, v, px, py, flux, alpha)
        n_bins = scene.dcr.n_bins
        gal = {k: np.repeat(val, n_bins) for k, val in gal.items()}
        gal["x"], gal["y"], gal["flux"] = _chromatic(
            scene,
            v,
            scene.galaxies["x"],
            scene.galaxies["y"],
            scene.galaxies["flux"],
            np.zeros(scene.galaxies["x"].size),
        )
    add_points(model, *apply_h(frame.to_frame, px, py), flux, fwhm, scene.psf, eps, MOFFAT_BETA)
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
            width * FWHM_TO_SIGMA,
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
    sky = v.meta["sky_counts"]
    sky_sigma = math.sqrt(sky / GAIN + READ_NOISE**2)
    detected = None if scene.dcr is None else detected_mask(model, sky_sigma)
    _render_artifacts(model, art, v, frame)
    code = _coverage_code(scene, frame)
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
    if detected is not None:  # DCR mode: a stand-in for the calexp's detection mask
        detected &= (mask & bit["NO_DATA"]) == 0
        mask[detected] |= np.int32(1 << planes["DETECTED"])
    return image, model, mask, art


def _isr_interpolate(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    bad: int | np.integer,
    no_data: int | np.integer,
    sat: int | np.integer,
    intrp: int | np.integer,
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
    extra = tuple(k for k in ("elevation",) if k in v.meta)  # DCR mode
    return {"visit": v.visit, "detector": det.id, **{k: v.meta[k] for k in keys + extra}}


def render_visit(
    scene: Scene,
    v: Visit,
    seed: int,
    planes: dict[str, int],
    calexp_dir: Path | None,
    header_errors: Mapping[int, HeaderError] | None = None,
) -> tuple[tuple[np.ndarray, ...], list[Path]]:
    """The visit's warp planes (image, variance, mask, artifacts) and its calexp paths; each
    detector's header gets the ``header_errors`` of its id (:mod:`coaddx.sim.header_errors`)."""
    warp = _render(scene, v, _warp_frame(scene, v), seeded_rng(seed, 1, v.index), planes)
    paths = []
    if calexp_dir is not None:
        psf = psf_image(v.meta["psf_fwhm"], scene.psf)  # type: ignore[arg-type]
        for det in v.detectors:
            image, var, mask, _ = _render(
                scene, v, _calexp_frame(scene, det), seeded_rng(seed, 2, v.index, det.id), planes
            )
            path = calexp_dir / f"calexp_{v.visit}_{det.id}.fits"
            wcs, meta = det.wcs, _calexp_metadata(v, det)
            err = (header_errors or {}).get(det.id)
            if err is not None:
                wcs = perturb_wcs(
                    wcs,
                    shift_arcsec=err.shift_arcsec,
                    pa_deg=err.pa_deg,
                    rotation_deg=err.rotation_deg,
                    scale=err.scale,
                )
                meta["photo_calib"] *= 10.0 ** (-0.4 * err.dmag)  # zero point + dmag
                meta["zero_point"] += err.dmag
            write_calexp(path, image, mask, var, wcs, mask_planes=planes, metadata=meta, psf=psf)
            paths.append(path)
    return warp, paths
