"""CompareWarp's temporal/spatial filter on one visit's whole plane (algorithms.md 3.3-3.5).

The input is the packed uint8 plane of :func:`coaddx.kernels.detect.detect_tile`; footprints
are labelled with 8-connectivity as afw's ``FootprintSet`` does: the prefilter
(:func:`candidate_footprints`), what the epoch count adds up (:func:`kept_candidates`), the
epoch rule (:func:`max_outlier_epochs`, :func:`artifact_footprints`), the containment veto
(:func:`drop_contained`), all of it for one visit (:func:`visit_artifacts`) and the
alternative masks applied to its direct warp (:func:`apply_alt_masks`). Pure numpy/scipy.

For the graph that does not hold every visit at once: one visit's whole plane detected on
haloed tiles in one task (:func:`detect_plane`), its contribution to the epoch count, the
PSF-matched ``n_image`` and the EDGE spans (:func:`visit_counts`), and the one byte per pixel
the final stack needs of it (:func:`final_spans`: NO_DATA and EDGE spans, artifacts, streaks),
applied through two 256-entry tables (:func:`alt_mask_tables`, :func:`apply_spans`).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from scipy import ndimage

from coaddx.kernels.components import label_flags
from coaddx.kernels.detect import (
    CANDIDATE,
    DETECTED,
    EDGE_SPAN,
    EIGHT_CONNECTED,
    GOOD,
    NAN_SPAN,
    PREFILTER_GOOD,
    detect_tile,
    dilate,
)
from coaddx.kernels.streaks import streak_mask

__all__ = [
    "ARTIFACT",
    "SPAN_ARTIFACT",
    "SPAN_BITS",
    "SPAN_STREAK",
    "STREAK",
    "alt_mask_tables",
    "apply_alt_masks",
    "apply_spans",
    "artifact_footprints",
    "candidate_footprints",
    "detect_plane",
    "drop_contained",
    "final_spans",
    "kept_candidates",
    "max_outlier_epochs",
    "visit_artifacts",
    "visit_counts",
]

ARTIFACT = 1  # flags of :func:`visit_artifacts`' output
STREAK = 2
#: The bits of :func:`final_spans`: the detection flags' NO_DATA and EDGE spans, and these two.
SPAN_ARTIFACT = 64
SPAN_STREAK = 128
SPAN_BITS = NAN_SPAN | EDGE_SPAN | SPAN_ARTIFACT | SPAN_STREAK


def candidate_footprints(
    packed: np.ndarray, prefilter_ratio: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label one visit's candidates (merged, grown footprints of both signs) and prefilter them.

    Returns ``labels`` (0 = none), ``area`` per label and ``keep`` per label (index 0 is
    False): goodRatio = pixels without a prefilter plane / area > ``prefilter_ratio``
    (``None``: no prefilter).
    """
    labels, n, area, good = label_flags(packed, CANDIDATE, PREFILTER_GOOD)
    keep = np.ones(n + 1, bool)
    if prefilter_ratio is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            keep = good / area > prefilter_ratio
    keep[0] = False
    return labels, area, keep


def kept_candidates(packed: np.ndarray, prefilter_ratio: float | None) -> np.ndarray:
    """Pixels of the candidates that pass the prefilter (what the epoch count adds up)."""
    labels, _, keep = candidate_footprints(packed, prefilter_ratio)
    return _lookup(labels, keep)


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
    n = area.size
    labels = np.ascontiguousarray(labels)
    fp = None if template_footprints is None else np.ascontiguousarray(template_footprints, bool)
    n_sum, outside = np.zeros(n), np.zeros(n)
    _footprint_sums(labels, np.ascontiguousarray(n_image), fp, n_sum, outside)
    with np.errstate(invalid="ignore", divide="ignore"):
        nbar = n_sum / area
    eff = max_outlier_epochs(nbar, max_num_epochs=max_num_epochs, low=low, high=high)
    outliers = np.zeros(n)
    _outlier_counts(labels, np.ascontiguousarray(epoch), eff, outliers)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = outliers / area
    art = keep & (frac > spatial_threshold)
    if template_footprints is not None:
        art &= outside > 0
    art[0] = False
    return art


@numba.njit(nogil=True, cache=True)
def _footprint_sums(labels, n_image, footprints, n_sum, outside):  # pragma: no cover - numba
    """Per label: the sum of ``n_image`` and the pixels outside ``footprints`` (None: none
    counted); sums of integers in float64, exact in any order."""
    lab, img = labels.ravel(), n_image.ravel()
    if footprints is None:
        for i in range(lab.size):
            if lab[i] != 0:
                n_sum[lab[i]] += img[i]
    else:
        fp = footprints.ravel()
        for i in range(lab.size):
            k = lab[i]
            if k != 0:
                n_sum[k] += img[i]
                if not fp[i]:
                    outside[k] += 1.0


@numba.njit(nogil=True, cache=True)
def _outlier_counts(labels, epoch, eff, out):  # pragma: no cover - numba
    """Per label: its pixels with ``0 < epoch <= eff[label]``."""
    lab, e = labels.ravel(), epoch.ravel()
    for i in range(lab.size):
        k = lab[i]
        if k != 0 and e[i] > 0 and e[i] <= eff[k]:
            out[k] += 1.0


@numba.njit(nogil=True, cache=True)
def _lookup_into(labels, table, out):  # pragma: no cover - numba
    lab, o = labels.ravel(), out.ravel()
    for i in range(lab.size):
        o[i] = table[lab[i]]


def _lookup(labels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[labels]`` in one numba pass."""
    out = np.empty(labels.shape, table.dtype)
    _lookup_into(np.ascontiguousarray(labels), np.ascontiguousarray(table), out)
    return out


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
    out = _lookup(labels, np.where(art, np.uint8(ARTIFACT), np.uint8(0)))
    if streaks is not None:
        found = streak_mask((packed & DETECTED) != 0, **streaks)
        if template_footprints is not None:
            found = drop_contained(found, template_footprints)
        out |= np.where(dilate(found, streak_grow), np.uint8(ARTIFACT | STREAK), np.uint8(0))
    return out


def detect_plane(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    t_image: np.ndarray,
    t_variance: np.ndarray,
    variance_scale: float,
    *,
    tile: tuple[int, int],
    **detect_kwargs: Any,
) -> np.ndarray:
    """One visit's packed flags over its whole plane: :func:`coaddx.kernels.detect.detect_tile`
    on ``tile``-sized tiles, each read with a halo of ``grow + min_pixels - 1`` pixels (none
    beyond the plane) and trimmed to its core, the variance times ``variance_scale`` (as
    float32), exactly as the tiled graph does it."""
    variance = variance * np.float32(variance_scale)
    ny, nx = image.shape
    depth = int(detect_kwargs["grow"]) + int(detect_kwargs["min_pixels"]) - 1
    out = np.empty((ny, nx), np.uint8)
    for y0 in range(0, ny, tile[0]):
        y1 = min(y0 + tile[0], ny)
        a0, a1 = max(y0 - depth, 0), min(y1 + depth, ny)
        for x0 in range(0, nx, tile[1]):
            x1 = min(x0 + tile[1], nx)
            b0, b1 = max(x0 - depth, 0), min(x1 + depth, nx)
            box = (slice(a0, a1), slice(b0, b1))
            flags = detect_tile(
                image[box], variance[box], mask[box], t_image[box], t_variance[box], **detect_kwargs
            )
            out[y0:y1, x0:x1] = flags[y0 - a0 : y0 - a0 + y1 - y0, x0 - b0 : x0 - b0 + x1 - x0]
    return out


def visit_counts(packed: np.ndarray, prefilter_ratio: float | None) -> np.ndarray:
    """One visit's share of the sums over visits, ``(3, y, x)`` uint8: its kept candidates
    (the epoch count), its GOOD pixels (the PSF-matched ``n_image``) and its EDGE spans."""
    labels, _, keep = candidate_footprints(packed, prefilter_ratio)
    out = np.empty((3, *packed.shape), np.uint8)
    _counts_into(np.ascontiguousarray(packed, np.uint8), labels, keep, out)
    return out


@numba.njit(nogil=True, cache=True)
def _counts_into(packed, labels, keep, out):  # pragma: no cover - numba
    p, lab = packed.ravel(), labels.ravel()
    kept, good, edge = out[0].ravel(), out[1].ravel(), out[2].ravel()
    for i in range(p.size):
        kept[i] = keep[lab[i]]
        good[i] = (p[i] & GOOD) != 0
        edge[i] = (p[i] & EDGE_SPAN) != 0


def final_spans(packed: np.ndarray, art: np.ndarray) -> np.ndarray:
    """What the final stack needs of one visit, one byte per pixel: the NO_DATA and EDGE spans
    of its flags, :data:`SPAN_ARTIFACT` and :data:`SPAN_STREAK` (:data:`SPAN_BITS`)."""
    out = np.empty(np.broadcast_shapes(packed.shape, art.shape), np.uint8)
    _spans_into(
        np.ascontiguousarray(np.broadcast_to(packed, out.shape), np.uint8),
        np.ascontiguousarray(np.broadcast_to(art, out.shape), np.uint8),
        out,
    )
    return out


@numba.njit(nogil=True, cache=True)
def _spans_into(packed, art, out):  # pragma: no cover - numba
    p, a, o = packed.ravel(), art.ravel(), out.ravel()
    for i in range(p.size):
        v = p[i] & (NAN_SPAN | EDGE_SPAN)
        if (a[i] & ARTIFACT) != 0:
            v |= SPAN_ARTIFACT
        if (a[i] & STREAK) != 0:
            v |= SPAN_STREAK
        o[i] = v


def alt_mask_tables(
    *, clear: int, no_data: int, clipped: int, edge: int, streak: int
) -> tuple[np.ndarray, np.ndarray]:
    """applyAltMaskPlanes as two tables over the 256 span bytes: the mask is ANDed with the
    first (the bad-pixel bits cleared in NO_DATA spans) and ORed with the second."""
    b = np.arange(256)
    nan = (b & NAN_SPAN) != 0
    keep = np.where(nan, np.int32(~clear), np.int32(-1)).astype(np.int32)
    put = np.zeros(256, np.int32)
    for cond, bit in (
        (nan, no_data),
        ((b & SPAN_ARTIFACT) != 0, clipped),
        ((b & SPAN_STREAK) != 0, streak),
        ((b & EDGE_SPAN) != 0, edge),
    ):
        put |= np.where(cond, np.int32(bit), np.int32(0))
    return keep, put


def apply_spans(
    mask: np.ndarray, spans: np.ndarray, tables: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """``mask`` (int32) with the alternative masks of :func:`final_spans` bytes applied
    (:func:`alt_mask_tables`)."""
    keep, put = tables
    out = np.empty(mask.shape, np.int32)
    _apply_tables(
        np.ascontiguousarray(mask, np.int32).ravel(),
        np.ascontiguousarray(spans, np.uint8).ravel(),
        keep,
        put,
        out.ravel(),
    )
    return out


@numba.njit(nogil=True, cache=True)
def _apply_tables(mask, spans, keep, put, out):  # pragma: no cover - numba
    for i in range(mask.size):
        s = spans[i]
        out[i] = (mask[i] & keep[s]) | put[s]


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
    tables = alt_mask_tables(
        clear=clear, no_data=no_data, clipped=clipped, edge=edge, streak=streak
    )
    return apply_spans(mask, final_spans(packed, art), tables)
