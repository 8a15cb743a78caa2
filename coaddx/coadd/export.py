"""``coaddx.export_fits``: the FITS export of :mod:`coaddx.io.export` with the coadd's PSF.

:mod:`coaddx.io.export` writes the pixel planes; it does files only and computes nothing, so
the PSF HDUs (the CoaddPsf at the patch centre and its FWHM map, :func:`coaddx.coadd.psf.
psf_hdus`) are computed here and handed to it. A coadd without PSF products (its warps were
written before coaddx stored them) is exported without them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coaddx.coadd.psf import psf_hdus
from coaddx.errors import InputError, StoreError
from coaddx.io import export as io_export
from coaddx.io.zarr.coadd_store import open_coadd

__all__ = ["export_fits"]


def export_fits(
    coadd: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    compute: Callable[[Any], Any] | None = None,
) -> Path:
    """Write a coadd store as an LSST-style multi-extension FITS file, region by region:
    :func:`coaddx.io.export.export_fits` (IMAGE, MASK, VARIANCE, N_IMAGE, ...) followed by
    ``PSF`` (the CoaddPsf at the patch centre) and ``PSF_FWHM`` (the FWHM map,
    :func:`coaddx.coadd_psf_fwhm`) when the coadd carries PSF products.

    Examples
    --------
    >>> coaddx.export_fits("coadd.zarr", "coadd.fits")    # doctest: +SKIP
    """
    if Path(out).exists() and not overwrite:
        raise StoreError(f"{out} exists; pass overwrite=True to replace it")
    try:
        extra = psf_hdus(open_coadd(coadd))
    except (StoreError, InputError):
        extra = []  # no (or incomplete) PSF products, no input of positive weight, no store
    return io_export.export_fits(coadd, out, overwrite=overwrite, compute=compute, extra_hdus=extra)
