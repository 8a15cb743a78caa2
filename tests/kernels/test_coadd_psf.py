"""CoaddPsf kernels: warped PSFs against analytic Gaussians, the weighted sum, grids, FWHM."""

from __future__ import annotations

import numpy as np
import pytest

from coaddx.errors import InputError
from coaddx.kernels.coadd_psf import (
    coadd_average_position,
    coadd_psf_image,
    interpolate_psf_grid,
    psf_fwhm,
    warp_psf_image,
    warped_psf_shape,
)


def gaussian(cov: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Unit-sum Gaussian of covariance ``cov`` ((x, y) order) sampled at the pixel centres of a
    centred odd grid."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    d = np.stack([xx - nx // 2, yy - ny // 2], -1)
    q = np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d)
    g = np.exp(-0.5 * q)
    return g / g.sum()


def rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


JACOBIANS = {
    "rotation": rotation(0.6),
    "rotation_scale": 1.15 * rotation(-1.1),
    "anisotropic": rotation(0.3) @ np.diag([0.85, 1.2]),
    "parity_flip": np.array([[-1.0, 0.0], [0.0, 1.0]]) @ rotation(0.4) * 0.95,
    "shear": np.array([[1.0, 0.15], [-0.05, 0.9]]),
}


@pytest.mark.parametrize("name", sorted(JACOBIANS))
@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_warped_gaussian_has_covariance_j_c_jt(name: str, sigma: float) -> None:
    jac = JACOBIANS[name]
    cov = rotation(0.25) @ np.diag([sigma**2, (1.3 * sigma) ** 2]) @ rotation(0.25).T
    src = gaussian(cov, (45, 45))
    out = warp_psf_image(src, jac)
    ref = gaussian(jac @ cov @ jac.T, out.shape)
    assert out.shape == warped_psf_shape(src.shape, jac)
    assert out.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.abs(out - ref).max() < 1e-3 * ref.max()


def test_lanczos3_error_floor_is_what_the_default_avoids() -> None:
    """LSST's Lanczos-3 misses the analytic warp by more than 1e-3 of the peak; the default
    quintic spline does not (the docstring's figures)."""
    jac = JACOBIANS["rotation"]
    cov = np.diag([2.0**2, 2.0**2])
    src = gaussian(cov, (45, 45))
    ref = gaussian(jac @ cov @ jac.T, warped_psf_shape(src.shape, jac))
    err_l3 = np.abs(warp_psf_image(src, jac, kernel="lanczos3") - ref).max() / ref.max()
    err_s5 = np.abs(warp_psf_image(src, jac) - ref).max() / ref.max()
    assert 2e-3 < err_l3 < 1e-2
    assert err_s5 < 1e-4


def afw_lanczos3_reference(src: np.ndarray, inv: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Independent per-pixel afw Lanczos-3 (algorithms.md 5.2, WarpedPsf padding): taps
    k = -2..3 at floor + k, weight L(k - f), divided by the weight sum; 0 where floor is
    outside -2..n."""

    def lanczos(t: np.ndarray) -> np.ndarray:
        return np.sinc(t) * np.sinc(t / 3.0) * (np.abs(t) < 3)

    ny, nx = src.shape
    padded = np.zeros((ny + 20, nx + 20))
    padded[10:-10, 10:-10] = src
    out = np.zeros(shape)
    k = np.arange(-2, 4)
    for r in range(shape[0]):
        for c in range(shape[1]):
            d = np.array([c - shape[1] // 2, r - shape[0] // 2], float)
            sx, sy = inv @ d + [nx // 2, ny // 2]
            ix, iy = int(np.floor(sx)), int(np.floor(sy))
            if not (-2 <= ix <= nx and -2 <= iy <= ny):
                continue
            wx, wy = lanczos(k - (sx - ix)), lanczos(k - (sy - iy))
            patch = padded[iy + k[:, None] + 10, ix + k[None, :] + 10]
            out[r, c] = wy @ patch @ wx / (wx.sum() * wy.sum())
    return out / out.sum()


def test_lanczos3_is_afw_semantics() -> None:
    rng = np.random.default_rng(3)
    src = rng.random((9, 11))
    jac = JACOBIANS["anisotropic"]
    out = warp_psf_image(src, jac, kernel="lanczos3")
    ref = afw_lanczos3_reference(src, np.linalg.inv(jac), out.shape)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-13)


def test_identity_and_odd_shape_rule() -> None:
    rng = np.random.default_rng(1)
    src = rng.random((7, 9))
    for kernel in ("spline5", "lanczos3", "bilinear"):
        np.testing.assert_allclose(
            warp_psf_image(src, np.eye(2), kernel=kernel), src / src.sum(), atol=1e-14
        )
    # computeBBoxFromTransform: the box 9 x 7 scaled by (2, 0.5) spans 18 x 3.5 -> 19 x 3
    assert warped_psf_shape((7, 9), np.diag([2.0, 0.5])) == (3, 19)
    assert warp_psf_image(src, np.eye(2), size=5).shape == (5, 5)
    with pytest.raises(InputError, match="odd"):
        warp_psf_image(np.ones((4, 5)), np.eye(2))
    with pytest.raises(InputError, match="singular"):
        warp_psf_image(src, np.zeros((2, 2)))
    with pytest.raises(InputError, match="WarpedPsf limit"):
        warp_psf_image(src, 300 * np.eye(2))
    with pytest.raises(InputError, match="kernel"):
        warp_psf_image(src, np.eye(2), kernel="cubic")


def test_coadd_psf_of_analytic_visits_equals_weighted_analytic_sum() -> None:
    """Visits with Gaussian PSFs of different widths on rotated / scaled detectors: the
    CoaddPsf equals Σ w_k G(J_k C_k J_k^T) / Σ w_k within 1e-3 of the peak."""
    sigmas = [1.6, 2.0, 2.6, 1.8, 3.1]
    jacs = [
        rotation(a) * s for a, s in ((0.0, 1.0), (0.7, 1.05), (2.1, 0.95), (-0.4, 1.1), (1.3, 1.0))
    ]
    weights = np.array([1.0, 2.5, 0.7, 1.6, 0.0])  # the last is absent (weight 0)
    contains = np.array([True, True, True, False, True])  # the fourth does not cover the point
    covs = [np.diag([s**2, (1.2 * s) ** 2]) for s in sigmas]
    psfs = [warp_psf_image(gaussian(c, (41, 41)), j) for c, j in zip(covs, jacs, strict=True)]
    out = coadd_psf_image(psfs, weights, contains)
    assert out.shape == tuple(np.max([p.shape for p in psfs[:3]], axis=0))
    use = [0, 1, 2]
    ref = sum(weights[k] * gaussian(jacs[k] @ covs[k] @ jacs[k].T, out.shape) for k in use)
    ref /= weights[use].sum()
    assert np.abs(out - ref).max() < 1e-3 * ref.max()
    assert out.sum() == pytest.approx(1.0, abs=1e-12)


def test_coadd_psf_sums_unnormalised_inputs_on_the_union_box() -> None:
    a = np.zeros((3, 3))
    a[1, 1] = 4.0
    b = np.zeros((7, 5))
    b[3, 2] = 1.0
    b[0, 0] = 1.0
    out = coadd_psf_image([a, b], [3.0, 1.0])
    ref = np.zeros((7, 5))
    ref[3, 2] = 3.0 / 4.0 + 0.5 / 4.0
    ref[0, 0] = 0.5 / 4.0
    np.testing.assert_allclose(out, ref, atol=1e-15)
    with pytest.raises(InputError, match="no input image contains the point"):
        coadd_psf_image([a, b], [1.0, 1.0], [False, False])
    with pytest.raises(InputError, match="no input image contains the point"):
        coadd_psf_image([a, b], [np.nan, -1.0])


def test_interpolate_psf_grid_is_bilinear_and_clamped() -> None:
    gx, gy = np.array([0.0, 1000.0, 2000.0]), np.array([0.0, 1500.0, 4000.0])
    grid = np.array(
        [
            [
                gaussian(np.eye(2) * (1.5 + 1e-3 * x + 2e-4 * y) ** 2, (21, 21)) * (1 + j + i)
                for i, x in enumerate(gx)
            ]
            for j, y in enumerate(gy)
        ]
    )
    unit = grid / grid.sum(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(interpolate_psf_grid(grid, gx, gy, 1000.0, 1500.0), unit[1, 1])
    x, y = 1250.0, 3000.0
    tx, ty = 0.25, 0.6
    ref = (1 - ty) * ((1 - tx) * grid[1, 1] + tx * grid[1, 2]) + ty * (
        (1 - tx) * grid[2, 1] + tx * grid[2, 2]
    )
    np.testing.assert_allclose(
        interpolate_psf_grid(grid, gx, gy, x, y), ref / ref.sum(), atol=1e-15
    )
    # outside the grid the edge value is kept
    np.testing.assert_allclose(interpolate_psf_grid(grid, gx, gy, -50.0, 9e9), unit[2, 0])
    with pytest.raises(InputError, match="strictly increasing"):
        interpolate_psf_grid(grid, gx[::-1], gy, 0.0, 0.0)


def test_average_position_rule() -> None:
    """The weighted mean, then dropping the lowest weights until some input covers it."""
    pos = np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0]])
    w = np.array([4.0, 1.0, 2.0, 3.0])
    x, y = coadd_average_position(pos, w, lambda x, y: True)
    assert (x, y) == pytest.approx((w @ pos[:, 0] / w.sum(), w @ pos[:, 1] / w.sum()))

    def brute(covered):  # LSST: sort by weight, remove items from the low end
        order = np.argsort(w)
        for n in range(len(w)):
            keep = order[n:]
            p = (w[keep] @ pos[keep]) / w[keep].sum()
            if covered(*p):
                return tuple(p)
        raise AssertionError

    def covered(x: float, y: float) -> bool:  # only points near the corners are covered
        return bool(np.min(np.hypot(pos[:, 0] - x, pos[:, 1] - y)) < 45.0)

    assert coadd_average_position(pos, w, covered) == pytest.approx(brute(covered))
    assert coadd_average_position(pos, w, covered) != pytest.approx((x, y))
    goodpix = np.array([1.0, 1.0, 1.0, 10.0])
    wg = w * goodpix
    assert coadd_average_position(pos, w, lambda x, y: True, good_pixels=goodpix) == (
        pytest.approx(tuple(wg @ pos / wg.sum()))
    )
    with pytest.raises(InputError, match="average position"):
        coadd_average_position(pos, w, lambda x, y: False)


@pytest.mark.parametrize(("sx", "sy"), [(2.0, 2.0), (1.7, 2.9)])
def test_psf_fwhm_of_gaussians(sx: float, sy: float) -> None:
    img = gaussian(rotation(0.5) @ np.diag([sx**2, sy**2]) @ rotation(0.5).T, (51, 51))
    assert psf_fwhm(img) == pytest.approx(
        2.0 * np.sqrt(2.0 * np.log(2.0)) * np.sqrt(sx * sy), rel=1e-6
    )


def test_coadd_psf_from_grids_equals_interpolate_then_sum() -> None:
    """The one-pass CoaddPsf of :class:`coaddx.CoaddPsf` against the reference path (each
    input interpolated by interpolate_psf_grid, then coadd_psf_image), inside, between and
    outside the grids."""
    from coaddx.kernels.coadd_psf import coadd_psf_from_grids

    rng = np.random.default_rng(2)
    k = 4
    images = rng.uniform(0.1, 1.0, (k, 3, 3, 9, 11))
    images /= images.sum(axis=(3, 4), keepdims=True)
    gx = np.sort(rng.uniform(0, 100, (k, 3)), axis=1)
    gy = np.sort(rng.uniform(0, 100, (k, 3)), axis=1)
    w = rng.uniform(0.5, 2.0, k)
    for x, y in [(50.0, 50.0), (-10.0, 20.0), (120.0, 130.0), (gx[0, 1], gy[2, 2])]:
        ref = coadd_psf_image(
            [interpolate_psf_grid(images[i], gx[i], gy[i], x, y) for i in range(k)], w
        )
        got = coadd_psf_from_grids(images, gx, gy, w, x, y)
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)
    one = coadd_psf_from_grids(images[:, :1, :1], gx[:, :1], gy[:, :1], w, 3.0, 4.0)
    np.testing.assert_allclose(one, coadd_psf_image(list(images[:, 0, 0]), w), rtol=1e-12)
    with pytest.raises(InputError, match="weights"):
        coadd_psf_from_grids(images, gx, gy, np.r_[w[:3], 0.0], 1.0, 1.0)


def test_psf_fwhm_is_adaptive_sigma_compiled() -> None:
    """psf_fwhm's compiled moments against the numpy reference (kernels.moments)."""
    from coaddx.constants import SIGMA_TO_FWHM
    from coaddx.kernels.moments import adaptive_sigma
    from coaddx.model.psf import psf_image

    for img in (psf_image(4.5, "moffat"), gaussian(np.array([[4.0, 1.0], [1.0, 6.0]]), (35, 31))):
        assert psf_fwhm(img) == pytest.approx(SIGMA_TO_FWHM * adaptive_sigma(img), rel=1e-9)
