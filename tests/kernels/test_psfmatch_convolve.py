"""The "blockwise" convolution (kernel per 8 x 256 block, linear in x) against the exact one
(kernel evaluated at every pixel): image and variance within a stated fraction of the
difference noise, masks and invalid pixels identical, tiles identical to one whole image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coaddx.kernels.psfmatch.basis import alard_lupton_basis
from coaddx.kernels.psfmatch.convolve import (
    BLOCK,
    block_shape,
    convolve_spatial,
    convolve_tiles,
)
from coaddx.kernels.psfmatch.solve import SpatialKernel, T_Model, bbox_from_shape

SHAPE = (600, 1100)  # several blocks both ways, a partial block at each far edge
PARENT = (4096, 4096)


def _kernel(shape: tuple[int, int], model: T_Model = "chebyshev1") -> SpatialKernel:
    """An AL kernel (sum 1) whose shape changes across the image as fitted kernels do: the
    middle Gaussian's share by ±8 %, the other coefficients by ~0.3 % of the kernel sum."""
    basis = alard_lupton_basis(21, (0.87, 1.75, 3.49), (4, 2, 2))
    rng = np.random.default_rng(3)
    coeffs = np.zeros((basis.shape[0], 6))
    coeffs[0, 0] = 1.0
    coeffs[1:, 0] = rng.normal(0, 0.05, basis.shape[0] - 1)
    coeffs[1:, 1:] = rng.normal(0, 0.003, (basis.shape[0] - 1, 5))
    coeffs[15] = (0.3, 0.05, -0.03, 0.01, 0.0, 0.02)  # the middle Gaussian's share varies
    bbox = bbox_from_shape(PARENT)  # the image is a corner of a 4096^2 parent
    if model == "polynomial":  # the same functions of raw pixel coordinates, O(1) terms
        coeffs = coeffs / np.array([1, 2e3, 2e3, 4e6, 4e6, 4e6])
    return SpatialKernel(basis, coeffs, None, 2, 0, model, bbox)


def _scene(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template-like image: bright and faint stars (FWHM 3.8) on sky noise 10, its variance,
    and a mask with a few set bits."""
    rng = np.random.default_rng(11)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    image = np.zeros(shape)
    sigma = 3.8 / 2.3548
    for x, y, f in zip(
        rng.uniform(15, nx - 15, 150),
        rng.uniform(15, ny - 15, 150),
        10 ** rng.uniform(2.5, 5.5, 150),
        strict=True,
    ):
        sl = (slice(int(y) - 12, int(y) + 13), slice(int(x) - 12, int(x) + 13))
        r2 = (xx[sl] - x) ** 2 + (yy[sl] - y) ** 2
        image[sl] += f / (2 * np.pi * sigma**2) * np.exp(-0.5 * r2 / sigma**2)
    variance = 100.0 + image / 2.0
    image = image + rng.normal(0, 1, shape) * np.sqrt(variance)
    mask = np.zeros(shape, np.int32)
    mask[200, 300] = 4
    mask[50:53, 700:720] = 16
    return image.astype(np.float32), variance.astype(np.float32), mask


@pytest.mark.parametrize("model", ["chebyshev1", "polynomial"])
def test_blockwise_within_a_fraction_of_the_difference_noise(model):
    image, variance, mask = _scene(SHAPE)
    image[300, 400] = np.nan  # spoils its footprint in both methods
    kernel = _kernel(SHAPE, model)
    exact = convolve_spatial(image, variance, mask, kernel, bad_bits=1)
    fast = convolve_spatial(image, variance, mask, kernel, bad_bits=1, method="blockwise")
    np.testing.assert_array_equal(fast[2], exact[2])  # masks: the same footprint OR
    np.testing.assert_array_equal(np.isnan(fast[0]), np.isnan(exact[0]))
    np.testing.assert_array_equal(np.isinf(fast[1]), np.isinf(exact[1]))
    ok = np.isfinite(exact[0])
    assert ok.mean() > 0.9 and not ok[290:311, 390:411].any()
    # the difference noise: science (~ the template's, wider PSF) plus the matched template
    sigma = np.sqrt(variance + exact[1])[ok]
    err = (fast[0] - exact[0])[ok] / sigma
    # stated tolerance: rms < 0.003 sigma, < 0.2 sigma at the peaks of the brightest stars
    assert np.sqrt(np.mean(err**2)) < 0.003 and np.abs(err).max() < 0.2
    # the difference variance (science + matched template) within 1 %
    var_err = np.abs(fast[1][ok] - exact[1][ok]) / sigma**2
    assert var_err.max() < 0.01
    # and the approximation is not a no-op: the kernel does vary within a block
    assert np.abs(err).max() > 1e-5


def test_blockwise_tiles_agree_exactly_with_the_whole_image():
    image, variance, mask = _scene(SHAPE)
    kernel = _kernel(SHAPE)
    whole = convolve_spatial(image, variance, mask, kernel, bad_bits=1, method="blockwise")
    # 256 px tiles (with halos) cut through blocks: the block grid is the parent's
    tiled = convolve_tiles(image, variance, mask, kernel, region=256, no_data=1, method="blockwise")
    for a, b in zip(whole, tiled, strict=True):
        np.testing.assert_array_equal(a, b)
    # an offset origin shifts the block grid with the parent pixels
    sub = convolve_spatial(
        image[37:, 301:],
        variance[37:, 301:],
        mask[37:, 301:],
        kernel,
        origin=(301, 37),
        bad_bits=1,
        method="blockwise",
    )
    core = (slice(10, -10), slice(10, -10))
    np.testing.assert_array_equal(sub[0][core], whole[0][37:, 301:][core])
    assert BLOCK == (8, 256)


def test_blockwise_normalize_gives_unit_sums():
    kernel = _kernel((200, 300))
    coeffs = kernel.coeffs.copy()
    coeffs[0] = (1.0, 0.3, -0.2, 0.0, 0.0, 0.0)  # the kernel sum varies with position
    kernel = SpatialKernel(
        kernel.basis, coeffs, None, 2, 0, "chebyshev1", kernel.bbox, constant_first_term=False
    )
    ones = np.ones((200, 300), np.float32)
    out, _, _ = convolve_spatial(ones, ones, None, kernel, normalize=True, method="blockwise")
    np.testing.assert_allclose(out[10:-10, 10:-10], 1.0, rtol=2e-6)
    raw, _, _ = convolve_spatial(ones, ones, None, kernel, method="blockwise")
    exact, _, _ = convolve_spatial(ones, ones, None, kernel)
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(raw[inner] - exact[inner]).max() < 0.01  # the sum changes ~0.4 % per block
    with pytest.raises(ValueError, match="method"):
        convolve_spatial(ones, ones, None, kernel, method="fft")


def test_block_shape_shrinks_then_falls_back_to_exact_for_fast_varying_kernels():
    kernel = _kernel(SHAPE)
    assert block_shape(kernel) == BLOCK  # the fitted-like kernel keeps the default blocks
    coeffs = kernel.coeffs.copy()
    coeffs[1:, 1:] *= 8.0  # 8x the spatial gradient: smaller blocks, same tolerance
    faster = dataclasses.replace(kernel, coeffs=coeffs)
    shape = block_shape(faster)
    assert shape is not None and shape[0] * shape[1] < BLOCK[0] * BLOCK[1]
    # a kernel as wild as an order-2 fit to a dozen stars: the exact convolution, bit for bit
    coeffs[1:, 1:] = np.random.default_rng(2).normal(0, 20.0, coeffs[1:, 1:].shape)
    wild = dataclasses.replace(kernel, coeffs=coeffs, bbox=(-0.5, -0.5, 299.5, 199.5))
    assert block_shape(wild) is None
    image, variance, mask = (a[:200, :300] for a in _scene(SHAPE))
    exact = convolve_spatial(image, variance, mask, wild)
    fast = convolve_spatial(image, variance, mask, wild, method="blockwise")
    for a, b in zip(exact, fast, strict=True):
        np.testing.assert_array_equal(a, b)
