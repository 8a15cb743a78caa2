"""The inputs table of a coadd (LSST's CoaddInputs): one row per (visit, detector) stacked.

:func:`input_records` takes, when a coadd is assembled, the per-visit metadata the warp store
recorded (band, MJD, exposure time, calibration, PSF FWHM, the detectors and, where the warp
step stored them, their footprints on the patch) into the coadd's ``inputs`` attribute: plain
JSON, no pixel is read. :func:`coadd_inputs` joins it with what the coadd computed, the
per-visit ``weight`` and ``contributed`` (the visit was used at some pixel; from the epoch
planes' bitmap), as an :class:`astropy.table.Table`; the FITS exporter writes that table as a
binary-table HDU ``INPUTS``.

Columns: ``visit``, ``detector`` (-1 where the store did not record the detectors), ``band``,
``mjd``, ``exptime`` (s), ``weight``, ``zero_point`` (AB magnitude of one count, from the
visit's ``photo_calib``: ``31.4 - 2.5 log10(nJy per count)``), ``psf_fwhm`` (pixels of the
input), ``footprint`` (the detector's valid polygon on the patch as JSON, ``""`` where the
store has none) and ``contributed``. Numbers the store lacks are NaN; so are those of
per-visit variables given as dask arrays (assembling computes nothing).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from astropy.table import Table

from coaddx.constants import AB_ZERO_NJY
from coaddx.errors import InputError
from coaddx.io.zarr.coadd_store import open_coadd

__all__ = ["INPUT_COLUMNS", "coadd_inputs", "input_records"]

#: Columns of :func:`coadd_inputs`, in order.
INPUT_COLUMNS = (
    "visit",
    "detector",
    "band",
    "mjd",
    "exptime",
    "weight",
    "zero_point",
    "psf_fwhm",
    "footprint",
    "contributed",
)


def _number(values: np.ndarray | None, i: int) -> float | None:
    if values is None or values.dtype.kind not in "fiu":
        return None
    x = float(values[i])
    return x if math.isfinite(x) else None


def _column(warps: xr.Dataset, name: str) -> np.ndarray | None:
    """A per-visit variable, None when absent or given lazily (never computed here)."""
    if name in warps.data_vars and warps[name].dims == ("visit",) and warps[name].chunks is None:
        return np.asarray(warps[name].values)
    return None


def _detectors(text: Any) -> list[int]:
    if not isinstance(text, str) or not text.strip():
        return [-1]
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        return [-1]


def _footprint(entry: Any, detector: int, k: int, n: int) -> str:
    """The footprint of the ``k``-th of the ``n`` detectors of a visit from the store's
    ``footprints`` value: a JSON mapping detector -> polygon, a list of ``n`` polygons in
    detector order, or one polygon for the visit."""
    if not isinstance(entry, str) or not entry:
        return ""
    try:
        value = json.loads(entry)
    except ValueError:
        return entry
    if isinstance(value, dict):
        one = value.get(str(detector))
        return "" if one is None else json.dumps(one)
    if isinstance(value, list) and n > 1 and len(value) == n:
        return json.dumps(value[k])
    return json.dumps(value)


def _polygons(warps: xr.Dataset) -> dict[tuple[int, int], str]:
    """(visit, detector) -> the detector's valid polygon on the patch as JSON ``[[x, y], ...]``
    from the warps' PSF products (:mod:`coaddx.io.zarr.psf_products`; the vertex padding
    dropped); empty when the warps have none or hold them lazily."""
    names = ("psf_visit", "psf_detector", "psf_polygon")
    if not all(n in warps.variables and warps[n].chunks is None for n in names):
        return {}
    visits, detectors = (np.asarray(warps[n].values, np.int64) for n in names[:2])
    out = {}
    for v, d, poly in zip(visits, detectors, np.asarray(warps["psf_polygon"].values), strict=True):
        keep = np.ones(len(poly), bool)
        keep[1:] = np.any(poly[1:] != poly[:-1], axis=1)  # padding repeats the last vertex
        out[(int(v), int(d))] = json.dumps(poly[keep].tolist())
    return out


def input_records(warps: xr.Dataset) -> list[dict[str, Any]]:
    """The static columns of the inputs table from the warps' per-visit variables (JSON-able:
    missing numbers are None)."""
    cols = {
        k: _column(warps, k)
        for k in ("band", "mjd", "exptime", "psf_fwhm", "photo_calib", "zero_point")
    }
    cols["detectors"] = _column(warps, "detectors")
    cols["footprints"] = _column(warps, "footprints")
    polygons = _polygons(warps)
    rows = []
    for i, visit in enumerate(warps["visit"].values):
        zp = _number(cols["zero_point"], i)
        calib = _number(cols["photo_calib"], i)
        if zp is None and calib is not None and calib > 0:
            zp = AB_ZERO_NJY - 2.5 * math.log10(calib)
        band = cols["band"]
        dets = _detectors(None if cols["detectors"] is None else cols["detectors"][i])
        if dets == [-1] and polygons:  # no detector list: those the PSF products name
            dets = sorted(d for v, d in polygons if v == int(visit)) or [-1]
        feet = None if cols["footprints"] is None else cols["footprints"][i]
        for k, det in enumerate(dets):
            rows.append(
                {
                    "visit": int(visit),
                    "detector": det,
                    "band": "" if band is None or band.dtype.kind not in "US" else str(band[i]),
                    "mjd": _number(cols["mjd"], i),
                    "exptime": _number(cols["exptime"], i),
                    "zero_point": zp,
                    "psf_fwhm": _number(cols["psf_fwhm"], i),
                    "footprint": _footprint(feet, det, k, len(dets))
                    or polygons.get((int(visit), det), ""),
                }
            )
    return rows


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def coadd_inputs(coadd: xr.Dataset | str | os.PathLike[str]) -> Table:
    """The inputs table of a coadd (a Dataset from :func:`coaddx.assemble` or
    :func:`coaddx.open_coadd`, or a coadd store's path), one row per (visit, detector).

    ``contributed`` is whether the visit was used at some pixel (from the coadd's
    ``contributed``; a coadd without the epoch planes, e.g. written before them, falls back to
    "its weight is finite and positive", and the table's ``meta['CONTRIB']``, ``"bitmap"``
    or ``"weight"``, says which).
    A coadd written before the inputs table existed gets rows with only ``visit`` and
    ``weight`` known.

    Examples
    --------
    >>> coaddx.coadd_inputs("coadd.zarr")["visit", "mjd", "contributed"]   # doctest: +SKIP
    """
    ds = coadd if isinstance(coadd, xr.Dataset) else open_coadd(Path(coadd))
    if "weight" not in ds.data_vars or ds["weight"].dims != ("visit",):
        raise InputError("coadd_inputs needs a coadd with a per-visit 'weight'")
    visits = [int(v) for v in ds["visit"].values]
    weight = np.asarray(ds["weight"].values, np.float64)
    if "contributed" in ds.data_vars:
        used, source = np.asarray(ds["contributed"].values, bool), "bitmap"
    else:
        used, source = np.isfinite(weight) & (weight > 0), "weight"
    records = ds.attrs.get("inputs")
    if not records:
        records = [{"visit": v} for v in visits]
    index = {v: i for i, v in enumerate(visits)}
    rows = [r for r in records if int(r["visit"]) in index]
    at = [index[int(r["visit"])] for r in rows]
    table = Table(
        {
            "visit": np.asarray([int(r["visit"]) for r in rows], np.int64),
            "detector": np.asarray([int(r.get("detector", -1)) for r in rows], np.int64),
            "band": np.asarray([str(r.get("band") or "") for r in rows], dtype=str),
            "mjd": np.asarray([_nan(r.get("mjd")) for r in rows]),
            "exptime": np.asarray([_nan(r.get("exptime")) for r in rows]),
            "weight": weight[at],
            "zero_point": np.asarray([_nan(r.get("zero_point")) for r in rows]),
            "psf_fwhm": np.asarray([_nan(r.get("psf_fwhm")) for r in rows]),
            "footprint": np.asarray([str(r.get("footprint") or "") for r in rows], dtype=str),
            "contributed": used[at],
        },
        meta={"CONTRIB": source},
    )
    table["mjd"].unit, table["exptime"].unit, table["zero_point"].unit = "d", "s", "mag"
    table["psf_fwhm"].unit = "pix"
    return table
