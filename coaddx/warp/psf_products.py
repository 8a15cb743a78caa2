"""A visit's PSF products for its CoaddPsf: per detector, the calexp PSF warped to the patch
frame on a small grid of patch positions, and the detector's valid polygon on the patch.

For each detector that lands on the patch (algorithms.md 1.6, meas_algorithms ``WarpedPsf``):

* the footprint: the detector's pixel-edge box mapped onto the patch
  (:func:`coaddx.model.footprint.detector_polygon`, 16 points a side), shrunk by the matching
  kernel's half-width for PSF-matched warps (their pixels within it are NO_DATA);
* a :data:`GRID` x :data:`GRID` grid of patch positions spanning the footprint's bounding box
  (clipped to the patch), and at each node the calexp PSF warped with the local Jacobian of
  the exposure -> patch mapping (:func:`coaddx.model.footprint.psf_jacobian`,
  :func:`coaddx.kernels.coadd_psf.warp_psf_image`, quintic spline, unit sum). coaddx's
  calexp PSF is one image per detector, so what varies over the grid is the mapping;
* the PSF's average position (the detector centre) mapped onto the patch.

PSF-matched warps carry the model PSF, already on the patch grid: the same image at every node.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coaddx.errors import InputError
from coaddx.kernels.coadd_psf import warp_psf_image, warped_psf_shape
from coaddx.model.exposure import Exposure
from coaddx.model.footprint import detector_polygon, psf_jacobian
from coaddx.model.geometry import map_pixels
from coaddx.model.psf import psf_image
from coaddx.model.skymap import Patch

__all__ = ["GRID", "N_EDGE", "exposure_psf", "visit_psf_products"]

#: PSF grid nodes per axis and detector.
GRID = 3
#: Polygon points per detector side.
N_EDGE = 16


def exposure_psf(exposure: Exposure) -> np.ndarray:
    """The calexp PSF image; a circular Moffat of ``psf_fwhm`` when the exposure carries only
    a FWHM (as the PSF-matched warp does)."""
    if exposure.psf is not None:
        return np.asarray(exposure.psf, dtype=np.float64)
    if not np.isfinite(exposure.psf_fwhm):
        raise InputError(f"{exposure.where}: no PSF image and no psf_fwhm: no PSF products")
    return psf_image(float(exposure.psf_fwhm), "moffat")


def _nodes(lo: float, hi: float, extent: int) -> np.ndarray:
    lo, hi = max(lo, -0.5), min(hi, extent - 0.5)
    if not hi - lo >= 2.0:  # a sliver of the patch: spread the nodes over 2 px
        mid = 0.5 * (lo + hi)
        lo, hi = mid - 1.0, mid + 1.0
    return np.linspace(lo, hi, GRID)


def _pad_to(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols))
    r0, c0 = (rows - img.shape[0]) // 2, (cols - img.shape[1]) // 2
    out[r0 : r0 + img.shape[0], c0 : c0 + img.shape[1]] = img
    return out


def _detector(
    exposure: Exposure, patch: Patch, model: np.ndarray | None, shrink: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    polygon = detector_polygon(
        exposure.wcs, patch.wcs, exposure.shape, n_edge=N_EDGE, shrink=shrink
    )
    ny, nx = patch.shape
    gx = _nodes(float(polygon[:, 0].min()), float(polygon[:, 0].max()), nx)
    gy = _nodes(float(polygon[:, 1].min()), float(polygon[:, 1].max()), ny)
    if model is not None:
        images = [model] * (GRID * GRID)
    else:
        psf = exposure_psf(exposure)
        jacs = [psf_jacobian(exposure.wcs, patch.wcs, x, y)[0] for y in gy for x in gx]
        shapes = np.array([warped_psf_shape(psf.shape, j) for j in jacs])
        size = (int(shapes[:, 0].max()), int(shapes[:, 1].max()))
        images = [warp_psf_image(psf, j, size=size) for j in jacs]
    ey, ex = ((s - 1) / 2.0 for s in exposure.shape)
    px, py = map_pixels(exposure.wcs, patch.wcs, np.array([ex]), np.array([ey]))
    position = np.array([float(px[0]), float(py[0])])
    return polygon, gx, gy, images, position


def visit_psf_products(
    exposures: Sequence[Exposure],
    patch: Patch,
    *,
    model: np.ndarray | None = None,
    shrink: float = 0.0,
) -> dict[str, np.ndarray]:
    """The PSF products of a visit's detectors (in the order given: the compositing order),
    as :func:`coaddx.io.zarr.psf_products.write_psf_products` stores them.

    ``model``: the patch-frame PSF of a PSF-matched warp (then no calexp PSF is read);
    ``shrink``: pixels by which the footprints are shrunk (the matching kernel half-width).
    """
    if not exposures:
        raise InputError("visit_psf_products: no exposures")
    parts = [_detector(e, patch, model, shrink) for e in exposures]
    rows = max(img.shape[0] for p in parts for img in p[3])
    cols = max(img.shape[1] for p in parts for img in p[3])
    images = np.stack(
        [
            np.stack([_pad_to(img, rows, cols) for img in p[3]]).reshape(GRID, GRID, rows, cols)
            for p in parts
        ]
    )
    return {
        "detector": np.array([int(e.detector) for e in exposures], dtype=np.int64),
        "polygon": np.stack([p[0] for p in parts]),
        "grid_x": np.stack([p[1] for p in parts]),
        "grid_y": np.stack([p[2] for p in parts]),
        "images": images.astype(np.float32),
        "position": np.stack([p[4] for p in parts]),
    }
