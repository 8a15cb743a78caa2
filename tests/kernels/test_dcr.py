"""DcrAssembleCoadd's gain sequence and conditioning (algorithms.md 4.6), against the formulas
written out by hand."""

import numpy as np
import pytest
from scipy import ndimage

from coaddx.kernels.dcr import (
    apply_dcr,
    clamp_iteration,
    condition_model,
    dcr_gain,
    dcr_nimage,
    forward_model,
    opening_structure,
    regularize_frequency,
)


def test_gain_is_the_base_gain_until_three_metrics():
    assert dcr_gain([0.3], [], base_gain=0.5) == 0.5
    assert dcr_gain([0.3, 0.2], [0.5], base_gain=0.5) == 0.5
    assert dcr_gain([0.3, 0.2, 0.15], [0.5, 0.5], base_gain=0.5, progressive=False) == 0.5


def test_progressive_gain_follows_the_lsst_formula():
    c, g = [0.30, 0.20, 0.16], [0.5, 0.5]
    e = [((1 + g[j]) * c[j + 1] - c[j]) / g[j] for j in range(2)]  # 0.0, 0.08
    e = [max(v, 0.0) for v in e]
    big_e = np.median(e)
    predicted = (big_e * g[-1] + c[-2]) / (1 + g[-1])
    delta = (predicted - c[-1]) / ((c[-2] - big_e) / (1 + g[-1]))
    expected = max(0.5, ((1 - abs(delta)) + g[-1]) / 2)
    assert dcr_gain(c, g, base_gain=0.5) == pytest.approx(expected, rel=1e-15)
    assert expected > 0.5  # a converging sequence earns a larger gain


def test_a_diverging_sequence_falls_back_to_the_base_gain():
    # the metric got worse: the prediction misses by more than the step, gain -> base
    assert dcr_gain([0.30, 0.20, 0.35], [0.5, 0.5], base_gain=0.5) == 0.5


def test_only_the_last_five_asymptotes_count():
    c = [1.0, 0.9, 0.5, 0.4, 0.35, 0.33, 0.32, 0.315]
    g = [0.5] * 7
    tail = dcr_gain(c[-6:], g[-5:], base_gain=0.1)
    assert dcr_gain(c, g, base_gain=0.1) == pytest.approx(tail, rel=1e-15)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="one more convergence value"):
        dcr_gain([0.3, 0.2], [0.5, 0.5], base_gain=0.5)


def test_conditioning_arithmetic():
    new, old = np.array([3.0, -1.0]), np.array([1.0, 1.0])
    np.testing.assert_allclose(condition_model(new, old, gain=0.5), [(1.5 + 1) / 1.5, 0.5 / 1.5])
    np.testing.assert_array_equal(condition_model(new, old, gain=0.0), old)


def _scene(shape=(41, 43), seed=3):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape)
    img[10:30, 12:32] = rng.uniform(1, 5, (20, 20))
    return img


def test_integer_shift_is_an_exact_translation_with_zero_fill():
    img = _scene()
    out = apply_dcr(img, np.array([2.0, -3.0]))
    expected = np.zeros_like(img)
    expected[2:, :-3] = img[:-2, 3:]
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(
        apply_dcr(out, np.array([2.0, -3.0]), inverse=True)[4:-4, 4:-4], img[4:-4, 4:-4], atol=1e-12
    )


def test_subpixel_bilinear_shift_conserves_flux_away_from_the_edges():
    img = _scene()
    out = apply_dcr(img, np.array([0.37, -0.81]))
    assert out.sum() == pytest.approx(img.sum(), rel=1e-12)
    # bilinear: the mean of a pixel and its neighbour for a half-pixel shift
    half = apply_dcr(img, np.array([0.0, 0.5]))
    np.testing.assert_allclose(half[:, 1:], (img[:, 1:] + img[:, :-1]) / 2, atol=1e-12)


def test_split_pairs_average_two_shifts_or_use_their_mean():
    img = _scene()
    far = np.array([[0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(
        apply_dcr(img, far), (img + apply_dcr(img, np.array([0.0, 1.0]))) / 2, atol=1e-12
    )
    near = np.array([[0.30, 0.10], [0.34, 0.12]])  # closer than 0.1 px in both components
    np.testing.assert_allclose(apply_dcr(img, near), apply_dcr(img, near.mean(axis=0)), atol=1e-12)
    # not LSST's buggy form, which shifts by the mean of each member's dy and dx
    buggy = apply_dcr(img, np.array([near[0].mean(), near[1].mean()]))
    assert np.abs(apply_dcr(img, near) - buggy).max() > 1e-3


def test_forward_model_with_no_refraction_is_the_sum_of_the_sub_filters():
    rng = np.random.default_rng(0)
    models = rng.uniform(0, 10, (3, 20, 22))
    np.testing.assert_allclose(
        forward_model(models, np.zeros((3, 2)), accelerate=3.0), models.sum(axis=0), atol=1e-12
    )
    shifts = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    ref = models.mean(axis=0)
    expected = sum(apply_dcr((m - ref) * 3 + ref, s) for m, s in zip(models, shifts, strict=True))
    np.testing.assert_allclose(forward_model(models, shifts), expected, atol=1e-12)


def test_nimage_without_refraction_counts_good_inputs_in_every_sub_filter():
    rng = np.random.default_rng(1)
    masks = np.where(rng.random((5, 12, 14)) < 0.2, 1, 0).astype(np.int32)
    masks[:, 0, 0] = 1  # nobody good here: a pixel with weight sum 0
    n_image, weights = dcr_nimage(masks, np.zeros((5, 3, 2)), bad_bits=1)
    good = (masks == 0).sum(axis=0)
    expected = np.where(good > 1, good, 0)
    for k in range(3):
        np.testing.assert_array_equal(n_image[k], expected)
        np.testing.assert_allclose(weights[k], np.where(good > 1, 1.0 / np.maximum(good, 1), 0))


def test_nimage_follows_the_inverse_shift():
    masks = np.zeros((3, 10, 10), np.int32)
    masks[:, :, 5:] = 1  # the right half is bad in every visit
    shifts = np.zeros((3, 2, 2))
    shifts[:, 1] = [0.0, 2.0]  # sub-filter 1 is refracted by +2 px in x
    n_image, weights = dcr_nimage(masks, shifts, bad_bits=1)
    # sub-filter 1's weight moves 2 px left (columns 3-4 lose it); a pixel that any sub-filter
    # lacks counts for none of them
    for k in range(2):
        assert (n_image[k][:, :3] == 3).all() and (n_image[k][:, 3:] == 0).all()
        np.testing.assert_allclose(weights[k][:, :3], 1 / 3)
        assert (weights[k][:, 3:] == 0).all()


def test_clamp_iteration_bounds_coherent_changes_and_ignores_isolated_pixels():
    old = np.full((15, 15), 10.0)
    new = old.copy()
    new[3:9, 3:9] = 50.0  # a 6x6 patch far above 2 x old: clamped to 20
    new[12, 12] = 50.0  # one isolated pixel: the opening removes its flag
    new[1:6, 9:14] = 1.0  # a 5x5 patch below old / 2: exactly one diamond fits
    out = clamp_iteration(new, old, clamp=2.0, width=2)
    # an opening keeps the union of the diamonds (radius 2) that fit inside a flagged region:
    # for the 6x6 patch, those centred on its inner 2x2 pixels
    yy, xx = np.mgrid[0:15, 0:15]
    kept = np.zeros((15, 15), bool)
    for cy in (5, 6):
        for cx in (5, 6):
            kept |= np.abs(yy - cy) + np.abs(xx - cx) <= 2
    np.testing.assert_array_equal(out[3:9, 3:9], np.where(kept, 20.0, 50.0)[3:9, 3:9])
    assert out[12, 12] == 50.0  # isolated: not clamped
    # the 5x5 patch below old / 2: only the diamond centred on it is raised to old / 2
    diamond = np.abs(yy - 3) + np.abs(xx - 11) <= 2
    np.testing.assert_array_equal(out[1:6, 9:14], np.where(diamond, 5.0, 1.0)[1:6, 9:14])
    assert opening_structure(2).sum() == 13  # the 5x5 diamond


def test_frequency_regularization_keeps_a_constant_colour_ratio():
    old = np.full((3, 30, 32), 10.0)
    new = np.stack([8.0 * np.ones((30, 32)), 10.0 * np.ones((30, 32)), 12.0 * np.ones((30, 32))])
    noise = np.ones((30, 32), bool)
    out = regularize_frequency(new, old, noise, max_diff=2.0, width=2)
    # away from the zero-padded border the colour ratios 0.8, 1.0, 1.2 of the mean survive
    np.testing.assert_allclose(out[:, 8:-8, 8:-8], new[:, 8:-8, 8:-8], rtol=1e-12)


def test_frequency_regularization_smooths_a_single_sub_filter_spike():
    rng = np.random.default_rng(4)
    old = np.full((3, 30, 30), 10.0) + rng.normal(0, 0.01, (3, 30, 30))
    new = old.copy()
    new[1, 15, 15] = 30.0  # one pixel of one sub-filter tripled
    out = regularize_frequency(new, old, np.ones((30, 30), bool), max_diff=2.0, width=2)
    assert out[1, 15, 15] < 15.0  # spread out over the smoothing scale
    assert np.abs(out[0, 2:-2, 2:-2] - new[0, 2:-2, 2:-2]).max() < 0.5


def test_frequency_regularization_leaves_models_without_positive_reference():
    new = np.ones((2, 10, 10))
    out = regularize_frequency(
        new, -np.ones((2, 10, 10)), np.ones((10, 10), bool), max_diff=2.0, width=2
    )
    np.testing.assert_array_equal(out, new)


def test_bilinear_shift_is_scipys_constant_mode():
    """The numba bilinear shift behind apply_dcr(order=1) against scipy.ndimage.shift (order 1,
    mode "constant", no prefilter): integer, half and random shifts, odd shapes, 1-px images."""
    rng = np.random.default_rng(4)
    for _ in range(200):
        image = rng.normal(size=(int(rng.integers(1, 30)), int(rng.integers(1, 30))))
        shift = rng.choice([rng.uniform(-6, 6), float(rng.integers(-3, 4)), 0.0, 0.5, -0.5], 2)
        want = ndimage.shift(image, shift, order=1, mode="constant", prefilter=False)
        np.testing.assert_allclose(apply_dcr(image, shift), want, rtol=0, atol=1e-12)
