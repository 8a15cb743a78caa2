"""Exposure ("calexp") FITS writing and reading (design.md, "Input exposure FITS").

Layout written by :func:`write_calexp`::

    HDU 0 (primary)   VISIT, DETECTOR, BAND, MJD-OBS, EXPTIME, AIRMASS, PARANGLE, PHOTCALIB,
                      PSFFWHM (+ MAGZERO, SKYLEVEL, GAIN, RDNOISE, SATURATE, HIERARCH extras)
    HDU 1 IMAGE       float32, celestial WCS in the header
    HDU 2 MASK        int32, MP_<PLANE> = bit keywords
    HDU 3 VARIANCE    float32, IMAGE units squared
    HDU 4 PSF         optional: odd size, centred, unit sum

:func:`read_calexp` reads this layout back; adapters for the LSST and Legacy Surveys layouts
belong to the full reader (a later issue).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from ..errors import InputError
from ..masks import check_mask_planes, mask_planes_from_header, mask_planes_to_header

__all__ = ["CALEXP_KEYWORDS", "read_calexp", "write_calexp"]

#: metadata name -> primary-header keyword (design.md); the first three are required.
CALEXP_KEYWORDS: dict[str, str] = {
    "visit": "VISIT",
    "detector": "DETECTOR",
    "band": "BAND",
    "mjd": "MJD-OBS",
    "exptime": "EXPTIME",
    "airmass": "AIRMASS",
    "parallactic_angle": "PARANGLE",
    "photo_calib": "PHOTCALIB",
    "psf_fwhm": "PSFFWHM",
    "zero_point": "MAGZERO",
    "sky_counts": "SKYLEVEL",
    "gain": "GAIN",
    "read_noise": "RDNOISE",
    "saturation": "SATURATE",
}
_REQUIRED = ("visit", "detector", "band")
_INT_KEYS = ("visit", "detector")
_HIERARCH = "HIERARCH COADDX "


def _primary_header(metadata: Mapping[str, Any], path: Path) -> fits.Header:
    missing = [k for k in _REQUIRED if k not in metadata]
    if missing:
        raise InputError(f"{path}: calexp metadata lacks {missing} (needs {list(_REQUIRED)})")
    header = fits.Header()
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, str | int | float | bool):
            raise InputError(f"{path}: metadata {key!r} = {value!r} is not a FITS scalar")
        if key in _INT_KEYS:
            value = int(value)
        keyword = CALEXP_KEYWORDS.get(key, _HIERARCH + key.upper())
        header[keyword if len(keyword) <= 8 else _hierarch(keyword)] = value
    return header


def _hierarch(keyword: str) -> str:
    return keyword if keyword.startswith("HIERARCH ") else "HIERARCH " + keyword


def _check_planes(image: np.ndarray, mask: np.ndarray, variance: np.ndarray,
                  path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"{path}: image must be 2-D, got shape {image.shape}")
    mask, variance = np.asarray(mask), np.asarray(variance)
    for name, arr in (("mask", mask), ("variance", variance)):
        if arr.shape != image.shape:
            raise InputError(f"{path}: {name} shape {arr.shape} differs from image {image.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"{path}: mask must be an integer array, got {mask.dtype}")
    return (image.astype(np.float32, copy=False), mask.astype(np.int32, copy=False),
            variance.astype(np.float32, copy=False))


def _check_psf(psf: np.ndarray, path: Path) -> np.ndarray:
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise InputError(f"{path}: the PSF image must be 2-D with odd sides, got {psf.shape}")
    total = psf.sum()
    if not np.isfinite(total) or total <= 0:
        raise InputError(f"{path}: the PSF image must have a finite positive sum, got {total}")
    return (psf / total).astype(np.float32)


def write_calexp(path: str | os.PathLike[str], image: np.ndarray, mask: np.ndarray,
                 variance: np.ndarray, wcs: WCS, *, mask_planes: Mapping[str, int],
                 metadata: Mapping[str, Any], psf: np.ndarray | None = None) -> Path:
    """Write one exposure (one detector of one visit) as a calexp FITS file, atomically.

    Parameters
    ----------
    path : path-like
        Output file; written under a temporary name in the same folder and renamed into place.
    image, variance : ndarray of shape (N, M)
        Stored as float32; units counts (with ``photo_calib`` in the metadata) or nJy.
    mask : ndarray of shape (N, M), integer
        Bit mask, stored as int32.
    wcs : astropy.wcs.WCS
        Celestial WCS of the image, written into the IMAGE header.
    mask_planes : mapping of str to int
        Plane name -> bit, written as ``MP_<NAME>`` keywords on the MASK HDU.
    metadata : mapping
        ``visit``, ``detector``, ``band`` (required), ``mjd``, ``exptime``, ``airmass``,
        ``parallactic_angle``, ``photo_calib`` (nJy per count), ``psf_fwhm`` (pixels) and the
        other names of :data:`CALEXP_KEYWORDS`; any other scalar is kept as a
        ``HIERARCH COADDX <NAME>`` keyword.
    psf : ndarray, optional
        PSF image (odd sides) valid at the exposure centre; normalised to unit sum.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    image, mask, variance = _check_planes(image, mask, variance, path)
    planes = check_mask_planes(mask_planes, where=f"{path} mask_planes")
    if not getattr(wcs, "has_celestial", False):
        raise InputError(f"{path}: write_calexp needs a celestial WCS")
    primary = fits.PrimaryHDU(header=_primary_header(metadata, path))
    image_header = wcs.celestial.to_header(relax=True)
    image_header["BUNIT"] = "count" if metadata.get("photo_calib") is not None else "nJy"
    mask_header = fits.Header()
    for key, bit in mask_planes_to_header(planes).items():
        mask_header[key if len(key) <= 8 else _hierarch(key)] = bit
    hdus = [primary,
            fits.ImageHDU(image, header=image_header, name="IMAGE"),
            fits.ImageHDU(mask, header=mask_header, name="MASK"),
            fits.ImageHDU(variance, name="VARIANCE")]
    if psf is not None:
        hdus.append(fits.ImageHDU(_check_psf(psf, path), name="PSF"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        fits.HDUList(hdus).writeto(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _metadata_from_header(header: fits.Header) -> dict[str, Any]:
    keyword_to_name = {v: k for k, v in CALEXP_KEYWORDS.items()}
    out: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        if key in keyword_to_name:
            out[keyword_to_name[key]] = card.value
        elif key.startswith("COADDX "):
            out[key[len("COADDX "):].lower()] = card.value
    return out


def read_calexp(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a calexp written by :func:`write_calexp`.

    Returns
    -------
    dict
        ``image``, ``variance`` (float32), ``mask`` (int32) ndarrays, ``wcs``
        (astropy.wcs.WCS), ``mask_planes`` (name -> bit), ``metadata`` (names of
        :data:`CALEXP_KEYWORDS`), ``psf`` (ndarray or None) and ``header`` (primary header).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"no calexp file at {path}")
    try:
        with fits.open(path, memmap=False) as hdul:
            names = [h.name for h in hdul]
            missing = [n for n in ("IMAGE", "MASK", "VARIANCE") if n not in names]
            if missing:
                raise InputError(f"{path}: not a coaddx calexp, missing HDU(s) {missing}")
            out = {
                "image": np.asarray(hdul["IMAGE"].data, dtype=np.float32),
                "mask": np.asarray(hdul["MASK"].data, dtype=np.int32),
                "variance": np.asarray(hdul["VARIANCE"].data, dtype=np.float32),
                "wcs": WCS(hdul["IMAGE"].header).celestial,
                "mask_planes": mask_planes_from_header(hdul["MASK"].header),
                "metadata": _metadata_from_header(hdul[0].header),
                "psf": np.asarray(hdul["PSF"].data, np.float32) if "PSF" in names else None,
                "header": hdul[0].header.copy(),
            }
    except OSError as exc:
        raise InputError(f"{path}: unreadable FITS file: {exc}") from exc
    return out
