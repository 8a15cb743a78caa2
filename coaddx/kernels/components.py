"""8-connected components of sparse boolean planes, in numba (CompareWarp's detection).

The same components as ``scipy.ndimage.label(mask, structure=np.ones((3, 3)))``, numbered the
same way (in raster order of each component's first pixel): every component is walked from its
first pixel in a raster scan, so a plane with a few percent of its pixels set costs one scan of
the plane and one visit of each set pixel, with the GIL released (scipy's label holds it, and
two threads then wait on each other). Used by :func:`coaddx.kernels.detect.detect_tile`
(:func:`remove_small`, :func:`stamp`) and :mod:`coaddx.kernels.artifacts` (:func:`label_flags`).
Pure numba/numpy.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["label_flags", "remove_small", "stamp", "stencil_offsets"]


@numba.njit(nogil=True, cache=True)
def _walk(on, labels, y0, x0, label, stack):  # pragma: no cover - numba
    """Label the 8-connected component of ``on`` at (y0, x0) with ``label``; its pixels (flat
    indices) are left in ``stack[:n]``; returns n."""
    ny, nx = on.shape
    labels[y0, x0] = label
    stack[0] = y0 * nx + x0
    n, head = 1, 0
    while head < n:
        p = stack[head]
        head += 1
        y, x = p // nx, p % nx
        for dy in range(-1, 2):
            yy = y + dy
            if yy < 0 or yy >= ny:
                continue
            for dx in range(-1, 2):
                xx = x + dx
                if xx < 0 or xx >= nx or not on[yy, xx] or labels[yy, xx] != 0:
                    continue
                labels[yy, xx] = label
                stack[n] = yy * nx + xx
                n += 1
    return n


@numba.njit(nogil=True, cache=True)
def _remove_small(on, min_pixels, out):  # pragma: no cover - numba
    ny, nx = on.shape
    labels = np.zeros((ny, nx), np.int32)
    stack = np.empty(ny * nx, np.int64)
    flat = out.ravel()
    for y in range(ny):
        for x in range(nx):
            if on[y, x] and labels[y, x] == 0:
                n = _walk(on, labels, y, x, 1, stack)
                if n >= min_pixels:
                    for i in range(n):
                        flat[stack[i]] = True


def remove_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """``mask`` (2-D bool) without its 8-connected components of fewer than ``min_pixels``
    pixels (what ``coaddx.kernels.detect.remove_small`` computes with scipy's label)."""
    out = np.zeros(mask.shape, bool)
    _remove_small(np.ascontiguousarray(mask, bool), int(min_pixels), out)
    return out


@numba.njit(nogil=True, cache=True)
def _label_flags(packed, bit, count_bit, labels, area, counted):  # pragma: no cover - numba
    ny, nx = packed.shape
    on = (packed & np.uint8(bit)) != 0
    stack = np.empty(ny * nx, np.int64)
    flat = packed.ravel()
    n = 0
    for y in range(ny):
        for x in range(nx):
            if on[y, x] and labels[y, x] == 0:
                n += 1
                k = _walk(on, labels, y, x, n, stack)
                c = 0
                for i in range(k):
                    if (flat[stack[i]] & count_bit) != 0:
                        c += 1
                area[n] = k
                counted[n] = c
    return n


def label_flags(
    packed: np.ndarray, bit: int, count_bit: int
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """The 8-connected components of the pixels of the uint8 plane ``packed`` with ``bit``:
    ``labels`` (int32, 0 = none, numbered as scipy's label), their number ``n``, and per label
    (index 0 unused, zero) its pixel count and how many of its pixels have ``count_bit``
    (float64, length ``n + 1``)."""
    packed = np.ascontiguousarray(packed, np.uint8)
    labels = np.zeros(packed.shape, np.int32)
    size = packed.size // 2 + 2  # at most one component per two pixels, plus label 0
    area, counted = np.zeros(size, np.float64), np.zeros(size, np.float64)
    n = _label_flags(packed, np.uint8(bit), np.uint8(count_bit), labels, area, counted)
    return labels, int(n), area[: n + 1].copy(), counted[: n + 1].copy()


def stencil_offsets(stencil: np.ndarray) -> np.ndarray:
    """The ``(k, 2)`` int64 offsets of the set pixels of a centred ``(2r + 1, 2r + 1)`` stencil."""
    r = stencil.shape[0] // 2
    return (np.argwhere(stencil) - r).astype(np.int64)


@numba.njit(nogil=True, cache=True)
def _stamp(mask, offsets, out):  # pragma: no cover - numba
    ny, nx = mask.shape
    for y in range(ny):
        for x in range(nx):
            if mask[y, x]:
                for k in range(offsets.shape[0]):
                    yy, xx = y + offsets[k, 0], x + offsets[k, 1]
                    if 0 <= yy < ny and 0 <= xx < nx:
                        out[yy, xx] = True


def stamp(mask: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """OR into ``out`` (bool) ``mask`` dilated by the stencil ``offsets``
    (:func:`stencil_offsets`), clipped to the plane."""
    _stamp(np.ascontiguousarray(mask, bool), offsets, out)
