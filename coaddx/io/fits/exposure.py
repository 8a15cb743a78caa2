"""Exposure ("calexp") FITS reading and writing (design.md, "Input exposure FITS").

Layout written by :func:`write_calexp` and :func:`write_exposure`::

    HDU 0 (primary)   VISIT, DETECTOR, BAND, MJD-OBS, EXPTIME, AIRMASS, PARANGLE, PHOTCALIB,
                      PSFFWHM, BORE-ALT, ROTANGLE, AIRTEMP, AIRPRESS, HUMIDITY (+ MAGZERO,
                      SKYLEVEL, GAIN, RDNOISE, SATURATE, HIERARCH extras)
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
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from coaddx.errors import InputError
from coaddx.io.fits.decam import (
    CP_DQ_BITS,
    CP_DQ_CODES,
    CP_KIND,
    DECAM_NOMINAL_ZP,
    cp_hdu,
    cp_siblings,
    decam_dq_to_mask,
    psfex_image,
    read_decam_cp,
)
from coaddx.io.fits.util import (
    check_wcs_values,
    header_card,
    header_float,
    header_int,
    image_shape,
    int_card,
    lsst_observing,
    open_fits,
    psf_to_write,
    read_layer,
    wcs_from_header,
)
from coaddx.model.exposure import AB_ZERO_NJY, Exposure
from coaddx.model.masks import (
    check_mask_planes,
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
    "elevation": "BORE-ALT",
    "rotation_angle": "ROTANGLE",
    "temperature": "AIRTEMP",
    "pressure": "AIRPRESS",
    "humidity": "HUMIDITY",
    "photo_calib": "PHOTCALIB",
    "psf_fwhm": "PSFFWHM",
    "zero_point": "MAGZERO",
    "sky_counts": "SKYLEVEL",
    "gain": "GAIN",
    "read_noise": "RDNOISE",
    "saturation": "SATURATE",
}
#: Keywords also read (never written); a :data:`CALEXP_KEYWORDS` one wins over its alias.
CALEXP_READ_ALIASES: dict[str, str] = {
    "BORE-ROTANG": "rotation_angle",
    "ELEVATION": "elevation",
    "ALTITUDE": "elevation",
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
            value = header_int(value, path, f"metadata {key!r}")
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
    check_wcs_values(wcs.celestial, path, "WCS to write")
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
        hdus.append(fits.ImageHDU(psf_to_write(psf, path), name="PSF"))
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
    aliased: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        if key in keyword_to_name:
            out[keyword_to_name[key]] = card.value
        elif key in CALEXP_READ_ALIASES:
            aliased.setdefault(CALEXP_READ_ALIASES[key], card.value)
        elif key.startswith("COADDX "):
            out[key[len("COADDX ") :].lower()] = card.value
    return {**aliased, **out}


def _calexp_parts(hdul: fits.HDUList, path: Path) -> dict[str, Any]:
    names = [h.name for h in hdul]
    missing = [n for n in ("IMAGE", "MASK", "VARIANCE") if n not in names]
    if missing:
        raise InputError(f"{path}: not a coaddx calexp, missing HDU(s) {missing}")
    return {
        "image": read_layer(hdul["IMAGE"], path, "IMAGE", np.float32),
        "mask": read_layer(hdul["MASK"], path, "MASK", np.int32),
        "variance": read_layer(hdul["VARIANCE"], path, "VARIANCE", np.float32),
        "wcs": wcs_from_header(hdul["IMAGE"].header, path, "IMAGE"),
        "mask_planes": mask_planes_from_header(hdul["MASK"].header),
        "metadata": _metadata_from_header(hdul[0].header),
        "psf": read_layer(hdul["PSF"], path, "PSF", np.float32) if "PSF" in names else None,
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
    with open_fits(path) as hdul:
        return _calexp_parts(hdul, path)


# -- dispatch ----------------------------------------------------------------------------------

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
    if CP_KIND.search(path.name):
        exp = read_decam_cp(path, ccdname=ccdname, psfex=psfex, photo_calib=photo_calib)
    else:
        with open_fits(path) as hdul:
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
    if CP_KIND.search(path.name):
        image_path = cp_siblings(path)["image"]
        with open_fits(image_path) as hdul:
            header = cp_hdu(hdul, ccdname, image_path).header
            return wcs_from_header(header, image_path, "image"), image_shape(
                header, image_path, "image"
            )
    with open_fits(path) as hdul:
        layout = _detect_layout(hdul, path)
        hdu = hdul["IMAGE"] if layout == "coaddx" else hdul[1]
        return wcs_from_header(hdu.header, path, "IMAGE"), image_shape(hdu.header, path, "IMAGE")


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
    "elevation",
    "rotation_angle",
    "temperature",
    "pressure",
    "humidity",
)


def _read_coaddx(hdul: fits.HDUList, path: Path, *, photo_calib: float | None) -> Exposure:
    parts = _calexp_parts(hdul, path)
    meta = dict(parts["metadata"])
    fields = {k: meta.pop(k) for k in _FIELDS if k in meta}
    for key in _INT_KEYS:  # VISIT = 1000.7 is refused, never truncated
        fields[key] = header_int(fields[key], path, CALEXP_KEYWORDS[key])
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
    band = (
        header_card("BAND", *heads) or str(header_card("FILTER", *heads, default="")).split(" ")[0]
    )
    fields: dict[str, Any] = {
        "visit": int_card(("VISIT", "EXPID", "EXPNUM"), heads, path),
        "detector": int_card(("DETECTOR", "CCDNUM", "DET-ID"), heads, path),
        "band": band,
        "mjd": header_float(header_card("MJD-OBS", *heads, default=header_card("MJD-AVG", *heads))),
        "exptime": header_float(header_card("EXPTIME", *heads)),
        "airmass": header_float(
            header_card("AIRMASS", *heads, default=header_card("BORE-AIRMASS", *heads))
        ),
        "parallactic_angle": header_float(header_card("PARANGLE", *heads)),
        **lsst_observing(heads),
        "psf_fwhm": header_float(
            header_card("PSFFWHM", *heads, default=header_card("FWHM", *heads))
        ),
    }
    meta = {"layout": "lsst", "photo_calib_source": source}
    return Exposure(
        read_layer(hdul[1], path, "IMAGE", np.float32),
        read_layer(hdul[2], path, "MASK", np.int32),
        read_layer(hdul[3], path, "VARIANCE", np.float32),
        wcs_from_header(image_header, path, "IMAGE"),
        planes,
        photo_calib=photo_calib,
        metadata=meta,
        path=path,
        **fields,
    )


def _lsst_photo_calib(
    primary: Mapping[str, Any], image_header: Mapping[str, Any], path: Path
) -> tuple[float, str]:
    heads = (primary, image_header)
    value = header_card("PHOTCALIB", *heads)
    if value is not None:
        return float(value), "PHOTCALIB"
    fluxmag0 = header_card("FLUXMAG0", *heads)
    if fluxmag0 is not None:
        # FLUXMAG0 counts are a 0 mag (AB) source: 10**(0.4 * 31.4) nJy.
        return 10.0 ** (0.4 * AB_ZERO_NJY) / float(fluxmag0), "FLUXMAG0"
    unit = str(header_card("BUNIT", image_header, primary, default="")).lower()
    if unit and unit not in _NJY_UNITS:
        raise InputError(
            f"{path}: IMAGE is in BUNIT = {unit!r} but there is no PHOTCALIB or "
            "FLUXMAG0 keyword to calibrate it; pass photo_calib="
        )
    return 1.0, "BUNIT nJy" if unit else "assumed nJy (no BUNIT)"


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


def exposure_footprint(
    path: str | os.PathLike[str], *, ccdname: str | None = None
) -> tuple[WCS, tuple[int, int]]:
    """``(wcs, (ny, nx))`` of an exposure file, read from its headers only (no pixels).

    Accepts every layout :func:`coaddx.io.fits.read_exposure` reads (``ccdname`` picks the
    CCD of a multi-CCD DECam CP file); combine with :func:`sky_footprint` for the sky outline.
    Raises :class:`InputError` like the reader.
    """
    return read_exposure_geometry(path, ccdname=ccdname)
