"""Tests for coaddx.kernels.interp: LSST interpolateOverDefects as run by InterpImageTask.

Expected numbers come from the Interp.cc coefficient tables (written out by hand below) and from
the LSST unit tests meas_algorithms tests/test_interp.py (testEdge, test1295) and pipe_tasks
tests/test_interpImageTask.py (testEdge, testTranspose).

Precision of the scheme: every coefficient row sums to 1 within 1e-4 (4-decimal tables), so a
constant is reproduced to 1e-4 relative (exactly for 1-px runs). The coefficients are linear
*predictors* for a noisy correlated sky, not polynomial interpolants: a linear ramp is
reproduced exactly (to double rounding) only where the weights are symmetric, i.e. 1-px runs and
the centre pixel of odd-width runs with two good pixels on each side; elsewhere the offset is
fixed by the tables (e.g. +/-0.1137 * slope for a 2-px run).
"""

from __future__ import annotations

import numpy as np
import pytest

from coaddx.kernels.interp import interp_fallback, interpolate_over_defects
from coaddx.kernels.interp_tables import NARROW, ONE_SIDED, WIDE_TABLE

OTHER, BAD, INTRP = 0x1, 0x4, 0x20


def _interp(image, bad, *, fallback=0.0, variance=None, mask=None, transpose=False):
    image = np.asarray(image)
    if mask is None:
        mask = np.where(bad, BAD, 0).astype(np.int32)
    if variance is None:
        variance = np.ones_like(image)
    return interpolate_over_defects(
        image, variance, mask, bad_bits=BAD, intrp_bit=INTRP, fallback=fallback, transpose=transpose
    )


def _interp_row(values, bad_columns, *, fallback=0.0, dtype=np.float64):
    row = np.asarray(values, dtype=dtype)[None, :]
    bad = np.zeros(row.shape, dtype=bool)
    bad[0, list(bad_columns)] = True
    return _interp(row, bad, fallback=fallback)[0][0]


def test_coefficient_tables_sum_to_one():
    rows = [r for table in NARROW.values() for r in table]
    rows += [r for head, tail, mid, _ in WIDE_TABLE.values() for r in (*head, *tail, mid)]
    assert len(rows) == 4 * 55 + 4 * 13
    assert max(abs(sum(r) - 1.0) for r in rows) <= 1.0001e-4
    assert all(abs(sum(r) - 1.0) < 1e-12 for r in ONE_SIDED)


def test_coefficient_tables_mirror_symmetric():
    """Swapping left and right mirrors every table (checks the transcription)."""
    for (n, left, right), rows in NARROW.items():
        mirror = NARROW[(n, right, left)]
        assert rows == tuple(tuple(reversed(mirror[n - 1 - k])) for k in range(n))
    for (left, right), (head, _tail, mid, _) in WIDE_TABLE.items():
        _m_head, m_tail, m_mid, _ = WIDE_TABLE[(right, left)]
        assert head == tuple(tuple(reversed(r)) for r in reversed(m_tail))
        assert mid == tuple(reversed(m_mid))


def test_interpolate_over_defects_ramp_single_pixel_exact():
    x = np.arange(60.0)
    ramp = 3.0 + 0.5 * x
    bad = [2, 7, 12, 20, 30, 45, 57]  # 1-px runs with >= 2 good pixels on each side
    out = _interp_row(np.where(np.isin(x, bad), np.nan, ramp), bad)
    np.testing.assert_allclose(out, ramp, rtol=0, atol=1e-12)
    out32 = _interp_row(np.where(np.isin(x, bad), np.nan, ramp), bad, dtype=np.float32)
    np.testing.assert_array_equal(out32, ramp.astype(np.float32))


@pytest.mark.parametrize("width", [3, 5, 7, 9])
def test_interpolate_over_defects_ramp_centre_of_odd_run_exact(width):
    x = np.arange(40.0)
    ramp = -7.0 + 1.25 * x
    bad = range(15, 15 + width)
    out = _interp_row(ramp, bad)
    centre = 15 + width // 2
    assert out[centre] == pytest.approx(ramp[centre], abs=1e-12)


def test_interpolate_over_defects_ramp_two_pixels_table_values():
    """'##..##' (type 063): -0.4793, 1.1904, 0.5212, -0.2323 and its mirror."""
    ramp = np.arange(20.0)
    out = _interp_row(ramp, [8, 9])
    f = ramp
    assert out[8] == pytest.approx(
        -0.4793 * f[6] + 1.1904 * f[7] + 0.5212 * f[10] - 0.2323 * f[11], abs=1e-12
    )
    np.testing.assert_allclose(out[8:10] - ramp[8:10], [0.1137, -0.1137], atol=1e-12)


def test_interpolate_over_defects_constant_image_stays_constant():
    ny, nx, value = 6, 170, 250.0
    image = np.full((ny, nx), value)
    bad = np.zeros((ny, nx), dtype=bool)
    col = 2
    for width in range(1, 16):  # MIDDLE and WIDE runs, 2 good pixels between them
        bad[0, col : col + width] = True
        col += width + 2
    bad[1, [10, 12, 13, 15, 17]] = True  # one good pixel between runs ("#." sides)
    bad[1, 20:35] = True
    bad[1, 36] = True
    bad[2, :4] = bad[2, -5:] = True  # edge runs <= 6 px: one-sided extrapolation
    bad[3, :12] = bad[3, -9:] = True  # edge runs > 6 px: fallback then 6 px interpolated
    bad[4, 1:4] = bad[4, -4:-1] = True  # NEAR_LEFT / NEAR_RIGHT
    bad[5, 1:30] = bad[5, 40:-1] = True  # WIDE_NEAR_LEFT / WIDE_NEAR_RIGHT
    image[bad] = np.nan  # nothing may read a bad pixel here
    out, var, _ = _interp(image, bad, fallback=value, variance=np.where(bad, np.nan, value))
    np.testing.assert_allclose(out, value, rtol=1.0001e-4)
    np.testing.assert_allclose(var, value, rtol=1.0001e-4)
    one_px = np.full((5, 9), np.float32(123.45))
    bad1 = np.zeros(one_px.shape, dtype=bool)
    bad1[:, 4] = True
    np.testing.assert_array_equal(_interp(one_px, bad1)[0], np.float32(123.45))


@pytest.mark.parametrize("width", [11, 12, 20, 50])
def test_interpolate_over_defects_wide_run_tends_to_average(width):
    left, right = 2.0, 10.0
    row = np.r_[np.full(20, left), np.full(width, np.nan), np.full(20, right)]
    out = _interp_row(row, range(20, 20 + width))
    run = out[20 : 20 + width]
    np.testing.assert_array_equal(run[6 : width - 6], 6.0)  # 0.25 * (2 + 2 + 10 + 10)
    assert np.all((run > left) & (run < right))
    assert run[0] == pytest.approx(-0.5177 * 2 + 1.3400 * 2 + 0.0888 * 10 + 0.0888 * 10)
    assert run[-1] == pytest.approx(0.0888 * 2 + 0.0888 * 2 + 1.3400 * 10 - 0.5177 * 10)


def test_interpolate_over_defects_wide_run_single_good_neighbours():
    """'#?#.' (one good pixel, then another run, on both sides): middle = 0.5 * (a + b)."""
    row = np.r_[np.full(10, 4.0), np.full(30, 8.0)]
    bad = [7, *range(9, 29), 30]
    out = _interp_row(row, bad)
    np.testing.assert_array_equal(out[15:23], 0.5 * 4.0 + 0.5 * 8.0)
    assert out[9] == pytest.approx(0.8894 * 4.0 + 0.1106 * 8.0)


@pytest.mark.parametrize("width", [8, 12, 20])
def test_interpolate_over_defects_edge_runs_get_fallback(width):
    fallback, data = 3.0, 10.0
    row = np.full(60, data)
    out = _interp_row(row, range(width), fallback=fallback)
    np.testing.assert_array_equal(out[: width - 6], fallback)
    expected = [
        -0.5177 * 3 + 1.3400 * 3 + 0.0891 * 10 + 0.0886 * 10,
        -0.2771 * 3 + 0.9095 * 3 + 0.1878 * 10 + 0.1797 * 10,
    ]
    np.testing.assert_allclose(out[width - 6 : width - 4], expected, rtol=1e-12)
    assert np.all((out[width - 6 : width] > fallback) & (out[width - 6 : width] < data))
    out_r = _interp_row(row, range(60 - width, 60), fallback=fallback)
    np.testing.assert_array_equal(out_r[60 - width + 6 :], fallback)
    np.testing.assert_allclose(out_r[::-1][width - 6 : width - 4], expected, rtol=1e-12)


@pytest.mark.parametrize("width", [1, 3, 6])
def test_interpolate_over_defects_short_edge_runs_extrapolate(width):
    row = 5.0 + 2.0 * np.arange(30.0)
    out = _interp_row(row, range(width), fallback=-99.0)
    d = np.arange(width, 0, -1)  # distance to the first good pixel
    near, far = np.array(ONE_SIDED)[d - 1].T
    np.testing.assert_allclose(out[:width], near * row[width] + far * row[width + 1], rtol=1e-12)
    assert out[width - 1] == pytest.approx(1.4288 * row[width] - 0.4288 * row[width + 1])
    out_r = _interp_row(row, range(30 - width, 30), fallback=-99.0)
    assert out_r[30 - width] == pytest.approx(-0.4288 * row[-width - 2] + 1.4288 * row[-width - 1])


def test_interpolate_over_defects_seven_pixel_edge_run_uses_sentinel():
    """LSST quirk: after the fallback step the missing second neighbour is read as -1."""
    row = np.full(40, 10.0)
    out = _interp_row(row, range(7), fallback=3.0)
    assert out[0] == 3.0
    assert out[1] == pytest.approx(-0.5177 * -1 + 1.3400 * 3 + 0.0891 * 10 + 0.0886 * 10)
    assert out[1] == pytest.approx(6.3147)
    out_r = _interp_row(row, range(33, 40), fallback=3.0)
    assert out_r[39] == 3.0
    assert out_r[38] == pytest.approx(0.0886 * 10 + 0.0891 * 10 + 1.3400 * 3 - 0.5177 * -1)


def test_interpolate_over_defects_all_bad_rows_get_fallback():
    for nx in (4, 64):
        image = np.arange(3.0 * nx, dtype=np.float32).reshape(3, nx)
        bad = np.zeros(image.shape, dtype=bool)
        bad[1] = True
        out, var, mask = _interp(image, bad, fallback=7.5, variance=image * 2)
        np.testing.assert_array_equal(out[1], np.float32(7.5))
        np.testing.assert_array_equal(var[1], np.float32(7.5))  # image-derived fallback
        np.testing.assert_array_equal(out[[0, 2]], image[[0, 2]])
        assert np.all(mask[1] == BAD | INTRP)


def test_interpolate_over_defects_intrp_exactly_on_defects():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(40, 70)).astype(np.float32)
    mask = rng.choice(
        np.array([0, OTHER, BAD, BAD | OTHER, 0x100], dtype=np.int32),
        size=image.shape,
        p=[0.5, 0.15, 0.15, 0.1, 0.1],
    )
    mask[5] = BAD
    mask[6, :20] = BAD
    out_mask = _interp(image, None, mask=mask)[2]
    assert out_mask.dtype == np.int32
    np.testing.assert_array_equal(out_mask, np.where(mask & BAD, mask | INTRP, mask))


def test_interpolate_over_defects_unmasked_pixels_unchanged_bitwise():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(50, 80)).astype(np.float32)
    variance = rng.uniform(0.5, 2.0, size=image.shape).astype(np.float32)
    bad = rng.random(image.shape) < 0.25
    bad[:, :9] = True
    image[bad] = np.nan
    image[~bad & (rng.random(image.shape) < 0.01)] = np.inf
    out, var, _ = _interp(image, bad, variance=variance, fallback=0.25)
    assert out.dtype == var.dtype == np.float32
    np.testing.assert_array_equal(out.view(np.uint32)[~bad], image.view(np.uint32)[~bad])
    np.testing.assert_array_equal(var.view(np.uint32)[~bad], variance.view(np.uint32)[~bad])


def test_interpolate_over_defects_variance_same_scheme():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(30, 90))
    variance = rng.uniform(1.0, 3.0, size=image.shape)
    bad = rng.random(image.shape) < 0.2
    bad[:, :15] = True
    bad[4] = True
    img_out, var_out, mask_out = _interp(image, bad, variance=variance, fallback=0.7)
    ref, _, ref_mask = _interp(variance, bad, variance=image, fallback=0.7)
    np.testing.assert_array_equal(var_out, ref)
    np.testing.assert_array_equal(mask_out, ref_mask)
    assert np.all(np.isfinite(img_out)) and np.all(var_out[4] == 0.7)


def test_interpolate_over_defects_inputs_not_modified():
    rng = np.random.default_rng(4)
    image = rng.normal(size=(20, 30))
    variance = rng.uniform(size=(20, 30))
    mask = np.where(rng.random((20, 30)) < 0.3, BAD, 0).astype(np.int32)
    copies = image.copy(), variance.copy(), mask.copy()
    outs = interpolate_over_defects(
        image, variance, mask, bad_bits=BAD, intrp_bit=INTRP, fallback=1.0
    )
    for before, after, out in zip(copies, (image, variance, mask), outs, strict=True):
        np.testing.assert_array_equal(before, after)
        assert not np.shares_memory(out, after)


def test_interpolate_over_defects_transpose():
    rng = np.random.default_rng(5)
    image = rng.normal(size=(40, 25))
    variance = rng.uniform(size=(40, 25))
    bad = rng.random(image.shape) < 0.3
    bad[:, 3] = True
    mask = np.where(bad, BAD, 0).astype(np.int32)
    got = _interp(image, None, variance=variance, mask=mask, fallback=0.5, transpose=True)
    ref = _interp(image.T, None, variance=variance.T, mask=mask.T, fallback=0.5)
    for g, r in zip(got, ref, strict=True):
        assert g.shape == image.shape and g.flags.c_contiguous
        np.testing.assert_array_equal(g, r.T)


def test_interpolate_over_defects_lsst_transpose_bad_row():
    """pipe_tasks testTranspose: a bad row of a constant image comes back exactly."""
    value = np.float32(123.45)
    image = np.full((45, 123), value, dtype=np.float32)
    image[22] = 10 * value
    bad = np.zeros(image.shape, dtype=bool)
    bad[22] = True
    out, var, mask = _interp(
        image, bad, variance=np.zeros_like(image), fallback=interp_fallback(image), transpose=True
    )
    np.testing.assert_array_equal(out, value)
    np.testing.assert_array_equal(var, 0)
    assert np.all(mask[22] == BAD | INTRP) and not np.any(mask[:22] | mask[23:])


def test_interpolate_over_defects_rows_independent():
    rng = np.random.default_rng(6)
    image = rng.normal(size=(64, 50)).astype(np.float32)
    bad = rng.random(image.shape) < 0.3
    bad[:, :8] = True
    full = _interp(image, bad, fallback=0.1)
    for y0, y1 in ((0, 7), (7, 40), (40, 64)):
        band = _interp(image[y0:y1], bad[y0:y1], fallback=0.1)
        for f, b in zip(full, band, strict=True):
            np.testing.assert_array_equal(f[y0:y1], b)


def test_interpolate_over_defects_lsst_meas_algorithms_test_edge():
    """meas_algorithms testEdge: edge, near-edge and coalescing runs stay within (-2, 2)."""
    rng = np.random.default_rng(666)
    ny, nx = 30, 80
    for n_bad in range(20):
        image = rng.uniform(-1, 1, (ny, nx)).astype(np.float32)
        bad = np.zeros((ny, nx), dtype=bool)
        if n_bad > 0:
            image[:, :n_bad] = image[:, -n_bad:] = 10
            bad[:, :n_bad] = bad[:, -n_bad:] = True
            image[:10, n_bad + 1 : n_bad + 4] = image[:10, -n_bad - 4 : -n_bad - 1] = 100
            bad[:10, n_bad + 1 : n_bad + 4] = bad[:10, -n_bad - 4 : -n_bad - 1] = True
        image[-3:, : nx // 2 - 1] = image[-3:, nx // 2 + 1 :] = 100
        bad[ny - 3, : nx // 2 - 1] = bad[ny - 3, nx // 2 + 1 :] = True
        image[-2:, : nx // 2] = image[-2:, nx // 2 + 1 :] = 100
        bad[ny - 2, : nx // 2] = bad[ny - 2, nx // 2 + 1 :] = True
        image[-1:] = 100
        bad[ny - 1] = True
        image[13, :-1] = image[14, 1:] = 100  # HSC-978: run stops one pixel shy of the edge
        bad[13, :-1] = bad[14, 1:] = True
        out = _interp(image, bad, fallback=0.0)[0]
        assert out.min() > -2 and out.max() < 2, n_bad
        np.testing.assert_array_equal(out[ny - 1], 0.0)


@pytest.mark.parametrize("fallback", [None, 0.5])
def test_interpolate_over_defects_lsst_pipe_tasks_test_edge(fallback):
    """pipe_tasks testEdge: column 1 (>6 px from data) holds the fallback on every row."""
    rng = np.random.default_rng(666)
    image = rng.uniform(-1, 1, (30, 80)).astype(np.float32)
    bad = np.zeros(image.shape, dtype=bool)
    image[:, :10] = image[:, -10:] = 10
    bad[:, :10] = bad[:, -10:] = True
    image[:10, 11:14] = image[:10, 66:69] = 100
    bad[:10, 11:14] = bad[:10, 66:69] = True
    if fallback is None:
        fallback = interp_fallback(image)
        assert 0.0 < fallback < 1.0
    out = _interp(image, bad, fallback=fallback)[0]
    assert out.min() > min(-2, 2 * fallback) and out.max() < max(2, 2 * fallback)
    assert np.mean(out[:, 1], dtype=float) == pytest.approx(fallback, abs=1e-6)
    np.testing.assert_array_equal(out[:, :4], np.float32(fallback))
    np.testing.assert_array_equal(out[:, -4:], np.float32(fallback))


def test_interpolate_over_defects_lsst_test_1295_groups_of_defects():
    """meas_algorithms test1295: a group of touching defects is interpolated (finite)."""
    flat = np.ones((100, 100), dtype=np.float32)
    flat[:, [50, 55, 58]] = 0
    flat[51:, 51:60] = 0
    with np.errstate(divide="ignore"):
        image = np.float32(100) / flat
    bad = flat == 0
    out = _interp(image, bad, fallback=50.0)[0]
    assert np.isfinite(out[51, 56])
    np.testing.assert_allclose(out, 100.0, rtol=1.01e-4)  # float32 rounding


def test_interpolate_over_defects_two_pixel_run_clamps_negative():
    """LSST quirk: '#..#.' (type 022) clamps negative values to 0 instead of the min test."""
    bad = [3, 5, 6, 8]
    out = _interp_row(np.full(12, -5.0), bad)
    np.testing.assert_array_equal(out[5:7], 0.0)
    assert out[3] == pytest.approx(-5.0)
    out = _interp_row(np.full(12, 5.0), bad)
    np.testing.assert_allclose(out[5:7], [0.7297 * 5 + 0.2703 * 5] * 2, rtol=1e-12)


def test_interpolate_over_defects_near_left_reads_next_run():
    """LSST quirk: x0 == 1 with the next run one pixel later keeps '##' on the right."""
    row = np.array([1.0, -50.0, 2.0, 1000.0, 3.0, 3.0, 3.0, 3.0])
    out = _interp_row(row, [1, 3])
    assert out[1] == pytest.approx(0.4875 * 1.0 + 0.8959 * 2.0 - 0.3834 * 1000.0)


def test_interpolate_over_defects_min_check_replaces_overflow():
    """float32 overflow to -inf falls below -FLT_MAX: replaced by the neighbour average."""
    big = np.float32(3.4e38)
    row = np.array([big, big, -big, np.nan, np.nan, big, big, big], dtype=np.float32)
    out = _interp_row(row, [3, 4], dtype=np.float32)
    assert out[3] == 0.0  # -0.4793 + (-1.1904) + 0.5212 - 0.2323 < -1: overflows
    b = float(big)
    assert out[4] == np.float32(-0.2323 * b + 0.5212 * -b + 1.1904 * b - 0.4793 * b)


def test_interpolate_over_defects_large_image_smoke():
    rng = np.random.default_rng(7)
    image = rng.normal(size=(1500, 1500)).astype(np.float32)
    bad = rng.random(image.shape) < 0.05
    bad[:, :100] = bad[700:760] = True
    image[bad] = 1e30  # never read, except by the NEAR_LEFT quirk (x0 == 1: none here)
    out = _interp(image, bad, fallback=0.0)[0]
    assert np.all(np.abs(out) < 100)


def test_interpolate_over_defects_validation():
    img = np.zeros((3, 4))
    with pytest.raises(ValueError):
        interpolate_over_defects(
            img, img, np.zeros((3, 5), np.int32), bad_bits=1, intrp_bit=2, fallback=0.0
        )
    with pytest.raises(TypeError):
        interpolate_over_defects(
            img.astype(int), img, np.zeros((3, 4), np.int32), bad_bits=1, intrp_bit=2, fallback=0.0
        )


def test_interp_fallback_median_of_finite_pixels():
    image = np.array([[1.0, 2.0, np.nan], [np.inf, 4.0, 10.0]], dtype=np.float32)
    assert interp_fallback(image) == 3.0  # median of 1, 2, 4, 10; mask is not used
    assert interp_fallback(image, np.full(image.shape, 0xFF)) == 3.0
    assert interp_fallback(-np.arange(5.0)) == 0.0  # negativeFallbackAllowed = False
    assert np.isnan(interp_fallback(np.full((2, 2), np.nan)))
