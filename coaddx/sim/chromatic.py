"""Differential chromatic refraction in the simulator (``simulate(..., dcr=True)``).

Every source has a power-law spectrum ``f_lambda ~ (lambda / lambda_eff) ** alpha`` over the
band (stars: ``alpha`` drawn per star, negative = blue; galaxies, the variable star and
transients: flat, ``alpha = 0``). The band is cut into fine wavelength bins of equal width,
``bins_per_subfilter`` inside each of the ``n_subfilters`` sub-filters of algorithms.md 4.3;
a bin gets the integral of the power law over it and is rendered offset, in the patch frame,
by the differential refraction (algorithms.md 4.2, Stone 1996) of its centre wavelength
relative to ``lambda_eff`` at the visit's elevation, along the direction to the zenith
``theta`` (:func:`coaddx.model.refraction.image_parallactic_angle` of the visit's parallactic
angle and the tract WCS): an amplitude ``a`` moves a source by
``(dy, dx) = (a cos theta, a sin theta)`` array pixels; blue light (which refracts more) moves
toward the zenith. The weather is the altitude default of :data:`coaddx.LSST_SITE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy.ndimage import binary_dilation

from coaddx.errors import ConfigError
from coaddx.model.refraction import (
    LSST_SITE,
    WAVELENGTH_RANGE,
    differential_refraction,
    image_parallactic_angle,
)

__all__ = [
    "AIRMASS_RANGE",
    "ALPHA_RANGE",
    "DETECTION_GROW",
    "DETECTION_THRESHOLD",
    "DcrSpec",
    "band_fractions",
    "detected_mask",
    "make_dcr_spec",
    "subfilter_fractions",
    "visit_shifts",
]

#: Spectral slopes of the stars are drawn uniform in this range.
ALPHA_RANGE = (-4.0, 4.0)
#: Visit airmasses are drawn uniform in this range in DCR mode.
AIRMASS_RANGE = (1.0, 2.0)
#: DETECTED where the noiseless source image exceeds this many sky sigma ...
DETECTION_THRESHOLD = 2.0
#: ... grown by a disk of this radius (pixels).
DETECTION_GROW = 2


@dataclass(frozen=True)
class DcrSpec:
    """The band of a DCR simulation: centre and width (nm), sub-filters, fine bins each."""

    effective_wavelength: float
    bandwidth: float
    n_subfilters: int
    bins_per_subfilter: int

    @property
    def n_bins(self) -> int:
        return self.n_subfilters * self.bins_per_subfilter

    @property
    def bin_edges(self) -> np.ndarray:
        """(n_bins + 1,) equal-width bin edges (nm) over the band, bluest first."""
        low = self.effective_wavelength - self.bandwidth / 2
        return low + self.bandwidth * np.arange(self.n_bins + 1) / self.n_bins

    @property
    def bin_centres(self) -> np.ndarray:
        e = self.bin_edges
        return (e[1:] + e[:-1]) / 2

    def attrs(self) -> dict:
        """What the store attributes and ``simulation.json`` record about the DCR setup."""
        return {
            "effective_wavelength": self.effective_wavelength,
            "bandwidth": self.bandwidth,
            "n_subfilters": self.n_subfilters,
            "bins_per_subfilter": self.bins_per_subfilter,
            "alpha_range": list(ALPHA_RANGE),
            "airmass_range": list(AIRMASS_RANGE),
            "observatory": {
                "latitude": LSST_SITE.latitude,
                "longitude": LSST_SITE.longitude,
                "height": LSST_SITE.height,
            },
            "weather": None,
        }


def _number(value: object, name: str) -> float:
    if value is None:
        raise ConfigError(f"simulate: dcr=True needs {name} (nm)")
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"simulate: {name} must be a number of nm, got {value!r}") from exc
    if isinstance(value, bool) or not math.isfinite(out):
        raise ConfigError(f"simulate: {name} must be a finite number of nm, got {value!r}")
    return out


def make_dcr_spec(
    dcr: bool,
    effective_wavelength: float | None,
    bandwidth: float | None,
    n_subfilters: int,
) -> DcrSpec | None:
    """Validate the DCR arguments of :func:`coaddx.simulate`; None when ``dcr`` is False."""
    if not dcr:
        given = [
            n
            for n, v in (("effective_wavelength", effective_wavelength), ("bandwidth", bandwidth))
            if v is not None
        ]
        if given:
            raise ConfigError(f"simulate: {' and '.join(given)} given without dcr=True")
        return None
    missing = [
        n
        for n, v in (("effective_wavelength", effective_wavelength), ("bandwidth", bandwidth))
        if v is None
    ]
    if missing:
        raise ConfigError(f"simulate: dcr=True needs {' and '.join(missing)} (nm)")
    lam = _number(effective_wavelength, "effective_wavelength")
    width = _number(bandwidth, "bandwidth")
    if isinstance(n_subfilters, bool) or int(n_subfilters) != n_subfilters or n_subfilters < 1:
        raise ConfigError(f"simulate: n_subfilters must be an integer >= 1, got {n_subfilters!r}")
    if not width > 0:
        raise ConfigError(f"simulate: bandwidth must be > 0 nm, got {bandwidth}")
    lo, hi = WAVELENGTH_RANGE
    if lam - width / 2 < lo or lam + width / 2 > hi:
        raise ConfigError(
            f"simulate: the band effective_wavelength {lam} +- bandwidth/2 ({width / 2}) nm "
            f"must lie within {lo}-{hi} nm"
        )
    n = int(n_subfilters)
    return DcrSpec(lam, width, n, max(4, math.ceil(12 / n)))


def band_fractions(spec: DcrSpec, alpha: np.ndarray) -> np.ndarray:
    """(n, n_bins) fraction of each source's band flux in each fine bin (rows sum to 1):
    the integral of ``(lambda / lambda_eff) ** alpha`` over the bin."""
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1, 1)
    x = (spec.bin_edges / spec.effective_wavelength)[None, :]
    p = alpha + 1.0
    log_like = np.abs(p) < 1e-8
    safe = np.where(log_like, 1.0, p)
    prim = np.where(log_like, np.log(x), x**safe / safe)  # an antiderivative of x**alpha
    w = np.diff(prim, axis=1)
    return w / w.sum(axis=1, keepdims=True)


def subfilter_fractions(spec: DcrSpec, alpha: np.ndarray) -> np.ndarray:
    """(n, n_subfilters) fraction of each source's flux in each sub-filter, bluest first."""
    w = band_fractions(spec, alpha)
    return w.reshape(w.shape[0], spec.n_subfilters, spec.bins_per_subfilter).sum(axis=2)


def visit_shifts(
    spec: DcrSpec, elevation: float, parallactic_angle: float, wcs: WCS, pixel_scale: float
) -> tuple[float, np.ndarray]:
    """``theta`` (degrees) and the (n_bins, 2) ``(dy, dx)`` patch-pixel offsets of the fine
    bins of one visit."""
    theta = image_parallactic_angle(parallactic_angle, wcs)
    amp = differential_refraction(spec.bin_centres, spec.effective_wavelength, elevation)
    amp = np.asarray(amp) * 3600.0 / pixel_scale
    t = math.radians(theta)
    return theta, np.stack([amp * math.cos(t), amp * math.sin(t)], axis=1)


def detected_mask(model: np.ndarray, sigma: float) -> np.ndarray:
    """Stand-in for a calexp's DETECTED plane: the noiseless source image above
    :data:`DETECTION_THRESHOLD` x ``sigma``, grown by a disk of :data:`DETECTION_GROW` px."""
    r = DETECTION_GROW
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return binary_dilation(model > DETECTION_THRESHOLD * sigma, structure=xx**2 + yy**2 <= r * r)
