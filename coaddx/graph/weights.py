"""Per-visit weight statistics as dask tasks (one visit plane per task)."""

from __future__ import annotations

import dask.array as da
import numpy as np

from coaddx.graph.stack import single_block
from coaddx.kernels.stats import meanclip_masked

__all__ = ["visit_meanclip"]


def _visit_meanclip_chunk(
    variance: np.ndarray, mask: np.ndarray, *, bad_mask: int, sigma_clip: float, clip_iter: int
) -> np.ndarray:
    variance, mask = single_block(variance), single_block(mask)
    out = np.empty(variance.shape[0], dtype=np.float64)
    for i in range(variance.shape[0]):  # loop over visits, each a vectorised reduction
        out[i] = meanclip_masked(
            variance[i], mask[i], bad_mask, sigma_clip=sigma_clip, clip_iter=clip_iter
        )
    return out


def visit_meanclip(
    variance: da.Array, mask: da.Array, *, bad_mask: int, sigma_clip: float, clip_iter: int
) -> da.Array:
    """Per-visit MEANCLIP of the variance plane over pixels without ``bad_mask`` bits
    (prepareInputs). Each task holds whole visit planes, one visit at a time."""
    ny, nx = variance.shape[1:]
    v = variance.rechunk((1, ny, nx))
    m = mask.rechunk((1, ny, nx))
    return da.blockwise(
        _visit_meanclip_chunk,
        "v",
        v,
        "vyx",
        m,
        "vyx",
        dtype=np.float64,
        concatenate=False,
        bad_mask=bad_mask,
        sigma_clip=sigma_clip,
        clip_iter=clip_iter,
    )
