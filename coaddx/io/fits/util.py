"""FITS helpers shared by the exposure readers of :mod:`coaddx.io.fits` and
:mod:`coaddx.io.decam`: opening, planes, WCS, header cards."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyError
from astropy.wcs import WCS, FITSFixedWarning

from coaddx.errors import InputError

__all__ = [
    "check_wcs_values",
    "first_float",
    "header_card",
    "header_float",
    "header_int",
    "image_shape",
    "int_card",
    "lsst_observing",
    "open_fits",
    "psf_to_write",
    "read_layer",
    "wcs_from_header",
]


def open_fits(path: Path) -> fits.HDUList:
    """Open read-only (inputs are never modified); a missing or non-FITS file is an InputError."""
    if not path.is_file():
        raise InputError(f"no exposure file at {path}")
    try:
        return fits.open(path, memmap=False, mode="readonly")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable FITS file: {exc}") from exc


def read_layer(hdu: Any, path: Path, what: str, dtype: type) -> np.ndarray:
    try:
        data = hdu.data
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: cannot read the {what} HDU: {exc}") from exc
    if data is None or np.ndim(data) != 2:
        shape = None if data is None else np.shape(data)
        raise InputError(f"{path}: the {what} HDU holds no 2-D image (shape {shape})")
    return np.asarray(data, dtype=np.dtype(dtype).newbyteorder("="))


#: Keywords of the WCS cards (wcslib's, SIP's and TPV's) whose values must parse.
_WCS_CARD = re.compile(r"(CRVAL|CRPIX|CDELT|CTYPE|CUNIT|CD\d_\d|PC\d_\d|PV\d_\d|A_|B_|AP_|BP_)")


def wcs_from_header(header: fits.Header, path: Path, what: str) -> WCS:
    """The celestial WCS of an image header (TAN, TAN-SIP, TPV, ...); InputError otherwise.

    A WCS card whose value does not parse (``CRVAL1 = NAN``) is refused: astropy would
    "fix" it by dropping the value, leaving a WCS at CRVAL 0 that misses every patch.
    """
    for card in header.cards:
        if _WCS_CARD.match(card.keyword):
            try:
                card.value  # noqa: B018 - parsing the value is the check
            except (VerifyError, ValueError) as exc:
                raw = card.image[10:].split("/")[0].strip()
                raise InputError(
                    f"{path}: unreadable WCS in the {what} header: {card.keyword} = {raw} "
                    "is not a value"
                ) from exc
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
    return check_wcs_values(wcs.celestial, path, f"{what} header")


def header_card(key: str, *headers: Mapping[str, Any], default: Any = None) -> Any:
    """The first non-blank value of ``key`` in ``headers`` (extension before primary)."""
    for header in headers:
        value = header.get(key)
        if isinstance(value, str):
            value = value.strip()
        if value not in (None, ""):
            return value
    return default


def header_float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def image_shape(header: Mapping[str, Any], path: Path, what: str) -> tuple[int, int]:
    if header.get("NAXIS") != 2:
        raise InputError(
            f"{path}: the {what} HDU is not a 2-D image (NAXIS = {header.get('NAXIS')})"
        )
    return int(header["NAXIS2"]), int(header["NAXIS1"])


def header_int(value: Any, path: Path, keyword: str) -> int:
    """An integer header value (an int, an integral float such as ``1000.0`` or a string of
    digits); anything else (``'abc'``, ``1000.7``, a bool) is an InputError naming the file and
    the keyword, never truncated."""
    if isinstance(value, bool | np.bool_):
        raise InputError(f"{path}: {keyword} = {value!r} is not an integer")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            return int(text)
    raise InputError(f"{path}: {keyword} = {value!r} is not an integer")


def int_card(keys: tuple[str, ...], headers: tuple[Mapping[str, Any], ...], path: Path) -> int:
    """The first of ``keys`` present in ``headers`` as an integer (:func:`header_int`); 0 when
    none is present."""
    for key in keys:
        value = header_card(key, *headers)
        if value is not None:
            return header_int(value, path, key)
    return 0


def check_wcs_values(wcs: WCS, path: Path | str, what: str) -> WCS:
    """``wcs`` unless a CRVAL, CRPIX, CD / PC / CDELT or SIP / PV value is not finite: then an
    InputError "unreadable WCS in the <what>" naming the file (a NaN WCS maps no pixel
    anywhere, so the exposure would otherwise look like one that misses the patch)."""
    w = wcs.wcs
    values = {"CRVAL": w.crval, "CRPIX": w.crpix}
    if w.has_cd():
        values["CD"] = w.cd
    else:
        values["PC"], values["CDELT"] = w.pc, w.cdelt
    if w.get_pv():
        values["PV"] = np.array([v for *_, v in w.get_pv()], dtype=float)
    if wcs.sip is not None:
        values["SIP"] = np.concatenate([np.ravel(wcs.sip.a), np.ravel(wcs.sip.b)])
    bad = [k for k, v in values.items() if not np.isfinite(np.asarray(v, dtype=float)).all()]
    if bad:
        raise InputError(
            f"{path}: unreadable WCS in the {what}: non-finite {', '.join(bad)} "
            f"(CRVAL {[float(v) for v in w.crval]})"
        )
    return wcs


def first_float(heads: tuple[Any, ...], *keys: str) -> float:
    """The first finite float among ``keys`` in ``heads`` (NaN if none)."""
    for key in keys:
        value = header_float(header_card(key, *heads))
        if math.isfinite(value):
            return value
    return math.nan


def lsst_observing(heads: tuple[Any, ...]) -> dict[str, float]:
    """The DCR observing fields from LSST's afw VisitInfo keywords (BORE-ALT, BORE-ROTANG,
    AIRTEMP, AIRPRESS, HUMIDITY; also ELEVATION / ALTITUDE and ROTANGLE), NaN where absent."""
    return {
        "elevation": first_float(heads, "BORE-ALT", "ELEVATION", "ALTITUDE"),
        "rotation_angle": first_float(heads, "BORE-ROTANG", "ROTANGLE"),
        "temperature": first_float(heads, "AIRTEMP"),
        "pressure": first_float(heads, "AIRPRESS"),
        "humidity": first_float(heads, "HUMIDITY"),
    }


def psf_to_write(psf: np.ndarray, path: Path) -> np.ndarray:
    """A PSF image to store: 2-D with odd sides and a finite positive sum, normalised, float32."""
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 2 or psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise InputError(f"{path}: the PSF image must be 2-D with odd sides, got {psf.shape}")
    total = psf.sum()
    if not np.isfinite(total) or total <= 0:
        raise InputError(f"{path}: the PSF image must have a finite positive sum, got {total}")
    return (psf / total).astype(np.float32)
