"""Exposure ("calexp") FITS reading and writing (design.md, "Input exposure FITS").

Layout written by :func:`write_calexp` and :func:`write_exposure`::

    HDU 0 (primary)   VISIT, DETECTOR, BAND, MJD-OBS, EXPTIME, AIRMASS, PARANGLE, PHOTCALIB,
                      PSFFWHM (+ MAGZERO, SKYLEVEL, GAIN, RDNOISE, SATURATE, HIERARCH extras)
    HDU 1 IMAGE       float32, celestial WCS in the header
    HDU 2 MASK        int32, MP_<PLANE> = bit keywords
    HDU 3 VARIANCE    float32, IMAGE units squared
    HDU 4 PSF         optional: odd size, centred, unit sum

:func:`read_exposure` reads three layouts into a :class:`coaddx.exposure.Exposure`:

``coaddx``
    The layout above; ``PHOTCALIB`` absent means the image is already in nJy.
``lsst``
    The common LSST layout: IMAGE, MASK, VARIANCE as HDUs 1-3, ``MP_*`` keywords on the MASK
    header, the WCS in the IMAGE header. Calibration from ``PHOTCALIB`` (nJy per count) or
    ``FLUXMAG0`` (counts of a 0 mag AB source); with neither, the image must be in nJy
    (``BUNIT`` absent or ``nJy``), otherwise the reader refuses to guess.
``decam-cp``
    Legacy Surveys / NOIRLab DECam Community Pipeline InstCal files: ``*_ooi_*`` image,
    ``*_oow_*`` inverse variance and ``*_ood_*`` data quality, given any one of the three.
    See :func:`read_exposure` for the DQ mapping, the zero point and the PSFEx PSF.
"""

from __future__ import annotations

import math
import os
import re
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from scipy import ndimage

from ..errors import InputError
from ..exposure import AB_ZERO_NJY, Exposure, nJy_per_count
from ..masks import (
    bitmask,
    check_mask_planes,
    mask_planes,
    mask_planes_from_header,
    mask_planes_to_header,
)

__all__ = [
    "CALEXP_KEYWORDS",
    "CP_DQ_BITS",
    "CP_DQ_CODES",
    "DECAM_NOMINAL_ZP",
    "decam_dq_to_mask",
    "psfex_image",
    "read_calexp",
    "read_exposure",
    "read_exposure_geometry",
    "write_calexp",
    "write_exposure",
]

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


def _check_planes(
    image: np.ndarray, mask: np.ndarray, variance: np.ndarray, path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"{path}: image must be 2-D, got shape {image.shape}")
    mask, variance = np.asarray(mask), np.asarray(variance)
    for name, arr in (("mask", mask), ("variance", variance)):
        if arr.shape != image.shape:
            raise InputError(f"{path}: {name} shape {arr.shape} differs from image {image.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"{path}: mask must be an integer array, got {mask.dtype}")
    return (
        image.astype(np.float32, copy=False),
        mask.astype(np.int32, copy=False),
        variance.astype(np.float32, copy=False),
    )


def _check_psf(psf: np.ndarray, path: Path) -> np.ndarray:
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise InputError(f"{path}: the PSF image must be 2-D with odd sides, got {psf.shape}")
    total = psf.sum()
    if not np.isfinite(total) or total <= 0:
        raise InputError(f"{path}: the PSF image must have a finite positive sum, got {total}")
    return (psf / total).astype(np.float32)


def write_calexp(
    path: str | os.PathLike[str],
    image: np.ndarray,
    mask: np.ndarray,
    variance: np.ndarray,
    wcs: WCS,
    *,
    mask_planes: Mapping[str, int],
    metadata: Mapping[str, Any],
    psf: np.ndarray | None = None,
) -> Path:
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
    hdus = [
        primary,
        fits.ImageHDU(image, header=image_header, name="IMAGE"),
        fits.ImageHDU(mask, header=mask_header, name="MASK"),
        fits.ImageHDU(variance, name="VARIANCE"),
    ]
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
            out[key[len("COADDX ") :].lower()] = card.value
    return out


def _open_fits(path: Path) -> fits.HDUList:
    """Open read-only (inputs are never modified); a missing or non-FITS file is an InputError."""
    if not path.is_file():
        raise InputError(f"no exposure file at {path}")
    try:
        return fits.open(path, memmap=False, mode="readonly")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable FITS file: {exc}") from exc


def _calexp_parts(hdul: fits.HDUList, path: Path) -> dict[str, Any]:
    names = [h.name for h in hdul]
    missing = [n for n in ("IMAGE", "MASK", "VARIANCE") if n not in names]
    if missing:
        raise InputError(f"{path}: not a coaddx calexp, missing HDU(s) {missing}")
    return {
        "image": _plane(hdul["IMAGE"], path, "IMAGE", np.float32),
        "mask": _plane(hdul["MASK"], path, "MASK", np.int32),
        "variance": _plane(hdul["VARIANCE"], path, "VARIANCE", np.float32),
        "wcs": _wcs_from_header(hdul["IMAGE"].header, path, "IMAGE"),
        "mask_planes": mask_planes_from_header(hdul["MASK"].header),
        "metadata": _metadata_from_header(hdul[0].header),
        "psf": _plane(hdul["PSF"], path, "PSF", np.float32) if "PSF" in names else None,
        "header": hdul[0].header.copy(),
    }


def read_calexp(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a calexp written by :func:`write_calexp` (the coaddx layout only).

    Returns
    -------
    dict
        ``image``, ``variance`` (float32), ``mask`` (int32) ndarrays, ``wcs``
        (astropy.wcs.WCS), ``mask_planes`` (name -> bit), ``metadata`` (names of
        :data:`CALEXP_KEYWORDS`), ``psf`` (ndarray or None) and ``header`` (primary header).
        :func:`read_exposure` returns the same as an :class:`~coaddx.exposure.Exposure` and
        also reads the LSST and DECam CP layouts.
    """
    path = Path(path)
    with _open_fits(path) as hdul:
        return _calexp_parts(hdul, path)


# -- shared helpers ----------------------------------------------------------------------------


def _plane(hdu: Any, path: Path, what: str, dtype: type) -> np.ndarray:
    try:
        data = hdu.data
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: cannot read the {what} HDU: {exc}") from exc
    if data is None or np.ndim(data) != 2:
        shape = None if data is None else np.shape(data)
        raise InputError(f"{path}: the {what} HDU holds no 2-D image (shape {shape})")
    return np.asarray(data, dtype=np.dtype(dtype).newbyteorder("="))


def _wcs_from_header(header: fits.Header, path: Path, what: str) -> WCS:
    """The celestial WCS of an image header (TAN, TAN-SIP, TPV, ...); InputError otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, relax=True)
    except Exception as exc:  # astropy raises many types for malformed WCS cards
        raise InputError(f"{path}: unreadable WCS in the {what} header: {exc}") from exc
    if not wcs.has_celestial:
        raise InputError(
            f"{path}: the {what} header has no celestial WCS (CTYPE {list(wcs.wcs.ctype)})"
        )
    return wcs.celestial


def _card(key: str, *headers: Mapping[str, Any], default: Any = None) -> Any:
    """The first non-blank value of ``key`` in ``headers`` (extension before primary)."""
    for header in headers:
        value = header.get(key)
        if isinstance(value, str):
            value = value.strip()
        if value not in (None, ""):
            return value
    return default


def _float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _image_shape(header: Mapping[str, Any], path: Path, what: str) -> tuple[int, int]:
    if header.get("NAXIS") != 2:
        raise InputError(
            f"{path}: the {what} HDU is not a 2-D image (NAXIS = {header.get('NAXIS')})"
        )
    return int(header["NAXIS2"]), int(header["NAXIS1"])


# -- dispatch ----------------------------------------------------------------------------------

_CP_KIND = re.compile(r"_(ooi|oki|oow|ood)_")
_PLANES3 = ("IMAGE", "MASK", "VARIANCE")


def read_exposure(
    path: str | os.PathLike[str],
    *,
    ccdname: str | None = None,
    photo_calib: float | None = None,
    psfex: str | os.PathLike[str] | None = None,
) -> Exposure:
    """Read one exposure file into an :class:`~coaddx.exposure.Exposure`, by layout.

    Parameters
    ----------
    path : path-like
        A coaddx calexp, an LSST-layout exposure, or any one of the three files of a DECam
        Community Pipeline (CP) exposure (``*_ooi_*`` image, ``*_oow_*`` inverse variance,
        ``*_ood_*`` data quality; the other two are found beside it).
    ccdname : str, optional
        CP only: the extension (CCD name, e.g. ``"N11"``) to read from a multi-CCD file.
        Needed only when the file holds more than one CCD.
    photo_calib : float, optional
        nJy per image count, overriding the calibration found in the headers.
    psfex : path-like, optional
        CP only: the PSFEx model file. By default it is looked for where legacypipe keeps it,
        ``calib/psfex/<dir>/<base>-psfex.fits`` (merged, one row per CCD) or
        ``calib/psfex-single/<dir>/<base>/<base>-<ccd>-psfex.fits``, with ``calib/`` beside the
        ``images/`` folder that holds the image.

    Returns
    -------
    Exposure
        In image counts with ``photo_calib`` nJy per count (use ``.calibrated()`` for nJy).
        ``metadata["layout"]`` names the layout read.

    Notes
    -----
    DECam CP layout, decisions:

    * DQ: CP >= 3.5.0 (``PLVER``) writes integer codes, older versions bits; both are mapped
      by name onto coaddx planes with :data:`CP_DQ_CODES` / :data:`CP_DQ_BITS` (from legacypipe
      ``image.py::remap_dq_cp_codes`` and ``bits.py::DQ_BITS``), including legacypipe's rule
      that BAD pixels touching a saturated core are SAT.
    * Variance is ``1 / ivar``. The CP sets ``ivar = 0`` exactly on its DQ-flagged pixels;
      those keep their own planes (SAT, BAD, CR, ...), their image values, and a finite
      placeholder variance (the median good variance), like an LSST calexp, so the flags
      survive warping and stacking (SAT propagation, REJECTED). Pixels without data and
      without a flag (non-finite image or ivar) get ``NO_DATA`` and NaN variance.
    * Calibration: a zero point ``MAGZERO`` in the headers is taken for image counts (as
      legacypipe reads DES/CP headers); ``CCDZPT`` or ``MAGZPT`` are per second
      (+ 2.5 log10 EXPTIME, as legacypipe does with its survey-ccds ``ccdzpt``). The CP
      DR9-era headers carry none, so the nominal DECam zero point of legacyzpts
      (:data:`DECAM_NOMINAL_ZP`, e-/s at airmass 1) is used:
      ``zp0 - 2.5 log10(gain) - k (airmass - 1) + 2.5 log10(EXPTIME)``, gain the mean of
      ``GAINA``/``GAINB`` (CP images are in ADU). It is good to about 0.1 mag on clear nights;
      pass ``photo_calib`` for survey-grade photometry. ``metadata["zero_point_source"]`` says
      which was used.
    * The CP image is NOT sky subtracted: ``metadata["background_subtracted"]`` is False and
      ``metadata["sky_counts"]`` holds the CP's ``AVSKY``.
    * PSF: the PSFEx model evaluated at the CCD centre (polynomial in X_IMAGE, Y_IMAGE,
      1-based), resampled to native pixels when ``PSF_SAMP != 1``, normalised; ``None`` when no
      PSFEx file is found. ``psf_fwhm`` is the CP header ``FWHM`` (pixels; PSFEx's own
      ``psf_fwhm`` is kept as ``metadata["psfex_fwhm"]``).
    """
    path = Path(path)
    if _CP_KIND.search(path.name):
        exp = _read_decam_cp(path, ccdname=ccdname, psfex=psfex, photo_calib=photo_calib)
    else:
        with _open_fits(path) as hdul:
            layout = _detect_layout(hdul, path)
            reader = _read_coaddx if layout == "coaddx" else _read_lsst
            exp = reader(hdul, path, photo_calib=photo_calib)
    if photo_calib is not None:
        meta = {**exp.metadata, "photo_calib_source": "argument"}
        exp = replace(exp, photo_calib=photo_calib, metadata=meta)
    return exp


def read_exposure_geometry(
    path: str | os.PathLike[str], *, ccdname: str | None = None
) -> tuple[WCS, tuple[int, int]]:
    """``(wcs, (ny, nx))`` of an exposure file of any :func:`read_exposure` layout, read from
    the image header only (no pixels are read)."""
    path = Path(path)
    if _CP_KIND.search(path.name):
        image_path = _cp_siblings(path)["image"]
        with _open_fits(image_path) as hdul:
            header = _cp_hdu(hdul, ccdname, image_path).header
            return _wcs_from_header(header, image_path, "image"), _image_shape(
                header, image_path, "image"
            )
    with _open_fits(path) as hdul:
        layout = _detect_layout(hdul, path)
        hdu = hdul["IMAGE"] if layout == "coaddx" else hdul[1]
        return _wcs_from_header(hdu.header, path, "IMAGE"), _image_shape(hdu.header, path, "IMAGE")


def _detect_layout(hdul: fits.HDUList, path: Path) -> str:
    names = [h.name for h in hdul]
    named = [n for n in _PLANES3 if n in names]
    primary = hdul[0].header
    if len(named) == 3:
        if all(k in primary for k in ("VISIT", "DETECTOR", "BAND")):
            return "coaddx"
        if names[1:4] == list(_PLANES3):
            return "lsst"
        raise InputError(
            f"{path}: IMAGE, MASK, VARIANCE are not HDUs 1-3 (HDUs: {names}) and "
            "the primary header lacks VISIT/DETECTOR/BAND of the coaddx layout"
        )
    if named:
        missing = [n for n in _PLANES3 if n not in names]
        raise InputError(
            f"{path}: missing HDU(s) {missing} (has {names}); an exposure needs "
            "IMAGE, MASK and VARIANCE"
        )
    unnamed = len(hdul) >= 4 and all(
        h.is_image and h.header.get("NAXIS") == 2 and not h.name for h in hdul[1:4]
    )
    if unnamed:
        return "lsst"
    raise InputError(
        f"{path}: unknown exposure layout (HDUs {names}): expected IMAGE, MASK, VARIANCE as "
        "HDUs 1-3 (coaddx / LSST layout) or a DECam CP *_ooi_* image with its *_oow_* "
        "inverse-variance and *_ood_* data-quality siblings"
    )


_FIELDS = (
    "visit",
    "detector",
    "band",
    "mjd",
    "exptime",
    "airmass",
    "parallactic_angle",
    "psf_fwhm",
)


def _read_coaddx(hdul: fits.HDUList, path: Path, *, photo_calib: float | None) -> Exposure:
    parts = _calexp_parts(hdul, path)
    meta = dict(parts["metadata"])
    fields = {k: meta.pop(k) for k in _FIELDS if k in meta}
    stored = meta.pop("photo_calib", None)
    if photo_calib is None:
        # PHOTCALIB absent: nJy (design.md), unless BUNIT or FLUXMAG0 say otherwise
        photo_calib = (
            stored
            if stored is not None
            else _lsst_photo_calib(hdul[0].header, hdul["IMAGE"].header, path)[0]
        )
    meta["layout"] = "coaddx"
    return Exposure(
        parts["image"],
        parts["mask"],
        parts["variance"],
        parts["wcs"],
        parts["mask_planes"],
        photo_calib=photo_calib,
        psf=parts["psf"],
        metadata=meta,
        path=path,
        **fields,
    )


# -- LSST layout -------------------------------------------------------------------------------

_NJY_UNITS = ("njy", "nanojansky")


def _read_lsst(hdul: fits.HDUList, path: Path, *, photo_calib: float | None) -> Exposure:
    primary, image_header = hdul[0].header, hdul[1].header
    planes = mask_planes_from_header(hdul[2].header)
    if not planes:
        raise InputError(
            f"{path}: the MASK header (HDU 2) has no MP_<PLANE> keywords naming the mask planes"
        )
    if photo_calib is None:
        photo_calib, source = _lsst_photo_calib(primary, image_header, path)
    else:
        source = "argument"
    heads = (primary, image_header)
    band = _card("BAND", *heads) or str(_card("FILTER", *heads, default="")).split(" ")[0]
    fields = {
        "visit": _int_card(("VISIT", "EXPID", "EXPNUM"), heads),
        "detector": _int_card(("DETECTOR", "CCDNUM", "DET-ID"), heads),
        "band": band,
        "mjd": _float(_card("MJD-OBS", *heads, default=_card("MJD-AVG", *heads))),
        "exptime": _float(_card("EXPTIME", *heads)),
        "airmass": _float(_card("AIRMASS", *heads, default=_card("BORE-AIRMASS", *heads))),
        "parallactic_angle": _float(_card("PARANGLE", *heads)),
        "psf_fwhm": _float(_card("PSFFWHM", *heads, default=_card("FWHM", *heads))),
    }
    meta = {"layout": "lsst", "photo_calib_source": source}
    return Exposure(
        _plane(hdul[1], path, "IMAGE", np.float32),
        _plane(hdul[2], path, "MASK", np.int32),
        _plane(hdul[3], path, "VARIANCE", np.float32),
        _wcs_from_header(image_header, path, "IMAGE"),
        planes,
        photo_calib=photo_calib,
        metadata=meta,
        path=path,
        **fields,
    )


def _int_card(keys: tuple[str, ...], headers: tuple[Mapping[str, Any], ...]) -> int:
    for key in keys:
        value = _card(key, *headers)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
    return 0


def _lsst_photo_calib(
    primary: Mapping[str, Any], image_header: Mapping[str, Any], path: Path
) -> tuple[float, str]:
    heads = (primary, image_header)
    value = _card("PHOTCALIB", *heads)
    if value is not None:
        return float(value), "PHOTCALIB"
    fluxmag0 = _card("FLUXMAG0", *heads)
    if fluxmag0 is not None:
        # FLUXMAG0 counts are a 0 mag (AB) source: 10**(0.4 * 31.4) nJy.
        return 10.0 ** (0.4 * AB_ZERO_NJY) / float(fluxmag0), "FLUXMAG0"
    unit = str(_card("BUNIT", image_header, primary, default="")).lower()
    if unit and unit not in _NJY_UNITS:
        raise InputError(
            f"{path}: IMAGE is in BUNIT = {unit!r} but there is no PHOTCALIB or "
            "FLUXMAG0 keyword to calibrate it; pass photo_calib="
        )
    return 1.0, "BUNIT nJy" if unit else "assumed nJy (no BUNIT)"


# -- DECam Community Pipeline layout --------------------------------------------------------------

#: CP >= 3.5.0 integer DQ codes -> coaddx planes. Code meanings from legacypipe image.py
#: ``remap_dq_cp_codes`` (1 bad, 2 no value, 3 saturated, 4 bleed mask, 5 cosmic ray, 6 low
#: weight, 7 diff detect, 8 long streak). LSST has no bleed plane: bleed trails are SAT, as
#: LSST ISR flags them; "diff detect" (multi-exposure transient) is SUSPECT.
CP_DQ_CODES: dict[int, tuple[str, ...]] = {
    1: ("BAD",),
    2: ("NO_DATA",),
    3: ("SAT",),
    4: ("SAT",),
    5: ("CR",),
    6: ("BAD",),
    7: ("SUSPECT",),
    8: ("STREAK",),
}
#: CP < 3.5.0 DQ bits -> coaddx planes (legacypipe bits.py ``DQ_BITS``: badpix, satur, interp,
#: cr, bleed, trans, edge, edge2, longthin, outlier).
CP_DQ_BITS: dict[int, tuple[str, ...]] = {
    1: ("BAD",),
    2: ("SAT",),
    4: ("INTRP",),
    16: ("CR",),
    64: ("SAT",),
    128: ("SUSPECT",),
    256: ("EDGE",),
    512: ("EDGE",),
    1024: ("STREAK",),
    2048: ("SUSPECT",),
}
#: legacyzpts DecamMeasurer nominal zero points (AB mag of 1 e-/s at airmass 1) and
#: extinction per airmass: band -> (zp0, k_ext).
DECAM_NOMINAL_ZP: dict[str, tuple[float, float]] = {
    "u": (23.3205, 0.63),
    "g": (26.610, 0.17),
    "r": (26.818, 0.10),
    "i": (26.758, 0.08),
    "z": (26.484, 0.06),
    "Y": (25.321, 0.06),
}


def decam_dq_to_mask(
    dq: np.ndarray, planes: Mapping[str, int], *, codes: bool = True
) -> np.ndarray:
    """Map a CP data-quality image onto a coaddx int32 mask by plane name.

    ``codes=True`` reads CP >= 3.5.0 integer codes (:data:`CP_DQ_CODES`), False the older bits
    (:data:`CP_DQ_BITS`). Unknown non-zero codes or bits are marked BAD. The input is not
    modified.
    """
    dq = np.asarray(dq).astype(np.int64)
    out = np.zeros(dq.shape, np.int32)
    table = CP_DQ_CODES if codes else CP_DQ_BITS
    if codes:
        # legacypipe: BAD (1) pixels touching a saturated core (3) are saturated too.
        dq[(dq == 1) & ndimage.binary_dilation(dq == 3)] = 3
        for code, names in table.items():
            out[dq == code] |= np.int32(bitmask(planes, names))
        unknown = (dq != 0) & ~np.isin(dq, list(table))
    else:
        for bit, names in table.items():
            out[(dq & bit) != 0] |= np.int32(bitmask(planes, names))
        unknown = (dq & ~sum(table)) != 0
    out[unknown] |= np.int32(bitmask(planes, ["BAD"]))
    return out


def _cp_uses_codes(plver: Any) -> bool:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", str(plver or ""))
    if match is None:
        return True
    return tuple(int(g or 0) for g in match.groups()) >= (3, 5, 0)


def _cp_siblings(path: Path) -> dict[str, Path]:
    """The image, inverse-variance and DQ files of a CP exposure, from any one of them."""
    kinds = list(_CP_KIND.finditer(path.name))
    start, end = kinds[-1].span(1)

    def named(code: str) -> Path:
        return path.with_name(path.name[:start] + code + path.name[end:])

    image = named("oki") if named("oki").is_file() else named("ooi")
    out = {"image": image, "invvar": named("oow"), "dq": named("ood")}
    what = {
        "image": "image (*_ooi_*)",
        "invvar": "inverse-variance (*_oow_*)",
        "dq": "data-quality (*_ood_*)",
    }
    for key, sibling in out.items():
        if not sibling.is_file():
            raise InputError(
                f"{path}: DECam CP exposure lacks its {what[key]} file "
                f"{sibling.name} (looked in {sibling.parent})"
            )
    return out


def _cp_hdu(hdul: fits.HDUList, ccdname: str | None, path: Path) -> Any:
    images = [h for h in hdul if h.is_image and h.header.get("NAXIS") == 2]
    names = [h.name for h in images]
    if ccdname is not None:
        for hdu in images:
            if hdu.name.strip().upper() == ccdname.strip().upper():
                return hdu
        raise InputError(f"{path}: no CCD extension {ccdname!r} (has {names})")
    if len(images) != 1:
        raise InputError(
            f"{path}: {len(images)} CCD image extensions ({names}); pass ccdname= to choose one"
            if images
            else f"{path}: no 2-D image extension in this file"
        )
    return images[0]


def _cp_plane(
    path: Path, extname: str, dtype: type, shape: tuple[int, int], image_path: Path
) -> np.ndarray:
    with _open_fits(path) as hdul:
        hdu = _cp_hdu(hdul, extname or None, path)
        data = _plane(hdu, path, extname or "image", dtype)
    if data.shape != shape:
        raise InputError(
            f"{path}: shape {data.shape} differs from the image {shape} of {image_path}"
        )
    return data


def _read_decam_cp(
    path: Path,
    *,
    ccdname: str | None,
    psfex: str | os.PathLike[str] | None,
    photo_calib: float | None,
) -> Exposure:
    files = _cp_siblings(path)
    with _open_fits(files["image"]) as hdul:
        hdu = _cp_hdu(hdul, ccdname, files["image"])
        image = _plane(hdu, files["image"], hdu.name or "image", np.float32)
        header, primary = hdu.header.copy(), hdul[0].header.copy()
    extname = str(header.get("EXTNAME", "")).strip()
    ivar = _cp_plane(files["invvar"], extname, np.float32, image.shape, files["image"])
    dq = _cp_plane(files["dq"], extname, np.int32, image.shape, files["image"])
    planes = mask_planes()
    mask = decam_dq_to_mask(dq, planes, codes=_cp_uses_codes(primary.get("PLVER")))
    good = np.isfinite(ivar) & (ivar > 0) & np.isfinite(image)
    variance = np.full(image.shape, np.nan, np.float32)
    variance[good] = 1.0 / ivar[good].astype(np.float64)
    # The CP zeroes ivar on every DQ-flagged pixel. A flagged pixel keeps its own planes (SAT,
    # BAD, CR, ...) with a finite placeholder variance (the median good variance), as an LSST
    # calexp would, so the flag survives warping (copyGoodPixels drops NO_DATA) and no NaN
    # spreads through the warping kernel; pixels with no flag and no data are NO_DATA.
    flagged = ~good & (mask != 0) & np.isfinite(image)
    fill = float(np.median(variance[good])) if good.any() else 1.0
    variance[flagged] = fill
    mask[~good & ~flagged] |= np.int32(bitmask(planes, ["NO_DATA"]))
    fields, meta = _cp_metadata(primary, header, files["image"], photo_calib)
    wcs = _wcs_from_header(header, files["image"], "image")
    psf = _cp_psf(files["image"], psfex, meta, image.shape)
    if not math.isfinite(fields["psf_fwhm"]) and "psfex_fwhm" in meta:
        fields["psf_fwhm"] = meta["psfex_fwhm"]
    return Exposure(
        image,
        mask,
        variance,
        wcs,
        planes,
        photo_calib=meta["photo_calib"],
        psf=psf,
        metadata={k: v for k, v in meta.items() if k != "photo_calib"},
        path=files["image"],
        **fields,
    )


def _cp_metadata(
    primary: fits.Header, header: fits.Header, path: Path, photo_calib: float | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    heads = (header, primary)
    band = str(_card("BAND", *heads) or _card("FILTER", *heads, default="")).split(" ")[0]
    ccdname = str(_card("EXTNAME", header) or _card("DETPOS", *heads, default=""))
    fields = {
        "visit": _int_card(("EXPNUM",), heads),
        "detector": _int_card(("CCDNUM",), heads),
        "band": band,
        "mjd": _float(_card("MJD-OBS", *heads)),
        "exptime": _float(_card("EXPTIME", *heads)),
        "airmass": _float(_card("AIRMASS", *heads)),
        "parallactic_angle": math.nan,
        "psf_fwhm": _float(
            _card(
                "FWHM", *heads, default=_card("SEEINGP1", *heads, default=_card("SEEINGP", *heads))
            )
        ),
    }
    gain = _cp_gain(heads)
    if photo_calib is None:
        zp, source = _cp_zero_point(heads, band, gain, fields, path)
    else:
        zp, source = AB_ZERO_NJY + 2.5 * math.log10(photo_calib), "argument"
    meta: dict[str, Any] = {
        "layout": "decam-cp",
        "ccdname": ccdname,
        "expnum": fields["visit"],
        "filter": str(_card("FILTER", *heads, default="")),
        "plver": str(_card("PLVER", *heads, default="")),
        "wcscal": str(_card("WCSCAL", *heads, default="")),
        "zero_point": zp,
        "zero_point_source": source,
        "photo_calib": nJy_per_count(zp),
        "gain": gain,
        "saturation": _float(_card("SATURATE", *heads)),
        "sky_counts": _float(_card("AVSKY", *heads)),
        "sky_sigma": _float(_card("AVSIG", *heads)),
        "background_subtracted": False,
    }
    return fields, {k: v for k, v in meta.items() if not (isinstance(v, float) and math.isnan(v))}


def _cp_gain(heads: tuple[fits.Header, ...]) -> float:
    """e-/ADU: mean of GAINA and GAINB (legacyzpts ``get_gain``), else ARAWGAIN or GAIN."""
    amps = [_float(_card(k, *heads)) for k in ("GAINA", "GAINB")]
    if all(math.isfinite(g) and g > 0 for g in amps):
        return float(np.mean(amps))
    return _float(_card("ARAWGAIN", *heads, default=_card("GAIN", *heads)))


def _cp_zero_point(
    heads: tuple[fits.Header, ...], band: str, gain: float, fields: Mapping[str, Any], path: Path
) -> tuple[float, str]:
    """AB zero point of one image count, and where it came from (see read_exposure)."""
    exptime = fields["exptime"]
    magzero = _card("MAGZERO", *heads)
    if magzero is not None:
        return float(magzero), "MAGZERO"
    for key in ("CCDZPT", "MAGZPT"):
        value = _card(key, *heads)
        if value is not None:
            _require(exptime > 0, path, f"{key} is per second but EXPTIME is {exptime}")
            return float(value) + 2.5 * math.log10(exptime), f"{key} + 2.5 log10(EXPTIME)"
    _require(
        band in DECAM_NOMINAL_ZP,
        path,
        f"no zero-point keyword and no nominal DECam zero point for band {band!r}; pass "
        "photo_calib=",
    )
    _require(
        math.isfinite(gain) and gain > 0 and exptime > 0,
        path,
        f"the nominal zero point needs GAINA/GAINB and EXPTIME (gain {gain}, EXPTIME "
        f"{exptime}); pass photo_calib=",
    )
    zp0, k_ext = DECAM_NOMINAL_ZP[band]
    airmass = fields["airmass"] if math.isfinite(fields["airmass"]) else 1.0
    zp = zp0 - 2.5 * math.log10(gain) - k_ext * (airmass - 1.0) + 2.5 * math.log10(exptime)
    return zp, "nominal DECam (legacyzpts zp0, gain, airmass, EXPTIME)"


def _require(ok: bool, path: Path, message: str) -> None:
    if not ok:
        raise InputError(f"{path}: {message}")


# -- PSFEx ---------------------------------------------------------------------------------------


def _psfex_candidates(image_path: Path, ccdname: str) -> list[Path]:
    parts = image_path.absolute().parts
    if "images" not in parts:
        return []
    i = len(parts) - 1 - parts[::-1].index("images")
    root, rel = Path(*parts[:i]) / "calib", Path(*parts[i + 1 : -1])
    base = image_path.name.split(".")[0]
    return [
        root / "psfex" / rel / f"{base}-psfex.fits",
        root / "psfex-single" / rel / base / f"{base}-{ccdname}-psfex.fits",
    ]


def _cp_psf(
    image_path: Path,
    psfex: str | os.PathLike[str] | None,
    meta: dict[str, Any],
    shape: tuple[int, int],
) -> np.ndarray | None:
    if psfex is not None:
        found: Path | None = Path(psfex)
        if not found.is_file():  # type: ignore[union-attr]
            raise InputError(f"{image_path}: PSFEx file {found} does not exist")
    else:
        found = next(
            (p for p in _psfex_candidates(image_path, meta["ccdname"]) if p.is_file()), None
        )
    if found is None:
        return None
    ny, nx = shape
    psf, fwhm = psfex_image(
        found,
        x=(nx - 1) / 2 + 1,
        y=(ny - 1) / 2 + 1,
        ccdname=meta["ccdname"],
        expnum=meta["expnum"],
    )
    meta["psfex_path"] = str(found)
    if math.isfinite(fwhm):
        meta["psfex_fwhm"] = fwhm
    return psf


def psfex_image(
    path: str | os.PathLike[str],
    *,
    x: float,
    y: float,
    ccdname: str | None = None,
    expnum: int | None = None,
) -> tuple[np.ndarray, float]:
    """Evaluate a PSFEx model at image position ``(x, y)`` (PSFEx's 1-based X_IMAGE, Y_IMAGE).

    Reads plain PSFEx files (``PSF_MASK`` column, ``POL*`` keywords) and legacypipe's merged
    tables (one row per CCD, lower-case columns; the row is chosen by ``ccdname`` and
    ``expnum``). The polynomial basis is PSFEx's: ``x**j * y**i`` for ``i`` in ``0..deg``,
    ``j`` in ``0..deg - i`` with ``x = (X - POLZERO1) / POLSCAL1``. A model sampled at
    ``PSF_SAMP != 1`` image pixels is resampled (cubic spline) onto native pixels.

    Returns
    -------
    psf : ndarray
        Odd-sized, centred, unit-sum PSF image on native pixels.
    fwhm : float
        PSFEx's ``PSF_FWHM`` (pixels), NaN if absent.
    """
    path = Path(path)
    with _open_fits(path) as hdul:
        if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
            raise InputError(f"{path}: not a PSFEx file (no binary table in HDU 1)")
        table, header = hdul[1].data, hdul[1].header
        get = _psfex_getter(table, header, path, ccdname, expnum)
        basis = np.asarray(get("psf_mask"), np.float64)
        basis = basis.reshape((-1, *basis.shape[-2:]))
        deg = int(get("poldeg1", 0))
        dx = (x - float(get("polzero1", 0.0))) / float(get("polscal1", 1.0))
        dy = (y - float(get("polzero2", 0.0))) / float(get("polscal2", 1.0))
        samp, fwhm = float(get("psf_samp", 1.0)), _float(get("psf_fwhm", math.nan))
    terms = np.array([dx**j * dy**i for i in range(deg + 1) for j in range(deg + 1 - i)])
    if len(terms) != len(basis):
        raise InputError(
            f"{path}: PSFEx basis has {len(basis)} components, degree {deg} needs {len(terms)}"
        )
    psf = np.tensordot(terms, basis, axes=1)
    if samp <= 0:
        raise InputError(f"{path}: PSFEx PSF_SAMP = {samp} (a failed PSF model)")
    if abs(samp - 1.0) > 1e-6:
        psf = _resample_psf(psf, samp)
    total = psf.sum()
    if not (np.isfinite(total) and total > 0) or psf.shape[0] % 2 == 0:
        raise InputError(
            f"{path}: PSFEx model gives an unusable PSF (sum {total}, shape {psf.shape})"
        )
    return psf / total, fwhm


def _psfex_getter(
    table: Any, header: fits.Header, path: Path, ccdname: str | None, expnum: int | None
) -> Any:
    columns = {c.lower(): c for c in table.columns.names}
    rows = np.arange(len(table))
    if "ccdname" in columns and ccdname is not None:
        names = np.char.strip(np.asarray(table[columns["ccdname"]]).astype(str))
        rows = rows[names == ccdname.strip()]
        if "expnum" in columns and expnum:
            rows = rows[np.asarray(table[columns["expnum"]])[rows] == expnum]
    if len(rows) != 1:
        raise InputError(f"{path}: {len(rows)} PSFEx rows for CCD {ccdname!r} expnum {expnum}")
    row = table[int(rows[0])]
    for key in ("polname1", "polname2"):
        name = row[columns[key]] if key in columns else header.get(key.upper(), "")
        if str(name).strip() not in ("", "X_IMAGE", "Y_IMAGE"):
            raise InputError(
                f"{path}: PSFEx model depends on {name!r}; only X_IMAGE, Y_IMAGE are supported"
            )

    def get(key: str, default: Any = None) -> Any:
        if key in columns:
            return row[columns[key]]
        value = header.get(key.upper(), default)
        if value is None:
            raise InputError(f"{path}: PSFEx model lacks {key.upper()}")
        return value

    return get


def _resample_psf(psf: np.ndarray, samp: float) -> np.ndarray:
    """Resample a PSFEx model (pixel = ``samp`` image pixels, centre ``n // 2``) onto native
    pixels, keeping an odd size centred on the model centre."""
    n = psf.shape[0]
    centre = n // 2
    half = math.floor(centre * samp)
    coords = centre + np.arange(-half, half + 1) / samp
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    return ndimage.map_coordinates(psf, [yy, xx], order=3, mode="constant", cval=0.0)


# -- writing ---------------------------------------------------------------------------------------


def write_exposure(exposure: Exposure, path: str | os.PathLike[str]) -> Path:
    """Write an :class:`~coaddx.exposure.Exposure` in the coaddx calexp layout, atomically.

    ``photo_calib`` is written as ``PHOTCALIB`` unless it is 1.0 (then the image is in nJy and
    the keyword is left out, per design.md). NaN metadata are left out (FITS headers cannot
    hold NaN) and read back as NaN. ``exposure.metadata`` entries that are FITS scalars are
    kept (lower-case names round-trip; known names use their :data:`CALEXP_KEYWORDS`);
    others, and ``layout``, are dropped.
    """
    meta: dict[str, Any] = {
        "visit": exposure.visit,
        "detector": exposure.detector,
        "band": exposure.band,
    }
    for name in _FIELDS[3:]:
        value = getattr(exposure, name)
        if math.isfinite(value):
            meta[name] = value
    if exposure.photo_calib != 1.0:
        meta["photo_calib"] = exposure.photo_calib
    for key, value in exposure.metadata.items():
        if key in meta or key in ("layout", "photo_calib") or key in _FIELDS:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, str | int | float | bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if _card_fits(key, value):
            meta[key] = value
    return write_calexp(
        path,
        exposure.image,
        exposure.mask,
        exposure.variance,
        exposure.wcs,
        mask_planes=exposure.mask_planes,
        metadata=meta,
        psf=exposure.psf,
    )


def _card_fits(key: str, value: Any) -> bool:
    keyword = CALEXP_KEYWORDS.get(key, _HIERARCH + key.upper())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            card = fits.Card(keyword if len(keyword) <= 8 else _hierarch(keyword), value)
            return len(card.image) <= 80
    except (ValueError, TypeError, Warning):
        return False
