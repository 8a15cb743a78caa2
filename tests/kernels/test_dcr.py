"""DcrAssembleCoadd's gain sequence and conditioning (algorithms.md 4.6), against the formulas
written out by hand."""

import numpy as np
import pytest

from coaddx.kernels.dcr import condition_model, dcr_gain


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
