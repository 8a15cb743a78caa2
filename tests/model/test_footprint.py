"""Detector footprints on the patch: polygons, point containment, the PSF Jacobian, and the
CoaddPsf changing exactly at a footprint edge."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from matplotlib.path import Path

from coaddx.errors import InputError
from coaddx.kernels.coadd_psf import coadd_psf_image, warp_psf_image
from coaddx.model.footprint import (
    detector_polygon,
    footprints_containing,
    points_in_polygon,
    psf_jacobian,
)
from coaddx.model.geometry import map_pixels
from coaddx.model.skymap import make_tan_wcs

CENTRE = SkyCoord(150.0, 2.0, unit="deg")
PATCH = make_tan_wcs(CENTRE, (999.5, 999.5), 0.2, 0.0)
DET_SHAPE = (1200, 800)  # rows, columns


def exposure(crpix=(400.0, 600.0), scale=0.21, rotation=30.0, centre=CENTRE) -> WCS:
    return make_tan_wcs(centre, crpix, scale, rotation)


def sip_exposure() -> WCS:
    """Another tangent point and ~1.5 px of SIP distortion: a mapping that is not affine."""
    header = exposure(centre=SkyCoord(150.02, 2.015, unit="deg"), rotation=-50.0).to_header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    header.update(A_ORDER=2, B_ORDER=2, A_2_0=2e-6, A_1_1=-1e-6, B_0_2=1.5e-6, B_1_1=1e-6)
    return WCS(header)


def box_rule(ex: np.ndarray, ey: np.ndarray, shape=DET_SHAPE) -> np.ndarray:
    """LSST's Box2D(bbox).contains in the detector frame: -0.5 <= x < nx - 0.5."""
    return (ex >= -0.5) & (ex < shape[1] - 0.5) & (ey >= -0.5) & (ey < shape[0] - 0.5)


def test_affine_footprint_is_the_mapped_box_exactly() -> None:
    """Same tangent point: the mapping is affine, the polygon's corners are the mapped box
    corners and containment equals the detector-frame box rule at every point."""
    wcs = exposure()
    poly = detector_polygon(wcs, PATCH, DET_SHAPE, n_edge=4)
    assert poly.shape == (16, 2)
    ex, ey = map_pixels(PATCH, wcs, poly[:, 0], poly[:, 1])
    on_x = np.isclose(ex, -0.5, atol=1e-6) | np.isclose(ex, DET_SHAPE[1] - 0.5, atol=1e-6)
    on_y = np.isclose(ey, -0.5, atol=1e-6) | np.isclose(ey, DET_SHAPE[0] - 0.5, atol=1e-6)
    assert np.all(on_x | on_y)
    rng = np.random.default_rng(5)
    x, y = rng.uniform(-300, 2300, 20000), rng.uniform(-300, 2300, 20000)
    ex, ey = map_pixels(PATCH, wcs, x, y)
    inside = points_in_polygon(x, y, poly)
    assert 2000 < inside.sum() < 18000
    np.testing.assert_array_equal(inside, box_rule(ex, ey))


def test_distorted_footprint_against_brute_force() -> None:
    """A SIP detector on another tangent point: the 16-point-per-side polygon agrees with the
    per-point detector-frame test everywhere but within 0.01 px of the edge."""
    wcs = sip_exposure()
    poly = detector_polygon(wcs, PATCH, DET_SHAPE)
    rng = np.random.default_rng(6)
    x, y = rng.uniform(-800, 2800, 40000), rng.uniform(-800, 2800, 40000)
    ex, ey = map_pixels(PATCH, wcs, x, y)
    inside = points_in_polygon(x, y, poly)
    truth = box_rule(ex, ey)
    edge_distance = np.minimum.reduce(
        [
            np.abs(ex + 0.5),
            np.abs(ex - DET_SHAPE[1] + 0.5),
            np.abs(ey + 0.5),
            np.abs(ey - DET_SHAPE[0] + 0.5),
        ]
    )
    far = edge_distance > 0.01
    assert truth.sum() > 2000 and far.mean() > 0.99
    np.testing.assert_array_equal(inside[far], truth[far])


def test_points_in_polygon_against_matplotlib() -> None:
    """Random non-convex (star-shaped) polygons against matplotlib's Path.contains_points, and
    the shape of the result follows the broadcast points."""
    rng = np.random.default_rng(7)
    for _ in range(5):
        n = int(rng.integers(5, 40))
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.3, 1.0, n)
        poly = np.column_stack([radius * np.cos(angle), radius * np.sin(angle)]) + np.array(
            [3.0, -1.0]
        )
        x, y = rng.uniform(1.8, 4.2, (60, 70)), rng.uniform(-2.2, 0.2, (60, 70))
        inside = points_in_polygon(x, y, poly)
        ref = Path(poly).contains_points(np.column_stack([x.ravel(), y.ravel()])).reshape(x.shape)
        assert inside.shape == (60, 70) and inside.sum() > 100
        np.testing.assert_array_equal(inside, ref)
        # orientation does not matter
        np.testing.assert_array_equal(points_in_polygon(x, y, poly[::-1]), ref)


def test_half_open_edges_tile_the_plane() -> None:
    """Two boxes sharing an edge: every point of the edge belongs to exactly one; an axis-aligned
    box is min <= p < max; NaN points are outside."""
    a = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 3.0], [0.0, 3.0]])
    b = a + np.array([2.0, 0.0])
    y = np.linspace(0.0, 2.999, 50)
    x = np.full_like(y, 2.0)
    both = footprints_containing(x, y, np.stack([a, b]))
    np.testing.assert_array_equal(both.sum(axis=0), 1)
    assert points_in_polygon(
        [0.0, 2.0, 1.0, 1.0, np.nan], [1.0, 1.0, 0.0, 3.0, 1.0], a
    ).tolist() == [True, False, True, False, False]
    with pytest.raises(InputError, match="polygon"):
        points_in_polygon(0.0, 0.0, a[:2])


def test_psf_jacobian_of_an_affine_pair_is_the_cd_ratio() -> None:
    wcs = exposure()
    jac, (ex, ey) = psf_jacobian(wcs, PATCH, 1234.0, 567.0)
    ref = np.linalg.inv(PATCH.wcs.cd) @ wcs.wcs.cd
    np.testing.assert_allclose(jac, ref, atol=1e-7)
    px, py = map_pixels(wcs, PATCH, np.array([ex]), np.array([ey]))
    assert (float(px[0]), float(py[0])) == pytest.approx((1234.0, 567.0), abs=1e-8)
    # scale 0.21 -> 0.2 arcsec: |det| = (0.21 / 0.2)^2
    assert abs(np.linalg.det(jac)) == pytest.approx((0.21 / 0.2) ** 2, rel=1e-7)


def test_psf_jacobian_of_a_distorted_pair_matches_finite_differences() -> None:
    """The forward (exposure -> patch) derivatives at the exposure position equal the inverted
    patch -> exposure Jacobian (to the step's second order)."""
    wcs = sip_exposure()
    jac, (ex, ey) = psf_jacobian(wcs, PATCH, 800.0, 1100.0)
    h = 1e-3
    fx, fy = map_pixels(
        wcs, PATCH, np.array([ex + h, ex - h, ex, ex]), np.array([ey, ey, ey + h, ey - h])
    )
    fwd = np.array([[fx[0] - fx[1], fx[2] - fx[3]], [fy[0] - fy[1], fy[2] - fy[3]]]) / (2 * h)
    np.testing.assert_allclose(jac, fwd, atol=1e-6)


def gaussian(cov: np.ndarray, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(float) - size // 2
    d = np.stack([xx, yy], -1)
    g = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d))
    return g / g.sum()


def test_coadd_psf_changes_exactly_at_the_footprint_edge() -> None:
    """Two rotated detectors; across an edge of the second one's footprint the CoaddPsf goes
    from the first visit's PSF alone to the weighted sum of both, within 1e-6 px of the edge,
    and the polygon decision is the detector-frame box rule there."""
    wide = exposure(crpix=(400.0, 600.0), scale=0.2, rotation=10.0)
    wide_shape = (4000, 4000)
    narrow = exposure(crpix=(100.0, 200.0), scale=0.2, rotation=-25.0)
    polys = np.stack(
        [
            detector_polygon(wide, PATCH, wide_shape, n_edge=4),
            detector_polygon(narrow, PATCH, DET_SHAPE, n_edge=4),
        ]
    )
    weights = np.array([1.0, 3.0])
    edge = polys[1][1:3]  # a chord of the mapped box boundary (a straight edge: affine)
    mid = edge.mean(axis=0)
    tangent = (edge[1] - edge[0]) / np.linalg.norm(edge[1] - edge[0])
    normal = np.array([-tangent[1], tangent[0]])
    centroid = polys[1].mean(axis=0)
    inward = normal if normal @ (centroid - mid) > 0 else -normal
    offsets = np.array([-0.5, -1e-3, -1e-6, 1e-6, 1e-3, 0.5])
    pts = mid + offsets[:, None] * inward
    covers = footprints_containing(pts[:, 0], pts[:, 1], polys)
    np.testing.assert_array_equal(covers[0], True)
    np.testing.assert_array_equal(covers[1], offsets > 0)
    ex, ey = map_pixels(PATCH, narrow, pts[:, 0], pts[:, 1])
    np.testing.assert_array_equal(box_rule(ex, ey), offsets > 0)
    jacs = [psf_jacobian(w, PATCH, *mid)[0] for w in (wide, narrow)]
    psfs = [
        warp_psf_image(gaussian(np.eye(2) * s**2, 31), j)
        for s, j in zip((1.8, 2.6), jacs, strict=True)
    ]
    single = coadd_psf_image(psfs, weights, [True, False])
    both = coadd_psf_image(psfs, weights, [True, True])
    r0 = (both.shape[0] - single.shape[0]) // 2
    c0 = (both.shape[1] - single.shape[1]) // 2
    padded = np.zeros_like(both)
    padded[r0 : r0 + single.shape[0], c0 : c0 + single.shape[1]] = single
    assert np.abs(both - padded).max() > 0.01 * single.max()
    for k, off in enumerate(offsets):
        out = coadd_psf_image(psfs, weights, covers[:, k])
        ref = both if off > 0 else single
        assert out.shape == ref.shape
        np.testing.assert_array_equal(out, ref)


def test_detector_polygon_options_and_errors() -> None:
    wcs = make_tan_wcs(CENTRE, (999.5, 999.5), 0.2, 0.0)
    poly = detector_polygon(wcs, wcs, (10, 20), n_edge=1, shrink=2.0, origin=(5, -3))
    np.testing.assert_allclose(
        poly, [[-3.5, 4.5], [12.5, 4.5], [12.5, 10.5], [-3.5, 10.5]], atol=1e-6
    )
    with pytest.raises(InputError, match="shrink"):
        detector_polygon(wcs, wcs, (10, 20), shrink=6.0)


def test_points_in_polygon_in_blocks_is_the_edge_loop(monkeypatch) -> None:
    """The blocked, vectorised crossing test equals the edge-by-edge loop it replaced, bit for
    bit in its decisions, for any block size (random polygon, points on vertices and edges)."""
    import coaddx.model.footprint as fp

    rng = np.random.default_rng(4)
    t = np.sort(rng.uniform(0, 2 * np.pi, 40))
    r = rng.uniform(5, 10, 40)
    poly = np.column_stack([r * np.cos(t), r * np.sin(t)])
    poly[5] = poly[6] * [1.0, 1.0]  # a repeated vertex: a zero-length edge
    x = np.r_[rng.uniform(-11, 11, 3000), poly[:, 0], 0.5 * (poly[:, 0] + np.roll(poly[:, 0], 1))]
    y = np.r_[rng.uniform(-11, 11, 3000), poly[:, 1], 0.5 * (poly[:, 1] + np.roll(poly[:, 1], 1))]

    def loop(px, py):
        odd = np.zeros(px.size, bool)
        xj, yj = poly[-1]
        for xi, yi in poly:
            if yi != yj:
                crosses = (yi > py) != (yj > py)
                odd ^= crosses & (px < xi + (py - yi) * ((xj - xi) / (yj - yi)))
            xj, yj = xi, yi
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        return odd & (px >= lo[0]) & (px < hi[0]) & (py >= lo[1]) & (py < hi[1])

    want = loop(x, y)
    for block in (1, 77, 1 << 18):
        monkeypatch.setattr(fp, "_BLOCK", block)
        assert np.array_equal(points_in_polygon(x, y, poly), want)
