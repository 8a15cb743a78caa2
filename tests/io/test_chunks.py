"""The direct chunk reader agrees with zarr for every region, and fails loudly on corruption."""

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

import coaddx
from coaddx.io.zarr.chunks import region_reader
from coaddx.warp.weights import visit_weight_stats


@pytest.fixture(params=["lz4", "raw"])
def stored(tmp_path, request):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 70, 45)).astype(np.float32)
    codec = (
        [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")] if request.param == "lz4" else None
    )
    arr = zarr.create_array(
        str(tmp_path / "a.zarr"),
        shape=data.shape,
        chunks=(1, 32, 16),
        dtype="f4",
        fill_value=np.nan,
        compressors=codec,
    )
    arr[:] = data
    arr[1, 32:64, 16:32] = np.nan  # an all-fill chunk: zarr does not write it
    data[1, 32:64, 16:32] = np.nan
    return tmp_path / "a.zarr", data


def test_regions_equal_zarr_reads(stored):
    path, data = stored
    reader = region_reader(path)
    assert reader is not None and reader.shape == data.shape
    rng = np.random.default_rng(1)
    for _ in range(40):
        lo = [int(rng.integers(0, n)) for n in data.shape]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, data.shape, strict=True)]
        key = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        np.testing.assert_array_equal(reader[key], data[key])
    np.testing.assert_array_equal(reader[:], data)
    for key in [(1, 5, 7), (2, slice(3, 40), -1), (0,), (np.int64(1), slice(None), 44)]:
        np.testing.assert_array_equal(reader[key], data[key])
    with pytest.raises(IndexError):
        reader[3, 0, 0]


def test_corrupt_chunk_raises_store_error(stored):
    path, _ = stored
    (path / "c" / "0" / "0" / "0").write_bytes(b"garbage")
    with pytest.raises(coaddx.StoreError, match="corrupt chunk"):
        region_reader(path)[0:1, 0:10, 0:10]


def test_other_layouts_fall_back_to_zarr(tmp_path):
    zarr.create_array(
        str(tmp_path / "z.zarr"), shape=(4, 4), chunks=(2, 2), dtype="f4", compressors=[ZstdCodec()]
    )
    assert region_reader(tmp_path / "z.zarr") is None
    assert region_reader(tmp_path / "missing.zarr") is None


def test_open_warps_reads_through_the_fast_path(tmp_path):
    from coaddx.testing import random_warps as make_warps

    ds = make_warps(3, (40, 50))
    coaddx.write_warps(ds, tmp_path / "p.zarr", chunk=16)
    assert region_reader(tmp_path / "p.zarr" / "direct" / "image") is not None
    back = coaddx.open_warps(tmp_path / "p.zarr", chunks={"visit": 3, "y": 24, "x": 24})
    for v in ("image", "variance", "mask"):
        np.testing.assert_array_equal(back[v].values, ds[v].values)


@pytest.mark.parametrize("box", [(5, 7, 40, 66), (0, 0, 45, 70), (16, 32, 32, 64), (3, 3, 3, 9)])
def test_write_slot_box_equals_a_zarr_write_of_the_whole_plane(tmp_path, box):
    """The direct chunk writer stores what zarr stores for the full plane (data in the box,
    NaN / NaN / NO_DATA outside; edge chunks padded; all-NaN chunks not written), read back
    through zarr itself, and a rewrite of the slot leaves no stale chunk behind."""
    planes = coaddx.mask_planes()
    nd = 1 << planes["NO_DATA"]
    x0, y0, x1, y1 = box
    rng = np.random.default_rng(2)
    img = rng.normal(size=(y1 - y0, x1 - x0)).astype(np.float32)
    var = (img**2 + 1).astype(np.float32)
    msk = rng.integers(0, 4, img.shape).astype(np.int32)
    img[:2] = np.nan  # NaN data inside the box stays NaN
    full = [
        np.full((70, 45), np.nan, np.float32),
        np.full((70, 45), np.nan, np.float32),
        np.full((70, 45), nd, np.int32),
    ]
    for f, a in zip(full, (img, var, msk), strict=True):
        f[y0:y1, x0:x1] = a
    ref = coaddx.WarpStore.create(
        tmp_path / "ref.zarr", shape=(70, 45), mask_planes=planes, chunk=32
    )
    got = coaddx.WarpStore.create(
        tmp_path / "got.zarr", shape=(70, 45), mask_planes=planes, chunk=32
    )
    ref.reserve([1])
    ref.write_slot(0, *full)
    got.reserve([1])
    if x1 < 45:  # a first, shifted write of the slot, overwritten next
        got.write_slot_box(0, x0 + 1, y0, np.full(img.shape, 7, np.float32), var, msk)
    rec = got.write_slot_box(
        0, x0, y0, img, var, msk, weight_stats=visit_weight_stats(var, msk, planes)
    )
    assert rec["data_box"] == list(box) and rec["n_finite"] == int(np.isfinite(img).sum())
    for name in ("image", "variance", "mask"):
        a = zarr.open_array(str(tmp_path / "ref.zarr" / "direct" / name))[0]
        b = zarr.open_array(str(tmp_path / "got.zarr" / "direct" / name))[0]
        np.testing.assert_array_equal(b, a)
        ref_files = sorted(
            p.relative_to(tmp_path / "ref.zarr")
            for p in (tmp_path / "ref.zarr" / "direct" / name / "c").rglob("*")
            if p.is_file()
        )
        got_files = sorted(
            p.relative_to(tmp_path / "got.zarr")
            for p in (tmp_path / "got.zarr" / "direct" / name / "c").rglob("*")
            if p.is_file()
        )
        assert got_files == ref_files  # same chunks stored (no all-NaN chunk, no leftovers)
    full_stats = visit_weight_stats(full[1], full[2], planes)
    want = ref.write_slot(0, *full, weight_stats=full_stats)["weight_stats"]
    assert rec["weight_stats"].keys() == want.keys()
    for key, value in want.items():
        assert rec["weight_stats"][key] == value or (
            np.isnan(value) and np.isnan(rec["weight_stats"][key])
        )


def test_block_pool_reuses_memory_only_when_no_view_is_left():
    from coaddx.io.zarr.chunks import BlockPool

    pool = BlockPool(1 << 20, 64)
    block = pool.empty((4, 8), np.float32)
    address = block.__array_interface__["data"][0]
    view = block[1:]
    del block
    assert pool.free_bytes == 0  # a view still references the memory
    del view
    assert pool.free_bytes == 0  # and its memory went back to the allocator
    block = pool.empty((4, 8), np.float32)
    address = block.__array_interface__["data"][0]
    del block
    assert pool.free_bytes == 128
    again = pool.empty((8, 4), np.int32)  # same size, any shape and dtype
    assert again.__array_interface__["data"][0] == address and pool.free_bytes == 0
    small = pool.empty((2, 2), np.float32)  # below min_bytes: plain np.empty
    del small, again
    assert pool.free_bytes == 128
    pool.clear()
    assert pool.free_bytes == 0
