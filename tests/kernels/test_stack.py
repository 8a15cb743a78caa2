"""Tests of coaddx.kernels.stack.stack_block against the §1.1 rules and a brute-force reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from coaddx.kernels.stack import (
    StackOptions,
    mean_chunk,
    mean_combine,
    mean_finalize,
    sorting_network,
    stack_block,
)
from coaddx.testing.stack_reference import stack_block_reference

# LSST default planes as bit values (algorithms.md §0, coaddx.masks.DEFAULT_MASK_PLANES).
BAD, SAT, EDGE, DETECTED = 1 << 0, 1 << 1, 1 << 4, 1 << 5
NO_DATA, CLIPPED, SENSOR_EDGE, REJECTED, NOT_DEBLENDED = 1 << 8, 1 << 9, 1 << 10, 1 << 12, 1 << 15
ASSEMBLE_BAD = NO_DATA | BAD | SAT | EDGE  # AssembleCoadd badMaskPlanes
COMPARE_BAD = NO_DATA | BAD | SAT | CLIPPED  # CompareWarp final stack (EDGE removed instead)
RANDOM_BITS = (BAD, SAT, EDGE, NO_DATA, CLIPPED, DETECTED, NOT_DEBLENDED)
STATISTICS = ("mean", "meanclip", "median")
ERROR_MODES = ("input", "mosaic", "sample")


def lsst_rules(bad=ASSEMBLE_BAD, remove=0):
    """Keyword arguments of an AssembleCoadd-like stack (setRejectedMaskMapping, SAT 0.1)."""
    return dict(
        bad_mask=bad,
        propagate_bits=(SAT,),
        propagate_thresholds=(0.1,),
        clipped_bit=CLIPPED,
        map_from=(bad & ~NO_DATA & ~EDGE & ~CLIPPED, EDGE, CLIPPED),
        map_to=(REJECTED, SENSOR_EDGE, CLIPPED),
        no_data_bit=NO_DATA,
        remove_bits=remove,
    )


RULES = {"assemble": lsst_rules(), "comparewarp": lsst_rules(COMPARE_BAD, EDGE | NOT_DEBLENDED)}


def random_cube(seed, nvis, shape=(4, 9)):
    """A cube with ties, outliers, NaNs (flagged or not), NaN variances, masks and bad weights."""
    rng = np.random.default_rng(seed)
    size = (nvis, *shape)
    ties = rng.choice(np.array([0, 0, 0, 0, 1, 1, 2, 5], np.float32), size=size)
    smooth = rng.normal(10.0, 1.0, size) + (rng.random(size) < 0.08) * rng.uniform(20, 100, size)
    image = np.where(rng.random(shape) < 0.5, ties, smooth).astype(np.float32)
    image[rng.random(size) < 0.05] = np.nan
    variance = rng.uniform(0.5, 2.0, size).astype(np.float32)
    variance[rng.random(size) < 0.03] = np.nan
    mask = np.zeros(size, np.int32)
    for bit in RANDOM_BITS:
        mask[rng.random(size) < 0.07] |= bit
    mask[:, 0, 0] |= NO_DATA  # every input rejected
    image[:, 0, 1] = np.nan  # every input non-finite but unflagged
    image[:, 1, 0] = 3.0  # all equal
    mask[1:, 1, 1] |= BAD  # at most one good input
    weights = rng.uniform(0.3, 3.0, nvis)
    for i, bad_weight in zip((1, 4, 5), (0.0, np.nan, -1.0), strict=True):
        if nvis >= 3 and i < nvis:
            weights[i] = bad_weight
    return image, variance, mask, weights


def assert_same(got, want):
    """Masks and n_image exactly; values and variances to float32 precision, NaNs in place."""
    np.testing.assert_array_equal(got[2], want[2], err_msg="mask")
    np.testing.assert_array_equal(got[3], want[3], err_msg="n_image")
    for name, a, b in (("value", got[0], want[0]), ("variance", got[1], want[1])):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name} NaN positions")
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)


def one_pixel(values, weights, variances, statistic, error_mode="input", masks=None, **kwargs):
    values = np.asarray(values, np.float32).reshape(-1, 1, 1)
    variances = np.broadcast_to(np.asarray(variances, np.float32).reshape(-1, 1, 1), values.shape)
    masks = np.zeros(values.shape, np.int32) if masks is None else np.reshape(masks, values.shape)
    rules = {**lsst_rules(), **kwargs}
    weights = np.broadcast_to(weights, len(values))
    out = stack_block(
        values,
        variances,
        masks.astype(np.int32),
        weights,
        statistic=statistic,
        error_mode=error_mode,
        **rules,
    )
    return tuple(a[0, 0].item() for a in out)


# ---------------------------------------------------------------------------------------------
# the worked examples of algorithms.md §1.1


def test_stack_block_worked_example_integers():
    value, var, mask, n_image = one_pixel([1, 2, 2, 3, 8], 1.0, 1.0, "meanclip")
    assert (value, var, mask, n_image) == (2.0, 0.25, CLIPPED, 5)


def test_stack_block_worked_example_weighted():
    values, weights = [10, 11, 9, 10.5, 9.5, 30], [1, 2, 1, 2, 1, 1]
    variances = [1, 0.5, 1, 0.5, 1, 1]
    value, var, mask, _ = one_pixel(values, weights, variances, "meanclip")
    assert value == np.float32(71.5 / 7)
    assert var == np.float32(7 / 49)
    assert mask == CLIPPED
    _, var_sample, _, _ = one_pixel(values, weights, variances, "meanclip", "sample")
    assert var_sample == np.float32(24 / 38 * 11 / 49)  # 0.141783
    assert round(var_sample, 6) == 0.141783


def test_stack_block_worked_example_zero_iqr():
    value, var, mask, _ = one_pixel([0.0] * 9 + [1.0], 1.0, 1.0, "meanclip")
    assert (value, mask) == (0.0, CLIPPED)
    assert var == np.float32(1 / 9)


def test_stack_block_median_error_ignores_input_variance():
    values, weights = [1, 2, 4, 7], [1, 1, 2, 1]
    value, var, mask, _ = one_pixel(values, weights, 100.0, "median", "input")
    w, x = np.array(weights, float), np.array(values, float)
    mean = (w * x).sum() / w.sum()
    sample = (w * (x - mean) ** 2).sum() / w.sum() * w.sum() ** 2 / (w.sum() ** 2 - (w * w).sum())
    assert value == 3.0 and mask == 0
    assert var == pytest.approx(math.pi / 2 * sample / 4, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# mask rules


def test_stack_block_threshold_propagation_is_strict():
    # SAT-rejected weight 1 of 10 is exactly the 0.1 threshold: not propagated; 2 of 11 is.
    masks = [0] * 9 + [SAT]
    *_, mask, _ = one_pixel([1.0] * 10, 1.0, 1.0, "mean", masks=masks)
    assert mask == REJECTED
    *_, mask, _ = one_pixel([1.0] * 11, 1.0, 1.0, "mean", masks=[0] * 9 + [SAT, SAT])
    assert mask == SAT | REJECTED


def test_stack_block_mask_map_inspects_accepted_inputs():
    rules = lsst_rules(NO_DATA | BAD | SAT)  # EDGE not rejected
    masks = [EDGE, BAD, 0]
    *_, mask, n_image = one_pixel([1.0, 2.0, 3.0], 1.0, 1.0, "mean", masks=masks, **rules)
    assert mask == EDGE | SENSOR_EDGE | REJECTED
    assert n_image == 2
    *_, mask, _ = one_pixel([1.0, 2.0, 3.0], 1.0, 1.0, "mean", masks=[EDGE, 0, 0], **rules)
    assert mask == EDGE  # nothing rejected: no maskMap


def test_stack_block_no_good_input_replaces_mask():
    masks = [SAT | DETECTED, NO_DATA | SAT]
    value, var, mask, n_image = one_pixel(
        [1.0, np.nan], 1.0, 1.0, "meanclip", masks=masks, bad_mask=ASSEMBLE_BAD | DETECTED
    )
    assert math.isnan(value) and math.isnan(var)
    assert mask == NO_DATA | REJECTED  # SAT dropped with the OR mask (afw), NO_DATA not mapped
    assert n_image == 0


def test_stack_block_nan_without_bad_bits_counts_in_n_image():
    value, _, mask, n_image = one_pixel([np.nan, 2.0, 4.0], 1.0, 1.0, "mean")
    assert (value, mask, n_image) == (3.0, 0, 3)


def test_stack_block_remove_bits_after_n_image():
    masks = [EDGE | DETECTED, 0]
    value, _, mask, n_image = one_pixel([2.0, 4.0], 1.0, 1.0, "mean", masks=masks, remove_bits=EDGE)
    assert (value, mask, n_image) == (3.0, DETECTED, 1)


# ---------------------------------------------------------------------------------------------
# against the brute-force reference


@pytest.mark.parametrize("rules", sorted(RULES))
@pytest.mark.parametrize("statistic", STATISTICS)
@pytest.mark.parametrize("nvis", [1, 2, 3, 7, 33, 64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stack_block_matches_reference(seed, nvis, statistic, rules):
    image, variance, mask, weights = random_cube(seed, nvis)
    for error_mode in ERROR_MODES:
        kwargs = dict(statistic=statistic, error_mode=error_mode, **RULES[rules])
        got = stack_block(image, variance, mask, weights, **kwargs)
        assert_same(got, stack_block_reference(image, variance, mask, weights, **kwargs))


@pytest.mark.parametrize("statistic", STATISTICS)
def test_stack_block_clip_options_match_reference(statistic):
    image, variance, mask, weights = random_cube(7, 40)
    for sigma_clip, clip_iter in ((2.5, 3), (1.0, 1), (0.2, 4)):
        kwargs = dict(
            statistic=statistic, sigma_clip=sigma_clip, clip_iter=clip_iter, **lsst_rules()
        )
        got = stack_block(image, variance, mask, weights, **kwargs)
        assert_same(got, stack_block_reference(image, variance, mask, weights, **kwargs))


@pytest.mark.parametrize("statistic", STATISTICS)
def test_stack_block_many_segments_match_reference(statistic):
    image, variance, mask, weights = random_cube(3, 9, shape=(5, 23))
    kwargs = dict(statistic=statistic, **lsst_rules())
    options = StackOptions(**kwargs, segment_pixels=48, sort_block_pixels=16)
    got = stack_block(image, variance, mask, weights, options=options)
    assert_same(got, stack_block_reference(image, variance, mask, weights, **kwargs))


def test_stack_block_float64_input_matches_reference():
    image, variance, mask, weights = random_cube(4, 12)
    for statistic in STATISTICS:
        kwargs = dict(statistic=statistic, error_mode="sample", **lsst_rules())
        got = stack_block(
            image.astype(np.float64), variance.astype(np.float64), mask, weights, **kwargs
        )
        assert_same(got, stack_block_reference(image, variance, mask, weights, **kwargs))


# ---------------------------------------------------------------------------------------------
# invariances


@pytest.mark.parametrize("statistic", STATISTICS)
def test_stack_block_independent_of_block_split(statistic):
    image, variance, mask, weights = random_cube(5, 33, shape=(24, 70))
    kwargs = dict(statistic=statistic, **lsst_rules())
    whole = stack_block(image, variance, mask, weights, **kwargs)
    for axis, cut in ((1, 11), (2, 37)):
        parts = [
            stack_block(
                *(np.split(a, [cut], axis=axis)[i] for a in (image, variance, mask)),
                weights,
                **kwargs,
            )
            for i in (0, 1)
        ]
        for got, a, b in zip(whole, *parts, strict=True):
            np.testing.assert_array_equal(got, np.concatenate([a, b], axis=axis - 1))


@pytest.mark.parametrize("statistic", STATISTICS)
def test_stack_block_excluded_visits_are_absent(statistic):
    image, variance, mask, weights = random_cube(6, 10)
    weights[[2, 5, 7]] = [0.0, np.nan, -2.0]
    keep = [0, 1, 3, 4, 6, 8, 9]
    kwargs = dict(statistic=statistic, **lsst_rules())
    got = stack_block(image, variance, mask, weights, **kwargs)
    want = stack_block(image[keep], variance[keep], mask[keep], weights[keep], **kwargs)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_stack_block_no_included_visit_is_no_data():
    image, variance, mask, _ = random_cube(0, 3)
    value, var, out_mask, n_image = stack_block(
        image, variance, mask, [0.0, np.nan, -1.0], statistic="meanclip", **lsst_rules()
    )
    assert np.isnan(value).all() and np.isnan(var).all()
    assert (out_mask == NO_DATA).all() and (n_image == 0).all()


def test_stack_block_rejects_bad_arguments():
    image, variance, mask, weights = random_cube(0, 3)
    with pytest.raises(ValueError, match="statistic"):
        stack_block(image, variance, mask, weights, statistic="MEANCLIP", bad_mask=1)
    with pytest.raises(ValueError, match="error_mode"):
        stack_block(image, variance, mask, weights, statistic="mean", bad_mask=1, error_mode="x")
    with pytest.raises(ValueError, match="weights"):
        stack_block(image, variance, mask, weights[:2], statistic="mean", bad_mask=1)
    with pytest.raises(ValueError, match="unequal"):
        stack_block(
            image, variance, mask, weights, statistic="mean", bad_mask=1, propagate_bits=(SAT,)
        )
    with pytest.raises(ValueError, match="clip_iter"):
        stack_block(image, variance, mask, weights, statistic="meanclip", bad_mask=1, clip_iter=0)


# ---------------------------------------------------------------------------------------------
# the sorting network


@pytest.mark.parametrize("n", range(1, 13))
def test_sorting_network_sorts_all_zero_one_inputs(n):
    ci, cj = sorting_network(n)
    assert ((ci < cj) & (cj < n)).all()
    keys = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.int8).T.copy()
    for i, j in zip(ci, cj, strict=True):
        keys[i], keys[j] = np.minimum(keys[i], keys[j]), np.maximum(keys[i], keys[j])
    assert (np.diff(keys, axis=0) >= 0).all()


@pytest.mark.parametrize("n", [13, 33, 64, 100, 200])
def test_sorting_network_sorts_random_inputs(n):
    keys = np.random.default_rng(n).integers(0, 5, size=(n, 500)).astype(np.float32)
    want = np.sort(keys, axis=0)
    for i, j in zip(*sorting_network(n), strict=True):
        keys[i], keys[j] = np.minimum(keys[i], keys[j]), np.maximum(keys[i], keys[j])
    np.testing.assert_array_equal(keys, want)


@pytest.mark.parametrize("nvis", [2, 7, 33])
@pytest.mark.parametrize("statistic", ["median", "meanclip"])
def test_stack_block_selection_fallback_matches_reference(statistic, nvis):
    image, variance, mask, weights = random_cube(8, nvis, shape=(5, 21))
    kwargs = dict(statistic=statistic, **lsst_rules())
    options = StackOptions(**kwargs, network_max_visits=1)  # per-pixel selection, not the network
    got = stack_block(image, variance, mask, weights, options=options)
    assert_same(got, stack_block_reference(image, variance, mask, weights, **kwargs))


def test_stack_block_meanclip_identical_kept_values_are_exact():
    # Iteration 0 keeps {0, 0, 0, 1}, iteration 1 (centre 0.08) keeps the zeros, whose mean must
    # be exactly 0 with a zero variance, or the half-width-0 iterations after it keep nothing.
    values, weights = [5.0, 2.0, 0.0, 1.0, 0.0, 0.0], [2.64, 1.68, 2.84, 0.64, 2.93, 1.34]
    value, var, mask, _ = one_pixel(values, weights, 1.0, "meanclip", sigma_clip=0.5, clip_iter=4)
    assert (value, mask) == (0.0, CLIPPED)
    assert var == pytest.approx((2.84**2 + 2.93**2 + 1.34**2) / (2.84 + 2.93 + 1.34) ** 2)


# ---------------------------------------------------------------------------------------------
# the options value and the decomposed weighted mean


def test_stack_block_options_equal_their_fields():
    image, variance, mask, weights = random_cube(9, 7)
    kwargs = dict(statistic="meanclip", error_mode="sample", **lsst_rules())
    by_fields = stack_block(image, variance, mask, weights, **kwargs)
    by_options = stack_block(image, variance, mask, weights, options=StackOptions(**kwargs))
    for a, b in zip(by_fields, by_options, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="not both"):
        stack_block(image, variance, mask, weights, options=StackOptions(**kwargs), bad_mask=1)


@pytest.mark.parametrize("rules", sorted(RULES))
@pytest.mark.parametrize("nvis", [2, 7, 33])
def test_mean_chunk_combine_finalize_equals_stack_block_mean(nvis, rules):
    image, variance, mask, weights = random_cube(10 + nvis, nvis, shape=(6, 11))
    bad, remove = RULES[rules]["bad_mask"], RULES[rules]["remove_bits"]
    half = nvis // 2
    parts = [
        mean_chunk(image[s], variance[s], mask[s], weights[s], bad_mask=bad, remove_bits=remove)
        for s in (slice(0, half), slice(half, None))
    ]
    sums = mean_combine(*parts)
    for error_mode in ERROR_MODES:
        value, var, n_image = mean_finalize(sums, error_mode=error_mode)
        want = stack_block(
            image, variance, mask, weights, statistic="mean", error_mode=error_mode, **RULES[rules]
        )
        np.testing.assert_array_equal(n_image, want[3], err_msg="n_image")
        for name, a, b in (("value", value, want[0]), ("variance", var, want[1])):
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name} NaN")
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("n", [8, 16])
def test_bitonic_passes_sort_all_zero_one_inputs(n):
    from coaddx.kernels.stack.network import bitonic_passes, sort_blocked

    keys = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.float32).T.copy()
    sort_blocked(keys, keys.shape[1], bitonic_passes(n))
    assert (np.diff(keys, axis=0) >= 0).all()


@pytest.mark.parametrize("n", [5, 13, 31, 48, 64, 100, 200])
def test_bitonic_passes_sort_random_inputs_padded_with_inf(n):
    from coaddx.kernels.stack.network import bitonic_passes, network_rows, sort_blocked

    rows = network_rows(n, True)
    keys = np.full((rows, 300), np.inf, np.float32)
    keys[:n] = np.random.default_rng(n).integers(0, 5, size=(n, 300))
    want = np.sort(keys, axis=0)
    sort_blocked(keys, 300, bitonic_passes(n))
    np.testing.assert_array_equal(keys, want)


@pytest.mark.parametrize("nvis", [6, 7, 8, 12, 16, 31, 48, 64])
@pytest.mark.parametrize("statistic", ["median", "meanclip"])
def test_stack_block_bitonic_passes_equal_comparator_list(statistic, nvis, monkeypatch):
    # both sorts leave the same sorted columns, signed zeros included (the comparator list
    # turns -0.0 into +0.0, so the copy into the passes' buffer does too)
    import coaddx.kernels.stack.block as block
    from coaddx.kernels.stack.network import NO_PASSES, sort_plan

    image, variance, mask, weights = random_cube(20 + nvis, nvis, shape=(6, 40))
    zeros = np.float32([-0.0, 0.0, 1.0])
    image[:, 2:4] = np.random.default_rng(nvis).choice(zeros, (nvis, 2, 40))
    kwargs = dict(statistic=statistic, **lsst_rules())
    assert sort_plan(nvis)[2].shape[0] > 0  # these counts sort by the passes
    got = stack_block(image, variance, mask, weights, **kwargs)
    monkeypatch.setattr(block, "sort_plan", lambda n: (*sorting_network(n), NO_PASSES, n))
    want = stack_block(image, variance, mask, weights, **kwargs)
    for a, b in zip(got, want, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("statistic", ["mean", "meanclip", "median"])
@pytest.mark.parametrize("nvis", [5, 64, 70])
def test_stack_block_takes_uint16_masks_as_they_are(statistic, nvis):
    """A uint16 mask (the warp store's) is stacked without widening it to int32 and gives the
    int32 result byte for byte, bit 15 included, and the brute-force reference's."""
    image, variance, mask, weights = random_cube(90 + nvis, nvis, shape=(5, 33))
    mask[np.random.default_rng(nvis).random(mask.shape) < 0.05] |= 1 << 15
    assert mask.max() < 1 << 16
    rules = lsst_rules(bad=ASSEMBLE_BAD | (1 << 15))
    kwargs = dict(statistic=statistic, **rules)
    got = stack_block(image, variance, mask.astype(np.uint16), weights, **kwargs)
    want = stack_block(image, variance, mask, weights, **kwargs)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert_same(got, stack_block_reference(image, variance, mask, weights, **kwargs))
