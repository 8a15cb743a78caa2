"""Satellite streaks in a visit's detections (MaskStreaksTask, with scikit-image's Hough
transform standing in for LSST's Kernel-Hough): CompareWarp's ``do_filter_morphological``.
Pure numpy/scipy; scikit-image is imported when a streak is looked for."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from coaddx.kernels.detect import EIGHT_CONNECTED

__all__ = ["streak_mask"]


def _line_support(detected: np.ndarray, min_length: int) -> np.ndarray:
    """Detected pixels of components at least ``min_length`` long (bounding-box diagonal):
    compact sources cannot make a line."""
    labels, n = ndimage.label(detected, structure=EIGHT_CONNECTED)
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
