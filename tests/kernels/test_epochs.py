"""Epoch planes: compiled reductions against brute-force numpy, n_image, chunking, > 64 visits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from coaddx.errors import InputError
from coaddx.kernels.epochs import (
    EpochPlanes,
    bitmap_words,
    epoch_block,
    epoch_block_into,
    epoch_chunk,
    epoch_combine,
    epoch_finalize,
    unpack_visits,
    used_inputs,
    visit_counts,
)
from coaddx.kernels.stack import stack_block

BAD = 0b101


def random_block(nv: int, ny: int = 13, nx: int = 17, seed: int = 0):
    rng = np.random.default_rng(seed)
    mask = np.where(rng.random((nv, ny, nx)) < 0.3, rng.integers(0, 8, (nv, ny, nx)), 0)
    mask = mask.astype(np.int32)
    mask[:, 0, :3] |= 1  # no visit is used there
    image = rng.normal(size=(nv, ny, nx)).astype(np.float32)
    image[rng.random(image.shape) < 0.1] = np.nan
    weights = rng.uniform(0.5, 2.0, nv)
    weights[rng.random(nv) < 0.15] = 0.0  # absent visits
    if nv > 3:
        weights[3] = np.nan
    mjd = 60000.0 + rng.uniform(0, 400, nv)
    fwhm = rng.uniform(2.5, 4.5, nv)
    return mask, image, weights, mjd, fwhm


def brute_force(mask, weights, mjd, fwhm, image=None):
    """Per-pixel Python loops over the visits: the definitions, written out."""
    nv, ny, nx = mask.shape
    fw = np.broadcast_to(
        fwhm if np.ndim(fwhm) == 3 else np.asarray(fwhm)[:, None, None], mask.shape
    )
    out = {k: np.full((ny, nx), np.nan) for k in ("first", "last", "mean", "fwhm")}
    n = np.zeros((ny, nx), int)
    used = np.zeros(mask.shape, bool)
    for y in range(ny):
        for x in range(nx):
            vs = [
                v
                for v in range(nv)
                if np.isfinite(weights[v])
                and weights[v] > 0
                and int(mask[v, y, x]) & BAD == 0
                and (image is None or np.isfinite(image[v, y, x]))
            ]
            n[y, x] = len(vs)
            used[vs, y, x] = True
            if not vs:
                continue
            w, t = weights[vs], mjd[vs]
            out["first"][y, x], out["last"][y, x] = t.min(), t.max()
            out["mean"][y, x] = (w * t).sum() / w.sum()
            f = fw[vs, y, x]
            ok = np.isfinite(f)
            if ok.any():
                out["fwhm"][y, x] = (w[ok] * f[ok]).sum() / w[ok].sum()
    return out, n, used


def check(planes, ref, n, used, n_visits):
    out = dict(zip(("first", "last", "mean", "fwhm"), planes[:4], strict=True))
    for key, val in out.items():
        np.testing.assert_allclose(val, ref[key], rtol=1e-13, atol=0, equal_nan=True, err_msg=key)
    np.testing.assert_array_equal(planes.n_used, n)
    assert planes.visits.dtype == np.uint64
    assert planes.visits.shape[0] == bitmap_words(n_visits)
    np.testing.assert_array_equal(unpack_visits(planes.visits, n_visits), used)
    np.testing.assert_array_equal(visit_counts(planes.visits), n)


@pytest.mark.parametrize("with_image", [False, True])
def test_epoch_planes_against_brute_force(with_image: bool) -> None:
    mask, image, weights, mjd, fwhm = random_block(20)
    img = image if with_image else None
    planes = epoch_block(mask, weights, mjd, fwhm, bad_mask=BAD, image=img)
    ref, n, used = brute_force(mask, weights, mjd, fwhm, img)
    assert (n == 0).any() and (n > 5).any()
    check(planes, ref, n, used, 20)
    np.testing.assert_array_equal(used, used_inputs(mask, weights, bad_mask=BAD, image=img))


def test_per_pixel_fwhm_with_gaps() -> None:
    mask, _, weights, mjd, _ = random_block(9, seed=2)
    rng = np.random.default_rng(4)
    fwhm = rng.uniform(2.0, 5.0, mask.shape)
    fwhm[rng.random(mask.shape) < 0.2] = np.nan  # no PSF there: out of the FWHM mean only
    planes = epoch_block(mask, weights, mjd, fwhm, bad_mask=BAD)
    ref, n, used = brute_force(mask, weights, mjd, fwhm)
    check(planes, ref, n, used, 9)
    columns = fwhm[:, :1, :]  # (V, 1, X): broadcast over the rows
    planes = epoch_block(mask, weights, mjd, columns, bad_mask=BAD)
    ref, n, used = brute_force(mask, weights, mjd, np.broadcast_to(columns, mask.shape))
    check(planes, ref, n, used, 9)


def test_n_used_is_the_stack_n_image() -> None:
    """Without ``image`` the used inputs are n_image's: the same count as stack_block's."""
    mask, image, weights, mjd, fwhm = random_block(15, seed=1)
    _, _, _, n_image = stack_block(
        image, np.ones_like(image), mask, weights, statistic="mean", bad_mask=BAD
    )
    planes = epoch_block(mask, weights, mjd, fwhm, bad_mask=BAD)
    np.testing.assert_array_equal(planes.n_used, n_image)
    assert (
        planes.n_used != epoch_block(mask, weights, mjd, fwhm, bad_mask=BAD, image=image).n_used
    ).any()


def test_more_than_64_visits_and_chunking_invariance() -> None:
    """150 visits -> 3 words; any split into visit chunks combined in any order is the whole."""
    nv = 150
    mask, image, weights, mjd, fwhm = random_block(nv, ny=6, nx=7, seed=3)
    whole = epoch_block(mask, weights, mjd, fwhm, bad_mask=BAD, image=image)
    ref, n, used = brute_force(mask, weights, mjd, fwhm, image)
    check(whole, ref, n, used, nv)
    assert whole.visits.shape == (3, 6, 7)
    assert used[64:128].any() and used[128:].any()
    edges = [0, 10, 64, 65, 129, nv]
    parts = [
        epoch_chunk(
            mask[a:b],
            weights[a:b],
            mjd[a:b],
            fwhm[a:b],
            bad_mask=BAD,
            image=image[a:b],
            visit_offset=a,
            n_visits=nv,
        )
        for a, b in itertools.pairwise(edges)
    ]
    combined = epoch_finalize(epoch_combine(epoch_combine(*parts[3:]), *parts[:3][::-1]))
    np.testing.assert_array_equal(combined.visits, whole.visits)
    np.testing.assert_array_equal(combined.n_used, whole.n_used)
    for a, b in zip(combined[:4], whole[:4], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, equal_nan=True)


@pytest.mark.parametrize("nv", [20, 150])
def test_fast_path_equals_the_sums_and_writes_into_strided_fields(nv: int) -> None:
    """epoch_block's bitmap + byte-table path against epoch_finalize(epoch_chunk) (the
    sums over visits), also at a visit offset in a larger store and written into the fields
    of a structured block."""
    mask, image, weights, mjd, fwhm = random_block(nv, seed=5)
    fwhm[1] = np.nan  # a visit without PSF: out of the FWHM mean only
    for offset, total in ((0, None), (61, 61 + nv + 7)):
        kw = dict(bad_mask=BAD, image=image, visit_offset=offset, n_visits=total)
        fast = epoch_block(mask, weights, mjd, fwhm, **kw)
        sums = epoch_finalize(epoch_chunk(mask, weights, mjd, fwhm, **kw))
        for a, b in zip(fast[:4], sums[:4], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=0, equal_nan=True)
        for a, b in zip(fast[4:], sums[4:], strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(fast.first_mjd, sums.first_mjd)
    block = np.zeros(mask.shape[1:], [("a", "f8"), ("f", "f4"), ("bits", "u8"), ("t", "f8")])
    words = bitmap_words(nv)
    out = EpochPlanes(
        block["a"],
        block["t"],
        np.empty(mask.shape[1:]),
        block["f"],
        np.empty(mask.shape[1:], np.int32),
        block["bits"][None] if words == 1 else np.full((words, *mask.shape[1:]), 7, np.uint64),
    )
    epoch_block_into(out, mask, weights, mjd, fwhm, bad_mask=BAD)
    want = epoch_block(mask, weights, mjd, fwhm, bad_mask=BAD)
    np.testing.assert_array_equal(block["a"], want.first_mjd)
    np.testing.assert_array_equal(block["t"], want.last_mjd)
    np.testing.assert_array_equal(block["f"], want.mean_fwhm.astype(np.float32))
    np.testing.assert_array_equal(out.visits, want.visits)


def test_errors_and_bitmap_size() -> None:
    assert [bitmap_words(n) for n in (0, 1, 64, 65, 128, 129)] == [1, 1, 1, 2, 2, 3]
    mask = np.zeros((2, 3, 3), np.int32)
    with pytest.raises(InputError, match="weights and mjd"):
        epoch_chunk(mask, [1.0], [1.0, 2.0], [1.0, 1.0], bad_mask=1)
    with pytest.raises(InputError, match="do not fit"):
        epoch_chunk(
            mask, [1.0, 1.0], [1.0, 2.0], [1.0, 1.0], bad_mask=1, visit_offset=5, n_visits=6
        )
    with pytest.raises(InputError, match="mjd must be finite"):
        epoch_chunk(mask, [1.0, 1.0], [1.0, np.nan], [1.0, 1.0], bad_mask=1)
    with pytest.raises(InputError, match="fwhm"):
        epoch_chunk(mask, [1.0, 1.0], [1.0, 2.0], np.ones((3, 3, 3)), bad_mask=1)
    a = epoch_chunk(mask, [1.0, 1.0], [1.0, 2.0], [1.0, 1.0], bad_mask=1)
    b = epoch_chunk(mask, [1.0, 1.0], [1.0, 2.0], [1.0, 1.0], bad_mask=1, n_visits=100)
    with pytest.raises(InputError, match="different sizes"):
        epoch_combine(a, b)
