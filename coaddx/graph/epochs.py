"""The epoch and property planes of a coadd as dask tasks beside the stack (issue 16).

One blockwise task per stacking subregion reads the same mask block as the stack (the same
dask key: the block is read and decoded once) and returns one uint64 block of planes (the
float64 first, last and weight-mean MJD and weight-mean PSF FWHM as their bits, then the
bitmap words of the contributing visits), all from one call of
:func:`coaddx.kernels.epochs.epoch_block_into` writing each contiguous plane in place; the
planes are views of it (no copy until the write). Which visits contributed
anywhere is the OR of the bitmap over the blocks (a tree reduction, a few bytes per task).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from coaddx.graph.stack import single_block
from coaddx.kernels.epochs import EpochPlanes, bitmap_words, epoch_block_into

__all__ = ["FLOAT_PLANES", "epoch_planes", "visits_used"]


#: The float64 planes of a packed block, in order (their bits in the first uint64 planes).
FLOAT_PLANES = ("first_mjd", "last_mjd", "mean_mjd", "mean_psf_fwhm")


def _epoch_chunk(
    mask: list[np.ndarray],
    weights: list[np.ndarray],
    mjd: list[np.ndarray],
    fwhm: list[np.ndarray],
    *,
    bad_mask: int,
    words: int,
) -> np.ndarray:
    """One ``(4 + words, S, S)`` uint64 block: the float64 planes (as their bits), then the
    bitmap words, each plane contiguous and written in place by the kernel."""
    m, w, t, f = (single_block(a) for a in (mask, weights, mjd, fwhm))
    out = np.empty((len(FLOAT_PLANES) + words, *m.shape[1:]), np.uint64)
    floats = out[: len(FLOAT_PLANES)].view(np.float64)
    planes = EpochPlanes(
        floats[0],
        floats[1],
        floats[2],
        floats[3],
        np.empty(m.shape[1:], np.int32),
        out[len(FLOAT_PLANES) :],
    )
    epoch_block_into(planes, m, w, t, f, bad_mask=bad_mask)
    return out


def _per_visit(values: da.Array | np.ndarray) -> da.Array | np.ndarray:
    """A ``(visit,)`` input of the blockwise task: numpy as float64, lazy in one chunk."""
    if isinstance(values, da.Array):
        return da.asarray(values).astype(np.float64).rechunk(-1)
    return np.asarray(values, np.float64)


def epoch_planes(
    mask: da.Array,
    weights: da.Array | np.ndarray,
    mjd: da.Array | np.ndarray,
    fwhm: da.Array | np.ndarray,
    *,
    bad_mask: int,
) -> dict[str, da.Array]:
    """Lazy epoch planes of a ``(visit, y, x)`` mask cube chunked ``(all visits, S, S)``;
    ``weights``, ``mjd`` and ``fwhm`` are ``(visit,)`` arrays, numpy or lazy.

    Returns float64 ``first_mjd``, ``last_mjd``, ``mean_mjd``, float32 ``mean_psf_fwhm`` over
    ``(y, x)`` (NaN where no input is used) and the uint64 ``input_bitmap`` over
    ``(word, y, x)`` (bit ``v % 64`` of word ``v // 64`` is the store's visit ``v``).
    """
    if mask.numblocks[0] != 1:
        raise ValueError("epoch_planes needs every visit in one chunk along 'visit'")
    n = mask.shape[0]
    words = bitmap_words(n)
    packed = da.blockwise(
        _epoch_chunk,
        "pyx",
        mask,
        "vyx",
        _per_visit(weights),
        "v",
        _per_visit(mjd),
        "v",
        _per_visit(fwhm),
        "v",
        new_axes={"p": len(FLOAT_PLANES) + words},
        dtype=np.uint64,
        concatenate=False,
        bad_mask=int(bad_mask),
        words=words,
    )
    out: dict[str, da.Array] = {k: packed[i].view(np.float64) for i, k in enumerate(FLOAT_PLANES)}
    out["mean_psf_fwhm"] = out["mean_psf_fwhm"].astype(np.float32)
    out["input_bitmap"] = packed[len(FLOAT_PLANES) :]
    return out


def _or_chunk(x: np.ndarray, axis: Any, keepdims: bool) -> np.ndarray:
    out: np.ndarray = np.bitwise_or.reduce(x, axis=axis, keepdims=keepdims)  # type: ignore[call-overload]
    return out


def _unpack(words: np.ndarray, n: int) -> np.ndarray:
    v = np.arange(n)
    return ((words[v >> 6] >> (v & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)


def visits_used(bitmap: da.Array, n_visits: int) -> da.Array:
    """``(n_visits,)`` bool, lazy: whether each visit is used at some pixel (the OR of the
    bitmap over the patch, one tree reduction)."""
    words = da.reduction(
        bitmap,
        _or_chunk,
        _or_chunk,
        axis=(1, 2),
        dtype=np.uint64,
        concatenate=True,
    )
    return da.map_blocks(_unpack, words.rechunk(-1), n_visits, chunks=((n_visits,),), dtype=bool)
