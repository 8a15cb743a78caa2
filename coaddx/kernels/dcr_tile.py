"""One DcrAssembleCoadd model update on one tile with its halo (algorithms.md 4.6), in two
halves so that the patch-wide noise of the frequency regularisation can be reduced between
them.

:func:`update_tile` forward-models every visit, sums the convergence metric over the tile's
core and takes the un-regularised step ``M_k + dcr_weight_k x sum_i inverse_shift(R_i)`` on the
core grown by :func:`regularization_halo`; :func:`regularize_tile` applies both
regularisations, the gain and the model weights and returns the core. Every array carries its
own ``origin`` (row, column of its first pixel in the patch) and regions are ``Region``
boxes ``(y0, y1, x0, x1)`` in patch pixels, so the graph layer can clip halos at the patch
edges and a tile computes exactly what a whole-patch computation gives there: every operation
is local (bilinear shifts read at most ``buffer`` px away, the filters a fixed radius), and
outside the patch is zero as ``scipy.ndimage.shift`` and ``gaussian_filter(mode="constant")``
see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from coaddx.kernels.dcr import (
    apply_dcr,
    clamp_iteration,
    condition_model,
    forward_model,
    regularize_frequency,
)

__all__ = [
    "GOOD",
    "METRIC",
    "DcrTileOptions",
    "Region",
    "crop",
    "model_weights_tile",
    "moment_sums",
    "region_moments",
    "regularization_halo",
    "regularize_tile",
    "update_tile",
]

#: Bits of the per-visit pixel code: usable (no bad-mask bit, finite) and counted in the
#: convergence metric (usable and carrying a convergence mask plane).
GOOD, METRIC = np.uint8(1), np.uint8(2)

#: (y0, y1, x0, x1) in patch pixels.
Region = tuple[int, int, int, int]


@dataclass(frozen=True)
class DcrTileOptions:
    """The scalars of one model update (DcrConfig's, resolved)."""

    accelerate: float = 3.0
    order: int = 1
    split: bool = True
    split_threshold: float = 0.1
    clamp_iterations: float = 2.0  # regularizeModelIterations, 0 disables
    max_diff: float = 2.0  # sqrt(regularizeModelFrequency), 0 disables
    width: int = 2  # regularizationWidth
    use_model_weights: bool = True


def regularization_halo(width: int) -> int:
    """Pixels around a core whose un-regularised update the regularisations read: two binary
    openings with the radius-``width`` diamond (4 ``width``), the Gaussian of sigma ``width``
    applied to the model and to the reference (truncated at 4 sigma) and the unsharp mask's
    Gaussian of sigma ``width`` / 3, plus one."""
    gauss = int(4.0 * width + 0.5)
    return 4 * width + 2 * gauss + int(4.0 * width / 3 + 0.5) + 1


def crop(array: np.ndarray, origin: tuple[int, int], region: Region) -> np.ndarray:
    """The part of ``array`` (last two axes start at patch pixel ``origin``) over ``region``."""
    y0, x0 = origin
    return array[..., region[0] - y0 : region[1] - y0, region[2] - x0 : region[3] - x0]


def _inside(shape: tuple[int, ...], core: Region, region: Region) -> np.ndarray:
    """The pixels of ``core`` (an array of ``shape``) that lie in ``region``."""
    out = np.zeros(shape, bool)
    out[
        max(region[0] - core[0], 0) : max(region[1] - core[0], 0),
        max(region[2] - core[2], 0) : max(region[3] - core[2], 0),
    ] = True
    return out


def moment_sums(values: np.ndarray, select: np.ndarray) -> np.ndarray:
    """(n, sum, sum of squares) of the selected values, for a patch-wide standard deviation."""
    v = values[select].astype(np.float64)
    return np.array([v.size, v.sum(), np.dot(v, v)], dtype=np.float64)


def region_moments(
    values: np.ndarray, quiet: np.ndarray, *, core: Region, region: Region
) -> np.ndarray:
    """:func:`moment_sums` of a core's ``values`` over its ``quiet`` pixels inside ``region``."""
    return moment_sums(values, quiet & _inside(quiet.shape, core, region))


def update_tile(
    image: np.ndarray,
    code: np.ndarray,
    model: np.ndarray,
    dcr_weights: np.ndarray,
    shifts: np.ndarray,
    forward_shifts: np.ndarray,
    quiet: np.ndarray,
    *,
    image_origin: tuple[int, int],
    model_origin: tuple[int, int],
    update_region: Region,
    core: Region,
    noise_region: Region,
    metric_noise: float,
    options: DcrTileOptions,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The metric sums of the current model and its un-regularised update on one tile.

    ``image`` (V, ...) the visits with bad pixels set to 0 and ``code`` their :data:`GOOD` /
    :data:`METRIC` bits, both from ``image_origin`` over ``update_region`` grown by the DCR
    buffer; ``model`` (N, ...) from ``model_origin`` over ``update_region`` grown by twice the
    buffer; ``dcr_weights`` (N, ...) over ``update_region``; ``quiet`` (core) marks the
    template's pixels with no bad or DETECTED bit. ``shifts`` (V, N, 2) are the unsplit DCR
    shifts (residuals go back through them), ``forward_shifts`` (V, N, 2) or (V, N, 2, 2) those
    of the forward model. ``metric_noise`` is the noise term of the metric's scale.

    Returns ``(new, visit_sums, noise_sums)``: the step ``M_k + dcr_weight_k sum_i
    inverse_shift((I_i - T_i) W_i)`` over ``update_region`` (non-finite values keep ``M_k``);
    per visit (V, 2) the sums of |I - T| s and |I + T| s / 2 over the core's METRIC pixels with
    s = |mean_k M_k| + 3 ``metric_noise``; :func:`moment_sums` of the step's sub-filter 0 over
    the quiet core pixels inside ``noise_region``.
    """
    n_visit = image.shape[0]
    img_region: Region = (
        image_origin[0],
        image_origin[0] + image.shape[-2],
        image_origin[1],
        image_origin[1] + image.shape[-1],
    )
    model_core = crop(model, model_origin, core)
    scale = np.abs(model_core.mean(axis=0)) + 3.0 * metric_noise
    if not np.any(scale):
        scale = scale + 1.0
    step = np.zeros((model.shape[0], *image.shape[1:]), np.float64)
    visit_sums = np.zeros((n_visit, 2), np.float64)
    for i in range(n_visit):
        template = crop(
            forward_model(
                model,
                forward_shifts[i],
                accelerate=options.accelerate,
                order=options.order,
                split_threshold=options.split_threshold,
            ),
            model_origin,
            img_region,
        )
        data = image[i].astype(np.float64)
        good = (code[i] & GOOD) != 0
        sel = (crop(code[i], image_origin, core) & METRIC) != 0
        d_core = crop(data, image_origin, core)[sel]
        t_core = crop(template, image_origin, core)[sel]
        s = scale[sel]
        visit_sums[i] = (
            np.sum(np.abs(d_core - t_core) * s),
            np.sum(np.abs(d_core + t_core) * s / 2),
        )
        residual = np.where(good, data - template, 0.0)
        for k in range(model.shape[0]):
            step[k] += apply_dcr(residual, shifts[i, k], order=options.order, inverse=True)
    old = crop(model, model_origin, update_region)
    new = old + crop(step, image_origin, update_region) * dcr_weights
    new = np.where(np.isfinite(new), new, old)
    noise_sums = region_moments(
        crop(new[0], update_region[::2], core), quiet, core=core, region=noise_region
    )
    return new, visit_sums, noise_sums


def regularize_tile(
    new: np.ndarray,
    old: np.ndarray,
    template: np.ndarray,
    model_weights: np.ndarray,
    quiet: np.ndarray,
    *,
    origin: tuple[int, int],
    core: Region,
    noise_region: Region,
    frequency_noise: float,
    gain: float,
    options: DcrTileOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 3-6 of a model update on one tile: ``new`` and ``old`` (N, ...) over the update
    region starting at ``origin``; ``template`` (the input coadd image), ``model_weights`` and
    ``quiet`` over the core. Returns the core of the next model and :func:`moment_sums` of its
    sub-filter 1 over the quiet core pixels inside ``noise_region`` (the metric's noise)."""
    models = np.array(new, dtype=np.float64)
    if options.clamp_iterations > 0:
        for k in range(models.shape[0]):
            models[k] = clamp_iteration(
                models[k], old[k], clamp=options.clamp_iterations, width=options.width
            )
    if options.max_diff > 0:
        models = regularize_frequency(
            models,
            old,
            np.zeros(models.shape[1:], bool),
            max_diff=options.max_diff,
            width=options.width,
            noise=frequency_noise,
        )
    models = crop(condition_model(models, old, gain=gain), origin, core)
    if options.use_model_weights:
        n = models.shape[0]
        models = models * model_weights + template * (1.0 - model_weights) / n
    return models, region_moments(models[1], quiet, core=core, region=noise_region)


def model_weights_tile(
    detected: np.ndarray, *, origin: tuple[int, int], core: Region, width: float
) -> np.ndarray:
    """The un-normalised model weights on ``core``: a Gaussian (sigma ``width``, scipy's
    default reflecting edges, which the graph layer places at the patch edges) of the
    template's DETECTED pixels, read over the core grown by 4 ``width`` + 1."""
    smooth = ndimage.gaussian_filter(detected.astype(np.float64), width)
    return crop(smooth, origin, core)
