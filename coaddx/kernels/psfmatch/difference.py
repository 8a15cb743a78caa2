"""The difference image of ImagePsfMatch in one compiled pass (algorithms.md 6.4): image,
variance and mask of ``(reference - matched - background) · scale``, with the spatial
background evaluated on the fly (no full-size background, float64 or temporary planes), and
the bad-pixel plane of the candidate selection.

Both kernels are memory-bound single passes that release the GIL; :func:`difference_planes` splits
the rows between threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np

from coaddx.kernels.psfmatch.basis import monomials
from coaddx.kernels.psfmatch.solve import SpatialKernel, spatial_axis_values

__all__ = ["bad_pixels", "difference_planes"]

_JIT: dict[str, Any] = {"nogil": True, "cache": True, "error_model": "numpy"}


@numba.njit(**_JIT)
def _difference_rows(
    r0, r1, ref_img, ref_var, ref_mask, m_img, m_var, m_mask, a, v, scale, img, var, mask
):  # pragma: no cover - compiled
    """Rows [r0, r1): img = (ref - m - Σ_p a[y, p] v[p, x]) · scale (float64 arithmetic),
    var = (ref_var + m_var) · scale², mask = ref_mask | m_mask."""
    n_p, nx = v.shape
    s2 = scale * scale
    for y in range(r0, r1):
        for x in range(nx):
            bg = 0.0
            for p in range(n_p):
                bg += a[y, p] * v[p, x]
            img[y, x] = (np.float64(ref_img[y, x]) - np.float64(m_img[y, x]) - bg) * scale
            var[y, x] = (np.float64(ref_var[y, x]) + np.float64(m_var[y, x])) * s2
            mask[y, x] = ref_mask[y, x] | m_mask[y, x]


def _background_factors(kernel: SpatialKernel | None, shape: tuple[int, int]):
    """(a (ny, P), v (P, nx)) with background(x, y) = Σ_p a[y, p] v[p, x]: the spatial
    functions g_p(x) g_q(y) grouped by their x factor (P = bg_order + 1; zeros for none)."""
    ny, nx = shape
    if kernel is None or kernel.bg_coeffs is None:
        return np.zeros((ny, 1)), np.zeros((1, nx))
    x0, y0, x1, y1 = kernel.bbox
    order = kernel.bg_order
    vx = spatial_axis_values(np.arange(nx), x0, x1, order, kernel.model)
    vy = spatial_axis_values(np.arange(ny), y0, y1, order, kernel.model)
    a = np.zeros((ny, order + 1))
    for c, (px, py) in zip(kernel.bg_coeffs, monomials(order), strict=True):
        a[:, px] += c * vy[py]
    return a, np.ascontiguousarray(vx)


def difference_planes(
    reference: tuple[np.ndarray, np.ndarray, np.ndarray],
    matched: tuple[np.ndarray, np.ndarray, np.ndarray],
    kernel: SpatialKernel | None,
    *,
    scale: float = 1.0,
    threads: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, variance, mask) of the difference: ``(reference - matched - bg) · scale``
    (float32, from float64 arithmetic), ``(var_ref + var_matched) · scale²`` and the OR of the
    masks; ``bg`` is ``kernel.background`` (none when ``kernel`` is None or has no background
    terms). ``scale`` -1/ksum gives the convolve-science variant."""
    ref_img, ref_var, ref_mask = (np.ascontiguousarray(p) for p in reference)
    m_img, m_var, m_mask = (np.ascontiguousarray(p) for p in matched)
    shape = ref_img.shape
    a, v = _background_factors(kernel, shape)
    img, var = np.empty(shape, np.float32), np.empty(shape, np.float32)
    mask = np.empty(shape, np.result_type(ref_mask.dtype, m_mask.dtype))
    bounds = np.linspace(0, shape[0], max(1, min(threads, shape[0])) + 1).astype(int)

    def rows(i: int) -> None:
        _difference_rows(
            bounds[i], bounds[i + 1], ref_img, ref_var, ref_mask, m_img, m_var, m_mask,
            a, v, float(scale), img, var, mask,
        )  # fmt: skip

    if bounds.size == 2:
        rows(0)
    else:
        with ThreadPoolExecutor(bounds.size - 1) as pool:
            list(pool.map(rows, range(bounds.size - 1)))
    return img, var, mask


@numba.njit(**_JIT)
def _bad_pixels(mask_s, bits_s, mask_t, bits_t, img_s, img_t, out):  # pragma: no cover
    ny, nx = out.shape
    n_masked = n_unusable = 0
    for y in range(ny):
        for x in range(nx):
            masked = (mask_s[y, x] & bits_s) != 0 or (mask_t[y, x] & bits_t) != 0
            finite = np.isfinite(img_s[y, x]) and np.isfinite(img_t[y, x])
            code = (1 if masked else 0) | (0 if finite else 2)
            out[y, x] = code
            n_masked += masked
            n_unusable += code != 0
    return n_masked, n_unusable


def bad_pixels(
    mask_s: np.ndarray,
    bits_s: int,
    mask_t: np.ndarray,
    bits_t: int,
    img_s: np.ndarray,
    img_t: np.ndarray,
) -> tuple[np.ndarray, int, int]:
    """One pass over both images: (codes, n_masked, n_unusable). ``codes`` (uint8) has bit 0
    where ``mask_s`` holds a ``bits_s`` bit or ``mask_t`` a ``bits_t`` bit, bit 1 where either
    image is not finite; the counts are of pixels with bit 0 and with any bit."""
    out = np.empty(mask_s.shape, np.uint8)
    n_masked, n_unusable = _bad_pixels(
        np.ascontiguousarray(mask_s),
        np.int64(bits_s),
        np.ascontiguousarray(mask_t),
        np.int64(bits_t),
        np.ascontiguousarray(img_s),
        np.ascontiguousarray(img_t),
        out,
    )
    return out, int(n_masked), int(n_unusable)
