"""The weight statistics the warp step caches in the store when it writes a visit.

The coadd steps weight each visit by ``1 / MEANCLIP(variance)`` (AssembleCoadd's
prepareInputs). Computing it costs a pass over the pixels the warp step has in hand anyway,
so the step computes it for every preset a coadd step asks for by default — AssembleCoadd's,
CompareWarp's final stack and CompareWarp's template — and the store keeps the values under
each preset's :attr:`~coaddx.coadd.weights.WeightStatistic.key`. Other configs compute theirs
lazily when they stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from coaddx.coadd.compare_warp.config import CompareWarpConfig
from coaddx.coadd.config import AssembleConfig
from coaddx.coadd.weights import WeightStatistic, weight_statistic
from coaddx.kernels.stats import meanclip_masked
from coaddx.kernels.weight_stats import MAX_PIXELS, meanclip_sets
from coaddx.model.masks import bitmask

__all__ = ["WEIGHT_PRESETS", "visit_weight_stats"]

#: The statistics of the coadd steps' default configs, each once (AssembleCoadd's, then
#: CompareWarp's final stack and its template), taken from the configs themselves.
WEIGHT_PRESETS: tuple[WeightStatistic, ...] = tuple(
    dict.fromkeys(
        weight_statistic(c)
        for c in (AssembleConfig(), CompareWarpConfig().assemble, CompareWarpConfig().template)
    )
)


def visit_weight_stats(
    variance: np.ndarray,
    mask: np.ndarray,
    mask_planes: Mapping[str, int],
    presets: Sequence[WeightStatistic] = WEIGHT_PRESETS,
) -> dict[str, float]:
    """MEANCLIP of one visit's variance plane for every preset, keyed by the preset's key
    (fused passes over the pixels; each value equals its own ``meanclip_masked`` call)."""
    params = [
        (bitmask(mask_planes, p.bad_mask_planes, strict=False), p.sigma_clip, p.clip_iter)
        for p in presets
    ]
    variance = np.asarray(variance)
    if variance.dtype == np.float32 and variance.ndim == 2 and variance.size <= MAX_PIXELS:
        values = meanclip_sets(variance, np.asarray(mask, dtype=np.int32), params)
    else:
        values = [
            meanclip_masked(variance, mask, bad, sigma_clip=sigma, clip_iter=iters)
            for bad, sigma, iters in params
        ]
    return {p.key: value for p, value in zip(presets, values, strict=True)}
