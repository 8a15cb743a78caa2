"""CompareWarp's footprint rules as dask tasks (algorithms.md 3.3-3.5).

The rules need whole footprints, so each task holds one visit's whole plane of packed flags
(:func:`coaddx.kernels.detect.detect_tile`): the kept candidates of every visit are summed
into the epoch count as a tree over visits (:func:`epoch_count`), then each visit's artifacts
are found against it (:func:`visit_artifacts`). The alternative masks go onto the direct warps
in the stacking chunks (:func:`apply_alt_masks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from coaddx.kernels import artifacts as ka
from coaddx.kernels.detect import GOOD

__all__ = [
    "any_visit_span",
    "apply_alt_masks",
    "epoch_count",
    "flag_cube",
    "good_count",
    "visit_artifacts",
]

#: Visits summed per task of the tree reductions over visits.
SPLIT_EVERY = 4


def good_count(flags: da.Array) -> da.Array:
    """Visits with a :data:`~coaddx.kernels.detect.GOOD` pixel, per pixel of a ``(visit, y,
    x)`` cube of flags (the PSF-matched ``n_image``), as a tree sum over visits."""
    return ((flags & GOOD) != 0).sum(axis=0, dtype=np.int32, split_every=SPLIT_EVERY)


def epoch_count(flags: Sequence[da.Array], *, prefilter_ratio: float | None) -> da.Array:
    """Sum over visits of each visit's kept candidates
    (:func:`coaddx.kernels.artifacts.kept_candidates` of its whole plane), a tree reduction."""
    kept = [
        da.map_blocks(
            ka.kept_candidates, p.rechunk(-1), prefilter_ratio=prefilter_ratio, dtype=bool
        )
        for p in flags
    ]
    return da.stack(kept).sum(axis=0, dtype=np.int32, split_every=SPLIT_EVERY)


def visit_artifacts(
    flags: Sequence[da.Array],
    epoch: da.Array,
    n_image: da.Array,
    template_footprints: da.Array | None,
    **kernel_kwargs: Any,
) -> da.Array:
    """Per-visit artifact flags (:data:`~coaddx.kernels.artifacts.ARTIFACT`,
    :data:`~coaddx.kernels.artifacts.STREAK`), ``(visit, y, x)`` uint8 with one whole plane per
    chunk: :func:`coaddx.kernels.artifacts.visit_artifacts` with ``kernel_kwargs``."""
    planes = [
        da.map_blocks(
            ka.visit_artifacts,
            p.rechunk(-1),
            epoch,
            n_image.rechunk(-1),
            template_footprints,
            dtype=np.uint8,
            **kernel_kwargs,
        )
        for p in flags
    ]
    return da.stack(planes)


def apply_alt_masks(
    mask: da.Array,
    flags: da.Array,
    artifacts: da.Array,
    *,
    chunks: tuple[int, int, int],
    clear: int,
    no_data: int,
    clipped: int,
    edge: int,
    streak: int,
) -> da.Array:
    """:func:`coaddx.kernels.artifacts.apply_alt_masks` of a ``(visit, y, x)`` mask cube in
    ``chunks``, with the flags and artifacts cubes read in the same chunks."""
    return da.map_blocks(
        ka.apply_alt_masks,
        mask,
        flags.rechunk(chunks),
        artifacts.rechunk(chunks),
        dtype=np.int32,
        clear=clear,
        no_data=no_data,
        clipped=clipped,
        edge=edge,
        streak=streak,
    )


def any_visit_span(mask: da.Array, flags: da.Array, *, span: int, bits: int) -> da.Array:
    """``mask`` (2-D) with ``bits`` set wherever some visit's flags have ``span``."""
    hit = ((flags & span) != 0).any(axis=0).rechunk(mask.chunks)
    return mask | da.where(hit, np.int32(bits), np.int32(0))


def flag_cube(artifacts: da.Array, flag: int, chunks: tuple[int, int, int]) -> da.Array:
    """Where ``artifacts`` has ``flag``, as a boolean ``(visit, y, x)`` cube in ``chunks``."""
    return ((artifacts & flag) != 0).rechunk(chunks)
