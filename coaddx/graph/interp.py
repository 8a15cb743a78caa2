"""InterpImage over NO_DATA as dask tasks: one small task for the fallback value over the whole
2-D coadd, then bands of full rows (rows are independent, so the result does not depend on
the stacking subregions)."""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

from coaddx.graph.stack import LAYERS_DTYPE
from coaddx.kernels.interp import interpolate_over_defects
from coaddx.kernels.stats import meanclip_1d

__all__ = ["interpolate_rows"]


def _fallback_chunk(
    image: np.ndarray, *, kind: str, user_value: float, negative_allowed: bool
) -> np.ndarray:
    if kind == "MEDIAN":
        finite = image[np.isfinite(image)]
        value = float(np.median(finite)) if finite.size else float("nan")
    elif kind == "MEAN":
        finite = image[np.isfinite(image)]
        value = float(finite.mean()) if finite.size else float("nan")
    elif kind == "MEANCLIP":  # afw's default StatisticsControl: 3 sigma, 3 iterations
        value = meanclip_1d(image, sigma_clip=3.0, clip_iter=3)
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
    out = np.empty(img.shape, dtype=LAYERS_DTYPE)
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
        dtype=LAYERS_DTYPE,
    )
    return packed["image"], packed["variance"], packed["mask"]
