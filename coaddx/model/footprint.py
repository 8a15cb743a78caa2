"""Detector footprints on the patch: valid polygons and point containment (CoaddPsf inputs).

LSST's CoaddPsf uses an input at a coadd position when the position, carried to the input's
detector frame, lies inside the detector's ``validPolygon`` (or bbox):
``ExposureCatalog.subsetContaining`` with ``Box2D(bbox)``, i.e. ``-0.5 <= x < nx - 0.5`` and
``-0.5 <= y < ny - 0.5`` for pixel centres at integers (algorithms.md 1.6). Here the footprint
is kept in the patch frame as a polygon: the detector's pixel-edge boundary sampled at
``n_edge`` points per side and mapped through the exposure -> patch pixel mapping
(:func:`coaddx.model.geometry.map_pixels`), so that it can be stored without the WCSs and tested
for whole arrays of patch points at once. The mapping is not affine; between the sampled points
the polygon follows straight chords, which for a TAN / SIP mapping over a detector side of 4k
pixels and 16 points per side departs from the true edge by well under 0.01 pixel.

:func:`points_in_polygon` is an even-odd crossing test with the half-open rule: of two
polygons that share an edge, a point on it belongs to exactly one; for an axis-aligned box it
is LSST's ``Box2D.contains`` (``min <= p < max``).

:func:`psf_jacobian` is the local 2 x 2 Jacobian of the exposure -> patch mapping that
:func:`coaddx.kernels.coadd_psf.warp_psf_image` takes: like WarpedPsf it linearises the patch
-> exposure mapping at the patch point and inverts it.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

from coaddx.errors import InputError
from coaddx.model.geometry import map_pixels

#: Point x edge pairs evaluated at once by :func:`points_in_polygon`.
_BLOCK = 1 << 18

__all__ = [
    "detector_polygon",
    "footprints_containing",
    "points_in_polygon",
    "psf_jacobian",
]


def detector_polygon(
    exposure_wcs: WCS,
    patch_wcs: WCS,
    shape: tuple[int, int],
    *,
    n_edge: int = 16,
    shrink: float = 0.0,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """A detector's valid polygon in the patch pixel frame.

    Parameters
    ----------
    exposure_wcs, patch_wcs : astropy.wcs.WCS
        Celestial WCSs of the detector (calexp) and of the patch grid.
    shape : (int, int)
        (rows, columns) of the detector image.
    n_edge : int
        Points per side of the boundary (corners included), >= 1.
    shrink : float
        Pixels by which the valid box is shrunk on every side (PSF-matched warps: LSST shrinks
        the valid polygon by ceil(kernelSize / 2), algorithms.md 3.4 / 5.3).
    origin : (int, int)
        (x0, y0) pixel of ``patch_wcs`` at patch pixel (0, 0), as in
        :func:`coaddx.model.geometry.source_coordinates`.

    Returns
    -------
    ndarray of shape (4 n_edge, 2)
        float64 (x, y) patch-frame vertices going round the detector box
        ``(-0.5 + shrink, -0.5 + shrink) .. (nx - 0.5 - shrink, ny - 0.5 - shrink)``.

    Examples
    --------
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]; w.wcs.cdelt = [-1e-4, 1e-4]
    >>> np.round(detector_polygon(w, w, (4, 6), n_edge=1), 6).tolist()
    [[-0.5, -0.5], [5.5, -0.5], [5.5, 3.5], [-0.5, 3.5]]
    """
    ny, nx = (int(n) for n in shape)
    n = int(n_edge)
    if ny < 1 or nx < 1 or n < 1:
        raise InputError(f"detector_polygon needs a shape >= (1, 1) and n_edge >= 1, got {shape}")
    x0, y0, x1, y1 = -0.5 + shrink, -0.5 + shrink, nx - 0.5 - shrink, ny - 0.5 - shrink
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"shrink {shrink} leaves nothing of a detector of shape {shape}")
    t = np.arange(n) / n
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full(n, x1), x1 - (x1 - x0) * t, np.full(n, x0)])
    ys = np.concatenate([np.full(n, y0), y0 + (y1 - y0) * t, np.full(n, y1), y1 - (y1 - y0) * t])
    px, py = map_pixels(exposure_wcs, patch_wcs, xs, ys)
    poly = np.column_stack([np.asarray(px, np.float64), np.asarray(py, np.float64)])
    if not np.all(np.isfinite(poly)):
        raise InputError(
            "detector_polygon: the detector boundary does not map onto the patch pixel plane "
            "(a WCS inverse diverged)"
        )
    return poly - np.array([origin[0], origin[1]], dtype=np.float64)


def points_in_polygon(x: np.ndarray, y: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Whether each point (x, y) lies inside ``polygon`` (even-odd rule, half-open edges).

    Parameters
    ----------
    x, y : array_like
        Point coordinates (broadcast together).
    polygon : (N, 2) array
        Vertices in order (either orientation; not closed: the last joins the first), N >= 3.

    Returns
    -------
    bool ndarray of the broadcast shape of x and y; NaN points are outside.

    Examples
    --------
    >>> sq = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    >>> points_in_polygon([0.0, 1.0, 2.0, 1.0], [0.0, 1.0, 1.0, 2.0], sq).tolist()
    [True, True, False, False]
    """
    poly = np.asarray(polygon, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2 or poly.shape[0] < 3:
        raise InputError(f"polygon must have shape (N >= 3, 2), got {poly.shape}")
    if not np.all(np.isfinite(poly)):
        raise InputError("polygon has non-finite vertices")
    px, py = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    inside = np.zeros(px.shape, dtype=bool)
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    cand = np.flatnonzero((px >= lo[0]) & (px < hi[0]) & (py >= lo[1]) & (py < hi[1]))
    if cand.size == 0:
        return inside
    qx, qy = px.ravel()[cand], py.ravel()[cand]
    xi, yi = poly[:, 0], poly[:, 1]
    xj, yj = np.roll(xi, 1), np.roll(yi, 1)  # each vertex's predecessor: the edges
    edges = np.flatnonzero(yi != yj)
    xi, yi, xj, yj = xi[edges], yi[edges], xj[edges], yj[edges]
    slope = (xj - xi) / (yj - yi)
    odd = np.zeros(cand.size, dtype=bool)
    step = max(1, _BLOCK // max(1, edges.size))
    for start in range(0, cand.size, step):  # blocks of points, all edges at once
        bx, by = qx[start : start + step, None], qy[start : start + step, None]
        crosses = (yi > by) != (yj > by)
        x_cross = xi + (by - yi) * slope
        odd[start : start + step] = (np.count_nonzero(crosses & (bx < x_cross), axis=1) % 2) == 1
    inside.ravel()[cand] = odd
    return inside


def footprints_containing(x: np.ndarray, y: np.ndarray, polygons: np.ndarray) -> np.ndarray:
    """Which of several polygons contain each point: (D, *shape) bool for (D, N, 2) polygons.

    ``polygons`` is an array of D polygons of N vertices each (the stored form of
    :func:`detector_polygon` with one ``n_edge``) or a sequence of (N_d, 2) arrays.

    Examples
    --------
    >>> sq = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    >>> footprints_containing([1.0, 3.0], [1.0, 1.0], [sq, sq + [2.0, 0.0]]).tolist()
    [[True, False], [False, True]]
    """
    px, py = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    out = np.zeros((len(polygons), *px.shape), dtype=bool)
    for d, poly in enumerate(polygons):
        out[d] = points_in_polygon(px, py, poly)
    return out


def psf_jacobian(
    exposure_wcs: WCS,
    patch_wcs: WCS,
    x: float,
    y: float,
    *,
    origin: tuple[int, int] = (0, 0),
    step: float = 0.5,
) -> tuple[np.ndarray, tuple[float, float]]:
    """The exposure -> patch Jacobian at patch point (x, y) and the point's exposure position.

    As WarpedPsf (``linearizeTransform`` of the patch -> exposure mapping at the patch
    position): the patch -> exposure mapping is differentiated at (x, y) by central
    differences of ``step`` pixels and the 2 x 2 matrix inverted.

    Returns
    -------
    jacobian : (2, 2) ndarray
        ``J[i, j] = d patch_i / d exposure_j`` in (x, y) order
        (:func:`coaddx.kernels.coadd_psf.warp_psf_image`'s argument).
    (ex, ey) : (float, float)
        The exposure pixel position of (x, y) (where the calexp PSF is evaluated).

    Examples
    --------
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]; w.wcs.cdelt = [-1e-4, 1e-4]
    >>> w.wcs.crpix = [1, 1]; w2 = w.deepcopy(); w2.wcs.cdelt = [-2e-4, 2e-4]
    >>> jac, pos = psf_jacobian(w2, w, 4.0, 0.0)
    >>> (np.round(jac, 6) + 0.0).tolist(), (np.round(pos, 6) + 0.0).tolist()
    ([[2.0, 0.0], [0.0, 2.0]], [2.0, 0.0])
    """
    h = float(step)
    gx = float(x) + origin[0] + np.array([0.0, h, -h, 0.0, 0.0])
    gy = float(y) + origin[1] + np.array([0.0, 0.0, 0.0, h, -h])
    ex, ey = (np.asarray(v, np.float64) for v in map_pixels(patch_wcs, exposure_wcs, gx, gy))
    if not (np.all(np.isfinite(ex)) and np.all(np.isfinite(ey))):
        raise InputError(f"patch point ({x}, {y}) does not map onto the exposure (WCS inverse)")
    inverse = np.array(
        [[ex[1] - ex[2], ex[3] - ex[4]], [ey[1] - ey[2], ey[3] - ey[4]]], dtype=np.float64
    ) / (2.0 * h)
    det = np.linalg.det(inverse)
    if not abs(det) > 1e-12:
        raise InputError(f"the patch -> exposure mapping is singular at ({x}, {y})")
    return np.linalg.inv(inverse), (float(ex[0]), float(ey[0]))
