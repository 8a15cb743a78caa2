"""AssembleCoadd end to end against an independent brute-force reference."""

import dask
import numpy as np
import pytest
import xarray as xr

import coaddx
from coaddx.coadd.config import AssembleConfig
from coaddx.testing import random_warps as make_warps
from coaddx.testing.stack_reference import stack_block_reference as reference_stack

P = coaddx.mask_planes()
BIT = {k: 1 << v for k, v in P.items()}


def reference_meanclip(values, sigma_clip, clip_iter):
    """afw MEANCLIP of a 1-D sample, written from the spec with sorted lists (test reference)."""
    x = np.sort(np.asarray(values, np.float64)[np.isfinite(values)])
    n = len(x)

    def q(f):
        pos = f * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        return x[lo] + (pos - lo) * (x[hi] - x[lo])

    center, half = q(0.5), sigma_clip * 0.741301109252802 * (q(0.75) - q(0.25))
    for _ in range(clip_iter):
        kept = x[np.abs(x - center) <= half]
        center = kept.sum() / len(kept)
        var = ((kept - center) ** 2).sum() / (len(kept) - 1) if len(kept) > 1 else np.nan
        half = sigma_clip * np.sqrt(max(0.0, var)) if n > 1 else half
    return center


def reference_assemble(ds, config):
    """Brute force: weights from the variance planes, per-pixel stack, coadd mask bits."""
    bad = sum(BIT[p] for p in config.bad_mask_planes)
    weights = []
    for i in range(ds.sizes["visit"]):
        good = (ds["mask"].values[i] & bad) == 0
        weights.append(
            1.0
            / reference_meanclip(
                ds["variance"].values[i][good], config.sigma_clip, config.clip_iter
            )
        )
    mask_map = (
        (bad & ~BIT["NO_DATA"] & ~BIT["EDGE"] & ~BIT["CLIPPED"], BIT["REJECTED"]),
        (BIT["EDGE"], BIT["SENSOR_EDGE"]),
        (BIT["CLIPPED"], BIT["CLIPPED"]),
    )
    value, var, mask, n_image = reference_stack(
        ds["image"].values,
        ds["variance"].values,
        ds["mask"].values,
        np.array(weights),
        statistic=config.statistic,
        bad_mask=bad,
        sigma_clip=config.sigma_clip,
        clip_iter=config.clip_iter,
        error_mode=config.error_mode,
        propagate_bits=(BIT["SAT"],),
        propagate_thresholds=(0.1,),
        clipped_bit=BIT["CLIPPED"],
        map_from=tuple(m[0] for m in mask_map),
        map_to=tuple(m[1] for m in mask_map),
        no_data_bit=BIT["NO_DATA"],
        remove_bits=BIT["NOT_DEBLENDED"],
    )
    mask = mask.copy()
    mask[(mask & (BIT["SENSOR_EDGE"] | BIT["CLIPPED"] | BIT["REJECTED"])) != 0] |= BIT[
        "INEXACT_PSF"
    ]
    mask[var == 0] |= BIT["EDGE"]
    return value, var, mask, n_image, np.array(weights)


@pytest.mark.parametrize("statistic", ["meanclip", "mean", "median"])
@pytest.mark.parametrize("seed", [0, 1])
def test_assemble_matches_brute_force(statistic, seed):
    ds = make_warps(7, (24, 30), seed=seed)
    ds["mask"].values[:, 0:2, 0:3] |= BIT["BAD"]  # no good input: NO_DATA replaces the mask
    ds["mask"].values[:4, 5, 5] |= BIT["SAT"]  # SAT-rejected weight above 10 %: SAT propagates
    config = AssembleConfig(statistic=statistic, interp=None)
    out = coaddx.assemble(ds, config).compute()
    value, var, mask, n_image, weights = reference_assemble(ds, config)
    np.testing.assert_allclose(out["weight"].values, weights, rtol=1e-10)
    np.testing.assert_allclose(out["image"].values, value, rtol=2e-6, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(out["variance"].values, var, rtol=2e-6, atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(out["mask"].values, mask)
    np.testing.assert_array_equal(out["n_image"].values, n_image)
    # afw order: NO_DATA replaces the OR mask, then the mask map adds REJECTED (BAD inputs)
    want = BIT["NO_DATA"] | BIT["REJECTED"] | BIT["INEXACT_PSF"]
    assert ((out["mask"].values[0:2, 0:3] & want) == want).all()
    assert out["mask"].values[5, 5] & BIT["SAT"] and out["mask"].values[5, 5] & BIT["REJECTED"]


def test_result_independent_of_subregion_and_chunking():
    ds = make_warps(9, (70, 90), seed=3)
    base = coaddx.assemble(ds, AssembleConfig(interp=None)).compute()
    for sub in (8, 16, 33):
        other = coaddx.assemble(ds, AssembleConfig(interp=None, subregion_size=sub)).compute()
        xr.testing.assert_identical(base.drop_attrs(), other.drop_attrs())
    chunked = ds.chunk({"visit": 2, "y": 17, "x": 40})
    other = coaddx.assemble(chunked, AssembleConfig(interp=None, subregion_size=(24, 12))).compute()
    xr.testing.assert_identical(base.drop_attrs(), other.drop_attrs())
    with_interp = [coaddx.assemble(ds, AssembleConfig(subregion_size=s)).compute() for s in (8, 40)]
    xr.testing.assert_identical(with_interp[0].drop_attrs(), with_interp[1].drop_attrs())


def test_assemble_is_lazy(tmp_path):
    coaddx.write_warps(make_warps(4, (32, 32)), tmp_path / "p.zarr")
    ds = coaddx.open_warps(tmp_path / "p.zarr")

    def refuse(*args, **kwargs):
        raise AssertionError("assemble computed something")

    with dask.config.set(scheduler=refuse):
        coadd = coaddx.assemble(ds)
        coadd2 = coaddx.assemble(ds.chunk({"visit": 1}), AssembleConfig(sigma_clip=2.0))
    assert all(hasattr(coadd[v].data, "dask") for v in ("image", "variance", "mask", "n_image"))
    assert hasattr(coadd2["weight"].data, "dask")
    # store-cached weights equal freshly computed ones
    fresh = coaddx.assemble(ds.drop_vars("variance_meanclip"))
    np.testing.assert_allclose(coadd["weight"].values, fresh["weight"].values, rtol=1e-12)


def test_given_weights_and_alt_masks():
    ds = make_warps(5, (20, 20), seed=7)
    w = np.array([1.0, 2.0, 0.5, 1.5, 3.0])
    cfg = AssembleConfig(statistic="mean", interp=None)
    out = coaddx.assemble(ds, cfg, weights=w).compute()
    np.testing.assert_array_equal(out["weight"].values, w)
    alt = np.zeros(ds["mask"].shape, np.int32)
    alt[2, 5:9, 5:9] = BIT["CLIPPED"]
    clipped_cfg = cfg.replace(bad_mask_planes=("NO_DATA", "BAD", "SAT", "CLIPPED"))
    got = coaddx.assemble(ds, clipped_cfg, weights=w, alt_masks=alt).compute()
    pre = ds.copy(deep=True)
    pre["mask"].values[:] |= alt
    want = coaddx.assemble(pre, clipped_cfg, weights=w).compute()
    xr.testing.assert_identical(got.drop_attrs(), want.drop_attrs())
    assert (got["mask"].values[5:9, 5:9] & BIT["CLIPPED"]).all()
    with pytest.raises(coaddx.InputError, match="visit"):
        coaddx.assemble(ds, cfg, weights=[1, 2, np.nan, 1, 1])


def test_interp_fills_no_data_and_cleans_variance():
    ds = make_warps(3, (30, 40), seed=2)
    ds["mask"].values[:, 10:13, 5:9] |= BIT["NO_DATA"]  # a hole with no good input
    out = coaddx.assemble(ds, AssembleConfig(statistic="mean")).compute()
    raw = coaddx.assemble(ds, AssembleConfig(statistic="mean", interp=None)).compute()
    hole = (raw["mask"].values & BIT["NO_DATA"]) != 0
    assert hole[10:13, 5:9].all() and np.isnan(raw["image"].values[hole]).all()
    assert np.isfinite(out["image"].values[hole]).all()
    assert ((out["mask"].values[hole] & BIT["INTRP"]) != 0).all()
    assert ((out["mask"].values[~hole] & BIT["INTRP"]) == 0).all()
    np.testing.assert_array_equal(out["image"].values[~hole], raw["image"].values[~hole])
    assert (out["variance"].values > 0).all()


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda d: d.drop_vars("mask"), coaddx.SchemaError, "mask"),
        (lambda d: d.isel(visit=slice(0, 0)), coaddx.SchemaError, "no visits"),
        (lambda d: d.assign(variance=d["variance"].where(d["x"] != 3)), coaddx.InputError, "NaN"),
    ],
)
def test_bad_input_raises_coaddx_errors(mutate, error, match):
    with pytest.raises(error, match=match):
        coaddx.assemble(mutate(make_warps(3, (10, 10), nan_frac=0, mask_frac=0)))


def test_unknown_mask_plane_and_bad_config():
    ds = make_warps(3, (10, 10))
    with pytest.raises(coaddx.ConfigError, match="GHOST"):
        coaddx.assemble(ds, AssembleConfig(bad_mask_planes=("NO_DATA", "GHOST")))
    with pytest.raises(coaddx.ConfigError, match="AssembleConfig"):
        coaddx.assemble(ds, {"statistic": "mean"})
