"""AssembleCoadd's stack as dask tasks, with the coadd mask bits and the per-visit weights.

Stacking runs blockwise: each task holds every visit of one ``S x S`` subregion and returns a
structured block (image, variance, mask, n_image), so the four coadd planes come from one
computation. Interpolation over NO_DATA runs on bands of full rows (rows are independent).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from coaddx.kernels import lookup
from coaddx.kernels.stack import StackOptions

__all__ = [
    "STACK_DTYPE",
    "finish_coadd_mask",
    "stack",
    "weights_from_variance",
]

STACK_DTYPE = np.dtype([("image", "f4"), ("variance", "f4"), ("mask", "i4"), ("n_image", "i4")])
LAYERS_DTYPE = np.dtype([("image", "f4"), ("variance", "f4"), ("mask", "i4")])


def single_block(blocks: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """The single block along ``visit`` (blockwise with ``concatenate=False`` hands over a list;
    ``concatenate=True`` would copy every input block even when there is just one)."""
    while isinstance(blocks, list) and len(blocks) == 1:
        blocks = blocks[0]
    if isinstance(blocks, list):
        from dask.array.core import concatenate3

        return concatenate3(blocks)
    return blocks


def _stack_chunk(
    image: list[np.ndarray],
    variance: list[np.ndarray],
    mask: list[np.ndarray],
    weights: list[np.ndarray],
    **kwargs: Any,
) -> np.ndarray:
    blocks = [single_block(a) for a in (image, variance, mask, weights)]
    value, var, out_mask, n_image = lookup("stack_block", *blocks)(
        *blocks, options=StackOptions(**kwargs)
    )
    out = np.empty(value.shape, dtype=STACK_DTYPE)
    out["image"], out["variance"], out["mask"], out["n_image"] = value, var, out_mask, n_image
    return out


def stack(
    image: da.Array,
    variance: da.Array,
    mask: da.Array,
    weights: da.Array | np.ndarray,
    **kernel_kwargs: object,
) -> da.Array:
    """Blockwise stack of ``(visit, y, x)`` arrays chunked ``(all visits, S, S)``.

    Returns a ``(y, x)`` dask array of :data:`STACK_DTYPE`. ``weights`` is a ``(visit,)``
    array (numpy or a one-chunk dask array, computed before the blocks that need it).
    """
    if image.numblocks[0] != 1:
        raise ValueError("stack needs every visit in one chunk along 'visit'")
    w = (
        da.asarray(weights).rechunk(-1)
        if isinstance(weights, da.Array)
        else np.asarray(weights, np.float64)
    )
    return da.blockwise(
        _stack_chunk,
        "yx",
        image,
        "vyx",
        variance,
        "vyx",
        mask,
        "vyx",
        w,
        "v",
        dtype=STACK_DTYPE,
        concatenate=False,
        **kernel_kwargs,
    )


def _finish_mask(
    mask: np.ndarray, variance: np.ndarray, *, inexact_from: int, inexact_bit: int, edge_bit: int
) -> np.ndarray:
    # products of the conditions with the bits, not boolean-index updates (4x faster)
    out = mask | ((mask & np.int32(inexact_from)) != 0) * np.int32(inexact_bit)
    out |= (variance == 0) * np.int32(edge_bit)
    return out


def finish_coadd_mask(
    mask: da.Array, variance: da.Array, *, inexact_from: int, inexact_bit: int, edge_bit: int
) -> da.Array:
    """setInexactPsf (INEXACT_PSF where SENSOR_EDGE|CLIPPED|REJECTED) and setCoaddEdgeBits
    (EDGE where the coadd variance is exactly 0)."""
    return da.map_blocks(
        _finish_mask,
        mask,
        variance,
        inexact_from=inexact_from,
        inexact_bit=inexact_bit,
        edge_bit=edge_bit,
        dtype=np.int32,
    )


def _inverse_variance(meanvar: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(meanvar) & (meanvar > 0), 1.0 / meanvar, np.nan)


def weights_from_variance(meanvar: np.ndarray | da.Array) -> np.ndarray | da.Array:
    """Per-visit weights ``1 / MEANCLIP(variance)`` (prepareInputs), NaN where the statistic
    is not finite and positive (those visits are skipped); numpy in, numpy out, lazy in, lazy
    out."""
    if isinstance(meanvar, da.Array):
        return da.map_blocks(_inverse_variance, meanvar, dtype=np.float64)
    return _inverse_variance(meanvar)
