"""CompareWarp's per-visit scratch store (issue 15): removed when ``write_coadd`` ends, whether
it succeeded or failed, never inside the user's output, made again by a later computation; the
one-plane detection equals the tiled one; no task of the graph grows with the visits."""

from __future__ import annotations

import gc

import dask
import numpy as np
import pytest
import xarray as xr

import coaddx
from coaddx.coadd.compare_warp.assemble import assemble_compare_warp
from coaddx.coadd.compare_warp.config import CompareWarpConfig
from coaddx.io.zarr.scratch_planes import SCRATCH_PREFIX
from coaddx.kernels import artifacts as ka
from coaddx.kernels.detect import EDGE_SPAN, NAN_SPAN, detect_tile

PLANES = coaddx.mask_planes()
BIT = {name: 1 << bit for name, bit in PLANES.items()}


def warps(n=6, shape=(60, 70), seed=3):
    """Flat noise warps (direct = PSF-matched) with one transient per visit."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 2.0, (n, *shape)).astype(np.float32)
    for v in range(n):
        r, c = 5 + 8 * v, 4 + 9 * v
        image[v, r : r + 4, c : c + 5] += 150.0
    coords = {"visit": np.arange(100, 100 + n), "y": np.arange(shape[0]), "x": np.arange(shape[1])}
    direct = xr.Dataset(
        {
            "image": (("visit", "y", "x"), image),
            "variance": (("visit", "y", "x"), np.full(image.shape, 4.0, np.float32)),
            "mask": (("visit", "y", "x"), np.zeros(image.shape, np.int32)),
        },
        coords=coords,
        attrs={"mask_planes": dict(PLANES)},
    )
    matched = direct.copy(deep=True)
    matched.attrs["model_psf_fwhm"] = 2.0
    return direct, matched


def scratch_dirs(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(SCRATCH_PREFIX))


def test_scratch_removed_after_write_coadd_and_made_again_by_a_later_compute(tmp_path):
    direct, matched = warps()
    folder = tmp_path / "scratch"
    folder.mkdir()
    with dask.config.set({"coaddx.scratch-dir": str(folder)}):
        coadd = assemble_compare_warp(direct, matched)
        assert scratch_dirs(folder) == []  # nothing made while building the graph
        coaddx.write_coadd(coadd, tmp_path / "coadd.zarr")
        assert scratch_dirs(folder) == []  # removed at the end, the lazy result still held
        written = coaddx.open_coadd(tmp_path / "coadd.zarr")
        again = coadd.compute()  # the same graph again: the scratch store is made again
        for name in ("image", "mask", "artifact_mask", "variance_scale", "epoch_count"):
            np.testing.assert_array_equal(again[name].values, written[name].values, err_msg=name)
        assert written["artifact_mask"].values.sum() > 60
        assert len(scratch_dirs(folder)) == 1  # a plain compute leaves it to the lazy result
        del coadd
        gc.collect()
        assert scratch_dirs(folder) == []  # ... and it goes with it
    assert not any("scratch" in p.name for p in (tmp_path / "coadd.zarr").rglob("*"))


def test_failed_run_removes_the_scratch_store_and_leaves_no_output(tmp_path, monkeypatch):
    direct, matched = warps()
    folder = tmp_path / "scratch"
    folder.mkdir()

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure in the final stack")

    monkeypatch.setattr(ka, "apply_spans", fail)
    with dask.config.set({"coaddx.scratch-dir": str(folder)}):
        coadd = assemble_compare_warp(direct, matched)
        with pytest.raises(RuntimeError, match="injected"):
            coaddx.write_coadd(coadd, tmp_path / "coadd.zarr")
        assert scratch_dirs(folder) == []
    assert list(tmp_path.iterdir()) == [folder]  # no output, no hidden temporary store


def test_detect_plane_equals_the_tiled_detection():
    """:func:`coaddx.kernels.artifacts.detect_plane` (one task, haloed tiles in a loop) is the
    brute-force whole-plane detection, whatever the tile (the halo makes tiles exact)."""
    _, matched = warps(n=1, shape=(75, 83))
    img, var, msk = (matched[v].values[0] for v in ("image", "variance", "mask"))
    t_img, t_var = np.zeros_like(img), np.full_like(var, 1.0)
    kw = dict(
        threshold=5.0,
        polarity="both",
        min_pixels=1,
        grow=2,
        isotropic=False,
        bad_bits=BIT["NO_DATA"] | BIT["BAD"] | BIT["SAT"],
        prefilter_bits=BIT["NO_DATA"] | BIT["BAD"] | BIT["SAT"],
        edge_bit=BIT["EDGE"],
    )
    whole = detect_tile(img, var * np.float32(1.25), msk, t_img, t_var, **kw)
    assert (whole != 0).any()
    for tile in ((16, 16), (20, 33), (75, 83), (7, 100)):
        got = ka.detect_plane(img, var, msk, t_img, t_var, 1.25, tile=tile, **kw)
        np.testing.assert_array_equal(got, whole, err_msg=str(tile))


def test_alt_mask_tables_are_apply_alt_masks_spelled_out():
    """The 256-entry tables of :func:`coaddx.kernels.artifacts.alt_mask_tables` give
    applyAltMaskPlanes for every span byte (brute force per bit)."""
    rng = np.random.default_rng(0)
    spans = rng.integers(0, 256, (40, 50)).astype(np.uint8) & np.uint8(ka.SPAN_BITS)
    mask = rng.integers(0, 2**20, (40, 50)).astype(np.int32)
    kw = dict(clear=0b111, no_data=1 << 8, clipped=1 << 9, edge=1 << 10, streak=1 << 11)
    got = ka.apply_spans(mask, spans, ka.alt_mask_tables(**kw))
    nan = (spans & NAN_SPAN) != 0
    ref = np.where(nan, mask & ~kw["clear"], mask)
    ref = ref | np.where(nan, kw["no_data"], 0)
    ref = ref | np.where((spans & ka.SPAN_ARTIFACT) != 0, kw["clipped"], 0)
    ref = ref | np.where((spans & ka.SPAN_STREAK) != 0, kw["streak"], 0)
    ref = ref | np.where((spans & EDGE_SPAN) != 0, kw["edge"], 0)
    np.testing.assert_array_equal(got, ref.astype(np.int32))


def test_tasks_grow_by_a_fixed_number_per_visit():
    """A fixed number of tasks per visit (two for its work, its reads per subregion) and a
    tree over visits: the count is linear in the visits, with a small slope."""
    counts = {}
    for k in (4, 5, 16):
        direct, matched = warps(n=k, shape=(64, 64))
        coadd = assemble_compare_warp(direct, matched, CompareWarpConfig(subregion_size=32))
        arrays = [coadd[v].data for v in coadd.data_vars]
        counts[k] = len(dask.base.collections_to_expr(arrays, optimize_graph=True).__dask_graph__())
    per_visit = counts[5] - counts[4]
    print(counts)
    assert per_visit <= 20, counts
    assert counts[16] <= counts[4] + 12 * per_visit + 4, counts
