"""One exposure onto the patch grid: calibrate to nJy, remap the mask planes, warp with the
afw Lanczos semantics (:mod:`coaddx.kernels.warp`) over the patch box the exposure reaches."""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

from coaddx.errors import InputError
from coaddx.kernels.no_data import blank_no_data, unusable_counts
from coaddx.kernels.warp import warp_block, warp_on_grid
from coaddx.model.exposure import Exposure, boundary_pixels
from coaddx.model.geometry import source_coordinates, source_grid
from coaddx.model.masks import bitmask, mask_planes, merge_mask_planes
from coaddx.model.skymap import Box, Patch
from coaddx.warp.config import WarpConfig

__all__ = ["blank_layers", "warp_exposure", "warp_exposure_box"]


def blank_layers(shape: tuple[int, int], no_data: int) -> list[np.ndarray]:
    """Image, variance and mask of ``shape`` with no data: NaN, NaN and the NO_DATA bits."""
    return [
        np.full(shape, np.nan, np.float32),
        np.full(shape, np.nan, np.float32),
        np.full(shape, no_data, np.int32),
    ]


def _dest_box(exp_wcs: WCS, exp_shape: tuple[int, int], patch: Patch, pad: int) -> Box | None:
    """The patch-array box covered by the exposure (its boundary mapped to the patch), grown by
    the kernel half-width and clipped to the patch; None if it misses."""
    x, y = boundary_pixels(exp_shape, 16)
    world = exp_wcs.pixel_to_world_values(x, y)
    px, py = patch.wcs.world_to_pixel_values(*world)
    ny, nx = patch.shape
    if not (np.isfinite(px).all() and np.isfinite(py).all()):
        return Box(0, 0, nx, ny)
    box = Box(
        int(np.floor(px.min())) - pad,
        int(np.floor(py.min())) - pad,
        int(np.ceil(px.max())) + pad + 1,
        int(np.ceil(py.max())) + pad + 1,
    )
    box = box.clip(Box(0, 0, nx, ny))
    return None if box.empty else box


def calibrated_layers(exp: Exposure) -> tuple[np.ndarray, np.ndarray]:
    """Image and variance in nJy (as :meth:`Exposure.calibrated`, without copying the rest)."""
    c = float(exp.photo_calib)
    if c == 1.0:
        return exp.image, exp.variance
    image = np.multiply(exp.image, c, dtype=np.float64).astype(np.float32)
    variance = np.multiply(exp.variance, c * c, dtype=np.float64).astype(np.float32)
    return image, variance


def _remap_mask(
    mask: np.ndarray, have: dict[str, int], want: dict[str, int], where: str
) -> np.ndarray:
    """Re-express a mask in another plane dictionary (by name)."""
    if all(want.get(name) == bit for name, bit in have.items()):
        return mask
    out = np.zeros_like(mask)
    for name, bit in have.items():
        if name not in want:
            raise InputError(f"{where}: mask plane {name!r} is unknown to the warp store")
        out[(mask & (1 << bit)) != 0] |= 1 << want[name]
    return out


def _source_planes(
    exposure: Exposure, config: WarpConfig, planes: dict[str, int], no_data_bit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exposure's image, variance (nJy when calibrating) and mask in ``planes``, with the
    pixels that hold no usable data left out (zeroed and marked NO_DATA: NaNs would spread over
    a Lanczos footprint): a non-finite image or variance value, or a variance <= 0, which is
    also flagged BAD (LSST's IsrTask.maskNegativeVariance). No usable pixel at all is an
    InputError naming the exposure."""
    if config.calibrate:
        src_image, src_variance = calibrated_layers(exposure)
    else:
        src_image, src_variance = exposure.image, exposure.variance
    mask = _remap_mask(exposure.mask, exposure.mask_planes, planes, exposure.where)
    if src_image.size and src_image.ndim == 2 and src_image.shape == src_variance.shape:
        if unusable_counts(src_image, src_variance)[0] == 0:  # the usual case, in one pass
            return src_image, src_variance, mask
    return _usable(src_image, src_variance, mask, planes, no_data_bit, exposure.where)


def _usable(
    src_image: np.ndarray,
    src_variance: np.ndarray,
    mask: np.ndarray,
    planes: dict[str, int],
    no_data_bit: int,
    where: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_source_planes`' planes with the unusable pixels zeroed and marked (an
    :class:`InputError` naming ``where`` when no pixel is usable)."""
    with np.errstate(invalid="ignore"):
        nonpositive = src_variance <= 0
    missing = ~(np.isfinite(src_image) & np.isfinite(src_variance)) | nonpositive
    if missing.all():
        raise InputError(
            f"{where}: the exposure has no finite pixel (no pixel with a finite image "
            "value and a finite variance > 0); nothing to warp"
        )
    if missing.any():
        src_image = np.where(missing, np.float32(0), src_image)
        src_variance = np.where(missing, np.float32(0), src_variance)
        mask = mask | np.where(missing, np.int32(no_data_bit), np.int32(0))
        if nonpositive.any():
            mask = mask | np.where(nonpositive, np.int32(bitmask(planes, "BAD")), np.int32(0))
    return src_image, src_variance, mask


def warp_exposure_box(
    exposure: Exposure,
    patch: Patch,
    config: WarpConfig | None = None,
    planes: dict[str, int] | None = None,
) -> tuple[Box, np.ndarray, np.ndarray, np.ndarray] | None:
    """Warp one exposure onto the part of the patch it can reach: ``(box, image, variance,
    mask)`` with arrays of ``box.shape`` (patch-array box), NaN / NaN / NO_DATA where the
    kernel leaves the exposure; None if the exposure misses the patch.

    Source pixels with a non-finite image or variance, or a variance <= 0 (then also BAD, as
    LSST's ISR flags them), are left out as NO_DATA; an exposure without one usable pixel raises
    :class:`~coaddx.errors.InputError` naming it (in :func:`~coaddx.make_warps` the visit fails
    with that message).
    """
    config = config or WarpConfig()
    planes = planes or merge_mask_planes(mask_planes(), exposure.mask_planes)
    no_data_bit = bitmask(planes, "NO_DATA")
    src_image, src_variance, mask = _source_planes(exposure, config, planes, no_data_bit)
    box = _dest_box(exposure.wcs, exposure.shape, patch, pad=5)
    if box is None:
        return None
    grow = bitmask(planes, config.grow_full_mask_planes, strict=False)
    if config.interp_length > 1:  # the mapping is interpolated inside the kernel loop
        node_x, node_y, nodes_x, nodes_y = source_grid(
            patch.wcs,
            exposure.wcs,
            box.shape,
            interp_length=config.interp_length,
            origin=(box.x0, box.y0),
        )
        img, var, msk = warp_on_grid(
            src_image,
            src_variance,
            mask,
            node_x,
            node_y,
            nodes_x,
            nodes_y,
            box.shape,
            kernel=config.kernel,
            grow_full_bits=grow,
            no_data_bit=no_data_bit,
        )
    else:
        sx, sy, area = source_coordinates(
            patch.wcs,
            exposure.wcs,
            box.shape,
            interp_length=config.interp_length,
            origin=(box.x0, box.y0),
        )
        img, var, msk = warp_block(
            src_image,
            src_variance,
            mask,
            sx,
            sy,
            area,
            kernel=config.kernel,
            grow_full_bits=grow,
            no_data_bit=no_data_bit,
        )
    blank_no_data(img, var, msk, no_data_bit)
    return box, img, var, msk


def warp_exposure(
    exposure: Exposure,
    patch: Patch,
    config: WarpConfig | None = None,
    planes: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp one exposure onto the patch grid: (image nJy, variance nJy², mask) over the whole
    patch, NaN / NaN / NO_DATA where the exposure does not reach."""
    config = config or WarpConfig()
    planes = planes or merge_mask_planes(mask_planes(), exposure.mask_planes)
    image, variance, out_mask = blank_layers(patch.shape, bitmask(planes, "NO_DATA"))
    warped = warp_exposure_box(exposure, patch, config, planes)
    if warped is not None:
        box, img, var, msk = warped
        rows, cols = box.slices()
        image[rows, cols], variance[rows, cols], out_mask[rows, cols] = img, var, msk
    return image, variance, out_mask
