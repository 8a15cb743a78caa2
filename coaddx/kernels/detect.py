"""Footprint detection on numpy planes (SourceDetectionTask as CompareWarp uses it,
algorithms.md 1.7): thresholding, footprints of at least ``min_pixels`` pixels, growth.

:func:`detect_tile` differences a (haloed) tile of one PSF-matched warp with the template and
returns packed per-pixel flags (below); what needs whole footprints works on a visit's whole
plane of them (:mod:`coaddx.kernels.artifacts`). :func:`template_footprints` finds the bright
template sources of the containment veto. Pure numpy/scipy/numba; no dask, xarray or I/O.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy import ndimage

from coaddx.kernels import components
from coaddx.kernels.background import background_model

__all__ = [
    "CANDIDATE",
    "DETECTED",
    "EDGE_SPAN",
    "EIGHT_CONNECTED",
    "GOOD",
    "NAN_SPAN",
    "PREFILTER_GOOD",
    "STAMP_RADIUS",
    "detect_tile",
    "dilate",
    "disk",
    "footprint_mask",
    "n_grow",
    "remove_small",
    "template_footprints",
]

#: Flags of the packed uint8 plane :func:`detect_tile` returns, one per (visit, pixel).
CANDIDATE = 1  # in a grown difference footprint (either sign)
GOOD = 2  # counts in the PSF-matched n_image: finite difference, no bad bit
NAN_SPAN = 4  # the difference is NaN: becomes a NO_DATA span of the direct warp
EDGE_SPAN = 8  # the PSF-matched warp has EDGE: becomes an EDGE span
PREFILTER_GOOD = 16  # no prefilter plane (NO_DATA, BAD, SUSPECT) set
DETECTED = 32  # above the positive threshold, before growth (streak finding)

#: 8-connectivity, as afw's ``FootprintSet`` labels footprints.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# -- footprints -------------------------------------------------------------------------------


def n_grow(n_sigma: float, sigma_psf: float) -> int:
    """SourceDetectionTask's growth in pixels: ``int(nSigmaToGrow * sigma_psf + 0.5)``."""
    return int(n_sigma * sigma_psf + 0.5)


def disk(radius: int, isotropic: bool = True) -> np.ndarray:
    """Stencil of ``radius``: a circle (x² + y² <= r²) or, not isotropic, a square."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy <= r * r) if isotropic else np.ones((2 * r + 1,) * 2, bool)


def dilate(mask: np.ndarray, radius: int, isotropic: bool = True) -> np.ndarray:
    """Grow a boolean plane by ``radius`` pixels (footprints clipped to the plane)."""
    if radius <= 0 or not mask.any():
        return mask.copy()
    if isotropic and radius > 2:  # exact (x² + y² <= r² <=> distance <= r), fast for any r
        return ndimage.distance_transform_edt(~mask) <= radius
    if not isotropic:
        return ndimage.maximum_filter(mask, size=2 * radius + 1)  # separable square
    out = mask.copy()
    ny, nx = mask.shape
    for dy, dx in np.argwhere(disk(radius)) - radius:  # OR of shifted copies (<= 13 offsets)
        out[max(dy, 0) : ny + min(dy, 0), max(dx, 0) : nx + min(dx, 0)] |= mask[
            max(-dy, 0) : ny + min(-dy, 0), max(-dx, 0) : nx + min(-dx, 0)
        ]
    return out


def remove_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Keep the 8-connected components of ``mask`` with at least ``min_pixels`` pixels
    (:func:`coaddx.kernels.components.remove_small`, the components of scipy's label).

    Exact on a tile with a halo of ``min_pixels - 1`` around the pixels that matter: a
    component smaller than that lies wholly within the halo of any of its pixels.
    """
    if min_pixels <= 1 or not mask.any():
        return mask.copy()
    return components.remove_small(mask, min_pixels)


#: Growth radii up to which :func:`detect_tile` stamps the stencil on each detected pixel
#: (beyond it, :func:`dilate`'s distance transform is cheaper).
STAMP_RADIUS = 4


def footprint_mask(
    image: np.ndarray, variance: np.ndarray, *, threshold: float, polarity: str, min_pixels: int
) -> np.ndarray:
    """Pixels of footprints of one sign (``pixel_stdev``: ``±value >= T sqrt(variance)``;
    NaN never qualifies) with at least ``min_pixels`` pixels, before growth."""
    sign = 1.0 if polarity == "positive" else -1.0
    with np.errstate(invalid="ignore"):
        above = sign * image >= threshold * np.sqrt(variance)
    return remove_small(above, min_pixels)


@numba.njit(nogil=True, cache=True)
def _pixel_flags(
    p_image,
    p_variance,
    p_mask,
    t_image,
    t_variance,
    threshold,
    bad_bits,
    prefilter_bits,
    edge_bit,
    flags,
    above,
    below,
):  # pragma: no cover - numba
    """One pass over a tile: difference, both thresholds and the per-pixel flags."""
    thr = np.float32(threshold)
    for i in range(p_image.shape[0]):
        for j in range(p_image.shape[1]):
            d = np.float32(p_image[i, j]) - np.float32(t_image[i, j])
            limit = thr * np.sqrt(np.float32(p_variance[i, j]) + np.float32(t_variance[i, j]))
            m = p_mask[i, j]
            f = 0
            if math.isfinite(d):
                if (m & bad_bits) == 0:
                    f |= GOOD
            else:
                f |= NAN_SPAN
            if (m & edge_bit) != 0:
                f |= EDGE_SPAN
            if (m & prefilter_bits) == 0:
                f |= PREFILTER_GOOD
            flags[i, j] = f
            above[i, j] = d >= limit  # NaN difference or variance: never detected
            below[i, j] = -d >= limit


def detect_tile(
    p_image: np.ndarray,
    p_variance: np.ndarray,
    p_mask: np.ndarray,
    t_image: np.ndarray,
    t_variance: np.ndarray,
    *,
    threshold: float,
    polarity: str,
    min_pixels: int,
    grow: int,
    isotropic: bool,
    bad_bits: int,
    prefilter_bits: int,
    edge_bit: int,
) -> np.ndarray:
    """Difference of a (haloed) tile of a PSF-matched warp with the template, detected.

    ``p_variance`` is already rescaled (ScaleVariance); the difference and its variance are
    float32, and a pixel is detected when ``±difference >= threshold * sqrt(variance)``.
    Returns the packed uint8 flags (:data:`CANDIDATE`, :data:`GOOD`, ...). The halo must be at
    least ``grow + min_pixels - 1`` pixels for the trimmed core to be exact.
    """
    shape = p_image.shape
    flags = np.empty(shape, np.uint8)
    above, below = np.empty(shape, bool), np.empty(shape, bool)
    _pixel_flags(
        p_image,
        p_variance,
        np.ascontiguousarray(p_mask, np.int32),
        t_image,
        t_variance,
        float(threshold),
        np.int32(bad_bits),
        np.int32(prefilter_bits),
        np.int32(edge_bit),
        flags,
        above,
        below,
    )
    signs = {"positive": (above,), "negative": (below,), "both": (above, below)}[polarity]
    found = [components.remove_small(m, min_pixels) for m in signs]
    grown = np.zeros(shape, bool)
    if grow <= STAMP_RADIUS:  # the same pixels as dilate(): the stencil around each one
        offsets = components.stencil_offsets(disk(max(int(grow), 0), isotropic))
        for m in found:
            components.stamp(m, offsets, grown)
    else:
        for m in found:
            grown |= dilate(m, grow, isotropic)
    flags[grown] |= np.uint8(CANDIDATE)
    if polarity != "negative":
        flags[found[0]] |= np.uint8(DETECTED)
    return flags


def template_footprints(
    image: np.ndarray,
    variance: np.ndarray,
    *,
    threshold: float,
    polarity: str,
    min_pixels: int,
    grow: int,
    isotropic: bool,
    background_bin: int | None = None,
) -> np.ndarray:
    """Footprints of the bright template sources (the containment veto), grown, as one boolean
    plane: ``polarity`` "positive", "negative" or "both" (:func:`footprint_mask` of each sign),
    after subtracting a :func:`~coaddx.kernels.background.background_model` of
    ``background_bin`` bins when given (doTempLocalBackground)."""
    img = image.astype(np.float64)
    if background_bin is not None:
        img = img - background_model(img, np.isfinite(img), background_bin)
    signs = ("positive", "negative") if polarity == "both" else (polarity,)
    out = np.zeros(img.shape, bool)
    for s in signs:
        out |= footprint_mask(img, variance, threshold=threshold, polarity=s, min_pixels=min_pixels)
    return dilate(out, grow, isotropic)
