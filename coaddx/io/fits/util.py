"""FITS helpers shared by the exposure readers of :mod:`coaddx.io.fits` and
:mod:`coaddx.io.decam`: opening, planes, WCS, header cards."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from coaddx.errors import InputError

__all__ = [
    "first_float",
    "header_card",
    "header_float",
    "image_shape",
    "int_card",
    "lsst_observing",
    "open_fits",
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


def wcs_from_header(header: fits.Header, path: Path, what: str) -> WCS:
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


def int_card(keys: tuple[str, ...], headers: tuple[Mapping[str, Any], ...]) -> int:
    for key in keys:
        value = header_card(key, *headers)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
    return 0


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
