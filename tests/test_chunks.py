"""The direct chunk reader agrees with zarr for every region, and fails loudly on corruption."""

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

import coaddx
from coaddx.io._chunks import region_reader


@pytest.fixture(params=["lz4", "raw"])
def stored(tmp_path, request):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 70, 45)).astype(np.float32)
    codec = ([BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")] if request.param == "lz4"
             else None)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(1, 32, 16),
                            dtype="f4", fill_value=np.nan, compressors=codec)
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
    zarr.create_array(str(tmp_path / "z.zarr"), shape=(4, 4), chunks=(2, 2), dtype="f4",
                      compressors=[ZstdCodec()])
    assert region_reader(tmp_path / "z.zarr") is None
    assert region_reader(tmp_path / "missing.zarr") is None


def test_open_warps_reads_through_the_fast_path(tmp_path):
    from tests.conftest import make_warps

    ds = make_warps(3, (40, 50))
    coaddx.write_warps(ds, tmp_path / "p.zarr", chunk=16)
    assert region_reader(tmp_path / "p.zarr" / "direct" / "image") is not None
    back = coaddx.open_warps(tmp_path / "p.zarr", chunks={"visit": 3, "y": 24, "x": 24})
    for v in ("image", "variance", "mask"):
        np.testing.assert_array_equal(back[v].values, ds[v].values)
