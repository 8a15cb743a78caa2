"""Resample one source image onto destination pixels: the afw warping kernel (algorithms.md 5.2).

afw ``warpExposure`` (``src/math/warpExposure.cc``, ``detail/WarpAtOnePoint.h``) computes, for
every destination pixel whose centre maps to the source position (x, y) (pixel centres at
integers), with i = floor(x), f = x - i (and j, g for y):

* value    = [sum_kl K(k, l) I(j+l, i+k)] * A / kSum,
* variance = [sum_kl K(k, l)^2 V(j+l, i+k)] * (A / kSum)^2,
* mask     = (OR of the source masks over the full kernel footprint) & grow_full_bits
             | (OR of the source masks where the bilinear mask kernel is non-zero),

where K is separable, K(k, l) = w_x(k) w_y(l), kSum = (sum w_x)(sum w_y) and A is the relative
area (source pixels per destination pixel). Lanczos-n has 2n taps at k = -(n-1)..n with weights
L(k - f), L(t) = sinc(pi t) sinc(pi t / n), sinc(u) = sin(u)/u (1 for |u| < 1e-5); bilinear has
taps k = 0, 1 with weights (1 - f, f); nearest takes the pixel i + (f >= 0.5) with weight 1.

A destination pixel is computed only if the whole kernel footprint lies inside the source:
i + k_first >= 0 and i + k_last <= size - 1 on both axes (afw's "good" source box: the source
box shrunk by n - 1 on the low side and n on the high side for Lanczos-n, by 0 and 1 for the
2-tap bilinear and nearest kernels). Other pixels, and pixels whose source position is not
finite, are "no data": (NaN, +inf, ``no_data_bit``).

NaN source pixels are never dropped: a NaN in a tap with non-zero weight makes the value NaN
(weights are not renormalised over finite pixels); for 0 < f < 1 every Lanczos tap is non-zero,
exactly as in afw. Deliberate differences from afw, all at exact-integer fractions:

* where f is exactly 0 on an axis (identity or integer-shift mappings) that axis has a single
  non-zero tap and is summed as such, so a NaN pixel spoils only the destination pixels that
  use it (afw multiplies all 2n taps, so 0 * NaN spreads it over the footprint);
* nearest rounds f = 0.5 up (afw's NearestFunction1 gives both taps weight 0 there, so
  kSum = 0 and the pixel becomes NaN).

The mask kernel is bilinear whatever ``kernel`` is (LSST's maskWarpingKernelName), and the
grown bits use the main kernel's footprint (2x2 for bilinear and nearest).

Speed (single thread, ``benchmarks/bench_warp_kernel.py``): sin(pi (k - f)) = -(-1)^k sin(pi f)
for every tap, and sin(pi (k - f) / n) follows from sin and cos of pi f / n by the angle
difference formula, so an axis costs three short polynomial evaluations (accurate to ~1e-16 on
the ranges used) instead of 2n sine calls; they are computed for a whole destination row at once
(SIMD-vectorised), with their squares and each pixel's area / kSum, in chunks of ``_CHUNK``
destination columns (still in cache when the pixel loop reads them; an interior pixel needs no
division). The tap count is a compile-time constant of each kernel's loop, pixels are read as
stored (float32) and accumulated in float64; an interior pixel's footprint is summed column by
column in explicit SIMD vectors (:func:`coaddx.kernels.footprint.footprint_sums`: each column
over the rows, then the columns weighted; the one-pixel fallback sums row by row, in either
order the float64 sums agree to rounding). The mask is computed in the same pixel loop (the
bilinear OR as four unchecked loads, :func:`coaddx.kernels.footprint.corner_or`), and the
grown-bit footprint OR is skipped wherever a lazily built 8x8-tile summary of the source mask
shows none of those bits. On the project machine a rotated 2048 x 4096 -> 2048 x 2048 Lanczos-3
warp runs at about 27 input Mpix/s in one thread (a straightforward numba loop: about 15),
bilinear at about 85.
"""

from __future__ import annotations

import numba
import numpy as np

from coaddx.kernels.footprint import corner_or, footprint_sums
from coaddx.kernels.lanczos import (
    KERNEL_CODES,
    KERNELS,
    MAX_TAPS,
    NEAREST,
    axis_weights,
    row_weights,
    tap_constants,
    tap_footprint,
)

__all__ = ["KERNELS", "lerp_weights", "relative_area", "warp_block", "warp_on_grid"]


def warp_block(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    src_x: np.ndarray,
    src_y: np.ndarray,
    area: np.ndarray,
    *,
    kernel: str = "lanczos3",
    grow_full_bits: int = 0,
    no_data_bit: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample one source image onto destination pixels with the afw warping semantics.

    Parameters
    ----------
    image, variance : ndarray of shape (sy, sx)
        Source image and variance (float32 or float64; other types are converted to float64).
    mask : ndarray of shape (sy, sx)
        Source bit mask (int32).
    src_x, src_y : ndarray of shape (ny, nx)
        0-based source pixel coordinates (column, row; pixel centres at integers) of every
        destination pixel centre, float64.
    area : ndarray of shape (ny, nx)
        Relative area (source pixels per destination pixel) used for flux conservation.
    kernel : {"lanczos3", "lanczos4", "bilinear", "nearest"}
        Resampling kernel for image and variance. The mask always uses the bilinear footprint.
    grow_full_bits : int
        Mask bits (EDGE in LSST) ORed over the full kernel footprint instead of the bilinear one.
    no_data_bit : int
        Mask value given to destination pixels that cannot be computed.

    Returns
    -------
    image, variance, mask : ndarray of shape (ny, nx)
        float32, float32 and int32. Pixels whose kernel footprint is not fully inside the source,
        or whose source position is not finite, are (NaN, +inf, ``no_data_bit``).

    Examples
    --------
    >>> img = np.arange(100, dtype=np.float32).reshape(10, 10)
    >>> yy, xx = np.indices((10, 10), dtype=float)
    >>> out, var, msk = warp_block(img, np.ones_like(img), np.zeros((10, 10), np.int32),
    ...                            xx, yy, np.ones((10, 10)))
    >>> bool(out[4, 4] == img[4, 4]), bool(np.isnan(out[0, 0])), bool(np.isinf(var[0, 0]))
    (True, True, True)
    """
    if kernel not in KERNEL_CODES:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    image, variance = _as_float(image), _as_float(variance)
    mask = np.ascontiguousarray(mask, dtype=np.int32)
    if not image.shape == variance.shape == mask.shape or image.ndim != 2:
        raise ValueError(
            "image, variance and mask must be 2-d arrays of one shape, got "
            f"{image.shape}, {variance.shape}, {mask.shape}"
        )
    src_x, src_y, area = (np.ascontiguousarray(a, dtype=np.float64) for a in (src_x, src_y, area))
    if not src_x.shape == src_y.shape == area.shape or src_x.ndim != 2:
        raise ValueError(
            "src_x, src_y and area must be 2-d arrays of one shape, got "
            f"{src_x.shape}, {src_y.shape}, {area.shape}"
        )
    code = KERNEL_CODES[kernel]
    out_image = np.empty(src_x.shape, np.float32)
    out_variance = np.empty(src_x.shape, np.float32)
    out_mask = np.empty(src_x.shape, np.int32)
    _warp(
        image,
        variance,
        mask,
        src_x,
        src_y,
        area,
        code,
        tap_footprint(code)[0],
        _taps(code),
        tap_constants(code),
        int(grow_full_bits),
        int(no_data_bit),
        out_image,
        out_variance,
        out_mask,
    )
    return out_image, out_variance, out_mask


def _as_float(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return np.ascontiguousarray(a)


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _footprint_or(mask, j0, i0, ny, nx, bits):  # pragma: no cover - numba
    """OR of mask[j0:j0+ny, i0:i0+nx] & bits."""
    acc = 0
    for r in range(j0, j0 + ny):
        for c in range(i0, i0 + nx):
            acc |= mask[r, c]
    return acc & bits


# -- grown mask bits: exact footprint OR, skipped where an 8x8 tile summary shows none ---------

_TILE_SHIFT = 3  # 8x8 source tiles
_CHUNK = 512  # destination columns whose weights are computed at once (kept in L1)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _grown_bits(mask, tiles, j0, i0, ntap, bits):  # pragma: no cover - numba
    """OR of mask & bits over the ntap x ntap footprint at (j0, i0); fills the tile summaries
    (tiles[tj, ti] = 1 if tile (tj, ti) holds any of bits, 0 if not, -1 not yet known)."""
    sy, sx = mask.shape
    size = 1 << _TILE_SHIFT
    hit = False
    for tj in range(j0 >> _TILE_SHIFT, ((j0 + ntap - 1) >> _TILE_SHIFT) + 1):
        for ti in range(i0 >> _TILE_SHIFT, ((i0 + ntap - 1) >> _TILE_SHIFT) + 1):
            if tiles[tj, ti] < 0:
                r0 = tj << _TILE_SHIFT
                c0 = ti << _TILE_SHIFT
                tiles[tj, ti] = (
                    _footprint_or(mask, r0, c0, min(sy - r0, size), min(sx - c0, size), bits) != 0
                )
            hit |= tiles[tj, ti] != 0
    return _footprint_or(mask, j0, i0, ntap, ntap, bits) if hit else 0


# -- the pixel loops ---------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def _pixel_general(
    image, variance, i, j, fx, fy, code, lo, ntap, consts, wx, wx2, wy, wy2
):  # pragma: no cover - numba
    """(sum K I, sum K^2 V, kSum) over the non-zero taps only: nearest, or a zero fraction."""
    ax, mx, tx = axis_weights(fx, code, lo, ntap, consts, wx, wx2)
    ay, my, ty = axis_weights(fy, code, lo, ntap, consts, wy, wy2)
    acc = 0.0
    acc_v = 0.0
    for t in range(my):
        part = 0.0
        part_v = 0.0
        for k in range(mx):
            part += wx[k] * image[j + ay + t, i + ax + k]
            part_v += wx2[k] * variance[j + ay + t, i + ax + k]
        acc += wy[t] * part
        acc_v += wy2[t] * part_v
    return acc, acc_v, tx * ty


# The loops below are module-level functions (no closures: numba's cache cannot keep a function
# whose closure holds a dispatcher, and would recompile it in every process). The tap count is
# the length of ``taps``, a tuple of that many zeros (one for nearest, whose pixels all take the
# single-tap path): a constant of each compiled specialisation, so that LLVM unrolls the tap
# loops and drops the unused paths as it would for literals.


def _taps(code: int) -> tuple[int, ...]:
    return (0,) if code == NEAREST else (0,) * tap_footprint(code)[1]


@numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
def _row_pixels(
    image, variance, mask, tiles, xs, ys, areas, box, code, lo, taps, consts, weights, squares,
    sums, small, grow_bits, no_data_bit, out_image, out_variance, out_mask,
):  # fmt: skip  # pragma: no cover - numba
    """Image, variance and mask of one destination row (``lo``: the first tap offset, which
    :func:`tap_footprint` ties to the tap count). The mask is the bilinear-footprint OR, plus
    the grown bits over the kernel footprint where the tile summaries show any."""
    separable = len(taps) != 1  # nearest (one-entry taps) always takes the single-tap path
    ntap = len(taps) if separable else 2
    lo = 0 if ntap == 2 else 1 - ntap // 2  # a constant too (== the argument)
    xlo, xhi, ylo, yhi = box
    flat_image = image.reshape(-1)
    flat_variance = variance.reshape(-1)
    flat_mask = mask.reshape(-1)
    flat_tiles = tiles.reshape(-1)
    stride = image.shape[1]
    tile_stride = tiles.shape[1]
    wxs, wys, wx2s, wy2s = weights[0], weights[1], squares[0], squares[1]
    for c in range(xs.size):
        x = xs[c]
        y = ys[c]
        if not (x >= xlo and x < xhi and y >= ylo and y < yhi):
            out_image[c] = np.nan
            out_variance[c] = np.inf
            out_mask[c] = no_data_bit
            continue
        i = int(x)
        j = int(y)
        fx = x - i
        fy = y - j
        q = j * stride + i
        if separable and fx > 0.0 and fy > 0.0:
            q0 = q + lo * (stride + 1)
            acc, acc_v = footprint_sums(
                flat_image, flat_variance, q0, stride, wxs, wx2s, wys, wy2s, c, taps
            )
            scale = sums[2, c]  # areas[c] / (sum w_x * sum w_y), computed for the whole row
            bits = corner_or(flat_mask, q, 1, stride)
        else:
            acc, acc_v, ksum = _pixel_general(
                image, variance, i, j, fx, fy, code, lo, ntap, consts,
                small[0], small[1], small[2], small[3],
            )  # fmt: skip
            scale = areas[c] / ksum
            bits = corner_or(flat_mask, q, 1 if fx > 0.0 else 0, stride if fy > 0.0 else 0)
        if grow_bits != 0:  # tiles: 0 = none of grow_bits there (the usual case)
            tj0 = (j + lo) >> _TILE_SHIFT
            ti0 = (i + lo) >> _TILE_SHIFT
            ti1 = (i + lo + ntap - 1) >> _TILE_SHIFT
            tj1 = (j + lo + ntap - 1) >> _TILE_SHIFT
            if corner_or(flat_tiles, tj0 * tile_stride + ti0, ti1 - ti0, (tj1 - tj0) * tile_stride):
                bits |= _grown_bits(mask, tiles, j + lo, i + lo, ntap, grow_bits)
        out_mask[c] = bits
        out_image[c] = acc * scale
        out_variance[c] = acc_v * (scale * scale)


@numba.njit(nogil=True, cache=True)
def _buffers(shape, nx, lo, ntap):  # pragma: no cover - numba
    """The computable box of source positions (0 <= floor(x) + lo and floor(x) + lo + ntap - 1
    <= size - 1 on both axes), the mask tile summaries and the per-row weight buffers."""
    sy, sx = shape
    nx = min(nx, _CHUNK)
    box = (float(-lo), float(sx - lo - ntap + 1), float(-lo), float(sy - lo - ntap + 1))
    tiles = np.full((((sy - 1) >> _TILE_SHIFT) + 1, ((sx - 1) >> _TILE_SHIFT) + 1), -1, np.int8)
    weights = np.empty((2, ntap, nx))
    squares = np.empty((2, ntap, nx))
    sums = np.empty((3, nx))  # sum w_x, sum w_y, area / (sum w_x sum w_y)
    scratch = np.empty((5, nx))
    small = np.empty((4, MAX_TAPS))
    return box, tiles, weights, squares, sums, scratch, small


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _warp_row(
    image,
    variance,
    mask,
    xs,
    ys,
    areas,
    code,
    lo,
    taps,
    consts,
    grow_bits,
    no_data_bit,
    bufs,
    r,
    out_image,
    out_variance,
    out_mask,
):  # pragma: no cover - numba
    """Destination row ``r``: its tap weights, image, variance and mask."""
    box, tiles, weights, squares, sums, scratch, small = bufs
    ntap = weights.shape[1]
    n = xs.size
    for c0 in range(0, n, _CHUNK):
        c1 = min(c0 + _CHUNK, n)
        cx, cy, ca = xs[c0:c1], ys[c0:c1], areas[c0:c1]
        m = c1 - c0
        if len(taps) != 1:  # separable kernels (nearest takes the single-tap path)
            row_weights(cx, code, lo, ntap, consts, weights[0], squares[0], sums[0], scratch)
            row_weights(cy, code, lo, ntap, consts, weights[1], squares[1], sums[1], scratch)
            for c in range(m):  # vectorised: no division left in the pixel loop
                sums[2, c] = ca[c] / (sums[0, c] * sums[1, c])
        _row_pixels(
            image, variance, mask, tiles, cx, cy, ca, box, code, lo, taps, consts, weights,
            squares, sums, small, grow_bits, no_data_bit, out_image[r, c0:c1],
            out_variance[r, c0:c1], out_mask[r, c0:c1],
        )  # fmt: skip


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _warp(
    image,
    variance,
    mask,
    src_x,
    src_y,
    area,
    code,
    lo,
    taps,
    consts,
    grow_bits,
    no_data_bit,
    out_image,
    out_variance,
    out_mask,
):  # pragma: no cover - numba
    ntap = len(taps) if len(taps) != 1 else 2
    bufs = _buffers(image.shape, src_x.shape[1], lo, ntap)
    for r in range(src_x.shape[0]):
        _warp_row(
            image,
            variance,
            mask,
            src_x[r],
            src_y[r],
            area[r],
            code,
            lo,
            taps,
            consts,
            grow_bits,
            no_data_bit,
            bufs,
            r,
            out_image,
            out_variance,
            out_mask,
        )


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _warp_grid(
    image,
    variance,
    mask,
    node_x,
    node_y,
    left_x,
    t_x,
    left_y,
    t_y,
    code,
    lo,
    taps,
    consts,
    grow_bits,
    no_data_bit,
    out_image,
    out_variance,
    out_mask,
):  # pragma: no cover - numba
    """As ``_warp``, with the source coordinates and relative areas interpolated row by row
    from the node grid (see :func:`warp_on_grid`) instead of read from full arrays."""
    ntap = len(taps) if len(taps) != 1 else 2
    ny, nx = out_image.shape
    bufs = _buffers(image.shape, nx, lo, ntap)
    # node rows interpolated along x once (x first, then y: the order of the reference)
    rows_x = _lerp_rows(node_x, left_x, t_x)
    rows_y = _lerp_rows(node_y, left_x, t_x)
    prev_x = np.empty(nx + 1)
    prev_y = np.empty(nx + 1)
    cur_x = np.empty(nx + 1)
    cur_y = np.empty(nx + 1)
    area = np.empty(nx)
    _lerp_row(rows_x, rows_y, left_y[0], t_y[0], prev_x, prev_y)
    for r in range(ny):
        _lerp_row(rows_x, rows_y, left_y[r + 1], t_y[r + 1], cur_x, cur_y)
        for i in range(nx):
            ax = cur_x[i + 1] - cur_x[i]
            ay = cur_y[i + 1] - cur_y[i]
            bx = cur_x[i + 1] - prev_x[i + 1]
            by = cur_y[i + 1] - prev_y[i + 1]
            area[i] = abs(ax * by - ay * bx)
        _warp_row(
            image,
            variance,
            mask,
            cur_x[1:],
            cur_y[1:],
            area,
            code,
            lo,
            taps,
            consts,
            grow_bits,
            no_data_bit,
            bufs,
            r,
            out_image,
            out_variance,
            out_mask,
        )
        prev_x, cur_x = cur_x, prev_x
        prev_y, cur_y = cur_y, prev_y


@numba.njit(nogil=True, cache=True)
def _lerp_rows(nodes, left, t):  # pragma: no cover - numba
    """Each node row linearly interpolated to every column: a * (1 - t) + b * t, as
    ``geometry._lerp`` computes it."""
    out = np.empty((nodes.shape[0], left.size))
    for k in range(nodes.shape[0]):
        for i in range(left.size):
            out[k, i] = nodes[k, left[i]] * (1.0 - t[i]) + nodes[k, left[i] + 1] * t[i]
    return out


@numba.njit(nogil=True, cache=True)
def _lerp_row(rows_x, rows_y, k, t, out_x, out_y):  # pragma: no cover - numba
    for i in range(out_x.size):
        out_x[i] = rows_x[k, i] * (1.0 - t) + rows_x[k + 1, i] * t
        out_y[i] = rows_y[k, i] * (1.0 - t) + rows_y[k + 1, i] * t


def lerp_weights(nodes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Left node index and fraction of every point 0..n-1 between ``nodes`` (the rule of
    ``geometry._lerp``: the last interval is extended, exact at the nodes)."""
    pos = np.arange(n)
    left = np.minimum(np.searchsorted(nodes, pos, side="right") - 1, nodes.size - 2)
    left = np.maximum(left, 0)
    t = (pos - nodes[left]) / (nodes[left + 1] - nodes[left])
    return left.astype(np.int64), t.astype(np.float64)


def warp_on_grid(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    node_x: np.ndarray,
    node_y: np.ndarray,
    nodes_x: np.ndarray,
    nodes_y: np.ndarray,
    shape: tuple[int, int],
    *,
    kernel: str = "lanczos3",
    grow_full_bits: int = 0,
    no_data_bit: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`warp_block` with the mapping given on a coarse node grid.

    ``node_x``, ``node_y`` are the source positions at the nodes ``nodes_y`` x ``nodes_x`` of
    the destination block extended by one row and column on the low side (node index 0 is
    destination pixel -1; the last nodes are ``shape[0]`` and ``shape[1]``), as built by
    :func:`coaddx.geometry.source_grid`. Each output row's coordinates and relative areas are
    interpolated in the loop, bit-identical to ``warp_block(*source_coordinates(...))`` without
    its three full-size float64 arrays (a 15 Mpix block: 360 MB written and read back).
    """
    if kernel not in KERNEL_CODES:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    image, variance = _as_float(image), _as_float(variance)
    mask = np.ascontiguousarray(mask, dtype=np.int32)
    if not image.shape == variance.shape == mask.shape or image.ndim != 2:
        raise ValueError(
            "image, variance and mask must be 2-d arrays of one shape, got "
            f"{image.shape}, {variance.shape}, {mask.shape}"
        )
    ny, nx = (int(n) for n in shape)
    node_x, node_y = (np.ascontiguousarray(a, dtype=np.float64) for a in (node_x, node_y))
    if (
        node_x.shape != node_y.shape
        or node_x.shape != (len(nodes_y), len(nodes_x))
        or nodes_x[-1] != nx
        or nodes_y[-1] != ny
        or min(node_x.shape) < 2
    ):
        raise ValueError("node grids do not match the nodes and the block shape")
    left_x, t_x = lerp_weights(np.asarray(nodes_x), nx + 1)
    left_y, t_y = lerp_weights(np.asarray(nodes_y), ny + 1)
    code = KERNEL_CODES[kernel]
    out_image = np.empty((ny, nx), np.float32)
    out_variance = np.empty((ny, nx), np.float32)
    out_mask = np.empty((ny, nx), np.int32)
    _warp_grid(
        image,
        variance,
        mask,
        node_x,
        node_y,
        left_x,
        t_x,
        left_y,
        t_y,
        code,
        tap_footprint(code)[0],
        _taps(code),
        tap_constants(code),
        int(grow_full_bits),
        int(no_data_bit),
        out_image,
        out_variance,
        out_mask,
    )
    return out_image, out_variance, out_mask


@numba.njit(nogil=True, cache=True)
def relative_area(px, py):  # pragma: no cover - numba
    """|det| of the backward differences of a mapping sampled on a grid extended by one row and
    column on the low side: (ny+1, nx+1) -> (ny, nx), in one pass (afw relative area)."""
    ny, nx = px.shape[0] - 1, px.shape[1] - 1
    out = np.empty((ny, nx), dtype=np.float64)
    for j in range(ny):
        for i in range(nx):
            ax = px[j + 1, i + 1] - px[j + 1, i]
            ay = py[j + 1, i + 1] - py[j + 1, i]
            bx = px[j + 1, i + 1] - px[j, i + 1]
            by = py[j + 1, i + 1] - py[j, i + 1]
            out[j, i] = abs(ax * by - ay * bx)
    return out
