"""Image differencing: ImagePsfMatch / SnapPsfMatch (algorithms.md 6.3-6.7).

``subtract(template, science)`` puts the template on the science grid (warping it when the
WCSs differ), fits an Alard-Lupton (or delta-function) PSF-matching kernel on stars of the
science image, convolves the template with the spatially varying kernel, and returns the
difference D = science - K (x) template - background, with variance var_sci + K^2 (x) var_tmpl
and the OR of the masks. The kernel is solved once, globally, from stamps; the convolution of
a large image runs as dask tasks over regions with halos of the kernel half-width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from coaddx.diffim.candidates import select_candidate_positions
from coaddx.diffim.config import PsfMatchConfig, snap_config
from coaddx.errors import InputError
from coaddx.graph.convolve import convolve_regions
from coaddx.kernels.psfmatch.basis import (
    alard_lupton_basis,
    alard_lupton_sigmas,
    delta_function_basis,
    regularization_matrix,
)
from coaddx.kernels.psfmatch.difference import difference_planes
from coaddx.kernels.psfmatch.fit import CandidateStamp, FitInfo, fit_psf_matching_kernel
from coaddx.kernels.psfmatch.solve import SpatialKernel
from coaddx.model.exposure import Exposure
from coaddx.model.masks import bitmask, merge_mask_planes
from coaddx.model.skymap import Patch
from coaddx.warp.config import WarpConfig
from coaddx.warp.make_warps import warp_exposure

__all__ = ["Subtraction", "make_basis", "snap_subtract", "subtract"]


@dataclass(frozen=True, eq=False)
class Subtraction:
    """The result of :func:`subtract`.

    Attributes
    ----------
    difference : Exposure
        science - matched template - background (or the convolve-science variant).
    matched_template : Exposure
        K (x) template on the science grid.
    kernel : SpatialKernel
        Evaluable anywhere: ``kernel.kernel_image(x, y)``, ``kernel.kernel_sum(x, y)``,
        ``kernel.background(x, y)``.
    candidates : ndarray of shape (n, 2)
        The (x, y) stamp centres offered to the fit; ``info.status`` tells which were used.
    info : FitInfo
    """

    difference: Exposure
    matched_template: Exposure
    kernel: SpatialKernel
    candidates: np.ndarray
    info: FitInfo

    def background(self, x: Any, y: Any) -> Any:
        return self.kernel.background(x, y)


def make_basis(
    config: PsfMatchConfig, fwhm_template: float | None, fwhm_science: float | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The kernel basis (and DF regularisation matrix) for the two FWHMs (6.2)."""
    if config.basis == "alard-lupton":
        sigmas, size = alard_lupton_sigmas(
            fwhm_template,
            fwhm_science,
            n_gauss=config.al_n_gauss,
            sigmas=config.al_sigmas,
            beta=config.al_beta,
            min_sig=config.al_min_sig,
            min_sig_deconv=config.al_min_sig_deconv,
            kernel_size=config.kernel_size,
            size_min=config.kernel_size_min,
            size_max=config.kernel_size_max,
            scale_by_fwhm=config.scale_by_fwhm,
        )
        return alard_lupton_basis(size, sigmas, config.al_degrees), None
    size = config.kernel_size
    reg = None
    if config.df_regularization is not None:
        reg = regularization_matrix(
            size,
            kind=config.df_regularization,
            stencil=config.df_stencil,
            orders=config.df_orders,
            border_penalty=config.df_border_penalty,
            fit_background=config.fit_for_background,
        )
    return delta_function_basis(size), reg


def _same_grid(a: Exposure, b: Exposure) -> bool:
    if a.shape != b.shape:
        return False
    ny, nx = a.shape
    x = np.array([0.0, nx - 1, 0.0, nx - 1, nx / 2])
    y = np.array([0.0, 0.0, ny - 1, ny - 1, ny / 2])
    sx, sy = b.wcs.world_to_pixel_values(*a.wcs.pixel_to_world_values(x, y))
    return bool(np.all(np.hypot(sx - x, sy - y) < 1e-3))


def _on_science_grid(template: Exposure, science: Exposure) -> Exposure:
    """The template warped onto the science grid (Lanczos-3) if their WCSs differ."""
    if _same_grid(template, science):
        return template

    planes = merge_mask_planes(science.mask_planes, template.mask_planes)
    grid = Patch.from_wcs(science.wcs, science.shape)
    image, variance, mask = warp_exposure(
        template, grid, WarpConfig(border=0, calibrate=False), planes
    )
    return dataclasses.replace(
        template, image=image, variance=variance, mask=mask, wcs=science.wcs, mask_planes=planes
    )


def _stamps(
    template: Exposure, science: Exposure, positions: np.ndarray, half: int
) -> list[CandidateStamp]:
    out = []
    for x, y in positions:
        sl = (slice(y - half, y + half + 1), slice(x - half, x + half + 1))
        out.append(
            CandidateStamp(
                x=float(x),
                y=float(y),
                template=template.image[sl].astype(np.float64),
                science=science.image[sl].astype(np.float64),
                variance_template=template.variance[sl].astype(np.float64),
                variance_science=science.variance[sl].astype(np.float64),
                mask_template=template.mask[sl],
                mask_science=science.mask[sl],
            )
        )
    return out


def subtract(
    template: Exposure,
    science: Exposure,
    config: PsfMatchConfig | None = None,
    *,
    fwhm_template: float | None = None,
    fwhm_science: float | None = None,
    candidates: np.ndarray | None = None,
) -> Subtraction:
    """ImagePsfMatch: match the template's PSF to the science image's and subtract.

    Parameters
    ----------
    template, science : Exposure
        Calibrated or not: both are put in nJy first. The template is warped onto the science
        grid when their WCSs differ.
    config : PsfMatchConfig
        ``convolve_template=False`` convolves the science image instead (D = -(T - K (x) S -
        bg) / ksum).
    fwhm_template, fwhm_science : float, optional
        PSF FWHMs in pixels; default the exposures' ``psf_fwhm``.
    candidates : ndarray (n, 2), optional
        Kernel candidate centres (x, y); by default detected on the science image.

    Raises
    ------
    InputError
        When no usable kernel candidate remains (with the reasons), or the inputs disagree.
    """
    config = config or PsfMatchConfig()
    science = _calibrated(science)
    template = _on_science_grid(_calibrated(template), science)
    fwhm_t = fwhm_template if fwhm_template is not None else _fwhm(template)
    fwhm_s = fwhm_science if fwhm_science is not None else _fwhm(science)
    to_convolve, reference = (
        (template, science) if config.convolve_template else (science, template)
    )
    f_conv, f_ref = (fwhm_t, fwhm_s) if config.convolve_template else (fwhm_s, fwhm_t)
    basis, reg = make_basis(config, f_conv, f_ref)
    size = basis.shape[-1]
    half = max(int(config.fp_grow_kernel_scaling * size + 0.5), size)
    positions = (
        np.asarray(candidates, dtype=int)
        if candidates is not None
        else select_candidate_positions(reference, to_convolve, half=half, config=config)
    )
    if len(positions) == 0:
        raise InputError(
            f"{science.where}: no kernel candidates: no star above "
            f"{config.detection_threshold} sigma with a clean {2 * half + 1} px stamp"
        )
    planes = merge_mask_planes(science.mask_planes, template.mask_planes)
    ny, nx = science.shape
    try:
        kernel, info = fit_psf_matching_kernel(
            _stamps(to_convolve, reference, positions, half),
            basis=basis,
            bbox=(0, 0, nx, ny),
            regularization=reg,
            options=config.fit_options(
                bad_bits=bitmask(planes, config.bad_mask_planes, strict=False)
            ),
        )
    except ValueError as exc:
        raise InputError(f"{science.where}: PSF-matching kernel fit failed: {exc}") from exc
    no_data = bitmask(planes, "NO_DATA")
    m_img, m_var, m_mask = convolve_regions(
        to_convolve.image,
        to_convolve.variance,
        to_convolve.mask,
        kernel,
        region=_region(config.region_size, (ny, nx)),
        no_data=no_data,
        method=config.convolution,
    )
    scale = 1.0
    if not config.convolve_template:
        scale = -1.0 / float(kernel.kernel_sum(nx / 2, ny / 2))
    diff, dvar, dmask = difference_planes(
        (reference.image, reference.variance, reference.mask),
        (m_img, m_var, m_mask),
        kernel if config.fit_for_background else None,
        scale=scale,
    )
    matched = dataclasses.replace(
        to_convolve,
        image=m_img.astype(np.float32, copy=False),
        variance=m_var.astype(np.float32, copy=False),
        mask=m_mask,
        mask_planes=planes,
    )
    difference = dataclasses.replace(
        science,
        image=diff,
        variance=dvar,
        mask=dmask,
        mask_planes=planes,
    )
    return Subtraction(difference, matched, kernel, positions, info)


def snap_subtract(snap1: Exposure, snap2: Exposure, **kwargs: Any) -> Subtraction:
    """SnapPsfMatch: difference two snaps of one visit with the snap preset (6.7)."""
    return subtract(snap1, snap2, kwargs.pop("config", None) or snap_config(), **kwargs)


def _region(region_size: int, shape: tuple[int, int]) -> int:
    """The convolution's tile size: ``region_size``, or half the image's longer side when that
    is smaller (at least 256), so that a small image still makes 2-4 tasks for the workers
    (tiles agree with one whole-image convolution, so the result does not depend on it)."""
    return min(region_size, max(256, -(-max(shape) // 2)))


def _calibrated(exp: Exposure) -> Exposure:
    """``exp.calibrated()``, without the copies when it is in nJy already (photo_calib 1: the
    same values; nothing here writes into the planes)."""
    if float(exp.photo_calib) == 1.0:
        return dataclasses.replace(exp, metadata=dict(exp.metadata))
    return exp.calibrated()


def _fwhm(exp: Exposure) -> float | None:
    return float(exp.psf_fwhm) if np.isfinite(exp.psf_fwhm) else None
