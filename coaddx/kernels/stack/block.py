"""Per-pixel stacking of a (visit, y, x) block with the afw ``statisticsStack`` rules.

Pure numpy + numba kernel (algorithms.md §1.1, §1.3, §2.2). One call stacks one block on one
thread with the GIL released; dask supplies the parallelism. :func:`stack_block` checks the
arrays, takes its settings as one :class:`~coaddx.kernels.stack.options.StackOptions` and drives
the compiled passes over segments of the block viewed as (visit, pixel):

* ``"mean"`` (:mod:`.mean`): visit-outer passes over contiguous pixel segments with float64
  accumulators and a branch-free good-pixel test (runs near memory bandwidth).
* ``"median"`` / ``"meanclip"`` (:mod:`.select`, :mod:`.network`, :mod:`.clip`): per segment
  the values are copied into a (visit, pixel) buffer, sorted column-wise by a sorting network
  (per-pixel quickselect above ``network_max_visits``), then the clip iterations run as
  visit-outer passes over the unsorted copy.
* the output mask and n_image (:mod:`.masks`).

Numerics: all sums are float64. Clipped sums are taken about the clip-window centre (afw sums
x - centre), and a kept set of identical values has exactly that mean and a zero variance.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from coaddx.kernels._dispatch import register
from coaddx.kernels.stack.masks import finish_masks
from coaddx.kernels.stack.mean import mean_segment
from coaddx.kernels.stack.network import NO_NETWORK, sorting_network
from coaddx.kernels.stack.options import (
    ERROR_MODES,
    MAX_VISITS,
    MEAN,
    STATISTICS,
    StackOptions,
    readonly,
)
from coaddx.kernels.stack.scratch import JIT, NFACC, SDD, SV, SW, SW2, SWX
from coaddx.kernels.stack.select import SELECT_TILE, sorted_segment

__all__ = ["ERROR_MODES", "STATISTICS", "StackOptions", "sorting_network", "stack_block"]

Planes = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def stack_block(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    weights: np.ndarray,
    *,
    options: StackOptions | None = None,
    **fields: Any,
) -> Planes:
    """Stack a (V, Y, X) block of visits with the afw statisticsStack rules.

    Parameters
    ----------
    image, variance : ndarray of shape (V, Y, X)
        float32 (float64 accepted); sums are computed in float64.
    mask : ndarray of shape (V, Y, X)
        int32 mask bit planes.
    weights : ndarray of shape (V,)
        Per-visit scalar weights. A visit whose weight is not finite or <= 0 is excluded
        entirely (as if absent: it counts nowhere, not in N, n_image or the mask map).
    options : StackOptions
        The statistic, clipping, error mode and mask rules (see :class:`StackOptions`).
    **fields
        Instead of ``options``: its fields, ``stack_block(..., statistic="mean", bad_mask=1)``
        meaning ``options=StackOptions(statistic="mean", bad_mask=1)``.

    Returns
    -------
    value, variance : ndarray of shape (Y, X), float32
    mask : ndarray of shape (Y, X), int32
    n_image : ndarray of shape (Y, X), int32
        Included visits whose input mask (before remove_bits) has no bad_mask bit; NaN pixels
        without bad bits still count (algorithms.md §2.2).

    Examples
    --------
    >>> cube = np.array([1, 2, 2, 3, 8], np.float32).reshape(5, 1, 1)
    >>> flags = np.zeros(cube.shape, np.int32)
    >>> opts = StackOptions(statistic="meanclip", bad_mask=1, clipped_bit=1 << 9)
    >>> value, var, msk, nimg = stack_block(cube, np.ones_like(cube), flags, np.ones(5),
    ...                                     options=opts)
    >>> float(value[0, 0]), float(var[0, 0]), int(msk[0, 0]), int(nimg[0, 0])
    (2.0, 0.25, 512, 5)
    """
    if options is None:
        options = StackOptions(**fields)
    elif fields:
        raise TypeError(f"stack_block takes options or its fields, not both: {sorted(fields)}")
    image, variance, mask = _check_cube(image, variance, mask)
    w, vis = _included_visits(weights, image.shape[0])
    kernel = options.kernel()
    nv, ny, nx = image.shape
    flat = [a.reshape(nv, ny * nx) for a in (image, variance, mask)]
    outs = _empty_outputs(ny * nx)
    if vis.size == 0:
        outs[0][:], outs[1][:], outs[2][:], outs[3][:] = np.nan, np.nan, kernel.no_data_bit, 0
        return _planes(outs, ny, nx)
    network = kernel.stat != MEAN and vis.size <= options.network_max_visits
    ci, cj = sorting_network(vis.size) if network else NO_NETWORK
    seg, width = options.segments(vis.size, image.itemsize)
    rows = 0 if kernel.stat == MEAN else vis.size
    vals = np.empty((rows, seg), dtype=image.dtype)
    buf = np.empty((rows, width) if network else (SELECT_TILE, rows), dtype=image.dtype)
    stack_flat(*flat, w, vis, kernel, ci, cj, seg, vals, buf, *outs)
    return _planes(outs, ny, nx)


register("stack_block", np.ndarray, stack_block)


def _planes(outs: Planes, ny: int, nx: int) -> Planes:
    value, var, out_mask, n_image = (o.reshape(ny, nx) for o in outs)
    return value, var, out_mask, n_image


def _check_cube(image, variance, mask):
    image, variance = np.asarray(image), np.asarray(variance)
    if image.ndim != 3 or variance.shape != image.shape or np.shape(mask) != image.shape:
        raise ValueError(
            f"image, variance and mask must share one (V, Y, X) shape, got "
            f"{image.shape}, {variance.shape}, {np.shape(mask)}"
        )
    if image.shape[0] > MAX_VISITS:
        raise ValueError(f"at most {MAX_VISITS} visits per block, got {image.shape[0]}")
    ftype = np.float64 if np.float64 in (image.dtype, variance.dtype) else np.float32
    cube = (
        np.ascontiguousarray(image, dtype=ftype),
        np.ascontiguousarray(variance, dtype=ftype),
        np.ascontiguousarray(mask, dtype=np.int32),
    )
    return tuple(readonly(a) for a in cube)


def _included_visits(weights, nvisit):
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if weights.size != nvisit:
        raise ValueError(f"weights has {weights.size} entries for {nvisit} visits")
    vis = np.flatnonzero(np.isfinite(weights) & (weights > 0))
    return np.ascontiguousarray(weights[vis]), vis.astype(np.int64)


def _empty_outputs(npix):
    return (
        np.empty(npix, np.float32),
        np.empty(npix, np.float32),
        np.empty(npix, np.int32),
        np.empty(npix, np.int32),
    )


@numba.njit(**JIT)
def stack_flat(
    image, variance, mask, w, vis, k, ci, cj, seg, vals, buf, out_val, out_var, out_mask, out_n
):  # pragma: no cover - numba
    """Drive the pixel segments of a flattened (visit, pixel) block; ``k`` is the
    :class:`~coaddx.kernels.stack.options.KernelOptions` of the call."""
    npix = image.shape[1]
    facc = np.empty((NFACC, seg))
    iacc = np.empty((4, seg), np.int32)
    rej = np.empty((k.pbits.size, seg))
    for x0 in range(0, npix, seg):
        x1 = min(npix, x0 + seg)
        for r in (SW, SWX, SW2, SDD, SV):  # the clip sums are cleared per iteration
            facc[r, : x1 - x0] = 0.0
        iacc[:, : x1 - x0] = 0
        rej[:, : x1 - x0] = 0.0
        if k.stat == MEAN:
            mean_segment(
                image,
                variance,
                mask,
                w,
                vis,
                x0,
                x1,
                k.err,
                k.bad,
                k.keep,
                k.pbits,
                facc,
                iacc,
                rej,
                out_val,
                out_var,
            )
        else:
            sorted_segment(
                image,
                variance,
                mask,
                w,
                vis,
                x0,
                x1,
                k.stat,
                k.err,
                k.bad,
                k.keep,
                k.clip_iter,
                k.sigma_clip,
                k.pbits,
                ci,
                cj,
                vals,
                buf,
                facc,
                iacc,
                rej,
                out_val,
                out_var,
            )
        finish_masks(
            x0,
            x1,
            vis.size,
            k.clipped_bit,
            k.no_data_bit,
            facc[SW],
            iacc,
            rej,
            k.pthr,
            k.pbits,
            k.mfrom,
            k.mto,
            out_mask,
            out_n,
        )
