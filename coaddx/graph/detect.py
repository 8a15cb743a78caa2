"""Detection as dask tasks (CompareWarp, algorithms.md 3.2): the bright template footprints
over the whole plane. Each visit's difference is detected inside its one task
(:func:`coaddx.graph.artifacts.visit_flags`, :func:`coaddx.kernels.artifacts.detect_plane`).
"""

from __future__ import annotations

import dask.array as da

from coaddx.kernels import detect as kd

__all__ = ["template_footprints"]


def template_footprints(
    image: da.Array,
    variance: da.Array,
    *,
    threshold: float,
    polarity: str,
    min_pixels: int,
    grow: int,
    isotropic: bool,
    background_bin: int | None,
) -> da.Array:
    """:func:`coaddx.kernels.detect.template_footprints` of a 2-D template, one task over its
    whole plane (footprints and the background bins are whole)."""
    return da.map_blocks(
        kd.template_footprints,
        image.rechunk(-1),
        variance.rechunk(-1),
        threshold=threshold,
        polarity=polarity,
        min_pixels=min_pixels,
        grow=grow,
        isotropic=isotropic,
        background_bin=background_bin,
        dtype=bool,
    )
