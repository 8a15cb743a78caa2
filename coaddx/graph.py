"""Dask graph builders: the only place where kernels are wired into dask.

Stacking runs blockwise: each task holds every visit of one ``S x S`` subregion and returns a
structured block (image, variance, mask, n_image), so the four coadd planes come from one
computation. Interpolation over NO_DATA runs on bands of full rows (rows are independent).
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import dask.array as da
import numpy as np

from .kernels.interp import interpolate_over_defects
from .kernels.psfconvolve import convolve_spatial
from .kernels.psfmatch import SpatialKernel
from .kernels.stack import stack_block
from .kernels.stats import meanclip_1d, meanclip_masked

__all__ = [
    "STACK_DTYPE",
    "convolve_regions",
    "finish_coadd_mask",
    "interpolate_rows",
    "stack",
    "visit_meanclip",
]

STACK_DTYPE = np.dtype([("image", "f4"), ("variance", "f4"), ("mask", "i4"), ("n_image", "i4")])
PLANES_DTYPE = np.dtype([("image", "f4"), ("variance", "f4"), ("mask", "i4")])


def _one(blocks: list[np.ndarray] | np.ndarray) -> np.ndarray:
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
    **kwargs: object,
) -> np.ndarray:
    value, var, out_mask, n_image = stack_block(
        _one(image), _one(variance), _one(mask), _one(weights), **kwargs
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
    out = mask.copy()
    out[(mask & inexact_from) != 0] |= inexact_bit
    out[variance == 0] |= edge_bit
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


def _fallback_chunk(
    image: np.ndarray, *, kind: str, user_value: float, negative_allowed: bool
) -> np.ndarray:
    if kind == "MEDIAN":
        finite = image[np.isfinite(image)]
        value = float(np.median(finite)) if finite.size else float("nan")
    elif kind == "MEAN":
        finite = image[np.isfinite(image)]
        value = float(finite.mean()) if finite.size else float("nan")
    elif kind == "MEANCLIP":
        value = meanclip_1d(image)
    else:
        value = float(user_value)
    if not negative_allowed and np.isfinite(value):
        value = max(value, 0.0)
    return np.asarray(value, dtype=np.float64)


def _interp_chunk(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    fallback: np.ndarray,
    *,
    bad_bits: int,
    intrp_bit: int,
    transpose: bool,
) -> np.ndarray:
    img, var, msk = interpolate_over_defects(
        image,
        variance,
        mask,
        bad_bits=bad_bits,
        intrp_bit=intrp_bit,
        fallback=float(fallback),
        transpose=transpose,
    )
    out = np.empty(img.shape, dtype=PLANES_DTYPE)
    out["image"], out["mask"] = img, msk
    with np.errstate(invalid="ignore"):
        out["variance"] = np.where(var > 0, var, np.float32(np.inf))
    return out


def interpolate_rows(
    image: da.Array,
    variance: da.Array,
    mask: da.Array,
    *,
    bad_bits: int,
    intrp_bit: int,
    kind: str = "MEDIAN",
    user_value: float = 0.0,
    negative_allowed: bool = False,
    transpose: bool = False,
    band_rows: int | None = None,
) -> tuple[da.Array, da.Array, da.Array]:
    """InterpImageTask over ``bad_bits`` of a 2-D coadd, then variance -> +inf where not > 0.

    The fallback is a statistic of the whole image (one small task over the 2-D coadd); rows
    (columns when ``transpose``) are interpolated in bands of full lines, so the result does
    not depend on the stacking subregions.
    """
    fallback = da.map_blocks(
        _fallback_chunk,
        image.rechunk(image.shape),
        kind=kind,
        user_value=user_value,
        negative_allowed=negative_allowed,
        dtype=np.float64,
        chunks=(),
        drop_axis=[0, 1],
    )
    ny, nx = image.shape
    if transpose:
        cols = band_rows or max(1, min(nx, image.chunks[1][0]))
        line_chunks: tuple[int | Sequence[int], int | Sequence[int]] = (ny, cols)
    else:
        rows = band_rows or max(1, min(ny, image.chunks[0][0]))
        line_chunks = (rows, nx)
    im, var, msk = (a.rechunk(line_chunks) for a in (image, variance, mask))
    packed = da.map_blocks(
        _interp_chunk,
        im,
        var,
        msk,
        fallback,
        bad_bits=bad_bits,
        intrp_bit=intrp_bit,
        transpose=transpose,
        dtype=PLANES_DTYPE,
    )
    return packed["image"], packed["variance"], packed["mask"]


def _visit_meanclip_chunk(
    variance: np.ndarray, mask: np.ndarray, *, bad_mask: int, sigma_clip: float, clip_iter: int
) -> np.ndarray:
    variance, mask = _one(variance), _one(mask)
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


def _tile(image, variance, mask, kernel, box, half, ny, nx, no_data, normalize):
    y0, y1, x0, x1 = box
    ya, yb, xa, xb = max(y0 - half, 0), min(y1 + half, ny), max(x0 - half, 0), min(x1 + half, nx)
    out = convolve_spatial(
        image[ya:yb, xa:xb],
        variance[ya:yb, xa:xb],
        mask[ya:yb, xa:xb],
        kernel,
        origin=(xa, ya),
        normalize=normalize,
        bad_bits=no_data,
    )
    crop = (slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
    return tuple(a[crop] for a in out)


def convolve_regions(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    kernel: SpatialKernel,
    *,
    region: int,
    no_data: int,
    normalize: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K (x) image as dask tasks over ``region``-sized tiles, each reading a halo of the kernel
    half-width (the kernel is evaluated at every output pixel, so tiles agree exactly with one
    whole-image convolution; pixels within the half-width of the IMAGE edge are NO_DATA)."""
    half = kernel.size // 2
    ny, nx = image.shape
    boxes = [
        (y0, min(y0 + region, ny), x0, min(x0 + region, nx))
        for y0 in range(0, ny, region)
        for x0 in range(0, nx, region)
    ]
    tiles = dask.compute(
        *[
            dask.delayed(_tile)(image, variance, mask, kernel, b, half, ny, nx, no_data, normalize)
            for b in boxes
        ]
    )
    out = [
        np.empty((ny, nx), np.float32),
        np.empty((ny, nx), np.float32),
        np.empty((ny, nx), np.int32),
    ]
    for (y0, y1, x0, x1), parts in zip(boxes, tiles, strict=True):
        for dest, part in zip(out, parts, strict=True):
            dest[y0:y1, x0:x1] = part
    return out[0], out[1], out[2]
