"""CompareWarp's temporal/spatial filter on one visit's whole plane (algorithms.md 3.3-3.5).

The input is the packed uint8 plane of :func:`coaddx.kernels.detect.detect_tile`; footprints
are labelled with 8-connectivity as afw's ``FootprintSet`` does: the prefilter
(:func:`candidate_footprints`), what the epoch count adds up (:func:`kept_candidates`), the
epoch rule (:func:`max_outlier_epochs`, :func:`artifact_footprints`), the containment veto
(:func:`drop_contained`), all of it for one visit (:func:`visit_artifacts`) and the
alternative masks applied to its direct warp (:func:`apply_alt_masks`). Pure numpy/scipy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from coaddx.kernels.detect import (
    CANDIDATE,
    DETECTED,
    EDGE_SPAN,
    EIGHT_CONNECTED,
    NAN_SPAN,
    PREFILTER_GOOD,
    dilate,
)
from coaddx.kernels.streaks import streak_mask

__all__ = [
    "ARTIFACT",
    "STREAK",
    "apply_alt_masks",
    "artifact_footprints",
    "candidate_footprints",
    "drop_contained",
    "kept_candidates",
    "max_outlier_epochs",
    "visit_artifacts",
]

ARTIFACT = 1  # flags of :func:`visit_artifacts`' output
STREAK = 2


def candidate_footprints(
    packed: np.ndarray, prefilter_ratio: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label one visit's candidates (merged, grown footprints of both signs) and prefilter them.

    Returns ``labels`` (0 = none), ``area`` per label and ``keep`` per label (index 0 is
    False): goodRatio = pixels without a prefilter plane / area > ``prefilter_ratio``
    (``None``: no prefilter).
    """
    labels, n = ndimage.label((packed & CANDIDATE) != 0, structure=EIGHT_CONNECTED)
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


def drop_contained(mask: np.ndarray, footprints: np.ndarray) -> np.ndarray:
    """``mask`` without its 8-connected components that lie wholly inside ``footprints``."""
    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
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
    streaks: dict[str, Any] | None = None,
    streak_grow: int = 0,
) -> np.ndarray:
    """One visit's artifacts: the filtered candidates (:data:`ARTIFACT`) and, with
    ``streaks`` (keyword arguments of :func:`~coaddx.kernels.streaks.streak_mask`), the streaks
    not contained in a template footprint grown by ``streak_grow`` (:data:`STREAK` |
    :data:`ARTIFACT`)."""
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


def apply_alt_masks(
    mask: np.ndarray,
    packed: np.ndarray,
    art: np.ndarray,
    *,
    clear: int,
    no_data: int,
    clipped: int,
    edge: int,
    streak: int,
) -> np.ndarray:
    """applyAltMaskPlanes (algorithms.md 3.5): clear the bad-pixel bits inside the NO_DATA
    spans, then set NO_DATA, CLIPPED (artifacts), STREAK and EDGE on their spans."""
    nan = (packed & NAN_SPAN) != 0
    out = np.where(nan, mask & np.int32(~clear), mask).astype(np.int32)
    for cond, bit in (
        (nan, no_data),
        ((art & ARTIFACT) != 0, clipped),
        ((art & STREAK) != 0, streak),
        ((packed & EDGE_SPAN) != 0, edge),
    ):
        out |= np.where(cond, np.int32(bit), np.int32(0))
    return out
