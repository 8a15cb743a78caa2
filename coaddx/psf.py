"""Analytic PSF images shared by the simulator and by warping (exposures without a PSF image)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from .errors import ConfigError
from .kernels.render import moffat_alpha

__all__ = ["MOFFAT_BETA", "psf_image"]

#: Moffat beta of the simulated PSFs and of the fallback PSF of exposures that carry only a FWHM.
MOFFAT_BETA = 3.0


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
        img = np.exp(-0.5 * r2 / (fwhm / 2.3548200450309493) ** 2)
    else:
        raise ConfigError(f"psf_image: profile must be 'moffat' or 'gaussian', got {profile!r}")
    return img / img.sum()
