"""Footprint detection and the CompareWarp artifact rules on numpy planes (algorithms.md 1.5,
1.7, 3.3). Pure numpy/scipy (scikit-image for the Hough transform); no dask, xarray or I/O.

The per-visit detection works on tiles with a halo (:func:`detect_tile` returns the packed
per-pixel flags below); everything that needs whole footprints (prefilter, epoch rule,
containment, streaks) works on one visit's whole plane, labelled with 8-connectivity as afw's
``FootprintSet`` does.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy import ndimage

__all__ = [
    "ARTIFACT",
    "CANDIDATE",
    "DETECTED",
    "EDGE_SPAN",
    "GOOD",
    "NAN_SPAN",
    "PREFILTER_GOOD",
    "STREAK",
    "ExceedsMaxVarianceScaleError",
    "adaptive_sigma",
    "artifact_footprints",
    "background_model",
    "candidate_footprints",
    "detect_tile",
    "dilate",
    "drop_contained",
    "footprint_mask",
    "kept_candidates",
    "max_outlier_epochs",
    "meanclip_rows",
    "n_grow",
    "remove_small",
    "scale_variance_factor",
    "streak_mask",
    "visit_artifacts",
]

#: Flags of the packed uint8 plane :func:`detect_tile` returns, one per (visit, pixel).
CANDIDATE = 1  # in a grown difference footprint (either sign)
GOOD = 2  # counts in the PSF-matched n_image: finite difference, no bad bit
NAN_SPAN = 4  # the difference is NaN: becomes a NO_DATA span of the direct warp
EDGE_SPAN = 8  # the PSF-matched warp has EDGE: becomes an EDGE span
PREFILTER_GOOD = 16  # no prefilter plane (NO_DATA, BAD, SUSPECT) set
DETECTED = 32  # above the positive threshold, before growth (streak finding)

IQR_TO_SIGMA = 0.741301109252802
_EIGHT = np.ones((3, 3), dtype=bool)
_JIT = {"nogil": True, "cache": True}


class ExceedsMaxVarianceScaleError(RuntimeError):
    """ScaleVariance's factor is above its limit with both estimators."""


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
    """Keep the 8-connected components of ``mask`` with at least ``min_pixels`` pixels.

    Exact on a tile with a halo of ``min_pixels - 1`` around the pixels that matter: a
    component smaller than that lies wholly within the halo of any of its pixels.
    """
    if min_pixels <= 1 or not mask.any():
        return mask.copy()
    labels, _ = ndimage.label(mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel())
    return mask & (sizes[labels] >= min_pixels)


def footprint_mask(
    image: np.ndarray, variance: np.ndarray, *, threshold: float, polarity: str, min_pixels: int
) -> np.ndarray:
    """Pixels of footprints of one sign (``pixel_stdev``: ``±value >= T sqrt(variance)``;
    NaN never qualifies) with at least ``min_pixels`` pixels, before growth."""
    sign = 1.0 if polarity == "positive" else -1.0
    with np.errstate(invalid="ignore"):
        above = sign * image >= threshold * np.sqrt(variance)
    return remove_small(above, min_pixels)


@numba.njit(**_JIT)
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
    found = [remove_small(m, min_pixels) for m in signs]
    grown = np.zeros(shape, bool)
    for m in found:
        grown |= dilate(m, grow, isotropic)
    flags[grown] |= np.uint8(CANDIDATE)
    if polarity != "negative":
        flags[found[0]] |= np.uint8(DETECTED)
    return flags


# -- whole-visit footprint rules ---------------------------------------------------------------


def candidate_footprints(
    packed: np.ndarray, prefilter_ratio: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label one visit's candidates (merged, grown footprints of both signs) and prefilter them.

    Returns ``labels`` (0 = none), ``area`` per label and ``keep`` per label (index 0 is
    False): goodRatio = pixels without a prefilter plane / area > ``prefilter_ratio``
    (``None``: no prefilter).
    """
    labels, n = ndimage.label((packed & CANDIDATE) != 0, structure=_EIGHT)
    where = np.flatnonzero(labels)  # candidates are sparse: reduce over their pixels only
    flat = labels.ravel()[where]
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    keep = np.ones(n + 1, bool)
    if prefilter_ratio is not None:
        good = np.bincount(
            flat, weights=(packed.ravel()[where] & PREFILTER_GOOD) != 0, minlength=n + 1
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            keep = good / area > prefilter_ratio
    keep[0] = False
    return labels, area, keep


def kept_candidates(packed: np.ndarray, prefilter_ratio: float | None) -> np.ndarray:
    """Pixels of the candidates that pass the prefilter (what the epoch count adds up)."""
    labels, _, keep = candidate_footprints(packed, prefilter_ratio)
    return keep[labels]


def max_outlier_epochs(
    nbar: np.ndarray | float, *, max_num_epochs: int, low: float, high: float
) -> np.ndarray:
    """effMax = int(min(low N̄, max_num_epochs + high N̄)) (filterArtifacts).

    Examples
    --------
    >>> max_outlier_epochs(np.array([2, 3, 4, 10, 50, 100]), max_num_epochs=2, low=0.4,
    ...                    high=0.03).tolist()
    [0, 1, 1, 2, 3, 5]
    """
    nbar = np.nan_to_num(np.asarray(nbar, dtype=np.float64))  # NaN: an empty label
    return np.trunc(np.minimum(low * nbar, max_num_epochs + high * nbar)).astype(np.int64)


def artifact_footprints(
    labels: np.ndarray,
    area: np.ndarray,
    keep: np.ndarray,
    epoch: np.ndarray,
    n_image: np.ndarray,
    template_footprints: np.ndarray | None,
    *,
    max_num_epochs: int,
    low: float,
    high: float,
    spatial_threshold: float,
) -> np.ndarray:
    """Per label: is the (kept) candidate an artifact? (filterArtifacts, algorithms.md 3.3)

    N̄ = mean n_image over the footprint; a pixel is an outlier pixel when
    ``0 < epoch <= effMax(N̄)``; the footprint is an artifact when the outlier fraction is
    above ``spatial_threshold``, unless it lies wholly inside ``template_footprints``.
    """
    where = np.flatnonzero(labels)
    flat = labels.ravel()[where]
    n = area.size
    with np.errstate(invalid="ignore", divide="ignore"):
        nbar = np.bincount(flat, weights=n_image.ravel()[where], minlength=n) / area
    eff = max_outlier_epochs(nbar, max_num_epochs=max_num_epochs, low=low, high=high)
    e = epoch.ravel()[where]
    outlier = (e > 0) & (e <= eff[flat])
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.bincount(flat, weights=outlier, minlength=n) / area
    art = keep & (frac > spatial_threshold)
    if template_footprints is not None:
        outside = np.bincount(flat, weights=~template_footprints.ravel()[where], minlength=n)
        art &= outside > 0
    art[0] = False
    return art


# -- ScaleVariance and the background it subtracts -----------------------------------------------


@numba.njit(**_JIT)
def _quantile(s, n, f):  # pragma: no cover - numba
    p = f * (n - 1)
    lo = math.floor(p)
    hi = min(lo + 1, n - 1)
    return s[lo] + (p - lo) * (s[hi] - s[lo])


@numba.njit(**_JIT)
def _meanclip_rows(x, sigma, iters, out):  # pragma: no cover - numba
    buf = np.empty(x.shape[1], x.dtype)
    for r in range(x.shape[0]):
        k = 0
        for v in x[r]:
            if math.isfinite(v):
                buf[k] = v
                k += 1
        if k == 0:
            out[r] = np.nan
            continue
        s = np.sort(buf[:k])
        centre = _quantile(s, k, 0.5)
        half = sigma * IQR_TO_SIGMA * (_quantile(s, k, 0.75) - _quantile(s, k, 0.25))
        for _ in range(iters):
            total, kept = 0.0, 0
            for v in s:
                if abs(v - centre) <= half:
                    total += v
                    kept += 1
            if kept == 0:
                centre = np.nan
                break
            mean = total / kept
            ss = 0.0
            for v in s:
                if abs(v - centre) <= half:
                    ss += (v - mean) ** 2
            centre = mean
            half = sigma * math.sqrt(ss / (kept - 1)) if kept > 1 else np.nan
        out[r] = centre


def meanclip_rows(x: np.ndarray, *, sigma: float = 3.0, iters: int = 3) -> np.ndarray:
    """afw MEANCLIP along the last axis of ``x`` (NaN = missing), for every other index:
    first clip about the median with ``sigma * 0.7413 * IQR``, then about the clipped mean with
    ``sigma * std``, re-selecting from all values each time. NaN where nothing is kept."""
    flat = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    out = np.empty(flat.shape[0], np.float64)
    _meanclip_rows(flat, float(sigma), int(iters), out)
    return out.reshape(x.shape[:-1])


def _bin_centres(n: int, size: int) -> np.ndarray:
    starts = np.arange(0, n, size)
    return (starts + np.minimum(starts + size, n) - 1) / 2.0


def _interp_axis(
    centres: np.ndarray, values: np.ndarray, coords: np.ndarray, axis: int
) -> np.ndarray:
    """Akima spline along ``axis`` between bin centres (linear with < 4 bins, constant with 1:
    afw's REDUCE_INTERP_ORDER), extrapolated linearly from the end bins beyond them."""
    from scipy.interpolate import Akima1DInterpolator, interp1d

    values = np.moveaxis(values, axis, -1)
    if centres.size == 1:
        out = np.repeat(values, coords.size, axis=-1)
        return np.moveaxis(out, -1, axis)
    at = np.clip(coords, centres[0], centres[-1])
    spline = (
        interp1d(centres, values, axis=-1)
        if centres.size < 4
        else Akima1DInterpolator(centres, values, axis=-1)
    )
    out = spline(at)
    lo = (values[..., 1] - values[..., 0]) / (centres[1] - centres[0])
    hi = (values[..., -1] - values[..., -2]) / (centres[-1] - centres[-2])
    below, above = coords < centres[0], coords > centres[-1]
    out[..., below] += (coords[below] - centres[0]) * lo[..., None]
    out[..., above] += (coords[above] - centres[-1]) * hi[..., None]
    return np.moveaxis(out, -1, axis)


def background_model(image: np.ndarray, good: np.ndarray, bin_size: int) -> np.ndarray:
    """A smooth background: MEANCLIP of the good pixels in ``bin_size`` bins, empty bins filled
    from the nearest bin, Akima-interpolated between bin centres (SubtractBackgroundTask)."""
    ny, nx = image.shape
    b = int(bin_size)
    nby, nbx = -(-ny // b), -(-nx // b)
    pad = np.full((nby * b, nbx * b), np.nan, np.float32)
    pad[:ny, :nx] = np.where(good, image, np.nan)
    grid = meanclip_rows(pad.reshape(nby, b, nbx, b).transpose(0, 2, 1, 3).reshape(nby, nbx, -1))
    empty = ~np.isfinite(grid)
    if empty.all():
        return np.zeros(image.shape)
    if empty.any():
        idx = ndimage.distance_transform_edt(empty, return_distances=False, return_indices=True)
        grid = grid[tuple(idx)]
    rows = _interp_axis(_bin_centres(nx, b), grid, np.arange(nx, dtype=np.float64), axis=1)
    return _interp_axis(_bin_centres(ny, b), rows, np.arange(ny, dtype=np.float64), axis=0)


def scale_variance_factor(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    *,
    bad_bits: int,
    limit: float = 10.0,
    bin_size: int = 32,
) -> float:
    """ScaleVarianceTask: the factor the variance plane must be multiplied by (algorithms.md
    1.5). Raises :class:`ExceedsMaxVarianceScaleError` above ``limit`` with both estimators."""
    with np.errstate(invalid="ignore"):
        good = (
            ((mask & bad_bits) == 0) & np.isfinite(image) & np.isfinite(variance) & (variance > 0)
        )
    if np.count_nonzero(good) < 2:
        return 1.0
    resid = (image - background_model(image, good, bin_size))[good]
    var = variance[good].astype(np.float64)
    q1, q3 = np.percentile(resid / np.sqrt(var), [25, 75])
    factor = (0.74 * (q3 - q1)) ** 2
    if factor > limit:
        q1, q3 = np.percentile(resid, [25, 75])
        factor = (0.74 * (q3 - q1) / math.sqrt(np.median(var))) ** 2
        if factor > limit:
            raise ExceedsMaxVarianceScaleError(
                f"variance scale factor {factor:.3g} exceeds the limit {limit}"
            )
    return float(factor)


# -- PSF size -------------------------------------------------------------------------------


def adaptive_sigma(psf: np.ndarray, *, iters: int = 200, tol: float = 1e-10) -> float:
    """Determinant radius ``det(M)**0.25`` of the adaptive (Gaussian-weighted, SdssShape-like)
    second moments ``M`` of a PSF image: the fixed point of M = 2 Cov(I W_M)."""
    img = np.asarray(psf, np.float64)
    yy, xx = np.indices(img.shape, dtype=np.float64)
    total = img.sum()
    cy, cx = (img * yy).sum() / total, (img * xx).sum() / total
    dy, dx = yy - cy, xx - cx
    m = np.array([[1.0, 0.0], [0.0, 1.0]]) * max(1.0, img.shape[0] / 8.0) ** 2
    for _ in range(iters):
        inv = np.linalg.inv(m)
        w = img * np.exp(
            -0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy)
        )
        sw = w.sum()
        new = (
            2.0
            * np.array(
                [
                    [(w * dx * dx).sum(), (w * dx * dy).sum()],
                    [(w * dx * dy).sum(), (w * dy * dy).sum()],
                ]
            )
            / sw
        )
        if np.abs(new - m).max() < tol:
            m = new
            break
        m = new
    return float(np.linalg.det(m) ** 0.25)


# -- streaks (MaskStreaksTask with scikit-image's Hough transform) ----------------------------


def _line_support(detected: np.ndarray, min_length: int) -> np.ndarray:
    """Detected pixels of components at least ``min_length`` long (bounding-box diagonal):
    compact sources cannot make a line."""
    labels, n = ndimage.label(detected, structure=_EIGHT)
    if n == 0:
        return detected.copy()
    boxes = ndimage.find_objects(labels)
    extent = np.array(
        [0.0] + [math.hypot(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes]
    )
    return extent[labels] >= min_length


def _band(support: np.ndarray, angle: float, dist: float, max_width: int) -> np.ndarray:
    """Pixels within the streak's detected half-width of the line ``x cos a + y sin a = d``,
    along the stretch where it was detected."""
    ys, xs = np.nonzero(support)
    c, s = math.cos(angle), math.sin(angle)
    d = xs * c + ys * s - dist
    near = np.abs(d) <= max_width
    t = -xs[near] * s + ys[near] * c
    counts = np.bincount(np.rint(np.abs(d[near])).astype(np.int64), minlength=max_width + 1)
    half = (
        int(np.argmax(counts < 0.5 * counts[0])) if (counts < 0.5 * counts[0]).any() else max_width
    )
    yy, xx = np.indices(support.shape)
    dd = xx * c + yy * s - dist
    tt = -xx * s + yy * c
    return (np.abs(dd) <= half + 0.5) & (tt >= t.min() - half) & (tt <= t.max() + half)


def streak_mask(
    detected: np.ndarray,
    *,
    min_length: int = 100,
    theta_step: float = 0.25,
    max_width: int = 40,
    max_streaks: int = 10,
) -> np.ndarray:
    """Satellite streaks in one visit's positive detections (a MaskStreaksTask stand-in).

    Long detections (components at least ``min_length`` px across) vote in scikit-image's
    straight-line Hough transform; each peak with at least ``min_length`` votes is a streak,
    masked out to the half-width where its detected fraction drops below one half, along the
    stretch where it was detected.
    """
    from skimage.transform import hough_line, hough_line_peaks

    support = _line_support(detected, min_length)
    out = np.zeros(detected.shape, bool)
    if np.count_nonzero(support) < min_length:
        return out
    theta = np.deg2rad(np.arange(-90.0, 90.0, theta_step))
    h, angles, dists = hough_line(support, theta=theta)
    _, peak_angles, peak_dists = hough_line_peaks(
        h,
        angles,
        dists,
        min_distance=2 * max_width,
        min_angle=round(5.0 / theta_step),
        threshold=min_length,
        num_peaks=max_streaks,
    )
    for a, d in zip(peak_angles, peak_dists, strict=True):
        out |= _band(support, float(a), float(d), max_width)
    return out


# -- one visit, end to end ----------------------------------------------------------------------

ARTIFACT = 1  # flags of :func:`visit_artifacts`' output
STREAK = 2


def drop_contained(mask: np.ndarray, footprints: np.ndarray) -> np.ndarray:
    """``mask`` without its 8-connected components that lie wholly inside ``footprints``."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    outside = np.bincount(labels.ravel(), weights=~footprints.ravel(), minlength=n + 1)
    outside[0] = 0
    return outside[labels] > 0


def visit_artifacts(
    packed: np.ndarray,
    epoch: np.ndarray,
    n_image: np.ndarray,
    template_footprints: np.ndarray | None,
    *,
    prefilter_ratio: float | None,
    max_num_epochs: int,
    low: float,
    high: float,
    spatial_threshold: float,
    streaks: dict | None = None,
    streak_grow: int = 0,
) -> np.ndarray:
    """One visit's artifacts: the filtered candidates (:data:`ARTIFACT`) and, with
    ``streaks`` (keyword arguments of :func:`streak_mask`), the streaks not contained in a
    template footprint grown by ``streak_grow`` (:data:`STREAK` | :data:`ARTIFACT`)."""
    labels, area, keep = candidate_footprints(packed, prefilter_ratio)
    art = artifact_footprints(
        labels,
        area,
        keep,
        epoch,
        n_image,
        template_footprints,
        max_num_epochs=max_num_epochs,
        low=low,
        high=high,
        spatial_threshold=spatial_threshold,
    )
    out = np.where(art[labels], np.uint8(ARTIFACT), np.uint8(0))
    if streaks is not None:
        found = streak_mask((packed & DETECTED) != 0, **streaks)
        if template_footprints is not None:
            found = drop_contained(found, template_footprints)
        out |= np.where(dilate(found, streak_grow), np.uint8(ARTIFACT | STREAK), np.uint8(0))
    return out
