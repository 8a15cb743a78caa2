import dask
import numpy as np
import pytest
import xarray as xr

import coaddx
from coaddx.coadd.weights import WeightStatistic, weight_statistic
from coaddx.io.zarr.warp_store import WarpStore, check_store
from coaddx.kernels.stats import meanclip_masked
from coaddx.model.masks import bitmask
from coaddx.testing import random_warps as make_warps
from coaddx.warp.weights import WEIGHT_PRESETS


def test_write_open_round_trip_is_lazy_and_exact(tmp_path):
    ds = make_warps(5, (30, 70), seed=1)
    ds.attrs["wcs"] = "SIMPLE  =                    T"
    coaddx.write_warps(ds, tmp_path / "p.zarr")
    back = coaddx.open_warps(tmp_path / "p.zarr")
    assert back["image"].dims == ("visit", "y", "x")
    assert all(hasattr(back[v].data, "dask") for v in ("image", "variance", "mask"))
    np.testing.assert_array_equal(back["visit"].values, ds["visit"].values)
    for v in ("image", "variance", "mask"):
        np.testing.assert_array_equal(back[v].values, ds[v].values)
    np.testing.assert_allclose(back["psf_fwhm"].values, ds["psf_fwhm"].values)
    assert back.attrs["mask_planes"] == coaddx.mask_planes()
    assert back.attrs["wcs"].startswith("SIMPLE")
    assert back.attrs["provenance"][-1]["operation"] == "write_warps"
    assert back["mask"].dtype == np.int32 and back["image"].dtype == np.float32


def test_append_visits_and_storage_chunks(tmp_path):
    a, b = make_warps(3, seed=2), make_warps(4, seed=3)
    b = b.assign_coords(visit=b["visit"] + 10)
    coaddx.write_warps(a, tmp_path / "p.zarr")
    coaddx.write_warps(b, tmp_path / "p.zarr")
    back = coaddx.open_warps(tmp_path / "p.zarr", chunks="storage")
    assert back.sizes["visit"] == 7
    assert back["image"].data.chunksize[0] == 1
    np.testing.assert_array_equal(back["image"].values[3:], b["image"].values)
    with pytest.raises(coaddx.StoreError, match="already"):
        coaddx.write_warps(a.isel(visit=[0]), tmp_path / "p.zarr")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.drop_vars("variance"), "variance"),
        (lambda d: d.assign(mask=d["mask"].astype(float)), "integer"),
        (lambda d: d.drop_attrs(), "mask_planes"),
        (lambda d: d.assign(image=d["image"].transpose("y", "visit", "x")), "dims"),
        (lambda d: d.assign_coords(visit=[1, 1, 2]), "duplicate"),
    ],
)
def test_write_rejects_bad_datasets(tmp_path, mutate, match):
    ds = mutate(make_warps(3))
    with pytest.raises(coaddx.SchemaError, match=match):
        coaddx.write_warps(ds, tmp_path / "p.zarr")
    assert (
        not (tmp_path / "p.zarr").exists()
        or not coaddx.check_store(tmp_path / "p.zarr").n_committed
    )


def test_append_mismatches_are_refused(tmp_path):
    coaddx.write_warps(make_warps(2, (20, 20)), tmp_path / "p.zarr")
    other = make_warps(2, (20, 21), seed=5).assign_coords(visit=[7, 8])
    with pytest.raises(coaddx.SchemaError, match="holds 20 x 20"):
        coaddx.write_warps(other, tmp_path / "p.zarr")
    planes = make_warps(2, (20, 20), seed=5).assign_coords(visit=[7, 8])
    planes.attrs["mask_planes"] = {"BAD": 0, "NO_DATA": 1}
    with pytest.raises(coaddx.SchemaError, match="mask planes"):
        coaddx.write_warps(planes, tmp_path / "p.zarr")


def test_nan_variance_is_refused_and_nothing_written(tmp_path):
    ds = make_warps(2, (10, 10))
    good = ds.isel(visit=[0])
    coaddx.write_warps(good, tmp_path / "p.zarr")
    bad = ds.isel(visit=[1]).copy(deep=True)
    bad["variance"][0, 3, 4] = np.nan
    bad["image"][0, 3, 4] = 1.0
    with pytest.raises(coaddx.InputError, match="NaN or negative variance"):
        coaddx.write_warps(bad, tmp_path / "p.zarr")
    assert coaddx.open_warps(tmp_path / "p.zarr").sizes["visit"] == 1
    assert check_store(tmp_path / "p.zarr").ok


def test_missing_empty_and_wrong_stores(tmp_path):
    with pytest.raises(coaddx.StoreError, match="no warp store"):
        coaddx.open_warps(tmp_path / "nothing.zarr")
    WarpStore.create(tmp_path / "e.zarr", shape=(8, 8), mask_planes=coaddx.mask_planes(), chunk=8)
    with pytest.raises(coaddx.StoreError, match="no visits"):
        coaddx.open_warps(tmp_path / "e.zarr")
    with pytest.raises(coaddx.StoreError, match="psf_matched"):
        coaddx.open_warps(tmp_path / "e.zarr", "psf_matched")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(coaddx.StoreError, match="not a Zarr store"):
        coaddx.write_warps(make_warps(1), tmp_path / "plain")
    assert (tmp_path / "plain" / "notes.txt").read_text() == "mine"


def test_interrupted_append_reads_as_before_and_is_finished_later(tmp_path):
    ds = make_warps(3, (16, 16), seed=4)
    coaddx.write_warps(ds.isel(visit=[0, 1]), tmp_path / "p.zarr")
    store = WarpStore(tmp_path / "p.zarr")
    index = store.reserve([int(ds["visit"][2])])[
        int(ds["visit"][2])
    ]  # reserve, write half the planes, then "crash"
    store.group["image"][index] = ds["image"].values[2]
    report = check_store(tmp_path / "p.zarr")
    assert report.incomplete == (int(ds["visit"][2]),) and report.n_committed == 2
    with pytest.warns(coaddx.IncompleteStoreWarning, match=str(int(ds["visit"][2]))):
        back = coaddx.open_warps(tmp_path / "p.zarr")
    assert back.sizes["visit"] == 2
    np.testing.assert_array_equal(back["image"].values, ds["image"].values[:2])
    coaddx.write_warps(ds.isel(visit=[2]), tmp_path / "p.zarr")  # rerun finishes it
    back = coaddx.open_warps(tmp_path / "p.zarr")
    assert check_store(tmp_path / "p.zarr").ok and back.sizes["visit"] == 3
    np.testing.assert_array_equal(back["variance"].values, ds["variance"].values)


def test_write_coadd_is_atomic(tmp_path):
    ds = xr.Dataset({"image": (("y", "x"), np.ones((4, 4), np.float32))})
    coaddx.write_coadd(ds, tmp_path / "c.zarr")
    assert coaddx.open_coadd(tmp_path / "c.zarr")["image"].values.sum() == 16

    def boom(_):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        coaddx.write_coadd(ds * 2, tmp_path / "c.zarr", overwrite=True, compute=boom)
    assert coaddx.open_coadd(tmp_path / "c.zarr")["image"].values.sum() == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]
    with pytest.raises(coaddx.StoreError, match="exists"):
        coaddx.write_coadd(ds, tmp_path / "c.zarr")


def test_reused_slot_does_not_show_chunks_of_an_interrupted_write(tmp_path):
    ds = make_warps(2, (40, 40), seed=8, nan_frac=0, mask_frac=0)
    coaddx.write_warps(ds.isel(visit=[0]), tmp_path / "p.zarr", chunk=16)
    store = WarpStore(tmp_path / "p.zarr")
    index = store.reserve([999])[999]  # a visit starts writing, then the run dies
    store.group["image"][index] = np.full((40, 40), 7.0, np.float32)
    other = ds.isel(visit=[1]).copy(deep=True)
    other["image"][0, :16, :16] = np.nan  # this chunk is all NaN: zarr does not write it
    other["variance"][0, :16, :16] = np.nan
    other["mask"][0, :16, :16] = 1 << coaddx.mask_planes()["NO_DATA"]
    coaddx.write_warps(other, tmp_path / "p.zarr")
    back = coaddx.open_warps(tmp_path / "p.zarr")
    assert np.isnan(back["image"].values[1, :16, :16]).all()  # not the stale 7.0
    np.testing.assert_array_equal(back["image"].values[1], other["image"].values[0])


def test_parallel_writers_reserve_write_and_commit(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    ds = make_warps(4, (32, 32), seed=9)
    coaddx.write_warps(ds.isel(visit=[0]), tmp_path / "p.zarr", chunk=16)
    store = WarpStore(tmp_path / "p.zarr")
    visits = [int(v) for v in ds["visit"].values[1:]]
    slots = store.reserve(visits)
    assert check_store(tmp_path / "p.zarr").incomplete == tuple(visits)

    def write(i):
        return store.write_slot(
            slots[visits[i]], *(ds[v].values[i + 1] for v in ("image", "variance", "mask"))
        )

    with ThreadPoolExecutor(3) as pool:
        pixels = list(pool.map(write, range(3)))
    store.commit([{"visit": v, **p} for v, p in zip(visits, pixels, strict=True)])
    back = coaddx.open_warps(tmp_path / "p.zarr")
    assert check_store(tmp_path / "p.zarr").ok
    for v in ("image", "variance", "mask"):
        np.testing.assert_array_equal(back[v].values, ds[v].values)


#: The keys stores have been written with (the old ``weight_stat_key`` format).
OLD_KEYS = ["3/2/BAD,EDGE,NO_DATA,SAT", "3/2/BAD,NO_DATA,SAT", "2.5/3/NO_DATA"]


def test_weight_presets_are_the_coadd_defaults_under_the_old_keys():
    assert [p.key for p in WEIGHT_PRESETS] == OLD_KEYS
    assert WEIGHT_PRESETS[0] == weight_statistic(coaddx.AssembleConfig())
    assert WEIGHT_PRESETS[1] == weight_statistic(coaddx.CompareWarpConfig().assemble)
    assert WEIGHT_PRESETS[2] == weight_statistic(coaddx.CompareWarpConfig().template)
    assert WeightStatistic(3, 2, ("SAT", "NO_DATA")).key == "3/2/NO_DATA,SAT"


def test_write_warps_caches_the_weight_statistic_of_every_preset(tmp_path):
    ds = make_warps(3, (24, 24), seed=6)
    coaddx.write_warps(ds, tmp_path / "p.zarr")
    back = coaddx.open_warps(tmp_path / "p.zarr")
    assert sorted(back["weight_key"].values) == sorted(OLD_KEYS)
    planes = ds.attrs["mask_planes"]
    for p in WEIGHT_PRESETS:
        bad = bitmask(planes, p.bad_mask_planes, strict=False)
        want = [
            meanclip_masked(
                ds["variance"].values[i].astype(np.float32),
                ds["mask"].values[i].astype(np.int32),
                bad,
                sigma_clip=p.sigma_clip,
                clip_iter=p.clip_iter,
            )
            for i in range(3)
        ]
        got = back["variance_meanclip"].sel(weight_key=p.key).values
        np.testing.assert_array_equal(got, want)


def test_statistics_cached_under_the_old_key_format_are_used(tmp_path):
    """A store written before (statistics keyed "<sigma:g>/<iterations>/<sorted planes>") keeps
    its cached weight statistics: assemble weights the visits with them."""
    ds = make_warps(3, (16, 16), seed=6)
    store = WarpStore.create(
        tmp_path / "old.zarr", shape=(16, 16), mask_planes=ds.attrs["mask_planes"], chunk=16
    )
    cached = [2.0, 4.0, 8.0]
    for i, visit in enumerate(ds["visit"].values):
        planes = (ds[v].values[i] for v in ("image", "variance", "mask"))
        store.append_visit(int(visit), *planes, weight_stats={OLD_KEYS[0]: cached[i]})
    back = coaddx.open_warps(tmp_path / "old.zarr")
    assert list(back["weight_key"].values) == [OLD_KEYS[0]]
    coadd = coaddx.assemble(back, coaddx.AssembleConfig(interp=None))
    np.testing.assert_array_equal(coadd["weight"].values, 1 / np.array(cached))


def test_store_chunk_setting_is_the_default_storage_chunk(tmp_path):
    ds = make_warps(2, (40, 40), seed=3)
    coaddx.write_warps(ds, tmp_path / "a.zarr")
    with dask.config.set({"coaddx.store-chunk": 16}):
        coaddx.write_warps(ds, tmp_path / "b.zarr")
    coaddx.write_warps(ds, tmp_path / "c.zarr", chunk=24)
    assert check_store(tmp_path / "a.zarr").chunk == (40, 40)  # 512, clipped to the plane
    assert check_store(tmp_path / "b.zarr").chunk == (16, 16)
    assert check_store(tmp_path / "c.zarr").chunk == (24, 24)
    assert coaddx.open_warps(tmp_path / "b.zarr", chunks="storage")["image"].data.chunksize == (
        1,
        16,
        16,
    )
