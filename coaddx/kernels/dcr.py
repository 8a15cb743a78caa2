"""DcrAssembleCoadd's array primitives (algorithms.md 4.4-4.6): shifting an image by a
sub-filter's DCR (``apply_dcr``), the forward model of one visit (``forward_model``), the
progressive gain and the conditioning of a model update. Plain numpy/scipy, keyword-only
scalars.

``apply_dcr`` keeps LSST's intent where its code has a bug (algorithms.md 9, item 6): a split
pair closer than ``split_threshold`` is applied as one shift by the pair's mean, not by the
mean of each shift's own y and x components."""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
from scipy import ndimage

__all__ = [
    "apply_dcr",
    "clamp_iteration",
    "condition_model",
    "dcr_gain",
    "dcr_nimage",
    "forward_model",
    "opening_structure",
    "regularize_frequency",
]


def dcr_gain(
    convergence: Sequence[float],
    gains: Sequence[float],
    *,
    base_gain: float,
    progressive: bool = True,
) -> float:
    """The gain of the next model update (LSST calculateGain).

    ``convergence`` holds the metrics C_0..C_{n-1} so far and ``gains`` the gains g_0..g_{n-2}
    used between them (``len(convergence) == len(gains) + 1``). Without ``progressive``, or
    with fewer than three metrics, the gain is ``base_gain``; otherwise each past step's
    asymptote e_j = ((1 + g_j) C_{j+1} - C_j) / g_j (negative values set to 0) is estimated,
    E is the median of e_j for j >= n - 5 (LSST's window), the metric the last gain should
    have reached is predicted, and the new gain ((1 - |delta|) + g_last) / 2 grows as the
    prediction holds, never below ``base_gain``.
    """
    c = np.asarray(convergence, dtype=np.float64)
    g = np.asarray(gains, dtype=np.float64)
    if c.size != g.size + 1:
        raise ValueError(
            f"dcr_gain needs one more convergence value than gains, got {c.size} and {g.size}"
        )
    if not progressive or c.size <= 2:
        return float(base_gain)
    est = ((1 + g) * c[1:] - c[:-1]) / g
    est[est < 0] = 0.0
    asymptote = float(np.median(est[max(c.size - 5, 0) :]))
    g_last = float(g[-1])
    predicted = (asymptote * g_last + c[-2]) / (1 + g_last)
    delta = (predicted - c[-1]) / ((c[-2] - asymptote) / (1 + g_last))
    return float(max(base_gain, ((1 - abs(delta)) + g_last) / 2))


def condition_model(new: np.ndarray, old: np.ndarray, *, gain: float) -> np.ndarray:
    """conditionDcrModel: the update damped by ``gain``, (gain new + old) / (1 + gain)."""
    return (gain * new + old) / (1 + gain)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _bilinear_shift(image, dy, dx):  # pragma: no cover - numba
    """scipy.ndimage.shift(image, (dy, dx), order=1, mode="constant"): output (i, j) is the
    bilinear interpolation of the input at (i - dy, j - dx), zero where that point lies
    outside [0, ny - 1] x [0, nx - 1]. One fractional offset for the whole image."""
    ny, nx = image.shape
    out = np.zeros((ny, nx), np.float64)
    for i in range(ny):
        y = i - dy
        if y < 0.0 or y > ny - 1:
            continue
        y0 = int(np.floor(y))
        fy = y - y0
        y1 = min(y0 + 1, ny - 1)
        for j in range(nx):
            x = j - dx
            if x < 0.0 or x > nx - 1:
                continue
            x0 = int(np.floor(x))
            fx = x - x0
            x1 = min(x0 + 1, nx - 1)
            top = (1.0 - fx) * image[y0, x0] + fx * image[y0, x1]
            bottom = (1.0 - fx) * image[y1, x0] + fx * image[y1, x1]
            out[i, j] = (1.0 - fy) * top + fy * bottom
    return out


def _shift(image: np.ndarray, shift: np.ndarray, order: int) -> np.ndarray:
    if order == 1 and image.ndim == 2:
        return _bilinear_shift(image, float(shift[0]), float(shift[1]))
    data = ndimage.spline_filter(image, order=order) if order > 1 else image
    return ndimage.shift(data, shift, order=order, prefilter=False, mode="constant", cval=0.0)


def apply_dcr(
    image: np.ndarray,
    shift: np.ndarray,
    *,
    order: int = 1,
    split_threshold: float = 0.1,
    inverse: bool = False,
) -> np.ndarray:
    """``image`` shifted by one sub-filter's DCR (LSST applyDcr).

    ``shift`` is a (dy, dx) pair, shape (2,), or a split pair, shape (2, 2) (pair member,
    (dy, dx)): when the members differ by ``split_threshold`` px or more in either component
    the result is the mean of the image shifted by each, otherwise one shift by their mean.
    ``order`` is the spline order (1: bilinear; > 1 spline-filters first); outside the image
    is zero; ``inverse`` shifts by minus the shift.
    """
    s = np.asarray(shift, dtype=np.float64) * (-1.0 if inverse else 1.0)
    image = np.asarray(image, dtype=np.float64)
    if s.shape == (2,):
        return _shift(image, s, order)
    if s.shape != (2, 2):
        raise ValueError(f"apply_dcr: shift must have shape (2,) or (2, 2), got {s.shape}")
    if np.max(np.abs(s[0] - s[1])) >= split_threshold:
        return (_shift(image, s[0], order) + _shift(image, s[1], order)) / 2
    return _shift(image, s.mean(axis=0), order)


def forward_model(
    models: Sequence[np.ndarray] | np.ndarray,
    shifts: np.ndarray,
    *,
    accelerate: float = 3.0,
    order: int = 1,
    split_threshold: float = 0.1,
) -> np.ndarray:
    """One visit's DCR-matched template (LSST buildMatchedTemplate): each sub-filter model,
    amplified around the sub-filter mean by ``accelerate`` (A_k = (M_k - ref) a + ref), shifted
    by that visit's DCR of sub-filter k (``shifts`` of shape (N, 2) or (N, 2, 2)), summed."""
    stack = np.asarray(models, dtype=np.float64)
    ref = stack.mean(axis=0)
    out = np.zeros_like(ref)
    for model, shift in zip(stack, np.asarray(shifts, dtype=np.float64), strict=True):
        amplified = (model - ref) * accelerate + ref if accelerate != 1 else model
        out += apply_dcr(amplified, shift, order=order, split_threshold=split_threshold)
    return out


def dcr_nimage(
    masks: np.ndarray, shifts: np.ndarray, *, bad_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sub-filter input counts and DCR weights (LSST calculateNImage, algorithms.md 4.5).

    ``masks`` (V, Y, X) int masks of the visits (alt masks applied), ``shifts`` (V, N, 2) their
    unsplit DCR shifts. Each visit's good-pixel weight (no ``bad_bits``) is shifted back by the
    inverse DCR of sub-filter k (bilinear); ``n_image_k`` sums its rounded values and the
    weight sum its values. Where any sub-filter's weight sum is <= 1 both are zero; elsewhere
    the DCR weight is 1 / weight sum. Returns ``(n_image (N, Y, X) int32, weights (N, Y, X))``.
    """
    m = np.asarray(masks)
    sh = np.asarray(shifts, dtype=np.float64)
    if m.ndim != 3 or sh.shape[:1] != m.shape[:1] or sh.shape[2:] != (2,):
        raise ValueError(
            f"dcr_nimage: masks (V, Y, X) and shifts (V, N, 2) needed, got {m.shape} and {sh.shape}"
        )
    n_sub = sh.shape[1]
    n_image = np.zeros((n_sub, *m.shape[1:]), np.int32)
    total = np.zeros((n_sub, *m.shape[1:]), np.float64)
    for mask, visit_shifts in zip(m, sh, strict=True):
        good = ((mask & bad_bits) == 0).astype(np.float64)
        for k in range(n_sub):
            w = apply_dcr(good, visit_shifts[k], inverse=True)
            n_image[k] += np.rint(w).astype(np.int32)
            total[k] += w
    ok = np.all(total > 1.0, axis=0)
    weights = np.where(ok, 1.0 / np.where(ok, total, 1.0), 0.0)
    n_image[:, ~ok] = 0
    return n_image, weights


def opening_structure(width: int) -> np.ndarray:
    """The 3x3 cross dilated to radius ``width`` (a diamond; 5x5 for width 2)."""
    return ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), width)


def _clamp(value: np.ndarray, lo: np.ndarray, hi: np.ndarray, structure: np.ndarray) -> None:
    """Set the pixels above ``hi`` (below ``lo``) to that bound, in place, where the flags
    survive a binary opening with ``structure`` (isolated pixels are left alone)."""
    high = ndimage.binary_opening(value > hi, structure=structure)
    low = ndimage.binary_opening(value < lo, structure=structure)
    value[high] = hi[high]
    value[low] = lo[low]


def clamp_iteration(new: np.ndarray, old: np.ndarray, *, clamp: float, width: int) -> np.ndarray:
    """regularizeModelIter: limit a sub-filter's change in one iteration to a factor ``clamp``.

    Pixels above |old| clamp or below old / clamp are set to that bound, after the flags are
    cleaned of isolated pixels by a binary opening with :func:`opening_structure` (``width``).
    """
    out = np.array(new, dtype=np.float64)
    _clamp(out, old / clamp, np.abs(old) * clamp, opening_structure(width))
    return out


def regularize_frequency(
    new: np.ndarray,
    old: np.ndarray,
    noise_pixels: np.ndarray,
    *,
    max_diff: float,
    width: int,
    shrink: int = 5,
    noise: float | None = None,
) -> np.ndarray:
    """regularizeModelFreq (algorithms.md 4.6 step 4): each sub-filter becomes a smooth colour
    ratio times the old mean image.

    ``new`` and ``old`` are (N, Y, X) sub-filter models after and before the update;
    ``noise_pixels`` (Y, X) marks the pixels whose spread gives the noise (no bad or DETECTED
    bit), of which those ``shrink`` px inside the border are used. The reference is the mean of
    the old models (NaN or <= 0 set to 0; nothing changes when no pixel is positive); every
    model is clamped within a factor ``max_diff`` (sqrt(regularizeModelFrequency)) of the
    smoothed reference, smoothed itself (Gaussian sigma ``width``), divided by the smoothed
    reference and sharpened (unsharp mask, sigma width/3, amount 3).
    """
    models = np.array(new, dtype=np.float64)
    ref = np.mean(np.asarray(old, dtype=np.float64), axis=0)
    ref = np.where(np.isfinite(ref) & (ref > 0), ref, 0.0)
    if not np.any(ref > 0):
        return models
    if noise is None:
        ny, nx = ref.shape
        inner = np.zeros((ny, nx), bool)
        inner[shrink : ny - shrink, shrink : nx - shrink] = True
        sample = models[0][inner & noise_pixels]
        noise = float(np.std(sample)) / (2 * width) if sample.size else 0.0
    smooth_ref = ndimage.gaussian_filter(ref, width, mode="constant") + 3 * noise
    structure = opening_structure(width)
    for model in models:
        _clamp(model, smooth_ref / max_diff, smooth_ref * max_diff, structure)
        smooth = ndimage.gaussian_filter(model, width, mode="constant") + 3 * noise
        rel = smooth / smooth_ref
        rel = rel + 3 * (rel - ndimage.gaussian_filter(rel, width / 3))
        model[...] = rel * ref
    return models
