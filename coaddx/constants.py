"""Numerical constants shared across the package, each defined once."""

from __future__ import annotations

import math

__all__ = [
    "AB_ZERO_NJY",
    "FWHM_TO_SIGMA",
    "IQR_TO_SIGMA",
    "LAYERS",
    "MOFFAT_BETA",
    "SIGMA_TO_FWHM",
    "STORE_CHUNK",
]

#: The interquartile range of a unit Gaussian is 1/0.7413 sigma (afw ``Statistics``: IQR_TO_STDEV).
IQR_TO_SIGMA = 0.741301109252802

#: FWHM of a Gaussian in units of its sigma, 2 sqrt(2 ln 2) = 2.3548200450309493.
SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: sigma of a Gaussian in units of its FWHM.
FWHM_TO_SIGMA = 1.0 / SIGMA_TO_FWHM

#: AB magnitude of a 1 nJy source: m_AB = 31.4 - 2.5 log10(f / nJy).
AB_ZERO_NJY = 31.4

#: Moffat index of the analytic and simulated PSFs.
MOFFAT_BETA = 3.0

#: Default spatial chunk C of a warp store, (1, C, C) per visit (``coaddx.store-chunk``).
STORE_CHUNK = 512

#: The layers of an exposure, a warp and a coadd, in their canonical order. "Layer" is one of
#: these arrays; a "mask plane" is one named bit of the mask layer (docs/design-notes.md,
#: "Vocabulary").
LAYERS = ("image", "variance", "mask")
