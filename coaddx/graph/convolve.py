"""The spatially varying convolution as dask tasks over tiles with halos (image differencing).

A task that is itself one of many parallel tasks (a visit's ModelPsfMatch inside
``make_warps``) calls :func:`coaddx.kernels.psfmatch.convolve.convolve_tiles` instead: the same
tiles in its own thread, with no nested ``compute``.
"""

from __future__ import annotations

import dask
import numpy as np

from coaddx.kernels.psfmatch.convolve import T_Method, convolve_tile, paste_tiles, region_boxes
from coaddx.kernels.psfmatch.solve import SpatialKernel

__all__ = ["convolve_regions"]


def convolve_regions(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    kernel: SpatialKernel,
    *,
    region: int,
    no_data: int,
    normalize: bool = False,
    method: T_Method = "exact",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K (x) image computed as one dask task per ``region``-sized tile, each reading a halo of
    the kernel half-width (the kernel is evaluated at every output pixel, so tiles agree exactly
    with one whole-image convolution; pixels within the half-width of the IMAGE edge are
    NO_DATA; ``method`` as in :func:`~coaddx.kernels.psfmatch.convolve.convolve_spatial`).
    Call it from the driver, not from inside a task. The tasks use no BLAS (FFTs, or numba
    direct sums for "blockwise"), so the workers do not compete with BLAS threads."""
    boxes = region_boxes(image.shape, region)
    task = dask.delayed(convolve_tile)
    tiles = dask.compute(
        *[
            task(
                image,
                variance,
                mask,
                kernel,
                b,
                no_data=no_data,
                normalize=normalize,
                method=method,
            )
            for b in boxes
        ]
    )
    return paste_tiles(image.shape, boxes, tiles)
