"""Spatially varying convolution with a PSF-matching kernel (algorithms.md 6.4, 6.5): image,
variance (with the squared kernel) and mask. Conventions as in :mod:`coaddx.kernels.psfmatch`.

Two methods: ``"exact"`` evaluates the kernel at every output pixel (FFTs of the spatial term
images, the reference); ``"blockwise"`` cuts the parent image into blocks of :data:`BLOCK` =
8 x 256 pixels, and within each block takes the kernel at the centre row, linear in x between
its first and last column (afw's convolveWithInterpolation interpolates likewise; HOTPANTS
holds the kernel constant over 21 x 21 blocks), and convolves image and variance (with the
block-centre K²) by direct sums in one numba pass, ~5x less CPU than "exact" for a 21 px
kernel. The blocks sit on the parent image's pixel grid, so tiles agree exactly with one
whole-image convolution; masks and invalid pixels are the same in both methods. The error grows
with the kernel's spatial gradient: for a fitted-like kernel (shares of the basis changing by
~10 % across a 4096 px image) it is < 0.003 of the difference noise rms and < 0.2 of it at the
peaks of bright stars (tests/kernels/test_psfmatch_convolve.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numba
import numpy as np
import scipy.fft
import scipy.linalg

from coaddx.kernels.psfmatch.basis import monomials
from coaddx.kernels.psfmatch.solve import SpatialKernel, box_or, spatial_axis_values

__all__ = [
    "BLOCK",
    "BLOCK_TOLERANCE",
    "METHODS",
    "T_Method",
    "block_shape",
    "convolve_spatial",
    "convolve_tiles",
]

T_Method = Literal["exact", "blockwise"]
METHODS: tuple[str, ...] = ("exact", "blockwise")
#: (rows, columns) of the blocks over which ``"blockwise"`` holds the kernel constant.
BLOCK = (8, 256)


def _convolution_terms(kernel: SpatialKernel) -> np.ndarray:
    """A_m with K(x, y) = Σ_m f_m(x, y) A_m in the sense applied here (a true convolution):
    the one place where the kernel's sense enters the convolution."""
    return np.asarray(kernel.term_images(), np.float64)


def _footprint_or(mask: np.ndarray, half: int) -> np.ndarray:
    """:func:`box_or` over the kernel footprint, skipped (a copy) for an all-zero plane."""
    return box_or(mask, half) if mask.any() else mask.copy()


def _product_terms(model: str, a: int, c: int) -> list[tuple[int, float]]:
    """g_a · g_c as Σ coef · g_p for the 1-D functions (T_a T_c = (T_{a+c} + T_{|a-c|}) / 2)."""
    if model == "chebyshev1":
        return [(a + c, 0.5), (abs(a - c), 0.5)]
    return [(a + c, 1.0)]


def _squared_kernel_terms(kernel: SpatialKernel) -> dict[tuple[int, int], np.ndarray]:
    """K(x,y)² = Σ_{p,q} g_p(x) g_q(y) E_pq exactly (degree 2·order): {(p, q): E_pq}."""
    terms, powers = _convolution_terms(kernel), monomials(kernel.spatial_order)
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


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def _kernel_at(terms, fx, fy, col, bi, normalize, kern):  # pragma: no cover - numba
    """Σ_m fx[m, col] fy[m, bi] A_m into ``kern`` (divided by its sum with ``normalize``)."""
    n_m, k, _ = terms.shape
    kern[:, :] = 0.0
    for m in range(n_m):  # term by term: the (v, u) loops vectorise
        w = fx[m, col] * fy[m, bi]
        for v in range(k):
            for u in range(k):
                kern[v, u] += w * terms[m, v, u]
    total = 0.0
    for v in range(k):
        for u in range(k):
            total += kern[v, u]
    if normalize:
        for v in range(k):
            for u in range(k):
                kern[v, u] = kern[v, u] / total


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def _row_taps(o, row, kern, v, w):  # pragma: no cover - numba
    """o[t] += Σ_u kern[v, u] row[t + k - 1 - u]: four taps per pass over the output row."""
    k = kern.shape[0]
    u = 0
    while u + 4 <= k:
        a0, a1, a2, a3 = kern[v, u], kern[v, u + 1], kern[v, u + 2], kern[v, u + 3]
        s0, s1, s2, s3 = row[k - 1 - u :], row[k - 2 - u :], row[k - 3 - u :], row[k - 4 - u :]
        for t in range(w):
            o[t] += a0 * s0[t] + a1 * s1[t] + a2 * s2[t] + a3 * s3[t]
        u += 4
    while u < k:
        a0, s0 = kern[v, u], row[k - 1 - u :]
        for t in range(w):
            o[t] += a0 * s0[t]
        u += 1


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def _row_taps2(o, od, row, ka, kd, v, w):  # pragma: no cover - numba
    """:func:`_row_taps` of two kernels on one row in one pass (the row is loaded once)."""
    k = ka.shape[0]
    u = 0
    while u + 4 <= k:
        a0, a1, a2, a3 = ka[v, u], ka[v, u + 1], ka[v, u + 2], ka[v, u + 3]
        d0, d1, d2, d3 = kd[v, u], kd[v, u + 1], kd[v, u + 2], kd[v, u + 3]
        s0, s1, s2, s3 = row[k - 1 - u :], row[k - 2 - u :], row[k - 3 - u :], row[k - 4 - u :]
        for t in range(w):
            x0, x1, x2, x3 = s0[t], s1[t], s2[t], s3[t]
            o[t] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
            od[t] += d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3
        u += 4
    while u < k:
        a0, d0, s0 = ka[v, u], kd[v, u], row[k - 1 - u :]
        for t in range(w):
            o[t] += a0 * s0[t]
            od[t] += d0 * s0[t]
        u += 1


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def _convolve_blocks(
    data, var, terms, fx, fy, gx0, gy0, block_y, block_x, normalize, out, out_var
):  # pragma: no cover - numba
    """K ⊗ data and K² ⊗ var, K linear in x over each block of the parent grid.

    ``data[0, 0]`` is parent pixel (gx0, gy0); block (bi, bj) covers parent rows
    [bi·block_y, (bi+1)·block_y) and columns likewise, counted from the first block that holds
    a computed pixel. ``fy[m, bi]`` is the spatial factor at the block's centre row,
    ``fx[m, 2 bj]``/``fx[m, 2 bj + 1]`` those at its first and last column: the image uses
    the kernel interpolated linearly between these two columns (K_a ⊗ I + w (K_b - K_a) ⊗ I),
    the variance the square of the kernel at the block centre, (K_a + K_b)² / 4. Only pixels at
    least the kernel half-width inside ``data`` are written.
    """
    ny, nx = data.shape
    k = terms.shape[1]
    half = k // 2
    ka = np.empty((k, k), data.dtype)
    kb = np.empty((k, k), data.dtype)
    kd = np.empty((k, k), data.dtype)
    k2 = np.empty((k, k), data.dtype)
    slope = np.empty(block_x, data.dtype)
    buf = np.empty(block_x, data.dtype)
    i_lo, i_hi, j_lo, j_hi = half, ny - half, half, nx - half
    b_y0, b_x0 = (gy0 + i_lo) // block_y, (gx0 + j_lo) // block_x
    for bi in range(fy.shape[1]):
        r0 = max((b_y0 + bi) * block_y - gy0, i_lo)
        r1 = min((b_y0 + bi + 1) * block_y - gy0, i_hi)
        for bj in range(fx.shape[1] // 2):
            x_first = (b_x0 + bj) * block_x
            c0 = max(x_first - gx0, j_lo)
            c1 = min(x_first + block_x - gx0, j_hi)
            if r1 <= r0 or c1 <= c0:
                continue
            _kernel_at(terms, fx, fy, 2 * bj, bi, normalize, ka)
            _kernel_at(terms, fx, fy, 2 * bj + 1, bi, normalize, kb)
            for v in range(k):
                for u in range(k):
                    kd[v, u] = kb[v, u] - ka[v, u]
                    mid = 0.5 * (ka[v, u] + kb[v, u])
                    k2[v, u] = mid * mid
            w = c1 - c0
            for t in range(w):
                slope[t] = (c0 + t + gx0 - x_first) / (block_x - 1.0)
            for i in range(r0, r1):
                o, ov = out[i, c0:c1], out_var[i, c0:c1]
                o[:] = 0
                ov[:] = 0
                od = buf[:w]
                od[:] = 0
                for v in range(k):
                    y = i + half - v
                    _row_taps2(o, od, data[y, c0 - half : c1 + half], ka, kd, v, w)
                    _row_taps(ov, var[y, c0 - half : c1 + half], k2, v, w)
                for t in range(w):
                    o[t] += slope[t] * od[t]


#: Largest kernel change allowed within a block, as a fraction of the kernel's L1 norm
#: (:func:`block_shape`): the blockwise error is at most this fraction of the local flux.
BLOCK_TOLERANCE = 1e-3


def block_shape(
    kernel: SpatialKernel, block: tuple[int, int] = BLOCK, tol: float = BLOCK_TOLERANCE
) -> tuple[int, int] | None:
    """The blocks "blockwise" uses for ``kernel``: ``block`` halved (rows down to 1, columns
    down to 16) until, at 9 x 9 points over the kernel's bbox, the kernel changes by at most
    ``tol`` of its L1 norm within a block; None (use "exact") when even that is not enough.

    Measured: ``||K(x, y + by/2) - K(x, y)||₁`` (the kernel is taken at the block's centre row)
    and ``||(K(x - bx/2, y) + K(x + bx/2, y)) / 2 - K(x, y)||₁`` (it is linear in x across the
    block). Depends on the kernel only, so that every tile of one image uses the same blocks.
    """
    x0, y0, x1, y1 = kernel.bbox
    grid_x, grid_y = np.meshgrid(np.linspace(x0, x1, 9), np.linspace(y0, y1, 9))
    xs, ys = grid_x.ravel(), grid_y.ravel()

    def images(dx: float, dy: float) -> np.ndarray:
        c = kernel.coefficients(xs + dx, ys + dy)  # (n_basis, n_points)
        return np.tensordot(c.T, kernel.basis, axes=1)  # (n_points, k, k)

    centre = images(0.0, 0.0)
    norm = np.abs(centre).sum(axis=(1, 2)).max()
    if not norm > 0:
        return block
    by, bx = block
    while True:
        dev_y = np.abs(images(0.0, by / 2) - centre).sum(axis=(1, 2)).max() / norm
        if dev_y <= tol / 2 or by == 1:
            break
        by = max(by // 2, 1)
    while True:
        mid = 0.5 * (images(-bx / 2, 0.0) + images(bx / 2, 0.0)) - centre
        dev_x = np.abs(mid).sum(axis=(1, 2)).max() / norm
        if dev_x <= tol / 2 or bx <= 16:
            break
        bx = max(bx // 2, 16)
    return (by, bx) if dev_y <= tol / 2 and dev_x <= tol / 2 else None


def _blockwise(
    data: np.ndarray,
    var: np.ndarray,
    kernel: SpatialKernel,
    origin: tuple[float, float],
    normalize: bool,
    block: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Image and variance of the ``"blockwise"`` method (NaN outside the computed core)."""
    ny, nx = data.shape
    half = kernel.size // 2
    gx0, gy0 = round(origin[0]), round(origin[1])
    by, bx = block
    out = np.full(data.shape, np.nan, data.dtype)
    out_var = np.full(data.shape, np.nan, data.dtype)
    if ny <= 2 * half or nx <= 2 * half:
        return out, out_var
    first_y, last_y = (gy0 + half) // by, (gy0 + ny - half - 1) // by
    first_x, last_x = (gx0 + half) // bx, (gx0 + nx - half - 1) // bx
    cy = np.arange(first_y, last_y + 1) * by + (by - 1) / 2.0  # parent block centres
    starts = np.arange(first_x, last_x + 1) * bx  # first and last column of each block
    cx = np.column_stack([starts, starts + bx - 1]).ravel().astype(np.float64)
    x0, y0, x1, y1 = kernel.bbox
    vx = spatial_axis_values(cx, x0, x1, kernel.spatial_order, kernel.model)
    vy = spatial_axis_values(cy, y0, y1, kernel.spatial_order, kernel.model)
    powers = monomials(kernel.spatial_order)
    fx = np.ascontiguousarray([vx[px] for px, _ in powers])
    fy = np.ascontiguousarray([vy[py] for _, py in powers])
    _convolve_blocks(
        np.ascontiguousarray(data),
        np.ascontiguousarray(var),
        np.ascontiguousarray(_convolution_terms(kernel)),
        fx,
        fy,
        gx0,
        gy0,
        by,
        bx,
        normalize,
        out,
        out_var,
    )
    return out, out_var


def _exact(
    data: np.ndarray,
    var: np.ndarray,
    kernel: SpatialKernel,
    origin: tuple[float, float],
    normalize: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Image and variance of the ``"exact"`` method (FFTs of the spatial term images)."""
    ny, nx = data.shape
    xs, ys = origin[0] + np.arange(nx), origin[1] + np.arange(ny)
    x0, y0, x1, y1 = kernel.bbox
    order, model = kernel.spatial_order, kernel.model
    vx, vy = (
        spatial_axis_values(xs, x0, x1, 2 * order, model),
        spatial_axis_values(ys, y0, y1, 2 * order, model),
    )
    powers = monomials(order)
    terms = dict(zip(powers, _convolution_terms(kernel), strict=True))
    # raw pixel-coordinate powers ("polynomial") can cancel between terms: double precision
    work = data.dtype if model == "chebyshev1" else np.dtype(np.float64)
    out = _sum_convolved(data, terms, vx, vy, work)
    out_var = _sum_convolved(var, _squared_kernel_terms(kernel), vx, vy, work)
    if normalize:
        ksum = sum(
            vy[py][:, None] * vx[px][None, :] * float(t.sum()) for (px, py), t in terms.items()
        )
        out /= ksum
        out_var /= ksum * ksum
    return out, out_var


def convolve_spatial(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray | None,
    kernel: SpatialKernel,
    *,
    origin: tuple[float, float] = (0, 0),
    normalize: bool = False,
    bad_bits: int = 0,
    method: T_Method = "exact",
    block: tuple[int, int] = BLOCK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convolve a masked image with a spatially varying kernel (afw convolve).

    ``method="exact"``: image Σ_m f_m(x, y) (A_m ⊗ I) with A_m = Σ_j coeffs[j, m] B_j, which
    equals Σ_j c_j(x, y)(B_j ⊗ I) with n_spatial (not n_basis) FFT convolutions; the kernel is
    evaluated at the output pixel, as afw does. variance: Σ K(x, y)² ⊗ V computed exactly as
    Σ_{p,q} g_p(x) g_q(y) (E_pq ⊗ V), K² expanded in the degree-2·order spatial functions
    (15 convolutions for order 2). ``method="blockwise"``: K held constant over ``block``
    (rows, columns) blocks of the parent grid, evaluated at their centres, direct sums of image
    and variance (K²) in one pass (module docstring). mask (both): OR over the full kernel
    footprint. ``normalize`` divides each local kernel by its sum (variance by the sum²), as
    ModelPsfMatchTask. Pixels within the kernel half-width of the edge, or whose footprint holds
    a non-finite image/variance pixel, get NaN image, +inf variance and ``bad_bits`` OR-ed into
    the mask (afw's NO_DATA edge pixel). ``origin`` = parent (x, y) of ``image[0, 0]``
    (integers for "blockwise").

    Returns
    -------
    (image, variance, mask) of the input shape; floats in the input's float dtype (>= float32).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    img = np.asarray(image)
    dtype = np.result_type(img.dtype, np.float32)
    data, var = img.astype(dtype), np.asarray(variance).astype(dtype)
    msk = np.zeros(img.shape, np.int32) if mask is None else np.asarray(mask)
    ny, nx = data.shape
    half = kernel.size // 2
    bad = ~(np.isfinite(data) & np.isfinite(var))
    if bad.any():
        data, var = np.where(bad, dtype.type(0), data), np.where(bad, dtype.type(0), var)
    if method == "exact":
        out, out_var = _exact(data, var, kernel, origin, normalize)
    else:
        shape = block_shape(kernel, block)
        if shape is None:  # the kernel varies too fast for blocks: the reference
            out, out_var = _exact(data, var, kernel, origin, normalize)
        else:
            out, out_var = _blockwise(data, var, kernel, origin, normalize, shape)
    invalid = _footprint_or(bad, half)
    invalid[:half], invalid[ny - half :] = True, True
    invalid[:, :half], invalid[:, nx - half :] = True, True
    out[invalid], out_var[invalid] = np.nan, np.inf
    out_mask = _footprint_or(msk, half)
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
    method: T_Method = "exact",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K (x) image over one tile ``box``, read with a halo of the kernel half-width, so that
    tiles agree exactly with one whole-image convolution (either ``method``)."""
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
        method=method,
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
    method: T_Method = "exact",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K (x) image tile by tile in this thread: the form a task that already runs in parallel
    with others (one visit's PSF matching) uses; :func:`coaddx.graph.convolve.convolve_regions`
    runs the same tiles as dask tasks."""
    boxes = region_boxes(image.shape, region)
    tiles = [
        convolve_tile(
            image, variance, mask, kernel, b, no_data=no_data, normalize=normalize, method=method
        )
        for b in boxes
    ]
    return paste_tiles(image.shape, boxes, tiles)
