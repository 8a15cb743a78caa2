"""Tests for coaddx.kernels.warp.warp_block: the afw warping semantics (algorithms.md 5.2).

Reference numbers and tolerances (measured values in brackets):

* identity mapping: every kernel returns the input bit for bit away from the kernel border; the
  border (Lanczos-n: n-1 low / n high pixels; bilinear, nearest: 0 / 1) is (NaN, inf, NO_DATA);
* the kernel equals a plain numpy transcription of the afw formulas (np.sinc weights) to
  float32 rounding (rtol 2e-7);
* sub-pixel shift (0.3, 0.7) of a sum of sinusoids at <= 0.008 cycles/px: Lanczos-3 error
  < 1e-3 of the total amplitude [6.6e-4]. The error is the kernel's own response: a shifted
  cosine comes out as Re[H_x H_y e^(i theta)] to float32 rounding, and |H - 1| grows linearly
  with frequency (Lanczos-3: 1.1e-3 at 0.01 cycles/px, 4.8e-3 at 0.05) because the normalised
  6-tap Lanczos-3 has a first-moment bias of up to 0.018 px (ramps are not reproduced exactly);
* Gaussian stars (sigma 2 px) warped through two real TAN WCSs (30 deg rotation, 1.3x pixel
  scale): flux conserved to 1e-4 [1.4e-5], centroids where the WCS puts them within 1e-3 px
  [7e-5];
* variance plane = sum K^2 sigma^2 (A / kSum)^2 to float32 rounding; the empirical variance of
  4000 warped white-noise realisations matches the plane within 12 % per pixel (3.8 sigma of
  the estimate) and 1.5 % on average. Warped pixels are correlated (the planes do not carry
  the covariance): the variance of a 2x2 sum matches sum_s (sum_p c_p K_p(s))^2 V(s) within 7 %
  and differs from the sum of the four planes by more than 10 % [-17 % at 1.3x downsampling,
  where the negative Lanczos lobes make neighbours anti-correlated];
* one EDGE pixel grows to exactly the 6x6 footprint (8x8 for Lanczos-4), one BAD pixel to 2x2.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from coaddx.kernels.lanczos import row_weights, tap_constants
from coaddx.kernels.warp import KERNELS, warp_block
from coaddx.model.geometry import map_pixels, source_coordinates
from coaddx.model.skymap import make_tan_wcs

BAD, EDGE, NO_DATA = 1 << 0, 1 << 4, 1 << 8
BORDERS = {"lanczos3": (2, 3), "lanczos4": (3, 4), "bilinear": (0, 1), "nearest": (0, 1)}


def _warp(image, x, y, *, area=None, variance=None, mask=None, **kwargs):
    if variance is None:
        variance = np.ones_like(image)
    if mask is None:
        mask = np.zeros(image.shape, np.int32)
    if area is None:
        area = np.ones_like(x)
    return warp_block(image, variance, mask, x, y, area, no_data_bit=NO_DATA, **kwargs)


def _reference_weights(f, kernel):
    """(first tap offset, weights) straight from the afw definitions (non-zero taps only)."""
    if kernel == "nearest":
        return (1 if f >= 0.5 else 0), np.ones(1)
    if f == 0.0:
        return 0, np.ones(1)
    if kernel == "bilinear":
        return 0, np.array([1.0 - f, f])
    n = int(kernel[-1])
    t = np.arange(1 - n, n + 1) - f
    return 1 - n, np.sinc(t) * np.sinc(t / n)


def _reference_warp(image, variance, mask, x, y, area, kernel, grow):
    """Per-pixel numpy transcription of afw WarpAtOnePoint (no speed tricks)."""
    n_lo, n_hi = BORDERS[kernel]
    out = np.full(x.shape, np.nan), np.full(x.shape, np.inf), np.full(x.shape, NO_DATA)
    sy, sx = image.shape
    for idx in np.ndindex(x.shape):
        i, j = np.floor(x[idx]), np.floor(y[idx])
        if not (n_lo <= i <= sx - 1 - n_hi and n_lo <= j <= sy - 1 - n_hi):
            continue
        i, j = int(i), int(j)
        ax, wx = _reference_weights(x[idx] - i, kernel)
        ay, wy = _reference_weights(y[idx] - j, kernel)
        rows, cols = slice(j + ay, j + ay + wy.size), slice(i + ax, i + ax + wx.size)
        k = np.outer(wy, wx)
        scale = area[idx] / k.sum()
        out[0][idx] = (k * image[rows, cols]).sum() * scale
        out[1][idx] = (k**2 * variance[rows, cols]).sum() * scale**2
        dx, dy = int(x[idx] > i), int(y[idx] > j)
        bits = np.bitwise_or.reduce(mask[j : j + dy + 1, i : i + dx + 1], axis=None)
        full = mask[j - n_lo : j + n_hi + 1, i - n_lo : i + n_hi + 1]
        out[2][idx] = bits | (np.bitwise_or.reduce(full, axis=None) & grow)
    return out


@pytest.fixture
def noisy_source():
    rng = np.random.default_rng(7)
    image = rng.normal(10.0, 3.0, (40, 50)).astype(np.float32)
    variance = rng.uniform(1.0, 4.0, image.shape).astype(np.float32)
    mask = np.zeros(image.shape, np.int32)
    mask[rng.random(image.shape) < 0.03] |= BAD
    mask[rng.random(image.shape) < 0.01] |= EDGE
    mask[:, :3] |= EDGE
    return image, variance, mask


@pytest.mark.parametrize("kernel", KERNELS)
def test_warp_block_identity_reproduces_input(noisy_source, kernel):
    image, variance, mask = noisy_source
    y, x = np.indices(image.shape, dtype=float)
    out, var, msk = _warp(
        image, x, y, variance=variance, mask=mask, kernel=kernel, grow_full_bits=EDGE
    )
    lo, hi = BORDERS[kernel]
    inner = (slice(lo, image.shape[0] - hi), slice(lo, image.shape[1] - hi))
    np.testing.assert_array_equal(out[inner], image[inner])
    np.testing.assert_array_equal(var[inner], variance[inner])
    # f == 0: the bilinear mask footprint is the pixel itself; EDGE still grows over the kernel
    assert np.all((msk[inner] & ~EDGE) == (mask[inner] & ~EDGE))
    border = np.ones(image.shape, bool)
    border[inner] = False
    assert border.sum() == image.size - out[inner].size
    assert np.isnan(out[border]).all() and np.isposinf(var[border]).all()
    assert np.all(msk[border] == NO_DATA)


@pytest.mark.parametrize("kernel", KERNELS)
def test_warp_block_matches_afw_formulas(noisy_source, kernel):
    image, variance, mask = noisy_source
    rng = np.random.default_rng(1)
    y, x = np.indices((30, 36), dtype=float)
    theta = np.radians(17.0)
    src_x = 1.1 * (np.cos(theta) * x - np.sin(theta) * y) + 8.3 + rng.uniform(-0.2, 0.2, x.shape)
    src_y = 1.1 * (np.sin(theta) * x + np.cos(theta) * y) - 6.1
    src_x[3, 4:8] = np.floor(src_x[3, 4:8])  # zero fractions take the single-tap path
    src_y[5, 10:14] = np.floor(src_y[5, 10:14])
    src_x[0, 0], src_y[0, 1] = np.nan, np.inf
    area = rng.uniform(0.9, 1.4, x.shape)
    got = warp_block(
        image,
        variance,
        mask,
        src_x,
        src_y,
        area,
        kernel=kernel,
        grow_full_bits=EDGE,
        no_data_bit=NO_DATA,
    )
    want = _reference_warp(
        image.astype(float), variance.astype(float), mask, src_x, src_y, area, kernel, EDGE
    )
    assert np.isfinite(want[0]).sum() > 300
    np.testing.assert_allclose(got[0], want[0], rtol=2e-7, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=2e-7)
    np.testing.assert_array_equal(got[2], want[2])


def test_row_weights_match_sinc_definition():
    """Weights within 1e-15 of L(t) evaluated in extended precision, also next to the roots."""
    fracs = np.concatenate(
        [np.random.default_rng(0).random(1000), [1e-9, 1e-4, 0.5, 1 - 1e-4, 1 - 1e-9]]
    )
    coords = fracs + 7.0
    f = (coords - np.floor(coords)).astype(np.longdouble)
    pi = np.longdouble("3.14159265358979323846264338327950288")
    for n in (3, 4):
        w, w2, total = (
            np.empty((2 * n, fracs.size)),
            np.empty((2 * n, fracs.size)),
            np.empty(fracs.size),
        )
        scratch = np.empty((5, fracs.size))
        row_weights(coords, n, 1 - n, 2 * n, tap_constants(n), w, w2, total, scratch)
        np.testing.assert_array_equal(w2, w * w)
        t = pi * (np.arange(1 - n, n + 1).astype(np.longdouble)[:, None] - f[None, :])
        with np.errstate(invalid="ignore", divide="ignore"):
            want = np.where(np.abs(t) < 1e-5, 1.0, np.sin(t) * np.sin(t / n) / (t * t / n))
        assert np.abs(w - want).max() < 1e-15
        np.testing.assert_allclose(total, want.sum(axis=0).astype(float), rtol=1e-15)


def _sinusoids(x, y, freqs):
    return sum(a * np.cos(2 * np.pi * (kx * x + ky * y) + p) for a, kx, ky, p in freqs)


@pytest.mark.parametrize("kernel", ["lanczos3", "lanczos4", "bilinear"])
def test_warp_block_subpixel_shift_of_band_limited_image(kernel):
    """Sinusoids at <= 0.008 cycles/px (periods >= 125 px), shifted by (0.3, 0.7) px."""
    freqs = [(1.0, 0.004, 0.006, 0.3), (0.6, -0.007, 0.003, 1.1), (0.4, 0.005, -0.006, 2.0)]
    y, x = np.indices((128, 160), dtype=float)
    out, _, _ = _warp(_sinusoids(x, y, freqs).astype(np.float32), x + 0.3, y + 0.7, kernel=kernel)
    good = np.isfinite(out)
    error = np.abs(out[good] - _sinusoids(x + 0.3, y + 0.7, freqs)[good]).max() / 2.0
    assert error < 1e-3  # [lanczos3 6.6e-4, lanczos4 4.8e-4, bilinear 2.3e-4]


def _response(kernel, nu, f):
    """Transfer function sum_k w_k exp(2 pi i nu (k - f)) / kSum of a shift by f."""
    n = int(kernel[-1])
    t = np.arange(1 - n, n + 1) - f
    w = np.sinc(t) * np.sinc(t / n)
    return (w * np.exp(2j * np.pi * nu * t)).sum() / w.sum()


@pytest.mark.parametrize("kernel", ["lanczos3", "lanczos4"])
@pytest.mark.parametrize("nu", [0.01, 0.05, 0.25])
def test_warp_block_shift_error_is_the_lanczos_response(kernel, nu):
    """A shifted cosine comes out as Re[H_x H_y exp(i theta)]: the error against the true shift
    is the kernel's own |H - 1| (Lanczos-3: 1.1e-3 at 0.01 cycles/px, 4.8e-3 at 0.05; the
    normalised 6-tap kernel has a first-moment bias of up to 0.018 px)."""
    nu_x, nu_y, phase = 0.8 * nu, 0.6 * nu, 0.4
    y, x = np.indices((64, 80), dtype=float)
    image = np.cos(2 * np.pi * (nu_x * x + nu_y * y) + phase).astype(np.float32)
    out, _, _ = _warp(image, x + 0.3, y + 0.7, kernel=kernel)
    h = _response(kernel, nu_x, 0.3) * _response(kernel, nu_y, 0.7)
    theta = 2 * np.pi * (nu_x * (x + 0.3) + nu_y * (y + 0.7)) + phase
    good = np.isfinite(out)
    np.testing.assert_allclose(out[good], (h * np.exp(1j * theta)).real[good], atol=3e-7)
    if kernel == "lanczos3":  # 1-d response at a 0.3 px shift
        bound = {0.01: (1.0e-3, 1.2e-3), 0.05: (4.5e-3, 5.0e-3), 0.25: (0.0, 0.02)}[nu]
        assert bound[0] < abs(_response(kernel, nu, 0.3) - 1) < bound[1]


def _star_field(shape, positions, sigma, flux):
    y, x = np.indices(shape, dtype=float)
    image = np.zeros(shape)
    for px, py in positions:
        image += np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma**2))
    return (image * flux / (2 * np.pi * sigma**2)).astype(np.float32)


@pytest.fixture(scope="module")
def rotated_scaled_pair():
    """Source TAN WCS (0.2 arcsec/px) and a destination rotated 30 deg with 1.3x larger pixels."""
    centre = SkyCoord(150.0, 2.0, unit="deg")
    src = make_tan_wcs(centre, (99.5, 99.5), 0.2, 0.0)
    dest = make_tan_wcs(centre, (79.5, 79.5), 0.26, 30.0)
    return src, dest


@pytest.mark.parametrize("kernel", ["lanczos3", "lanczos4"])
def test_warp_block_conserves_flux_and_positions_of_stars(rotated_scaled_pair, kernel):
    src_wcs, dest_wcs = rotated_scaled_pair
    rng = np.random.default_rng(3)
    stars = []
    while len(stars) < 12:
        p = rng.uniform(35, 165, 2)
        if all(np.hypot(*(p - q)) > 25 for q in stars):
            stars.append(p)
    stars = np.array(stars)
    image = _star_field((200, 200), stars, sigma=2.0, flux=1000.0)
    x, y, area = source_coordinates(dest_wcs, src_wcs, (160, 160))
    np.testing.assert_allclose(area, 1.3**2, rtol=1e-8)
    out, _, _ = _warp(image, x, y, area=area, kernel=kernel)
    expect_x, expect_y = map_pixels(src_wcs, dest_wcs, stars[:, 0], stars[:, 1])
    yy, xx = np.indices(out.shape, dtype=float)
    for px, py in zip(expect_x, expect_y, strict=True):
        near = np.hypot(xx - px, yy - py) < 9.0  # 5.9 sigma of the warped star
        total = out[near].sum(dtype=float)
        assert abs(total / 1000.0 - 1.0) < 1e-4
        assert abs((out[near] * xx[near]).sum() / total - px) < 1e-3
        assert abs((out[near] * yy[near]).sum() / total - py) < 1e-3


def test_warp_block_variance_plane_is_analytic(rotated_scaled_pair):
    src_wcs, dest_wcs = rotated_scaled_pair
    x, y, area = source_coordinates(dest_wcs, src_wcs, (40, 40), origin=(60, 60))
    sigma2 = 2.5
    image = np.zeros((200, 200), np.float32)
    _, var, _ = _warp(image, x, y, area=area, variance=np.full_like(image, sigma2))
    fx, fy = x - np.floor(x), y - np.floor(y)
    t = np.arange(-2, 4)[:, None, None]
    wx, wy = np.sinc(t - fx) * np.sinc((t - fx) / 3), np.sinc(t - fy) * np.sinc((t - fy) / 3)
    want = sigma2 * (wx**2).sum(0) * (wy**2).sum(0) * (area / (wx.sum(0) * wy.sum(0))) ** 2
    np.testing.assert_allclose(var, want, rtol=2e-7)
    assert 0.3 * sigma2 * 1.69**2 < var.min() < var.max() < sigma2 * 1.69**2


def test_warp_block_variance_matches_warped_noise(rotated_scaled_pair):
    src_wcs, dest_wcs = rotated_scaled_pair
    x, y, area = source_coordinates(dest_wcs, src_wcs, (12, 12), origin=(70, 70))
    rng = np.random.default_rng(11)
    sigma = rng.uniform(1.0, 3.0, (200, 200)).astype(np.float32)  # non-uniform variance
    variance = sigma**2
    mask = np.zeros(sigma.shape, np.int32)
    n_real = 4000
    stack = np.empty((n_real, 12, 12))
    rows = slice(int(y.min()) - 3, int(y.max()) + 5)  # covers the footprints
    cols = slice(int(x.min()) - 3, int(x.max()) + 5)
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    for k in range(n_real):
        noise = np.zeros_like(sigma)
        noise[rows, cols] = rng.standard_normal(shape).astype(np.float32) * sigma[rows, cols]
        stack[k] = warp_block(noise, variance, mask, x, y, area)[0]
    plane = warp_block(sigma, variance, mask, x, y, area)[1]
    assert np.isfinite(stack).all()
    ratio = stack.var(axis=0) / plane
    assert np.abs(ratio - 1.0).max() < 0.12  # 3.8 sigma of a 4000-sample variance
    assert abs(ratio.mean() - 1.0) < 0.015
    # warped pixels are correlated: the variance of a 2x2 sum is sum_s (sum_p c_p K_p(s))^2 V(s),
    # not the sum of the four planes
    combined = np.zeros(sigma.shape)
    for r, c in np.ndindex(2, 2):
        combined += _kernel_image(x[4 + r, 5 + c], y[4 + r, 5 + c], sigma.shape, area[4 + r, 5 + c])
    want = (combined**2 * variance).sum()
    got = stack[:, 4:6, 5:7].sum(axis=(1, 2)).var()
    assert abs(got / want - 1.0) < 0.07  # 3.2 sigma
    assert abs(want / plane[4:6, 5:7].sum() - 1.0) > 0.1


def _kernel_image(x, y, shape, area, kernel="lanczos3"):
    """Source-plane weights c K(s) of one destination pixel (c = area / kSum)."""
    i, j = int(np.floor(x)), int(np.floor(y))
    ax, wx = _reference_weights(x - i, kernel)
    ay, wy = _reference_weights(y - j, kernel)
    out = np.zeros(shape)
    out[j + ay : j + ay + wy.size, i + ax : i + ax + wx.size] = (
        np.outer(wy, wx) * area / (wx.sum() * wy.sum())
    )
    return out


@pytest.mark.parametrize(("kernel", "size"), [("lanczos3", 6), ("lanczos4", 8), ("bilinear", 2)])
def test_warp_block_edge_grows_to_full_footprint_bad_to_bilinear(kernel, size):
    mask = np.zeros((30, 30), np.int32)
    mask[10, 12] = EDGE
    mask[20, 5] = BAD
    y, x = np.indices((30, 30), dtype=float)
    _, _, msk = _warp(
        np.ones((30, 30), np.float32),
        x + 0.4,
        y + 0.25,
        mask=mask,
        kernel=kernel,
        grow_full_bits=EDGE,
    )
    lo = BORDERS[kernel][0]
    rows, cols = np.nonzero(msk & EDGE)
    assert len(rows) == size * size
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (
        10 - BORDERS[kernel][1],
        10 + lo,
        12 - BORDERS[kernel][1],
        12 + lo,
    )
    rows, cols = np.nonzero(msk & BAD)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (19, 4),
        (19, 5),
        (20, 4),
        (20, 5),
    ]
    _, _, no_grow = _warp(
        np.ones((30, 30), np.float32), x + 0.4, y + 0.25, mask=mask, kernel=kernel
    )
    assert np.count_nonzero(no_grow & EDGE) == 4


def test_warp_block_nan_source_pixel_is_not_dropped():
    image = np.ones((30, 30), np.float32)
    image[15, 15] = np.nan
    y, x = np.indices((30, 30), dtype=float)
    shifted, _, _ = _warp(image, x + 0.5, y + 0.5)
    assert np.count_nonzero(np.isnan(shifted[3:-3, 3:-3])) == 36
    assert np.isnan(shifted[12:18, 12:18]).all()
    same, _, _ = _warp(image, x, y)  # zero fraction: one non-zero tap
    assert np.count_nonzero(np.isnan(same[3:-3, 3:-3])) == 1


def test_warp_block_nearest_rounds_half_up():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    y, x = np.indices((10, 10), dtype=float)
    out, _, _ = _warp(image, x[:, :8] + 0.5, y[:, :8] + 0.49, kernel="nearest")
    np.testing.assert_array_equal(out[:9], image[:9, 1:9])


def test_warp_block_non_finite_coordinates_are_no_data():
    y, x = np.indices((10, 10), dtype=float)
    x[2, 3], y[4, 5], x[6, 6] = np.nan, np.inf, -np.inf
    out, var, msk = _warp(np.ones((20, 20), np.float32), x + 4.5, y + 4.5)
    for r, c in ((2, 3), (4, 5), (6, 6)):
        assert np.isnan(out[r, c]) and np.isposinf(var[r, c]) and msk[r, c] == NO_DATA
    assert np.count_nonzero(np.isnan(out)) == 3


def test_warp_block_float64_input_matches_float32(noisy_source):
    image, variance, mask = noisy_source
    y, x = np.indices((20, 20), dtype=float)
    a = warp_block(image, variance, mask, x * 1.3 + 3.2, y * 0.9 + 4.7, np.full(x.shape, 1.17))
    b = warp_block(
        image.astype(float),
        variance.astype(float),
        mask,
        x * 1.3 + 3.2,
        y * 0.9 + 4.7,
        np.full(x.shape, 1.17),
    )
    for got, want in zip(a, b, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # planes of two types (a float64 image with a float32 variance failed to compile)
    mixed = warp_block(
        image.astype(float), variance, mask, x * 1.3 + 3.2, y * 0.9 + 4.7, np.full(x.shape, 1.17)
    )
    for got, want in zip(mixed, b, strict=True):
        np.testing.assert_array_equal(got, want)


def test_warp_block_rejects_bad_arguments():
    img = np.zeros((5, 5), np.float32)
    xy = np.zeros((3, 3))
    with pytest.raises(ValueError, match="kernel must be one of"):
        warp_block(img, img, img.astype(np.int32), xy, xy, xy, kernel="lanczos5")
    with pytest.raises(ValueError, match="one shape"):
        warp_block(img, img[:4], img.astype(np.int32), xy, xy, xy)
    with pytest.raises(ValueError, match="one shape"):
        warp_block(img, img, img.astype(np.int32), xy, xy[:2], xy)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("step", [10, 7, 2])
def test_warp_on_grid_is_bit_identical_to_full_coordinate_arrays(kernel, step):
    """The in-loop interpolation of the node grid gives exactly what warp_block computes from
    source_coordinates' full arrays (a rotated, rescaled TAN pair, block offset from the grid
    origin, EDGE and BAD bits in the source mask)."""
    from astropy.wcs import WCS

    from coaddx.kernels.warp import warp_on_grid
    from coaddx.model.geometry import source_coordinates, source_grid

    def tan(crpix, scale, theta):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 2.0]
        w.wcs.crpix = crpix
        c, s = np.cos(np.radians(theta)), np.sin(np.radians(theta))
        w.wcs.cd = scale / 3600 * np.array([[-c, s], [s, c]])
        return w

    src, dst = tan([60, 90], 0.263, 3.3), tan([75, 110], 0.2, 0.0)
    rng = np.random.default_rng(3)
    img = rng.normal(size=(180, 120)).astype(np.float32)
    var = np.abs(img) + 1
    msk = np.where(rng.random(img.shape) < 0.01, 16, 0).astype(np.int32)
    msk[:, :3] |= 32
    shape, origin = (211, 157), (4, -6)
    ref = warp_block(
        img,
        var,
        msk,
        *source_coordinates(dst, src, shape, interp_length=step, origin=origin),
        kernel=kernel,
        grow_full_bits=32,
        no_data_bit=256,
    )
    got = warp_on_grid(
        img,
        var,
        msk,
        *source_grid(dst, src, shape, interp_length=step, origin=origin),
        shape,
        kernel=kernel,
        grow_full_bits=32,
        no_data_bit=256,
    )
    assert np.isfinite(ref[0]).mean() > 0.5
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_array_equal(g, r)


_CACHE_PROBE = """
import json
import numpy as np
from coaddx.kernels import warp
img = np.ones((16, 16), np.float32)
msk = np.zeros((16, 16), np.int32)
nodes = np.array([0, 4, 8])
gy, gx = np.meshgrid(nodes + 2.3, nodes + 2.6, indexing="ij")
yy, xx = np.indices((8, 8), dtype=float)
for k in warp.KERNELS:
    warp.warp_on_grid(img, img, msk, gx, gy, nodes, nodes, (8, 8), kernel=k)
    warp.warp_block(img, img, msk, xx + 3.3, yy + 3.6, np.ones((8, 8)), kernel=k)
print(json.dumps({f.__name__: [sum(f.stats.cache_hits.values()),
                               sum(f.stats.cache_misses.values())]
                  for f in (warp._warp, warp._warp_grid)}))
"""


def test_warp_loops_load_from_the_cache_in_a_new_process():
    """warp_block's and warp_on_grid's loops are cached across processes: a second process
    compiles nothing (the loops were closures over dispatchers, recompiled in every process)."""

    def run() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", _CACHE_PROBE], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    run()  # fills the cache if this checkout has not yet
    again = run()
    # one specialisation per tap count (Lanczos-3: 6, Lanczos-4: 8, bilinear: 2, nearest: 1)
    assert again == {"_warp": [4, 0], "_warp_grid": [4, 0]}
