"""Spatially varying convolution with a PSF-matching kernel (algorithms.md 6.4, 6.5): image,
variance (with the squared kernel) and mask, on numpy/scipy only. Conventions as in
:mod:`coaddx.kernels.psfmatch`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.linalg

from coaddx.kernels.psfmatch.basis import monomials
from coaddx.kernels.psfmatch.solve import SpatialKernel, box_or, spatial_axis_values

__all__ = ["convolve_spatial"]


def _product_terms(model: str, a: int, c: int) -> list[tuple[int, float]]:
    """g_a · g_c as Σ coef · g_p for the 1-D functions (T_a T_c = (T_{a+c} + T_{|a-c|}) / 2)."""
    if model == "chebyshev1":
        return [(a + c, 0.5), (abs(a - c), 0.5)]
    return [(a + c, 1.0)]


def _squared_kernel_terms(kernel: SpatialKernel) -> dict[tuple[int, int], np.ndarray]:
    """K(x,y)² = Σ_{p,q} g_p(x) g_q(y) E_pq exactly (degree 2·order): {(p, q): E_pq}."""
    terms, powers = kernel.term_images(), monomials(kernel.spatial_order)
    out: dict[tuple[int, int], np.ndarray] = {}
    for k, (ax, ay) in enumerate(powers):
        for m in range(k, len(powers)):
            bx, by = powers[m]
            prod = terms[k] * terms[m] * (1.0 if m == k else 2.0)
            for px, cx in _product_terms(kernel.model, ax, bx):
                for py, cy in _product_terms(kernel.model, ay, by):
                    out[(px, py)] = out.get((px, py), 0.0) + cx * cy * prod
    return out


def _sum_convolved(
    data: np.ndarray,
    images: dict[tuple[int, int], np.ndarray],
    vx: np.ndarray,
    vy: np.ndarray,
    dtype: np.dtype,
) -> np.ndarray:
    """Σ_{(p,q)} vy[q](y) vx[p](x) · (image_pq ⊗ data) ('same' size).

    The data's FFT is taken once and reused for every term (one kernel FFT and one inverse
    FFT per term), in ``dtype`` precision, as is the sum: float32 data get single-precision
    FFTs, about 3x faster than double (round-off <~ 2e-6 of the image's RMS, far below
    the pixel noise).
    """
    ny, nx = data.shape
    k = next(iter(images.values())).shape[0]
    half = k // 2
    shape = (
        scipy.fft.next_fast_len(ny + k - 1, real=True),
        scipy.fft.next_fast_len(nx + k - 1, real=True),
    )
    spectrum = scipy.fft.rfft2(data.astype(dtype, copy=False), shape)
    vx, vy = vx.astype(dtype), vy.astype(dtype)
    out = np.zeros(data.shape, dtype)
    for (px, py), img in images.items():
        if np.any(img):
            # = rfft2(img, shape), skipping the row transforms of the zero padding
            rows = scipy.fft.rfft(img.astype(dtype), n=shape[1], axis=1)
            conv = scipy.fft.irfft2(spectrum * scipy.fft.fft(rows, n=shape[0], axis=0), shape)
            term = conv[half : half + ny, half : half + nx]  # a view: weight it in place
            term *= vx[px][None, :]
            term *= vy[py][:, None]
            out += term
    return out


def convolve_spatial(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray | None,
    kernel: SpatialKernel,
    *,
    origin: tuple[float, float] = (0, 0),
    normalize: bool = False,
    bad_bits: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convolve a masked image with a spatially varying kernel (afw convolve, exact).

    image: Σ_m f_m(x, y) (A_m ⊗ I) with A_m = Σ_j coeffs[j, m] B_j, which equals
    Σ_j c_j(x, y)(B_j ⊗ I) with n_spatial (not n_basis) FFT convolutions; the kernel is
    evaluated at the output pixel, as afw does. variance: Σ K(x, y)² ⊗ V computed exactly as
    Σ_{p,q} g_p(x) g_q(y) (E_pq ⊗ V), K² expanded in the degree-2·order spatial functions
    (15 convolutions for order 2). mask: OR over the full kernel footprint.
    ``normalize`` divides each local kernel by its sum (variance by the sum²), as
    ModelPsfMatchTask. Pixels within the kernel half-width of the edge, or whose footprint holds
    a non-finite image/variance pixel, get NaN image, +inf variance and ``bad_bits`` OR-ed into
    the mask (afw's NO_DATA edge pixel). ``origin`` = parent (x, y) of ``image[0, 0]``.

    Returns
    -------
    (image, variance, mask) of the input shape; floats in the input's float dtype (>= float32).
    """
    img = np.asarray(image)
    dtype = np.result_type(img.dtype, np.float32)
    data, var = img.astype(dtype), np.asarray(variance).astype(dtype)
    msk = np.zeros(img.shape, np.int32) if mask is None else np.asarray(mask)
    ny, nx = data.shape
    half = kernel.size // 2
    bad = ~(np.isfinite(data) & np.isfinite(var))
    data, var = np.where(bad, dtype.type(0), data), np.where(bad, dtype.type(0), var)
    xs, ys = origin[0] + np.arange(nx), origin[1] + np.arange(ny)
    x0, y0, x1, y1 = kernel.bbox
    order, model = kernel.spatial_order, kernel.model
    vx, vy = (
        spatial_axis_values(xs, x0, x1, 2 * order, model),
        spatial_axis_values(ys, y0, y1, 2 * order, model),
    )
    powers = monomials(order)
    terms = dict(zip(powers, kernel.term_images(), strict=True))
    # raw pixel-coordinate powers ("polynomial") can cancel between terms: double precision
    work = dtype if model == "chebyshev1" else np.dtype(np.float64)
    out = _sum_convolved(data, terms, vx, vy, work)
    out_var = _sum_convolved(var, _squared_kernel_terms(kernel), vx, vy, work)
    if normalize:
        ksum = sum(
            vy[py][:, None] * vx[px][None, :] * float(t.sum()) for (px, py), t in terms.items()
        )
        out /= ksum
        out_var /= ksum * ksum
    invalid = box_or(bad, half)
    invalid[:half], invalid[ny - half :] = True, True
    invalid[:, :half], invalid[:, nx - half :] = True, True
    out[invalid], out_var[invalid] = np.nan, np.inf
    out_mask = box_or(msk, half)
    if bad_bits:
        out_mask[invalid] |= np.asarray(bad_bits).astype(out_mask.dtype)
    return out.astype(dtype, copy=False), out_var.astype(dtype, copy=False), out_mask


def region_boxes(shape: tuple[int, int], region: int) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` of the ``region``-sized tiles that cover ``shape``, row-major."""
    ny, nx = shape
    return [
        (y0, min(y0 + region, ny), x0, min(x0 + region, nx))
        for y0 in range(0, ny, region)
        for x0 in range(0, nx, region)
    ]


def convolve_tile(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    kernel: SpatialKernel,
    box: tuple[int, int, int, int],
    *,
    no_data: int,
    normalize: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K (x) image over one tile ``box``, read with a halo of the kernel half-width, so that
    tiles agree exactly with one whole-image convolution."""
    half = kernel.size // 2
    ny, nx = image.shape
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
    return out[0][crop], out[1][crop], out[2][crop]


def paste_tiles(
    shape: tuple[int, int],
    boxes: list[tuple[int, int, int, int]],
    tiles: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full image, variance and mask from per-tile outputs."""
    out = (np.empty(shape, np.float32), np.empty(shape, np.float32), np.empty(shape, np.int32))
    for (y0, y1, x0, x1), parts in zip(boxes, tiles, strict=True):
        for dest, part in zip(out, parts, strict=True):
            dest[y0:y1, x0:x1] = part
    return out


def convolve_tiles(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    kernel: SpatialKernel,
    *,
    region: int,
    no_data: int,
    normalize: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K (x) image tile by tile in this thread: the form a task that already runs in parallel
    with others (one visit's PSF matching) uses; :func:`coaddx.graph.convolve.convolve_regions`
    runs the same tiles as dask tasks."""
    boxes = region_boxes(image.shape, region)
    tiles = [
        convolve_tile(image, variance, mask, kernel, b, no_data=no_data, normalize=normalize)
        for b in boxes
    ]
    return paste_tiles(image.shape, boxes, tiles)
