"""The exposure data model: one detector of one visit, as the warper and the coadd steps see it.

An :class:`Exposure` holds the three pixel planes (image, mask, variance) of one calibrated
exposure ("calexp") with its celestial WCS, mask-plane dictionary, photometric calibration, PSF
image and visit metadata. It is validated once, on construction, so the steps downstream only see
consistent inputs. Files are read by :func:`coaddx.io.fits.read_exposure`, which understands the
coaddx calexp layout, the common LSST layout and the Legacy Surveys / DECam Community Pipeline
layout; :func:`coaddx.io.fits.exposure.exposure_footprint` reads only the headers, for overlap
selection.

Pixel convention: 0-based ``(x, y) = (column, row)`` of the arrays held here, pixel centres at
integer coordinates (astropy ``origin=0``), so pixel ``image[j, i]`` is at ``x = i, y = j``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from coaddx.constants import AB_ZERO_NJY
from coaddx.errors import InputError, MaskPlaneError
from coaddx.model.masks import check_mask_planes

__all__ = [
    "AB_ZERO_NJY",
    "OBSERVING_FIELDS",
    "Exposure",
    "boundary_pixels",
    "nJy_per_count",
    "sky_footprint",
]


def nJy_per_count(zero_point: float) -> float:
    """nJy per image count for an AB zero point (magnitude of a source of one count).

    Examples
    --------
    >>> round(nJy_per_count(31.4), 12)
    1.0
    """
    return 10.0 ** (-0.4 * (float(zero_point) - AB_ZERO_NJY))


@dataclass(frozen=True, eq=False)
class Exposure:
    """One detector of one visit: pixels, WCS, masks, calibration and metadata.

    Parameters
    ----------
    image : ndarray of shape (N, M)
        Stored as float32. Counts, unless ``photo_calib == 1`` (then nJy).
    mask : ndarray of shape (N, M), integer
        Stored as int32; bits named by ``mask_planes``.
    variance : ndarray of shape (N, M)
        Stored as float32, image units squared; NaN where there are no data.
    wcs : astropy.wcs.WCS
        Celestial WCS of these arrays: 0-based pixel ``(x=column, y=row)``.
    mask_planes : dict of str to int
        Plane name -> bit.
    photo_calib : float
        nJy per image count (1.0: the image is already in nJy). Finite and > 0.
    psf : ndarray, optional
        PSF image at the exposure centre: odd sides, centred, normalised here to unit sum.
    visit, detector, band, mjd, exptime, airmass, parallactic_angle, psf_fwhm
        Visit metadata; ``exptime`` in seconds, ``parallactic_angle`` in degrees, ``psf_fwhm``
        in pixels; NaN where unknown.
    elevation, rotation_angle, temperature, pressure, humidity
        Boresight altitude and sky rotation angle (degrees), air temperature (C), pressure (Pa)
        and relative humidity (%), for DCR; NaN where unknown.
    metadata : dict
        Anything else read from the headers (zero point, gain, layout, ...).
    path : pathlib.Path, optional
        The file the exposure came from; named in every error about it.

    Raises
    ------
    InputError
        Arrays not 2-D or of different shapes, a non-integer mask, a WCS that is not celestial,
        invalid mask planes (:class:`MaskPlaneError`), mask bits no plane names, a non-positive
        ``photo_calib`` or a malformed PSF.
    """

    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    wcs: WCS
    mask_planes: dict[str, int]
    photo_calib: float = 1.0
    psf: np.ndarray | None = None
    visit: int = 0
    detector: int = 0
    band: str = ""
    mjd: float = math.nan
    exptime: float = math.nan
    airmass: float = math.nan
    parallactic_angle: float = math.nan
    psf_fwhm: float = math.nan
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    elevation: float = math.nan
    rotation_angle: float = math.nan
    temperature: float = math.nan
    pressure: float = math.nan
    humidity: float = math.nan

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "path", None if self.path is None else Path(self.path))
        where = str(self.path) if self.path is not None else "exposure"
        image, mask, variance = _check_planes(self.image, self.mask, self.variance, where)
        set_(self, "image", image)
        set_(self, "mask", mask)
        set_(self, "variance", variance)
        set_(self, "wcs", _check_wcs(self.wcs, where))
        planes = check_mask_planes(self.mask_planes, where=f"{where}: mask_planes")
        _check_mask_bits(mask, planes, where)
        set_(self, "mask_planes", planes)
        set_(self, "photo_calib", _positive(self.photo_calib, "photo_calib", where))
        set_(self, "psf", None if self.psf is None else _check_psf(self.psf, where))
        _coerce_metadata(self, where)

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the pixel planes."""
        return self.image.shape

    @property
    def where(self) -> str:
        """How errors name this exposure: its path, else ``visit V detector D``."""
        return (
            str(self.path)
            if self.path is not None
            else (f"visit {self.visit} detector {self.detector}")
        )

    def calibrated(self) -> Exposure:
        """A new Exposure in nJy: image * c, variance * c**2, ``photo_calib`` 1.0.

        ``c`` is ``photo_calib`` (nJy per count), applied as afw ``PhotoCalib.calibrateImage``
        does in MakeDirectWarp (algorithms.md 5.1 step 3); the calibration uncertainty is not
        added to the variance. Masks, WCS, PSF and metadata are carried over unchanged.
        """
        c = float(self.photo_calib)
        image = (self.image.astype(np.float64) * c).astype(np.float32)
        variance = (self.variance.astype(np.float64) * (c * c)).astype(np.float32)
        return replace(
            self,
            image=image,
            variance=variance,
            photo_calib=1.0,
            mask=self.mask.copy(),
            metadata=dict(self.metadata),
        )

    def footprint_sky(self, n: int = 4) -> SkyCoord:
        """Sky coordinates (ICRS) of ``4 * n`` points on the outer pixel boundary.

        The boundary runs along the outer pixel edges (``-0.5`` and ``size - 0.5``), counter-
        clockwise in pixel space from the corner ``(-0.5, -0.5)``, with ``n`` segments per side
        (``n = 2``: the four corners and four edge midpoints). Enough for overlap selection
        without touching pixels; see :func:`sky_footprint`.
        """
        return sky_footprint(self.wcs, self.shape, n=n)


def boundary_pixels(shape: tuple[int, int], n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of ``4 * n`` points on the outer pixel edges of an array of ``shape``.

    Counter-clockwise in pixel space from ``(-0.5, -0.5)``, ``n`` segments per side.
    """
    n = int(n)
    if n < 1:
        raise InputError(f"footprint needs n >= 1 points per side, got {n}")
    ny, nx = shape
    t = np.arange(n) / n
    x0, x1, y0, y1 = -0.5, nx - 0.5, -0.5, ny - 0.5
    x = np.concatenate([x0 + t * (x1 - x0), np.full(n, x1), x1 - t * (x1 - x0), np.full(n, x0)])
    y = np.concatenate([np.full(n, y0), y0 + t * (y1 - y0), np.full(n, y1), y1 - t * (y1 - y0)])
    return x, y


def sky_footprint(wcs: WCS, shape: tuple[int, int], *, n: int = 4) -> SkyCoord:
    """ICRS sky coordinates of :func:`boundary_pixels` through ``wcs`` (0-based pixels)."""
    x, y = boundary_pixels(shape, n)
    return wcs.celestial.pixel_to_world(x, y).icrs


# -- validation helpers ----------------------------------------------------------------------


def _check_planes(
    image: Any, mask: Any, variance: Any, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, mask, variance = np.asarray(image), np.asarray(mask), np.asarray(variance)
    if image.ndim != 2:
        raise InputError(f"{where}: image must be 2-D, got shape {image.shape}")
    for name, arr in (("mask", mask), ("variance", variance)):
        if arr.shape != image.shape:
            raise InputError(f"{where}: {name} shape {arr.shape} differs from image {image.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"{where}: mask must be an integer array, got {mask.dtype}")
    if mask.dtype.itemsize > 4 and mask.size and (mask.min() < -(2**31) or mask.max() >= 2**31):
        raise InputError(f"{where}: mask values do not fit in int32")
    for name, arr in (("image", image), ("variance", variance)):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise InputError(f"{where}: {name} must be a real array, got {arr.dtype}")
    return (_native(image, np.float32), _native(mask, np.int32), _native(variance, np.float32))


def _native(arr: np.ndarray, dtype: type) -> np.ndarray:
    """``arr`` as a native-endian array of ``dtype`` (no copy when it already is one)."""
    return np.asarray(arr, dtype=np.dtype(dtype).newbyteorder("="))


def _check_wcs(wcs: Any, where: str) -> WCS:
    if not isinstance(wcs, WCS) or not wcs.has_celestial:
        raise InputError(f"{where}: needs a celestial astropy WCS, got {wcs!r}")
    return wcs if wcs.naxis == 2 else wcs.celestial


def _check_mask_bits(mask: np.ndarray, planes: dict[str, int], where: str) -> None:
    named = 0
    for bit in planes.values():
        named |= 1 << bit
    stray = int(np.bitwise_or.reduce(mask, axis=None)) & ~named if mask.size else 0
    if stray:
        bits = [b for b in range(32) if stray >> b & 1]
        raise MaskPlaneError(
            f"{where}: mask bits {bits} are set but no mask plane names them (planes: {planes})"
        )


def _positive(value: Any, name: str, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {name} = {value!r} is not a number") from None
    if not (math.isfinite(out) and out > 0):
        raise InputError(f"{where}: {name} must be finite and > 0, got {value!r}")
    return out


def _check_psf(psf: Any, where: str) -> np.ndarray:
    psf = np.array(psf, dtype=np.float64)
    if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise InputError(f"{where}: the PSF image must be 2-D with odd sides, got {psf.shape}")
    total = psf.sum()
    if not (np.isfinite(total) and total > 0):
        raise InputError(f"{where}: the PSF image must have a finite positive sum, got {total}")
    return psf / total


#: The float observing fields of an Exposure (NaN where unknown).
OBSERVING_FIELDS = (
    "mjd",
    "exptime",
    "airmass",
    "parallactic_angle",
    "psf_fwhm",
    "elevation",
    "rotation_angle",
    "temperature",
    "pressure",
    "humidity",
)


def _coerce_metadata(exp: Exposure, where: str) -> None:
    set_ = object.__setattr__
    for name in ("visit", "detector"):
        value = getattr(exp, name)
        try:
            number = int(value)
            integral = not isinstance(value, bool | np.bool_) and (
                isinstance(value, int | np.integer | str) or float(value) == number
            )
        except (TypeError, ValueError, OverflowError):
            integral = False
        if not integral:  # 1000.7 is not truncated, True is not visit 1
            raise InputError(f"{where}: {name} = {value!r} is not an integer")
        set_(exp, name, number)
    set_(exp, "band", str(exp.band).strip())
    for name in OBSERVING_FIELDS:
        value = getattr(exp, name)
        try:
            set_(exp, name, math.nan if value is None else float(value))
        except (TypeError, ValueError):
            raise InputError(f"{where}: {name} = {value!r} is not a number") from None
    set_(exp, "metadata", dict(exp.metadata or {}))
