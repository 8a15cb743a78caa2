"""Kernel candidates for image differencing: stars detected on the science image with ``sep``
(SExtractor's background and extraction in C: a small, well-kept wheel with no further
dependencies, faster than photutils for this), on a grid of cells, with stamps that touch a bad
mask plane in either image rejected and the brightest ``n_star_per_cell`` kept per cell."""

from __future__ import annotations

import numpy as np

from coaddx.diffim.config import PsfMatchConfig
from coaddx.errors import InputError
from coaddx.kernels.psfmatch.difference import bad_pixels
from coaddx.model.exposure import Exposure
from coaddx.model.masks import bitmask

__all__ = ["select_candidate_positions"]


def _background(image: np.ndarray, usable: np.ndarray | None) -> tuple[np.ndarray, float]:
    """(image - sep background, global rms); ``usable`` None: every pixel is usable.

    sep works in float32 internally: a float32 image is passed as it is (no float64 copy),
    and the background is subtracted in place from that one copy.
    """
    import sep

    if usable is None:
        data = np.array(image, dtype=np.float32, order="C")
    else:
        data = np.ascontiguousarray(np.where(usable, image, 0.0), dtype=np.float32)
    mask = None if usable is None else ~usable
    try:
        bkg = sep.Background(data, mask=mask, bw=64, bh=64)
        bkg.subfrom(data)
        return data, float(bkg.globalrms)
    except Exception:
        ok = np.ones(data.shape, bool) if usable is None else usable
        med = float(np.median(image[ok])) if ok.any() else 0.0
        mad = float(np.median(np.abs(image[ok] - med))) * 1.4826 if ok.any() else 1.0
        return data - np.float32(med), mad


def select_candidate_positions(
    science: Exposure, template: Exposure, *, half: int, config: PsfMatchConfig
) -> np.ndarray:
    """Kernel candidates: ``(n, 2)`` integer ``(x, y)`` centres of stars on the science image.

    Detection at ``config.detection_threshold`` sigma (sep, background subtracted); stamps of
    half-size ``half`` that leave the image or touch a ``bad_mask_planes`` bit in either image
    are rejected; the brightest ``n_star_per_cell`` per ``size_cell`` cell are kept.
    """
    import sep

    if science.shape != template.shape:
        raise InputError(
            f"template {template.shape} and science {science.shape} must be on one "
            "grid (warp the template first)"
        )
    bad_s = bitmask(science.mask_planes, config.bad_mask_planes, strict=False)
    bad_t = bitmask(template.mask_planes, config.bad_mask_planes, strict=False)
    codes, n_masked, n_unusable = bad_pixels(
        science.mask, bad_s, template.mask, bad_t, science.image, template.image
    )
    usable = None if n_unusable == 0 else codes == 0
    data, rms = _background(science.image, usable)
    try:
        objects = sep.extract(
            data,
            config.detection_threshold,
            err=rms,
            mask=None if usable is None else ~usable,
            minarea=5,
            deblend_cont=1.0,
        )
    except Exception as exc:
        raise InputError(f"{science.where}: source detection failed: {exc}") from exc
    ny, nx = science.shape
    xs, ys = np.rint(objects["x"]).astype(int), np.rint(objects["y"]).astype(int)
    inside = (xs >= half) & (ys >= half) & (xs < nx - half) & (ys < ny - half)
    xs, ys, flux = xs[inside], ys[inside], objects["flux"][inside]
    if xs.size == 0:
        return np.zeros((0, 2), dtype=int)
    if n_masked:
        bad = (codes & 1) != 0
        # stamps touching a bad pixel are rejected: a summed-area table makes it one lookup each
        sat = np.pad(np.cumsum(np.cumsum(bad, 0, dtype=np.int32), 1), ((1, 0), (1, 0)))
        y0, y1, x0, x1 = ys - half, ys + half + 1, xs - half, xs + half + 1
        nbad = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
        keep = nbad == 0
        xs, ys, flux = xs[keep], ys[keep], flux[keep]
    cell = (ys // config.size_cell) * (nx // config.size_cell + 1) + xs // config.size_cell
    order = np.lexsort((-flux, cell))
    xs, ys, cell = xs[order], ys[order], cell[order]
    rank = np.arange(cell.size) - np.searchsorted(cell, cell)
    take = rank < config.n_star_per_cell if config.n_star_per_cell > 0 else np.ones_like(rank, bool)
    return np.column_stack([xs[take], ys[take]])
