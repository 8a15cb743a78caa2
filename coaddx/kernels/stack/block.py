"""Per-pixel stacking of a (visit, y, x) block with the afw ``statisticsStack`` rules.

Pure numpy + numba kernel (algorithms.md §1.1, §1.3, §2.2). One call stacks one block on one
thread with the GIL released; dask supplies the parallelism. :func:`stack_block` checks the
arrays, takes its settings as one :class:`~coaddx.kernels.stack.options.StackOptions` and calls
the compiled driver of its statistic (``mean_flat``, ``meanclip_flat``, ``median_flat``, and
``*_select_flat`` above ``network_max_visits``), which runs the passes over segments of the block
viewed as (visit, pixel). One driver per statistic keeps a first run's compile (empty numba
cache) to what that statistic needs; every driver is ``cache=True`` and captures nothing.

* ``"mean"`` (:mod:`.mean`): visit-outer passes over contiguous pixel segments with float64
  accumulators and a branch-free good-pixel test (runs near memory bandwidth).
* ``"median"`` / ``"meanclip"`` (:mod:`.select`, :mod:`.network`, :mod:`.clip`): per segment
  the values are copied into a (visit, pixel) buffer, sorted column-wise by a sorting network
  (per-pixel quickselect above ``network_max_visits``), then the clip iterations run as
  visit-outer passes over the unsorted copy. The passes over visits take four visits at a time
  (each pixel's sums are loaded and stored once per four visits, and added to in visit order).
* the output mask and n_image (:mod:`.masks`).

Numerics: all sums are float64. Clipped sums are taken about the clip-window centre (afw sums
x - centre), and a kept set of identical values has exactly that mean and a zero variance.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from coaddx.kernels._dispatch import register
from coaddx.kernels.stack.clip import meanclip_finish
from coaddx.kernels.stack.masks import finish_masks
from coaddx.kernels.stack.mean import mean_segment
from coaddx.kernels.stack.network import sort_plan, sorting_network
from coaddx.kernels.stack.options import (
    ERROR_MODES,
    MAX_VISITS,
    MEAN,
    MEANCLIP,
    STATISTICS,
    StackOptions,
    readonly,
)
from coaddx.kernels.stack.scratch import CNT, HIQR, JIT, NFACC, SDD, SV, SW, SW2, SWX, C
from coaddx.kernels.stack.select import (
    SELECT_TILE,
    fill_clip_segment,
    fill_segment,
    median_finish,
    network_window,
    selection_window,
)

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
        Mask bit planes: uint16 (the warp store's) or int32 are used as they are, other
        integer types are widened to int32.
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
    seg, width = options.segments(vis.size, image.itemsize)
    if kernel.stat == MEAN:
        mean_flat(*flat, w, vis, kernel, seg, *outs)
        return _planes(outs, ny, nx)
    # one compiled driver per statistic and window method: a run compiles only what it uses
    network = vis.size <= options.network_max_visits or vis.size == 1
    vals = np.empty((vis.size, seg), dtype=image.dtype)
    if network:
        ci, cj, passes, rows = sort_plan(vis.size)
        buf = np.full((rows, width), np.inf, dtype=image.dtype)
        driver = meanclip_flat if kernel.stat == MEANCLIP else median_flat
        driver(*flat, w, vis, kernel, ci, cj, passes, seg, vals, buf, *outs)
    else:
        tile = np.empty((SELECT_TILE, vis.size), dtype=image.dtype)
        driver = meanclip_select_flat if kernel.stat == MEANCLIP else median_select_flat
        driver(*flat, w, vis, kernel, seg, vals, tile, *outs)
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
        np.ascontiguousarray(mask, dtype=_mask_dtype(mask)),
    )
    return tuple(readonly(a) for a in cube)


def _mask_dtype(mask):
    """uint16 masks (the warp store's, issue 15) are stacked as they are: widening a 64-visit
    block to int32 cost more than the clip passes of "mean" (a fresh 64 MiB copy per block,
    mostly page faults). Every other integer type is widened to int32, as before."""
    dtype = mask.dtype if isinstance(mask, np.ndarray) else np.asarray(mask).dtype
    return dtype if dtype in (np.dtype(np.uint16), np.dtype(np.int32)) else np.int32


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


# -- the compiled drivers, one per statistic (and window method) -----------------------------
# Each drives the pixel segments of a flattened (visit, pixel) block; ``k`` is the
# :class:`~coaddx.kernels.stack.options.KernelOptions` of the call. They share the segment
# prologue (:func:`segment_scratch`, :func:`clear_segment`) and epilogue (:func:`segment_masks`).


@numba.njit(**JIT)
def segment_scratch(nbits, seg):  # pragma: no cover - numba
    """The float64, int32 and rejected-weight scratch of one segment."""
    return np.empty((NFACC, seg)), np.empty((4, seg), np.int32), np.empty((nbits, seg))


@numba.njit(**JIT)
def clear_segment(npix, facc, iacc, rej):  # pragma: no cover - numba
    """Zero the sums of a segment (the clip sums are cleared per iteration)."""
    for r in (SW, SWX, SW2, SDD, SV):
        facc[r, :npix] = 0.0
    iacc[:, :npix] = 0
    rej[:, :npix] = 0.0


@numba.njit(**JIT)
def segment_masks(x0, x1, nvis, k, facc, iacc, rej, out_mask, out_n):  # pragma: no cover
    """The output mask and n_image of a segment (:func:`.masks.finish_masks`)."""
    finish_masks(
        x0,
        x1,
        nvis,
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


@numba.njit(**JIT)
def mean_flat(
    image, variance, mask, w, vis, k, seg, out_val, out_var, out_mask, out_n
):  # pragma: no cover - numba
    """ "mean": visit-outer passes over each segment (:func:`.mean.mean_segment`)."""
    facc, iacc, rej = segment_scratch(k.pbits.size, seg)
    for x0 in range(0, image.shape[1], seg):
        x1 = min(image.shape[1], x0 + seg)
        clear_segment(x1 - x0, facc, iacc, rej)
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
        segment_masks(x0, x1, vis.size, k, facc, iacc, rej, out_mask, out_n)


@numba.njit(**JIT)
def meanclip_flat(
    image,
    variance,
    mask,
    w,
    vis,
    k,
    ci,
    cj,
    passes,
    seg,
    vals,
    buf,
    out_val,
    out_var,
    out_mask,
    out_n,
):  # pragma: no cover - numba
    """ "meanclip" with the sorting network (the bitonic passes, or the comparators (ci, cj)
    where there are none) for the window of pass 0."""
    facc, iacc, rej = segment_scratch(k.pbits.size, seg)
    for x0 in range(0, image.shape[1], seg):
        x1 = min(image.shape[1], x0 + seg)
        clear_segment(x1 - x0, facc, iacc, rej)
        fill_clip_segment(
            image, mask, w, vis, x0, x1, k.bad, k.keep, k.pbits, vals, facc, iacc, rej
        )
        network_window(
            vals, x1 - x0, k.sigma_clip, True, ci, cj, passes, buf, iacc[CNT], facc[C], facc[HIQR]
        )
        meanclip_finish(
            variance,
            vals,
            w,
            vis,
            x0,
            x1 - x0,
            k.err,
            k.clip_iter,
            k.sigma_clip,
            facc,
            iacc,
            out_val,
            out_var,
        )
        segment_masks(x0, x1, vis.size, k, facc, iacc, rej, out_mask, out_n)


@numba.njit(**JIT)
def median_flat(
    image,
    variance,
    mask,
    w,
    vis,
    k,
    ci,
    cj,
    passes,
    seg,
    vals,
    buf,
    out_val,
    out_var,
    out_mask,
    out_n,
):  # pragma: no cover - numba
    """ "median" with the sorting network (the bitonic passes, or the comparators (ci, cj))."""
    facc, iacc, rej = segment_scratch(k.pbits.size, seg)
    for x0 in range(0, image.shape[1], seg):
        x1 = min(image.shape[1], x0 + seg)
        clear_segment(x1 - x0, facc, iacc, rej)
        fill_segment(image, mask, w, vis, x0, x1, k.bad, k.keep, k.pbits, vals, facc, iacc, rej)
        network_window(
            vals, x1 - x0, k.sigma_clip, False, ci, cj, passes, buf, iacc[CNT], facc[C], facc[HIQR]
        )
        median_finish(vals, w, x0, x1 - x0, facc, iacc, out_val, out_var)
        segment_masks(x0, x1, vis.size, k, facc, iacc, rej, out_mask, out_n)


@numba.njit(**JIT)
def meanclip_select_flat(
    image, variance, mask, w, vis, k, seg, vals, tile, out_val, out_var, out_mask, out_n
):  # pragma: no cover - numba
    """ "meanclip" with a per-pixel selection for the window (many visits)."""
    facc, iacc, rej = segment_scratch(k.pbits.size, seg)
    for x0 in range(0, image.shape[1], seg):
        x1 = min(image.shape[1], x0 + seg)
        clear_segment(x1 - x0, facc, iacc, rej)
        fill_clip_segment(
            image, mask, w, vis, x0, x1, k.bad, k.keep, k.pbits, vals, facc, iacc, rej
        )
        selection_window(vals, x1 - x0, k.sigma_clip, True, facc[C], facc[HIQR], tile)
        meanclip_finish(
            variance,
            vals,
            w,
            vis,
            x0,
            x1 - x0,
            k.err,
            k.clip_iter,
            k.sigma_clip,
            facc,
            iacc,
            out_val,
            out_var,
        )
        segment_masks(x0, x1, vis.size, k, facc, iacc, rej, out_mask, out_n)


@numba.njit(**JIT)
def median_select_flat(
    image, variance, mask, w, vis, k, seg, vals, tile, out_val, out_var, out_mask, out_n
):  # pragma: no cover - numba
    """ "median" with a per-pixel selection (many visits)."""
    facc, iacc, rej = segment_scratch(k.pbits.size, seg)
    for x0 in range(0, image.shape[1], seg):
        x1 = min(image.shape[1], x0 + seg)
        clear_segment(x1 - x0, facc, iacc, rej)
        fill_segment(image, mask, w, vis, x0, x1, k.bad, k.keep, k.pbits, vals, facc, iacc, rej)
        selection_window(vals, x1 - x0, k.sigma_clip, False, facc[C], facc[HIQR], tile)
        median_finish(vals, w, x0, x1 - x0, facc, iacc, out_val, out_var)
        segment_masks(x0, x1, vis.size, k, facc, iacc, rej, out_mask, out_n)
