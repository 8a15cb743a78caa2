"""FITS export of a coadd store: the LSST-style image / mask / variance HDUs.

Layout written by :func:`export_fits`::

    HDU 0 (primary)   no data; ORIGIN, COADDX version, statistic, tract, patch, number of visits
    HDU 1 IMAGE       float32 nJy, celestial WCS of the array (the store's tract WCS shifted to
                      the patch origin), LTV1/LTV2 and the LSST "A" pixel WCS (tract pixels)
    HDU 2 MASK        int32, MP_<PLANE> = bit keywords, same WCS
    HDU 3 VARIANCE    float32 nJy**2, same WCS
    HDU 4 N_IMAGE     int32 (when the store has ``n_image``; further 2-D planes likewise:
                      EPOCH_COUNT, the epoch planes FIRST_MJD, LAST_MJD, MEAN_MJD (float64 d)
                      and MEAN_PSF_FWHM; the 3-D visit bitmap stays in the store)
    then              small image HDUs the caller computed (``extra_hdus``: the PSF and its
                      FWHM map, :mod:`coaddx.coadd.export`), appended once the planes are in
    last  INPUTS      binary table: :func:`coaddx.coadd_inputs` (one row per visit and
                      detector: MJD, exposure time, weight, zero point, PSF FWHM, footprint,
                      whether it contributed)

The file is written without gathering the coadd in one process: the headers are written and
the file's blocks reserved first (every HDU's data offset is then known, and a full disk is
found before any pixel is read), and each chunk of each plane is read from the Zarr store and
written into its place with ``pwrite`` by its own dask task (on a cluster, the workers write into
the shared file system). No memory map of the output is made: a full disk under a map kills the
process with SIGBUS, where a write raises. Everything goes to a temporary file beside ``out``
that is renamed into place only when complete; on any failure (a full disk: ``StoreError``
naming ``out``) or interrupt it is removed and a previous ``out`` is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits

from coaddx._version import __version__
from coaddx.errors import CoaddxError, SchemaError, StoreError
from coaddx.io.inputs import coadd_inputs
from coaddx.io.zarr.coadd_store import open_coadd, write_failure
from coaddx.model.masks import mask_planes_to_header
from coaddx.model.skymap import shift_wcs, wcs_from_header_string

__all__ = ["FITS_LAYERS", "export_fits"]

#: Store variable -> (EXTNAME, FITS data type, BUNIT), in HDU order; the first three are required.
FITS_LAYERS: dict[str, tuple[str, str, str | None]] = {
    "image": ("IMAGE", ">f4", "nJy"),
    "mask": ("MASK", ">i4", None),
    "variance": ("VARIANCE", ">f4", "nJy**2"),
    "n_image": ("N_IMAGE", ">i4", None),
    "epoch_count": ("EPOCH_COUNT", ">i4", None),
    "first_mjd": ("FIRST_MJD", ">f8", "d"),
    "last_mjd": ("LAST_MJD", ">f8", "d"),
    "mean_mjd": ("MEAN_MJD", ">f8", "d"),
    "mean_psf_fwhm": ("MEAN_PSF_FWHM", ">f4", "pixel"),
}
_BITPIX = {">f4": -32, ">i4": 32, ">f8": -64}
_BLOCK = 2880


@dataclass(frozen=True)
class _FitsLayer:
    """A dask ``store`` target: one image HDU's data area of a preallocated FITS file."""

    path: str
    offset: int
    dtype: str
    shape: tuple[int, int]

    def __setitem__(self, key: tuple[slice, slice], value: np.ndarray) -> None:
        (r0, r1, rstep), (c0, c1, cstep) = (
            k.indices(n) for k, n in zip(key, self.shape, strict=True)
        )
        if rstep != 1 or cstep != 1:
            raise ValueError(f"{self.path}: a strided region {key} cannot be written")
        data = np.ascontiguousarray(value, dtype=self.dtype).reshape(r1 - r0, c1 - c0)
        width, item = self.shape[1], data.itemsize
        fd = os.open(self.path, os.O_WRONLY)  # never O_CREAT: a late task cannot recreate it
        try:
            if c0 == 0 and c1 == width:  # whole rows: one contiguous run
                _pwrite_all(fd, data, self.offset + r0 * width * item)
            else:
                for i, row in enumerate(data):
                    _pwrite_all(fd, row, self.offset + ((r0 + i) * width + c0) * item)
        finally:
            os.close(fd)


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = data.data.cast("B")  # data is C-contiguous
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _primary(ds: xr.Dataset, source: Path) -> fits.Header:
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = 8
    header["NAXIS"] = 0
    header["EXTEND"] = True
    header["ORIGIN"] = "coaddx"
    header["COADDXV"] = (__version__, "coaddx version")
    header["HIERARCH COADDX STATISTIC"] = str(ds.attrs.get("statistic", ""))
    header["HIERARCH COADDX SOURCE"] = source.name
    for key in ("tract", "patch"):
        value = ds.attrs.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            header[key.upper()] = value
        elif isinstance(value, list | tuple):
            header[key.upper()] = ",".join(str(v) for v in value)
    visits = ds.attrs.get("provenance", {}).get("visits")
    if visits is not None:
        header["NVISIT"] = (len(visits), "visits stacked")
    return header


def _wcs_cards(ds: xr.Dataset, source: Path) -> fits.Header:
    text = ds.attrs.get("wcs")
    if not text:
        raise SchemaError(
            f"{source}: the coadd store has no 'wcs' attribute; cannot write a FITS WCS"
        )
    x0 = int(ds["x"].values[0]) if "x" in ds.coords else 0
    y0 = int(ds["y"].values[0]) if "y" in ds.coords else 0
    wcs = shift_wcs(wcs_from_header_string(text), x0, y0)
    header = wcs.to_header(relax=True)
    header["LTV1"] = (-x0, "array column 0 is tract pixel x = -LTV1")
    header["LTV2"] = (-y0, "array row 0 is tract pixel y = -LTV2")
    for axis, origin in ((1, x0), (2, y0)):  # LSST's "A" WCS: the parent (tract) pixel frame
        header[f"CTYPE{axis}A"] = "LINEAR"
        header[f"CRPIX{axis}A"] = 1.0
        header[f"CRVAL{axis}A"] = float(origin)
        header[f"CUNIT{axis}A"] = "pixel"
    header["WCSNAMEA"] = "PARENT"
    return header


def _extension(
    name: str,
    dtype: str,
    unit: str | None,
    shape: tuple[int, int],
    wcs: fits.Header,
    extra: Mapping[str, int] | None = None,
) -> fits.Header:
    header = fits.Header()
    header["XTENSION"] = "IMAGE"
    header["BITPIX"] = _BITPIX[dtype]
    header["NAXIS"] = 2
    header["NAXIS1"] = shape[1]
    header["NAXIS2"] = shape[0]
    header["PCOUNT"] = 0
    header["GCOUNT"] = 1
    header["EXTNAME"] = name
    if unit:
        header["BUNIT"] = unit
    header.extend(wcs.cards)
    for key, value in (extra or {}).items():
        header[key if len(key) <= 8 else f"HIERARCH {key}"] = value
    return header


def _padded(nbytes: int) -> int:
    return -(-nbytes // _BLOCK) * _BLOCK


def _preallocate(
    path: Path, headers: Sequence[fits.Header], dtypes: Sequence[str | None], shape: tuple[int, int]
) -> list[int]:
    """Write every header, size the file and reserve its blocks; return the data offset of
    each HDU."""
    offsets, pos = [], 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as fh:
        for header, dtype in zip(headers, dtypes, strict=True):
            text = header.tostring(endcard=True, padding=True).encode("ascii")
            fh.seek(pos)
            fh.write(text)
            pos += len(text)
            offsets.append(pos)
            if dtype is not None:
                pos += _padded(shape[0] * shape[1] * np.dtype(dtype).itemsize)
        fh.truncate(pos)  # zeros: FITS pads data areas with zeros
        fh.flush()
        _reserve(fh.fileno(), pos)
    return offsets


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks now, so a full disk raises here and not mid-export."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:
        return
    try:
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL):
            raise


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _planes(ds: xr.Dataset, source: Path) -> list[str]:
    missing = [v for v in ("image", "mask", "variance") if v not in ds.data_vars]
    if missing:
        raise SchemaError(f"{source}: the coadd store lacks {missing}")
    names = [v for v in FITS_LAYERS if v in ds.data_vars]
    bad = [v for v in names if ds[v].dims != ("y", "x")]
    if bad:
        raise SchemaError(f"{source}: planes {bad} are not over (y, x)")
    return names


def export_fits(
    coadd: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    compute: Callable[[Any], Any] | None = None,
    extra_hdus: Sequence[fits.ImageHDU] = (),
) -> Path:
    """Write a coadd store as an LSST-style multi-extension FITS file, region by region.

    Parameters
    ----------
    coadd : path-like
        A coadd store written by :func:`coaddx.write_coadd`.
    out : path-like
        The FITS file to write (atomically: a temporary file renamed into place; on a failure
        or an interrupt it is removed and a previous ``out`` is unchanged).
    overwrite : bool
        Replace an existing ``out``.
    compute : callable, optional
        Runs the delayed write (e.g. on a cluster with a progress bar); default
        ``dask.compute``. Every chunk is read and written by its own task.
    extra_hdus : sequence of astropy ImageHDU
        Small HDUs appended after the planes (in memory; e.g. the PSF HDUs).

    Raises
    ------
    StoreError
        ``out`` exists (and not ``overwrite``), or cannot be written (a full disk, an
        unwritable folder): the message names ``out`` and the reason.

    Returns
    -------
    pathlib.Path
        ``out``. It reads back with :func:`coaddx.read_exposure` (LSST layout) or astropy.

    Examples
    --------
    >>> coaddx.export_fits("coadd.zarr", "coadd.fits")    # doctest: +SKIP
    """
    source, out = Path(coadd), Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} exists; pass overwrite=True to replace it")
    if out.is_dir():
        raise StoreError(f"{out} is a directory, not a FITS file path")
    ds = open_coadd(source)
    names = _planes(ds, source)
    shape = (int(ds.sizes["y"]), int(ds.sizes["x"]))
    wcs = _wcs_cards(ds, source)
    planes = mask_planes_to_header(ds.attrs.get("mask_planes", {}))
    headers = [_primary(ds, source)] + [
        _extension(
            FITS_LAYERS[v][0],
            FITS_LAYERS[v][1],
            FITS_LAYERS[v][2],
            shape,
            wcs,
            planes if v == "mask" else None,
        )
        for v in names
    ]
    existed = out.exists()
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        offsets = _preallocate(tmp, headers, [None] + [FITS_LAYERS[v][1] for v in names], shape)
        sources = [_as_dask(ds[v], FITS_LAYERS[v][1]) for v in names]
        targets = [
            _FitsLayer(str(tmp), off, FITS_LAYERS[v][1], shape)
            for v, off in zip(names, offsets[1:], strict=True)
        ]
        delayed = da.store(sources, targets, lock=False, compute=False)  # type: ignore[arg-type]
        (compute or dask.compute)(delayed)
        for hdu in extra_hdus:
            fits.append(tmp, hdu.data, hdu.header)
        _append_inputs(tmp, ds)
        _sync(tmp)
        os.replace(tmp, out)
    except CoaddxError:
        raise
    except OSError as exc:
        raise write_failure(out, exc, existed=existed) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return out


def _append_inputs(path: Path, ds: xr.Dataset) -> None:
    """The INPUTS binary-table HDU at the end of the file (a coadd without a per-visit
    ``weight`` has none)."""
    if "weight" not in ds.data_vars:
        return
    hdu = fits.table_to_hdu(coadd_inputs(ds))
    hdu.header["EXTNAME"] = "INPUTS"
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    data = buf.getvalue()
    with fits.open(io.BytesIO(data)) as hdul:
        start = hdul[1].fileinfo()["hdrLoc"]
    with open(path, "ab") as fh:  # the file so far ends on a 2880-byte block
        fh.write(data[start:])


def _as_dask(var: xr.DataArray, dtype: str) -> da.Array:
    data = var.data if isinstance(var.data, da.Array) else da.from_array(np.asarray(var.data))
    return data.astype(np.dtype(dtype).newbyteorder("="), copy=False)
