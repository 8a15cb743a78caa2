"""Atmospheric refraction and the DCR shifts of sub-filters (algorithms.md 4.2-4.3).

The refraction model is Stone 1996 (PASP 108, 1051) as in LSST's afw ``_refraction.py``; the
sub-filter shifts follow ip_diffim's ``calculateDcr``: each sub-filter's refraction relative to
the effective wavelength of the band, in pixels, along the direction to the zenith. Plain numpy
functions, no dask.

Sign convention (LSST): the shift amplitude of the bluest sub-filter is the largest positive
one and that of the reddest is negative; an amplitude ``a`` moves a source by
``(dy, dx) = (a cos theta, a sin theta)`` with ``theta = parallactic_angle - rotation_angle``
(degrees), in a frame with north along +y and east along +x at rotation angle 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from coaddx.errors import ConfigError

__all__ = [
    "LSST_SITE",
    "Observatory",
    "Weather",
    "dcr_shifts",
    "default_weather",
    "differential_refraction",
    "image_parallactic_angle",
    "parallactic_angle",
    "refraction",
    "subfilter_edges",
]

#: Valid wavelength range of the refractive-index formula (nm).
WAVELENGTH_RANGE = (230.2, 2058.6)


def _finite(value: float, name: str, cls: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls}.{name} must be a number, got {value!r}") from exc
    if isinstance(value, bool) or not math.isfinite(out):
        raise ConfigError(f"{cls}.{name} must be a finite number, got {value!r}")
    return out


@dataclass(frozen=True)
class Observatory:
    """Where the telescope is: ``latitude`` and ``longitude`` in degrees, ``height`` in metres."""

    latitude: float
    longitude: float
    height: float

    def __post_init__(self) -> None:
        for name in ("latitude", "longitude", "height"):
            object.__setattr__(self, name, _finite(getattr(self, name), name, "Observatory"))
        if not -90.0 <= self.latitude <= 90.0:
            raise ConfigError(f"Observatory.latitude must be in -90..90 deg, got {self.latitude}")


#: Cerro Pachon, the Rubin Observatory site (afw's test values).
LSST_SITE = Observatory(latitude=-30.244639, longitude=-70.749417, height=2663.0)


@dataclass(frozen=True)
class Weather:
    """Air ``temperature`` (deg C), ``pressure`` (Pa) and relative ``humidity`` (%)."""

    temperature: float
    pressure: float
    humidity: float

    def __post_init__(self) -> None:
        for name in ("temperature", "pressure", "humidity"):
            object.__setattr__(self, name, _finite(getattr(self, name), name, "Weather"))
        if self.temperature <= -273.15:
            raise ConfigError(
                f"Weather.temperature must be above -273.15 C, got {self.temperature}"
            )
        if self.pressure <= 0:
            raise ConfigError(f"Weather.pressure must be > 0 Pa, got {self.pressure}")
        if not 0.0 < self.humidity <= 100.0:
            raise ConfigError(f"Weather.humidity must be in (0, 100] %, got {self.humidity}")


def default_weather(height: float) -> Weather:
    """afw's default weather at ``height`` metres: T = 19 - 6.5 h/1000 C, an isothermal
    barometric pressure at that temperature, 40 % humidity."""
    temperature = 19.0 - 6.5 * height / 1000.0
    g, molar_mass, r0 = 9.80665, 0.0289644, 8.31447
    pressure = 101325.0 * math.exp(-g * molar_mass * height / (r0 * (temperature + 273.15)))
    return Weather(temperature=temperature, pressure=pressure, humidity=40.0)


def _water_vapour_pressure(weather: Weather) -> float:
    """Partial pressure of water vapour (Pa) from the dew point."""
    t = weather.temperature
    x = math.log(weather.humidity / 100.0)
    dew = 238.3 * ((t + 238.3) * x + 17.2694 * t) / ((t + 238.3) * (17.2694 - x) - 17.2694 * t)
    coeffs = (4.50874, 0.341724, 0.0106778, 0.184889e-3, 0.238294e-5, 0.203447e-7)
    return sum(c * dew**k for k, c in enumerate(coeffs)) * 133.32239


def _refractivity(wavelength: np.ndarray, weather: Weather) -> np.ndarray:
    """n - 1 of air at ``wavelength`` (nm)."""
    t_k = weather.temperature + 273.15
    p_w = _water_vapour_pressure(weather) / 100.0  # mbar
    p_s = weather.pressure / 100.0 - p_w
    d_s = (1 + p_s * (57.90e-8 - 9.3250e-4 / t_k + 0.25844 / t_k**2)) * p_s / t_k
    d_w = (
        (
            1
            + p_w
            * (1 + 3.7e-4 * p_w)
            * (-2.37321e-3 + 2.23366 / t_k - 710.792 / t_k**2 + 7.75141e-4 / t_k**3)
        )
        * p_w
        / t_k
    )
    s2 = (1000.0 / wavelength) ** 2
    dry = 2371.34 + 683939.7 / (130.0 - s2) + 4547.3 / (38.9 - s2)
    wet = 6487.31 + 58.058 * s2 - 0.71150 * s2**2 + 0.08851 * s2**3
    return (dry * d_s + wet * d_w) * 1e-8


def refraction(
    wavelength: float | np.ndarray,
    elevation: float,
    observatory: Observatory = LSST_SITE,
    weather: Weather | None = None,
) -> np.ndarray:
    """Refraction (degrees) at ``wavelength`` (nm) of a source at ``elevation`` (degrees)."""
    lam = np.asarray(wavelength, dtype=np.float64)
    lo, hi = WAVELENGTH_RANGE
    if np.any((lam < lo) | (lam > hi)):
        raise ConfigError(f"wavelength must be within {lo}-{hi} nm, got {wavelength}")
    if not 0.0 < elevation <= 90.0:
        raise ConfigError(f"elevation must be in (0, 90] degrees, got {elevation}")
    weather = weather or default_weather(observatory.height)
    r = _refractivity(lam, weather)
    beta = 4.5908e-6 * (weather.temperature + 273.15)
    phi = math.radians(observatory.latitude)
    g_rel = 1 + 0.005302 * math.sin(phi) ** 2 - 0.00000583 * math.sin(2 * phi) ** 2
    g_rel -= 0.000000315 * observatory.height
    tan_z = math.tan(math.pi / 2 - math.radians(elevation))
    out = r * g_rel * (1 - beta) * tan_z + r * g_rel * (beta - r / 2) * tan_z**3
    return np.degrees(out)


def differential_refraction(
    wavelength: float | np.ndarray,
    reference: float,
    elevation: float,
    observatory: Observatory = LSST_SITE,
    weather: Weather | None = None,
) -> np.ndarray:
    """Refraction at ``wavelength`` minus that at ``reference`` (nm), in degrees."""
    return refraction(wavelength, elevation, observatory, weather) - refraction(
        reference, elevation, observatory, weather
    )


def parallactic_angle(azimuth: float, elevation: float, latitude: float) -> float:
    """Parallactic angle (degrees) of a source at ``azimuth`` (east of north) and ``elevation``
    seen from ``latitude`` (all degrees): q = atan2(sin H, tan(lat) cos(dec) - sin(dec) cos H)."""
    a, e, phi = (math.radians(v) for v in (azimuth, elevation, latitude))
    sin_dec = math.sin(phi) * math.sin(e) + math.cos(phi) * math.cos(e) * math.cos(a)
    dec = math.asin(max(-1.0, min(1.0, sin_dec)))
    hour = math.atan2(
        -math.sin(a) * math.cos(e),
        math.cos(phi) * math.sin(e) - math.sin(phi) * math.cos(e) * math.cos(a),
    )
    return math.degrees(
        math.atan2(math.sin(hour), math.tan(phi) * math.cos(dec) - math.sin(dec) * math.cos(hour))
    )


def subfilter_edges(effective_wavelength: float, bandwidth: float, n_subfilters: int) -> np.ndarray:
    """(N, 2) lower and upper wavelengths (nm) of N equal sub-filters, bluest first."""
    if not n_subfilters >= 1:
        raise ConfigError(f"n_subfilters must be >= 1, got {n_subfilters}")
    if not (bandwidth > 0 and effective_wavelength > bandwidth / 2):
        raise ConfigError(
            f"bandwidth must be > 0 and < 2 x effective_wavelength, got {bandwidth} nm "
            f"around {effective_wavelength} nm"
        )
    low = effective_wavelength - bandwidth / 2
    step = bandwidth / n_subfilters
    k = np.arange(n_subfilters, dtype=np.float64)
    return np.stack([low + k * step, low + (k + 1) * step], axis=1)


def dcr_shifts(
    *,
    effective_wavelength: float,
    bandwidth: float,
    n_subfilters: int,
    elevation: float,
    parallactic_angle: float,
    pixel_scale: float,
    observatory: Observatory = LSST_SITE,
    weather: Weather | None = None,
    rotation_angle: float = 0.0,
    split: bool = False,
) -> np.ndarray:
    """(dy, dx) pixel shifts of each sub-filter, shape (N, 2), or (N, 2, 2) with ``split``
    (sub-filter, pair member, (dy, dx)), bluest first (algorithms.md 4.3).

    ``pixel_scale`` in arcsec per pixel; angles in degrees.
    """
    if not pixel_scale > 0:
        raise ConfigError(f"pixel_scale must be > 0 arcsec/px, got {pixel_scale}")
    edges = subfilter_edges(effective_wavelength, bandwidth, n_subfilters)
    dr = differential_refraction(edges, effective_wavelength, elevation, observatory, weather)
    amp = dr * 3600.0 / pixel_scale  # (N, 2): lower and upper edge, pixels
    theta = math.radians(parallactic_angle - rotation_angle)
    direction = np.array([math.cos(theta), math.sin(theta)])
    if split:
        pair = np.stack(
            [0.75 * amp[:, 0] + 0.25 * amp[:, 1], 0.25 * amp[:, 0] + 0.75 * amp[:, 1]], axis=1
        )
        return pair[:, :, None] * direction
    return ((amp[:, 0] + amp[:, 1]) / 2)[:, None] * direction


def image_parallactic_angle(
    parallactic_angle: float,
    wcs: WCS | None = None,
    *,
    rotation_angle: float = 0.0,
    x: float | None = None,
    y: float | None = None,
) -> float:
    """The angle theta (degrees) of the direction to the zenith in an image's pixel frame:
    a shift of amplitude ``a`` toward the zenith is ``(dy, dx) = (a cos theta, a sin theta)``.

    Without ``wcs`` this is LSST's calculateImageParallacticAngle,
    ``parallactic_angle - rotation_angle``, in the frame with north along +y and east along +x
    at rotation 0. With a celestial ``wcs`` (a patch of a tract) the direction at position
    angle ``parallactic_angle`` (east of north) is mapped through the WCS at pixel
    (``x``, ``y``) (default: the reference pixel), so the patch's own orientation, flip and
    rotation are taken into account and ``rotation_angle`` (the camera's) does not apply: the
    warp is already on the patch grid. For an unflipped WCS rotated by ``r`` this equals the
    CD-matrix formula of LSST's earlier calculateImageParallacticAngle, ``r - q``.
    """
    if wcs is None:
        return float(parallactic_angle - rotation_angle)
    x0, y0 = np.asarray(wcs.wcs.crpix, dtype=float) - 1.0
    px = float(x0 if x is None else x)
    py = float(y0 if y is None else y)
    lon, lat = wcs.wcs_pix2world(np.array([[px, py]]), 0)[0]
    centre = SkyCoord(lon, lat, unit="deg", frame="icrs")
    step = 1.0 / 3600.0  # one arcsecond toward the zenith
    moved = centre.directional_offset_by(parallactic_angle * u.deg, step * u.deg)
    qx, qy = wcs.wcs_world2pix(np.array([[moved.ra.deg, moved.dec.deg]]), 0)[0]
    return float(math.degrees(math.atan2(qx - px, qy - py)))
