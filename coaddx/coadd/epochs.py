"""Epoch and property planes of a coadd, wired beside its stack (issue 16; algorithms.md 2.4).

``epoch_layers`` adds, to the lazy coadd of :func:`coaddx.assemble` (and CompareWarp's final
stack), the first, last and weight-mean MJD of the inputs used at each pixel, their weight-mean
PSF FWHM, the bitmap of the contributing visits and, per visit, whether it contributed
anywhere. "Used" is ``n_image``'s rule (:mod:`coaddx.kernels.epochs`): a positive, finite
weight and no andMask bit after the alternative masks (CompareWarp's CLIPPED artifacts are not
used), so the popcount of the bitmap equals ``n_image``. MEANCLIP's per-pixel sigma clipping
is not seen, as ``n_image`` does not see it (LSST's nImage and inputMap count it likewise).

The MJD planes need an ``mjd`` for every visit (the warp store records one); warps without
any (in-memory test data) get the bitmap and the FWHM plane only, and a store where some visit
lacks one gets them with an :class:`~coaddx.errors.InputWarning`. Without any finite
``psf_fwhm`` the FWHM plane is left out. Per-visit variables given as dask arrays are not read
here (nothing is computed before the write): they enter the graph, and a non-finite MJD of a
visit with a positive weight is an :class:`~coaddx.errors.InputError` when it is computed.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from coaddx.errors import InputWarning
from coaddx.graph.cube import LazyArray
from coaddx.graph.epochs import epoch_planes, visits_used

__all__ = ["EPOCH_PLANES", "add_epoch_layers", "epoch_layers"]

#: The (y, x) planes :func:`epoch_layers` may add (``input_bitmap`` is over (bitmap_word, y, x)).
EPOCH_PLANES = ("first_mjd", "last_mjd", "mean_mjd", "mean_psf_fwhm")


def _per_visit(warps: xr.Dataset, name: str) -> Any:
    """A numeric per-visit variable: numpy (read here) or, given lazily, its dask array."""
    if name not in warps.data_vars or warps[name].dims != ("visit",):
        return None
    var = warps[name]
    if var.dtype.kind not in "fiu":
        return None
    return var.data if var.chunks is not None else np.asarray(var.values, np.float64)


def epoch_layers(
    warps: xr.Dataset, mask: LazyArray, weights: Any, *, bad_mask: int
) -> dict[str, LazyArray]:
    """The lazy epoch planes of the stack of ``mask`` (chunked like the stack's input) with
    ``weights``; keys as :func:`coaddx.graph.epochs.epoch_planes` plus ``contributed``."""
    n = warps.sizes["visit"]
    mjd = _per_visit(warps, "mjd")
    lazy = mjd is not None and not isinstance(mjd, np.ndarray)  # checked by the kernel
    keep_mjd = mjd is not None and (lazy or bool(np.isfinite(mjd).all()))
    if mjd is not None and not keep_mjd:
        missing = [
            int(v) for v, t in zip(warps["visit"].values, mjd, strict=True) if not np.isfinite(t)
        ]
        warnings.warn(
            f"epoch planes: visit(s) {missing} have no MJD; first_mjd, last_mjd and mean_mjd "
            "are left out of the coadd",
            InputWarning,
            stacklevel=3,
        )
    fwhm = _per_visit(warps, "psf_fwhm")
    fwhm = np.full(n, np.nan) if fwhm is None else fwhm
    some_fwhm = not isinstance(fwhm, np.ndarray) or bool(np.isfinite(fwhm).any())
    planes = epoch_planes(
        mask,
        weights,
        mjd if keep_mjd and mjd is not None else np.zeros(n),
        fwhm,
        bad_mask=bad_mask,
    )
    if not keep_mjd:
        for key in ("first_mjd", "last_mjd", "mean_mjd"):
            del planes[key]
    if not some_fwhm:
        del planes["mean_psf_fwhm"]
    planes["contributed"] = visits_used(planes["input_bitmap"], n)
    return planes


def add_epoch_layers(ds: xr.Dataset, layers: dict[str, LazyArray]) -> xr.Dataset:
    """``ds`` with the planes of :func:`epoch_layers` (``input_bitmap`` over
    ``(bitmap_word, y, x)``, ``contributed`` over ``visit``)."""
    for key, arr in layers.items():
        if key == "input_bitmap":
            ds[key] = (("bitmap_word", "y", "x"), arr)
            ds[key].attrs["description"] = (
                "bit v % 64 of word v // 64 is set where the coadd's visit v (its index along "
                "'visit') was used"
            )
        elif key == "contributed":
            ds[key] = ("visit", arr)
        else:
            ds[key] = (("y", "x"), arr)
            if key.endswith("_mjd"):
                ds[key].attrs["units"] = "d"
            elif key == "mean_psf_fwhm":
                ds[key].attrs["units"] = "pixel"
    return ds
