"""DECam Community Pipeline InstCal exposures (``*_ooi_*`` image, ``*_oow_*`` inverse
variance, ``*_ood_*`` data quality) and their PSFEx PSFs, read into a
:class:`coaddx.exposure.Exposure` for :func:`coaddx.io.fits.read_exposure`."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from scipy import ndimage

from coaddx.errors import InputError
from coaddx.io.fits.util import (
    header_card,
    header_float,
    int_card,
    open_fits,
    read_layer,
    wcs_from_header,
)
from coaddx.model.exposure import AB_ZERO_NJY, Exposure, nJy_per_count
from coaddx.model.masks import (
    bitmask,
    mask_planes,
)

__all__ = ["CP_DQ_BITS", "CP_DQ_CODES", "DECAM_NOMINAL_ZP", "decam_dq_to_mask", "psfex_image"]

CP_KIND = re.compile(r"_(ooi|oki|oow|ood)_")


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


def cp_siblings(path: Path) -> dict[str, Path]:
    """The image, inverse-variance and DQ files of a CP exposure, from any one of them."""
    kinds = list(CP_KIND.finditer(path.name))
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


def cp_hdu(hdul: fits.HDUList, ccdname: str | None, path: Path) -> Any:
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


def _cp_layer(
    path: Path, extname: str, dtype: type, shape: tuple[int, int], image_path: Path
) -> np.ndarray:
    with open_fits(path) as hdul:
        hdu = cp_hdu(hdul, extname or None, path)
        data = read_layer(hdu, path, extname or "image", dtype)
    if data.shape != shape:
        raise InputError(
            f"{path}: shape {data.shape} differs from the image {shape} of {image_path}"
        )
    return data


def read_decam_cp(
    path: Path,
    *,
    ccdname: str | None,
    psfex: str | os.PathLike[str] | None,
    photo_calib: float | None,
) -> Exposure:
    files = cp_siblings(path)
    with open_fits(files["image"]) as hdul:
        hdu = cp_hdu(hdul, ccdname, files["image"])
        image = read_layer(hdu, files["image"], hdu.name or "image", np.float32)
        header, primary = hdu.header.copy(), hdul[0].header.copy()
    extname = str(header.get("EXTNAME", "")).strip()
    ivar = _cp_layer(files["invvar"], extname, np.float32, image.shape, files["image"])
    dq = _cp_layer(files["dq"], extname, np.int32, image.shape, files["image"])
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
    wcs = wcs_from_header(header, files["image"], "image")
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
    band = str(header_card("BAND", *heads) or header_card("FILTER", *heads, default="")).split(" ")[
        0
    ]
    ccdname = str(header_card("EXTNAME", header) or header_card("DETPOS", *heads, default=""))
    fields = {
        "visit": int_card(("EXPNUM",), heads, path),
        "detector": int_card(("CCDNUM",), heads, path),
        "band": band,
        "mjd": header_float(header_card("MJD-OBS", *heads)),
        "exptime": header_float(header_card("EXPTIME", *heads)),
        "airmass": header_float(header_card("AIRMASS", *heads)),
        **_decam_observing(heads),
        "psf_fwhm": header_float(
            header_card(
                "FWHM",
                *heads,
                default=header_card("SEEINGP1", *heads, default=header_card("SEEINGP", *heads)),
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
        "filter": str(header_card("FILTER", *heads, default="")),
        "plver": str(header_card("PLVER", *heads, default="")),
        "wcscal": str(header_card("WCSCAL", *heads, default="")),
        "zero_point": zp,
        "zero_point_source": source,
        "photo_calib": nJy_per_count(zp),
        "gain": gain,
        "saturation": header_float(header_card("SATURATE", *heads)),
        "sky_counts": header_float(header_card("AVSKY", *heads)),
        "sky_sigma": header_float(header_card("AVSIG", *heads)),
        "background_subtracted": False,
    }
    return fields, {k: v for k, v in meta.items() if not (isinstance(v, float) and math.isnan(v))}


def _sexagesimal(value: Any) -> float:
    """'-02:15:10.880' -> -2.25302 (the unit of the first field); a number as it is."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value or "").strip()
    if not text:
        return math.nan
    sign = -1.0 if text.startswith("-") else 1.0
    try:
        parts = [abs(float(p)) for p in text.lstrip("+-").split(":")]
    except ValueError:
        return math.nan
    return sign * sum(p / 60.0**i for i, p in enumerate(parts))


#: DECam CTIO latitude (degrees), when OBS-LAT is absent.
CTIO_LATITUDE = -30.16606
#: Pa per pressure unit named in a DECam header comment. DECam writes ``PRESSURE`` in hPa
#: (mbar) under a ``[Torr]`` comment: 777 "Torr" would be 1036 hPa, above sea-level pressure,
#: while CTIO at 2215 m has about 776 hPa; LSST's astro_metadata_translator reads it as hPa
#: too. So Torr / mmHg, and no unit at all, mean hPa here.
DECAM_PRESSURE_UNITS_PA = {
    "torr": 100.0,
    "mmhg": 100.0,
    "mbar": 100.0,
    "millibar": 100.0,
    "hpa": 100.0,
    "kpa": 1000.0,
    "pa": 1.0,
}


def _pressure_pa(heads: tuple[Any, ...]) -> float:
    """Barometric pressure in Pa from ``PRESSURE`` or ``OUTPRESS`` in the unit its comment
    names (:data:`DECAM_PRESSURE_UNITS_PA`; hPa when it names none); NaN for another unit."""
    for key in ("PRESSURE", "OUTPRESS"):
        for header in heads:
            value = header_float(header.get(key))
            if not math.isfinite(value):
                continue
            comments = getattr(header, "comments", None)
            comment = str(comments[key]) if comments is not None else ""
            match = re.match(r"\s*\[([^\]]*)\]", comment)
            words = [match.group(1)] if match else re.findall(r"[A-Za-z]+", comment)
            for word in words:
                factor = DECAM_PRESSURE_UNITS_PA.get(word.strip().lower())
                if factor is not None:
                    return value * factor
            return math.nan if match else value * 100.0
    return math.nan


def _parallactic_angle(heads: tuple[Any, ...]) -> float:
    """``PARANGLE`` when the header has it, else q = atan2(sin H, tan(lat) cos(dec) -
    sin(dec) cos H) in degrees from HA (hours), DEC and OBS-LAT (CTIO when absent)."""
    stored = header_float(header_card("PARANGLE", *heads))
    if math.isfinite(stored):
        return stored
    hour = _sexagesimal(header_card("HA", *heads))
    dec = _sexagesimal(header_card("DEC", *heads, default=header_card("TELDEC", *heads)))
    lat = header_float(header_card("OBS-LAT", *heads, default=CTIO_LATITUDE))
    if not all(math.isfinite(v) for v in (hour, dec, lat)):
        return math.nan
    h, d, phi = math.radians(15.0 * hour), math.radians(dec), math.radians(lat)
    return math.degrees(
        math.atan2(math.sin(h), math.tan(phi) * math.cos(d) - math.sin(d) * math.cos(h))
    )


def _decam_observing(heads: tuple[Any, ...]) -> dict[str, float]:
    """DCR observing fields of a DECam CP header: elevation 90 - ZD; the parallactic angle
    (:func:`_parallactic_angle`); OUTTEMP (C); PRESSURE or OUTPRESS (:func:`_pressure_pa`);
    HUMIDITY or OUTHUM (%). NaN for what the header lacks."""
    zd = header_float(header_card("ZD", *heads))
    return {
        "parallactic_angle": _parallactic_angle(heads),
        "elevation": 90.0 - zd if math.isfinite(zd) else math.nan,
        "temperature": header_float(header_card("OUTTEMP", *heads)),
        "pressure": _pressure_pa(heads),
        "humidity": header_float(
            header_card("HUMIDITY", *heads, default=header_card("OUTHUM", *heads))
        ),
    }


def _cp_gain(heads: tuple[fits.Header, ...]) -> float:
    """e-/ADU: mean of GAINA and GAINB (legacyzpts ``get_gain``), else ARAWGAIN or GAIN."""
    amps = [header_float(header_card(k, *heads)) for k in ("GAINA", "GAINB")]
    if all(math.isfinite(g) and g > 0 for g in amps):
        return float(np.mean(amps))
    return header_float(header_card("ARAWGAIN", *heads, default=header_card("GAIN", *heads)))


def _cp_zero_point(
    heads: tuple[fits.Header, ...], band: str, gain: float, fields: Mapping[str, Any], path: Path
) -> tuple[float, str]:
    """AB zero point of one image count, and where it came from (see read_exposure)."""
    exptime = fields["exptime"]
    magzero = header_card("MAGZERO", *heads)
    if magzero is not None:
        return float(magzero), "MAGZERO"
    for key in ("CCDZPT", "MAGZPT"):
        value = header_card(key, *heads)
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
    with open_fits(path) as hdul:
        if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
            raise InputError(f"{path}: not a PSFEx file (no binary table in HDU 1)")
        table, header = hdul[1].data, hdul[1].header
        get = _psfex_getter(table, header, path, ccdname, expnum)
        basis = np.asarray(get("psf_mask"), np.float64)
        basis = basis.reshape((-1, *basis.shape[-2:]))
        deg = int(get("poldeg1", 0))
        dx = (x - float(get("polzero1", 0.0))) / float(get("polscal1", 1.0))
        dy = (y - float(get("polzero2", 0.0))) / float(get("polscal2", 1.0))
        samp, fwhm = float(get("psf_samp", 1.0)), header_float(get("psf_fwhm", math.nan))
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
