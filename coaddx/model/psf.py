"""Analytic PSF images shared by the simulator and by warping (exposures without a PSF image)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from coaddx.constants import FWHM_TO_SIGMA, MOFFAT_BETA
from coaddx.errors import ConfigError

__all__ = ["MOFFAT_BETA", "psf_image"]

#: Moffat beta of the simulated PSFs and of the fallback PSF of exposures that carry only a FWHM.


def psf_image(
    fwhm: float,
    profile: Literal["moffat", "gaussian"] = "moffat",
    size: int | None = None,
    beta: float = MOFFAT_BETA,
) -> np.ndarray:
    """A circular PSF of ``fwhm`` pixels sampled at pixel centres on an odd ``size`` grid
    (default ``2 * ceil(4 fwhm) + 1``), unit sum.

    Examples
    --------
    >>> p = psf_image(4.0)
    >>> p.shape, round(float(p.sum()), 12), bool(p[16, 16] == p.max())
    ((33, 33), 1.0, True)
    """
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise ConfigError(f"psf_image: fwhm must be a positive number, got {fwhm}")
    size = size or 2 * math.ceil(4.0 * fwhm) + 1
    if size % 2 == 0:
        raise ConfigError(f"psf_image: size must be odd, got {size}")
    c = (np.arange(size) - size // 2).astype(np.float64) ** 2
    r2 = c[:, None] + c[None, :]
    if profile == "moffat":
        img = (1.0 + r2 / moffat_alpha(fwhm, beta) ** 2) ** -beta
    elif profile == "gaussian":
        img = np.exp(-0.5 * r2 / (fwhm * FWHM_TO_SIGMA) ** 2)
    else:
        raise ConfigError(f"psf_image: profile must be 'moffat' or 'gaussian', got {profile!r}")
    return img / img.sum()


def model_psf(fwhm: float = 7.7, size: int | None = None) -> np.ndarray:
    """GaussianPsfFactory's model: DoubleGaussianPsf(size, sigma1 = fwhm/2.3548, sigma2 =
    2.5 sigma1, b = 0.1) on the pixel grid, unit sum; size = (int(3 fwhm)//2)*2 + 1 (23 for
    7.7) unless given."""
    size = size or max((int(3.0 * fwhm) // 2) * 2 + 1, 5)
    s1 = fwhm * FWHM_TO_SIGMA
    s2 = 2.5 * s1
    r2 = np.add.outer((np.arange(size) - size // 2) ** 2, (np.arange(size) - size // 2) ** 2)
    psf = np.exp(-r2 / (2 * s1**2)) + 0.1 * np.exp(-r2 / (2 * s2**2))
    return psf / psf.sum()


def moffat_alpha(fwhm: float, beta: float) -> float:
    """Moffat core width alpha of a profile with the given FWHM and ``beta``."""
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
