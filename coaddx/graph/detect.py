"""Detection as dask tasks (CompareWarp, algorithms.md 3.2): each visit's difference with the
template detected on tiles with halos, and the bright template footprints over the whole plane.

A detection tile reads a halo of ``grow + min_pixels - 1`` pixels, so the trimmed core is
exact whatever the tiles (see :func:`coaddx.kernels.detect.detect_tile`).
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from coaddx.kernels import detect as kd

__all__ = ["detect_tile", "no_data_flags", "template_footprints"]


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


def detect_tile(
    image: da.Array,
    variance: da.Array,
    mask: da.Array,
    t_image: da.Array,
    t_variance: da.Array,
    variance_scale: da.Array,
    *,
    threshold: float,
    polarity: str,
    min_pixels: int,
    grow: int,
    isotropic: bool,
    bad_bits: int,
    prefilter_bits: int,
    edge_bit: int,
) -> da.Array:
    """Packed flags (uint8, 2-D, the chunks of ``image``) of one visit's PSF-matched plane
    (variance times the 0-d ``variance_scale``) differenced with the template planes and
    detected: :func:`coaddx.kernels.detect.detect_tile` over tiles with halos."""
    return da.map_overlap(
        kd.detect_tile,
        image,
        variance * variance_scale.astype(np.float32),
        mask,
        t_image,
        t_variance,
        depth=grow + int(min_pixels) - 1,
        boundary="none",
        dtype=np.uint8,
        threshold=threshold,
        polarity=polarity,
        min_pixels=min_pixels,
        grow=grow,
        isotropic=isotropic,
        bad_bits=bad_bits,
        prefilter_bits=prefilter_bits,
        edge_bit=edge_bit,
    )


def no_data_flags(shape: tuple[int, int], chunks: tuple[int, int]) -> da.Array:
    """The flags of a visit without a PSF-matched warp: the whole plane is a NO_DATA span."""
    return da.full(shape, kd.NAN_SPAN, dtype=np.uint8, chunks=chunks)
