"""HealSparse property maps of a coadd (issue 16; LSST's inputMap and property maps).

:func:`property_maps` bins the coadd pixels into HEALPix pixels (NEST) at ``nside`` by the sky
position of each pixel centre (the coadd WCS, evaluated in row blocks) and reduces, in each
HEALPix pixel touched by the coadd:

==================  =========================================================================
map                 value
==================  =========================================================================
``n_image``         mean of ``n_image`` over all its coadd pixels (zeros included: the depth)
``first_mjd``       minimum of the ``first_mjd`` plane
``last_mjd``        maximum of the ``last_mjd`` plane
``mean_mjd``        simple mean of the finite ``mean_mjd`` values
``mean_psf_fwhm``   simple mean of the finite ``mean_psf_fwhm`` values (coadd pixels)
``input_map``       WIDE_MASK map, bit ``v`` set where visit ``v`` (its index along ``visit``)
                    was used at some coadd pixel: the OR of ``input_bitmap``
==================  =========================================================================

The means are simple means over coadd pixels, not inverse-variance weighted: every coadd pixel
has the same area, and the epoch planes are already weight-means of the inputs at each pixel,
so a HEALPix pixel's value is the area-average of the coadd's own values (LSST's property maps
average over the area too). A HEALPix pixel where a plane has no finite value is left at the
map's sentinel (not a valid pixel), so the ``n_image`` map's valid pixels are exactly those the
coadd touches, the epoch maps' those with an input. Planes the coadd does not hold (written
without ``AssembleConfig(epoch_planes=True)``, or without MJDs) are skipped: their maps are not
in the result. ``healsparse`` is an optional dependency (``pip install coaddx[maps]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from coaddx.errors import ConfigError, InputError
from coaddx.io.zarr.coadd_store import open_coadd
from coaddx.model.skymap import shift_wcs, wcs_from_header_string

try:
    import healsparse
    import hpgeom
except ImportError:  # pragma: no cover - exercised only where healsparse is absent
    healsparse = None
    hpgeom = None

__all__ = ["MAP_NAMES", "property_maps"]

#: The maps :func:`property_maps` may return, in order.
MAP_NAMES = ("n_image", "first_mjd", "last_mjd", "mean_mjd", "mean_psf_fwhm", "input_map")

#: Coadd pixels per row block (bounds the memory of the sky positions and HEALPix indices).
_BLOCK_PIXELS = 1 << 20
_MAX_NSIDE = 1 << 29


def _check_nside(name: str, value: Any) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or not 1 <= int(value) <= _MAX_NSIDE or int(value) & (int(value) - 1):
        raise ConfigError(f"{name} must be a power of 2 in [1, 2**29], got {value!r}")
    return int(value)


def _reduce(pix: np.ndarray, cols: dict[str, tuple[np.ndarray, Any]]) -> tuple[np.ndarray, dict]:
    """The unique ``pix`` and each column reduced over equal ``pix`` by its ufunc."""
    order = np.argsort(pix, kind="stable")
    p = pix[order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
    return p[starts], {
        k: ufunc.reduceat(v[order], starts, axis=0) for k, (v, ufunc) in cols.items()
    }


def _columns(block: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, Any]]:
    """The partial reductions of one row block (flattened planes) to combine across blocks."""
    cols: dict[str, tuple[np.ndarray, Any]] = {
        "n_sum": (block["n_image"].astype(np.float64), np.add),
        "count": (np.ones(block["n_image"].size, np.int64), np.add),
    }
    if "first_mjd" in block:
        cols["first_mjd"] = (
            np.where(np.isnan(block["first_mjd"]), np.inf, block["first_mjd"]),
            np.minimum,
        )
    if "last_mjd" in block:
        cols["last_mjd"] = (
            np.where(np.isnan(block["last_mjd"]), -np.inf, block["last_mjd"]),
            np.maximum,
        )
    for key in ("mean_mjd", "mean_psf_fwhm"):
        if key in block:
            v = block[key].astype(np.float64)
            good = np.isfinite(v)
            cols[f"{key}_sum"] = (np.where(good, v, 0.0), np.add)
            cols[f"{key}_n"] = (good.astype(np.int64), np.add)
    if "input_bitmap" in block:
        cols["bits"] = (block["input_bitmap"], np.bitwise_or)
    return cols


def _coadd_wcs(coadd: xr.Dataset) -> Any:
    text = coadd.attrs.get("wcs")
    if not text:
        raise InputError("property_maps: the coadd has no 'wcs' attribute (no sky positions)")
    x0 = int(coadd["x"].values[0]) if "x" in coadd.coords else 0
    y0 = int(coadd["y"].values[0]) if "y" in coadd.coords else 0
    return shift_wcs(wcs_from_header_string(str(text)), x0, y0)


def _empty(nside_coverage: int, nside: int, dtype: Any, **kw: Any) -> Any:
    return healsparse.HealSparseMap.make_empty(nside_coverage, nside, dtype, **kw)


def property_maps(
    coadd: xr.Dataset | str | os.PathLike[str], nside: int, *, nside_coverage: int = 32
) -> dict[str, Any]:
    """HealSparse maps (NEST, at ``nside``) of the coadd's ``n_image`` and epoch planes and its
    input map (see the module docstring); keys from :data:`MAP_NAMES`, the planes the coadd does
    not hold skipped. ``coadd``: a coadd dataset (lazy or not) or the path of a coadd store."""
    if healsparse is None:
        raise ConfigError(
            "property_maps needs the optional 'healsparse' package: pip install 'coaddx[maps]'"
        )
    nside = _check_nside("nside", nside)
    nside_coverage = _check_nside("nside_coverage", nside_coverage)
    if nside_coverage > nside:
        raise ConfigError(f"nside_coverage ({nside_coverage}) must be <= nside ({nside})")
    ds = coadd if isinstance(coadd, xr.Dataset) else open_coadd(Path(coadd))
    if "n_image" not in ds.data_vars:
        raise InputError("property_maps: the coadd has no 'n_image' plane")
    wcs = _coadd_wcs(ds)
    planes = [k for k in MAP_NAMES[1:5] if k in ds.data_vars and ds[k].dims == ("y", "x")]
    n_visits = ds.sizes.get("visit", 0)
    has_bits = "input_bitmap" in ds.data_vars and n_visits > 0
    ny, nx = ds["n_image"].shape
    if ny * nx == 0:
        raise InputError("property_maps: the coadd has no pixels")
    rows = max(1, _BLOCK_PIXELS // max(nx, 1))
    parts: list[tuple[np.ndarray, dict]] = []
    for y0 in range(0, ny, rows):
        y1 = min(ny, y0 + rows)
        yy, xx = np.mgrid[y0:y1, 0:nx]
        ra, dec = wcs.pixel_to_world_values(
            xx.ravel().astype(np.float64), yy.ravel().astype(np.float64)
        )
        pix = hpgeom.angle_to_pixel(nside, ra, dec, nest=True, lonlat=True, degrees=True)
        block: dict[str, np.ndarray] = {
            k: np.asarray(ds[k].isel(y=slice(y0, y1)).values).ravel() for k in ["n_image", *planes]
        }
        if has_bits:
            words = np.asarray(ds["input_bitmap"].isel(y=slice(y0, y1)).values, np.uint64)
            block["input_bitmap"] = words.reshape(words.shape[0], -1).T.copy()
        parts.append(_reduce(np.asarray(pix, np.int64), _columns(block)))
    ufuncs = {k: u for k, (_, u) in _columns(block).items()}
    pix, red = _reduce(
        np.concatenate([p for p, _ in parts]),
        {k: (np.concatenate([r[k] for _, r in parts]), u) for k, u in ufuncs.items()},
    )
    out: dict[str, Any] = {}
    m = _empty(nside_coverage, nside, np.float64)
    m.update_values_pix(pix, red["n_sum"] / red["count"])
    out["n_image"] = m
    for key in planes:
        values = red[key] if key in ("first_mjd", "last_mjd") else _mean(red, key)
        good = np.isfinite(values)
        m = _empty(nside_coverage, nside, np.float64)
        m.update_values_pix(pix[good], values[good])
        out[key] = m
    if has_bits:
        width = (n_visits - 1) // 8 + 1
        bytes_ = red["bits"].astype("<u8").view(np.uint8)[:, :width]
        m = _empty(nside_coverage, nside, healsparse.WIDE_MASK, wide_mask_maxbits=n_visits)
        some = bytes_.any(axis=1)
        m.update_values_pix(pix[some], np.ascontiguousarray(bytes_[some]))
        out["input_map"] = m
    for m in out.values():
        m.metadata = {"NSIDE": nside, "NVISIT": n_visits}
    return out


def _mean(red: dict[str, np.ndarray], key: str) -> np.ndarray:
    n = red[f"{key}_n"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, red[f"{key}_sum"] / n, np.nan)
