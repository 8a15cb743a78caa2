"""MakePsfMatchedWarp: warped PSFs and ModelPsfMatch (algorithms.md 5.3, 6.5).

A visit's PSF is warped onto the patch with the local Jacobian of the exposure-to-patch mapping
(LSST's WarpedPsf), and the warp is convolved with the kernel that turns that PSF into the
double-Gaussian model PSF (ModelPsfMatchTask with a spatially constant PSF).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coaddx.errors import ConfigError, InputError
from coaddx.kernels.psfmatch.basis import alard_lupton_basis, kernel_norm_matrix
from coaddx.kernels.psfmatch.convolve import convolve_tiles
from coaddx.kernels.psfmatch.solve import solve_candidate, solve_spatial
from coaddx.kernels.warp import warp_block
from coaddx.model.exposure import Exposure
from coaddx.model.masks import bitmask
from coaddx.model.psf import model_psf, psf_image
from coaddx.model.skymap import Patch
from coaddx.warp.config import ModelPsfMatchConfig

__all__ = ["model_matching_kernel", "pad_psf", "psf_match_warp", "warped_psf"]


def pad_psf(psf: np.ndarray, size: int) -> np.ndarray:
    """``psf`` centred on a size x size float64 grid: cropped symmetrically or zero-padded."""
    n = psf.shape[0]
    if n == size:
        return psf.astype(np.float64)
    if n > size:
        c = (n - size) // 2
        return psf[c : c + size, c : c + size].astype(np.float64)
    out = np.zeros((size, size))
    c = (size - n) // 2
    out[c : c + n, c : c + n] = psf
    return out


def model_matching_kernel(psf: np.ndarray, config: ModelPsfMatchConfig | None = None):
    """The kernel that turns ``psf`` (an odd, centred PSF image) into the model PSF, with unit sum
    (ModelPsfMatchTask with a spatially constant PSF: one candidate, algorithms.md 6.5).

    Both PSFs are put on a psf_size² grid, psf_size = max(PSF width, next odd integer >=
    kernel_size·auto_pad_psf_to); the model is evaluated on that grid (DoubleGaussianPsf
    ``resized``: its wings are not cut at the model's own 23 px). The fit penalises ΣK²
    (``config.kernel_norm_penalty``); the penalised normal equations are solved with the
    kernel sum fixed (``kernel_sum_fit``). Raises InputError for a PSF that is not an odd
    square with a positive sum.
    """
    config = config or ModelPsfMatchConfig()
    psf = np.asarray(psf, np.float64)
    if psf.ndim != 2 or psf.shape[0] != psf.shape[1] or psf.shape[0] % 2 == 0:
        raise InputError(
            f"model_matching_kernel: the PSF must be an odd square image, got {psf.shape}"
        )
    if not (np.isfinite(psf).all() and psf.sum() > 0):
        raise InputError("model_matching_kernel: the PSF image must be finite with a positive sum")
    min_size = int(np.ceil(config.kernel_size * config.auto_pad_psf_to))
    size = max(psf.shape[0], min_size + (1 - min_size % 2))
    if config.kernel_size > size - 2:  # LSST: kernelSize <= psfSize - 1, made odd
        raise ConfigError(
            f"ModelPsfMatchConfig.kernel_size {config.kernel_size} needs PSF images "
            f"of at least {config.kernel_size + 2} px (padded: {size}); raise "
            "auto_pad_psf_to"
        )
    template, science = pad_psf(psf / psf.sum(), size), model_psf(config.model_psf_fwhm, size)
    basis = alard_lupton_basis(config.kernel_size, config.al_sigmas, config.al_degrees)
    ones = np.ones_like(template)
    penalty: dict[str, Any] = {}
    if config.kernel_norm_penalty > 0:
        penalty = {
            "regularization": kernel_norm_matrix(basis),
            "lam_type": "relative",
            "lam_scaling": config.kernel_norm_penalty,
        }
    solution = solve_candidate(template, science, ones, ones, basis, **penalty)
    fixed = 1.0 if config.kernel_sum_fit == "constrained" else None
    kernel = solve_spatial(
        [solution],
        np.array([[0.0, 0.0]]),
        basis,
        spatial_order=0,
        bg_order=0,
        bbox=(-1.0, -1.0, 1.0, 1.0),
        kernel_sum=fixed,
    )
    return kernel.with_kernel_sum(1.0)


def warped_psf(exposure: Exposure, patch: Patch, size: int | None = None) -> np.ndarray:
    """The exposure's PSF in the patch frame (WarpedPsf at the exposure centre): the PSF image
    resampled (Lanczos-3) through the local linear pixel mapping, unit sum. Exposures without a
    PSF image get a circular Moffat (beta 3) of their ``psf_fwhm``."""
    psf = exposure.psf
    if psf is None:
        if not np.isfinite(exposure.psf_fwhm):
            raise InputError(f"{exposure.where}: no PSF image and no psf_fwhm to build one")
        psf = psf_image(float(exposure.psf_fwhm), "moffat")
    ny, nx = exposure.shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    px, py = patch.wcs.world_to_pixel_values(*exposure.wcs.pixel_to_world_values(cx, cy))
    step = 1.0
    pts = np.array([[px, py], [px + step, py], [px, py + step]])
    sx, sy = exposure.wcs.world_to_pixel_values(
        *patch.wcs.pixel_to_world_values(pts[:, 0], pts[:, 1])
    )
    jac = np.array([[sx[1] - sx[0], sx[2] - sx[0]], [sy[1] - sy[0], sy[2] - sy[0]]]) / step
    n = size or psf.shape[0]
    h, c = n // 2, psf.shape[0] // 2
    dy, dx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float64)
    src_x = c + jac[0, 0] * dx + jac[0, 1] * dy
    src_y = c + jac[1, 0] * dx + jac[1, 1] * dy
    area = np.full(src_x.shape, abs(np.linalg.det(jac)))
    pad = np.pad(psf.astype(np.float32), 4)
    img, _, _ = warp_block(
        pad,
        np.zeros_like(pad),
        np.zeros(pad.shape, np.int32),
        src_x + 4,
        src_y + 4,
        area,
        kernel="lanczos3",
    )
    img = np.nan_to_num(img.astype(np.float64))
    return img / img.sum()


def psf_match_warp(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    psf: np.ndarray,
    planes: dict[str, int],
    config: Any = None,
    region: int = 2048,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ModelPsfMatch a warp: convolve it with the kernel that turns ``psf`` into the model PSF
    (each local kernel normalised to unit sum). NO_DATA grows inward by the kernel half-width
    wherever the footprint leaves the data (chip gaps and edges); variance is sum K^2 var."""
    kernel = model_matching_kernel(psf, config)
    no_data = bitmask(planes, "NO_DATA")
    img, var, msk = convolve_tiles(
        image, variance, mask, kernel, region=region, no_data=no_data, normalize=True
    )
    gone = (msk & no_data) != 0
    img[gone] = np.nan
    var[gone] = np.nan
    return img, var, msk
