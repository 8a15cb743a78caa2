"""The warp store's on-disk layout for fast stacking reads: raw image and variance, 16-bit
masks (lz4, no shuffle) that read back as int32 with the same values, all-zero mask chunks
not written but recorded, stores of the layout before still read, verified and appended
to, and the chunk CRC-32C (google-crc32c) against known vectors and a bitwise reference."""

import json
import zlib

import crc32c
import dask
import dask.array as da
import google_crc32c
import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

import coaddx
from coaddx.errors import InputError, StoreError
from coaddx.io.zarr import warp_store
from coaddx.io.zarr.chunks import region_reader
from coaddx.io.zarr.layout import checksum, mask_dtype
from coaddx.io.zarr.manifest import MANIFESTS, chunk_crc
from coaddx.io.zarr.warp_store import WarpStore, check_store
from coaddx.io.zarr.warps import stored_mask
from coaddx.model.masks import mask_planes as default_mask_planes
from coaddx.testing import random_warps
from coaddx.warp.inputs import file_crc32c

LAYERS = ("image", "variance", "mask")


def meta(path, name):
    return json.loads((path / "direct" / name / "zarr.json").read_text())


def chunk(path, name, slot, j, i):
    return path / "direct" / name / "c" / str(slot) / str(j) / str(i)


def manifest(path, visit):
    body = json.loads((path / "direct" / MANIFESTS / str(visit) / "zarr.json").read_text())
    return body["attributes"]["manifest"]


@pytest.fixture
def warps():
    """Three 40 x 40 visits (masks use every default plane up to bit 15); visit 100's
    lower-right 16 x 16 chunk has an all-zero mask, visit 101's upper-left one is NO_DATA."""
    ds = random_warps(3, (40, 40), seed=3)
    ds["mask"][0, 32:, 32:] = 0
    no_data = 1 << default_mask_planes()["NO_DATA"]
    ds["mask"][1, :16, :16] = no_data
    for v in ("image", "variance"):
        ds[v][1, :16, :16] = np.nan
    assert int(ds["mask"].values.max()) >= 1 << 15  # the top bit of a 16-bit mask is used
    return ds


def test_new_stores_hold_raw_image_and_variance_and_a_16_bit_mask(tmp_path, warps):
    path = tmp_path / "p.zarr"
    coaddx.write_warps(warps, path, chunk=16)
    for name in ("image", "variance"):
        assert [c["name"] for c in meta(path, name)["codecs"]] == ["bytes"]
        assert chunk(path, name, 0, 0, 0).stat().st_size == 16 * 16 * 4
    mask = meta(path, "mask")
    assert mask["data_type"] == "uint16" and mask["fill_value"] == 0
    assert mask["codecs"][1]["name"] == "blosc"
    assert mask["codecs"][1]["configuration"]["shuffle"] == "noshuffle"
    got = coaddx.open_warps(path)
    assert got["mask"].dtype == np.int32  # readers see int32 masks, as before
    for v in LAYERS:
        np.testing.assert_array_equal(got[v].values, warps[v].values)
    # a plain zarr reader sees the same values in the chunk files coaddx wrote
    for v in LAYERS:
        raw = zarr.open_array(str(path / "direct" / v))[:]
        np.testing.assert_array_equal(raw.astype(warps[v].dtype), warps[v].values)
    assert check_store(path, deep=True).ok


def test_all_zero_mask_chunks_are_not_written_but_recorded(tmp_path, warps):
    path = tmp_path / "p.zarr"
    coaddx.write_warps(warps, path, chunk=16)
    crc = manifest(path, 100)["arrays"]["mask"]["crc"]
    assert crc[2][2] is None and not chunk(path, "mask", 0, 2, 2).exists()
    assert all(c is not None for row in crc for c in row[:2])
    assert (coaddx.open_warps(path)["mask"][0, 32:, 32:].values == 0).all()
    # an intentionally absent chunk is fine; a written one deleted is damage, and a file
    # where the visit wrote none is refused
    chunk(path, "mask", 0, 0, 0).unlink()
    with pytest.raises(StoreError, match=r"visit 100, chunk \(0, 0\).*missing"):
        coaddx.open_warps(path)["mask"].compute()
    assert check_store(path).damaged_visits == (100,)


def test_a_mask_chunk_where_the_visit_wrote_none_is_refused(tmp_path, warps):
    path = tmp_path / "p.zarr"
    coaddx.write_warps(warps, path, chunk=16)
    chunk(path, "mask", 0, 1, 1).replace(chunk(path, "mask", 0, 2, 2))
    with pytest.raises(StoreError, match="exists where the visit wrote none"):
        coaddx.open_warps(path)["mask"][0, 32:, 32:].compute()


def test_mask_values_that_do_not_fit_16_bits_are_refused(tmp_path, warps):
    path = tmp_path / "p.zarr"
    coaddx.write_warps(warps.isel(visit=[0]), path, chunk=16)
    before = sorted(p.name for p in (path / "direct" / "mask" / "c").iterdir())
    bad = warps.isel(visit=[1]).copy(deep=True)
    bad["mask"][0, 5, 7] = 1 << 16
    with pytest.raises(InputError, match="do not fit the store's uint16 mask"):
        coaddx.write_warps(bad, path)
    assert sorted(p.name for p in (path / "direct" / "mask" / "c").iterdir()) == before
    assert coaddx.open_warps(path).sizes["visit"] == 1


def test_masks_with_planes_above_bit_15_are_stored_as_int32(tmp_path):
    planes = {**default_mask_planes(), "EXTRA": 20}
    assert mask_dtype(default_mask_planes()) == "u2" and mask_dtype(planes) == "i4"
    store = WarpStore.create(tmp_path / "p.zarr", shape=(20, 20), mask_planes=planes, chunk=8)
    mask = np.zeros((20, 20), np.int32)
    mask[3, 4] = (1 << 20) | 1
    store.append_visit(1, np.ones((20, 20)), np.ones((20, 20)), mask)
    assert meta(tmp_path / "p.zarr", "mask")["data_type"] == "int32"
    np.testing.assert_array_equal(coaddx.open_warps(tmp_path / "p.zarr")["mask"][0].values, mask)


def _layers(dataset):
    return {k: v.data for k, v in dataset.data_vars.items() if isinstance(v.data, da.Array)}


@pytest.mark.parametrize("statistic", ["mean", "meanclip", "median"])
def test_stacking_reads_16_bit_masks_as_stored_and_gives_the_same_coadd(tmp_path, warps, statistic):
    path = tmp_path / "p.zarr"
    coaddx.write_warps(warps, path, chunk=16)
    ds = coaddx.open_warps(path)
    assert ds["mask"].dtype == np.int32  # what open_warps returns is unchanged
    narrow = stored_mask(ds["mask"])
    assert narrow.dtype == np.uint16 and narrow.dims == ds["mask"].dims
    np.testing.assert_array_equal(narrow.values, warps["mask"].values)
    # a mask changed since open_warps (sliced, rechunked, in memory) is left as it is
    for other in (ds["mask"].isel(x=slice(0, 20)), ds["mask"].chunk({"y": 8}), warps["mask"]):
        assert stored_mask(other) is other
    config = coaddx.AssembleConfig(statistic=statistic)
    coadd = coaddx.assemble(ds, config)
    layers = {name for a in _layers(coadd).values() for name in a.dask.layers}
    assert any(name.startswith("coaddx-read-mask-stored-") for name in layers)
    want = coaddx.assemble(warps.compute(), config)  # int32 masks in memory
    assert want["mask"].dtype == coadd["mask"].dtype == np.int32
    for name, got in dask.compute(_layers(coadd))[0].items():
        np.testing.assert_array_equal(got, want[name].values, err_msg=name)


def test_int32_store_masks_are_stacked_as_they_are(tmp_path):
    planes = {**default_mask_planes(), "EXTRA": 20}
    store = WarpStore.create(tmp_path / "p.zarr", shape=(20, 20), mask_planes=planes, chunk=8)
    store.append_visit(1, np.ones((20, 20)), np.ones((20, 20)), np.zeros((20, 20), np.int32))
    mask = coaddx.open_warps(tmp_path / "p.zarr")["mask"]
    assert stored_mask(mask) is mask


def old_layout(monkeypatch):
    """Write as coaddx did before: lz4 + byte shuffle on variance and mask, int32 masks."""
    old = [numcodecs_blosc_codec()]
    monkeypatch.setattr(warp_store, "codecs", lambda name: None if name == "image" else old)
    monkeypatch.setattr(warp_store, "mask_dtype", lambda planes: "i4")


def numcodecs_blosc_codec():
    return BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")


def test_stores_of_the_old_layout_read_verify_and_append_in_their_layout(
    tmp_path, warps, monkeypatch
):
    path = tmp_path / "p.zarr"
    with monkeypatch.context() as m:
        old_layout(m)
        coaddx.write_warps(warps.isel(visit=[0, 1]), path, chunk=16)
    # the old writer's bytes: int32 chunks, lz4 + byte shuffle
    want = np.ascontiguousarray(warps["mask"].values[0, :16, :16], dtype=np.int32)
    old_bytes = numcodecs.blosc.compress(want, b"lz4", 1, numcodecs.blosc.SHUFFLE)
    assert chunk(path, "mask", 0, 0, 0).read_bytes() == old_bytes
    assert meta(path, "mask")["data_type"] == "int32"
    coaddx.write_warps(warps.isel(visit=[2]), path)  # appended now: in the store's layout
    assert meta(path, "mask")["data_type"] == "int32"
    assert meta(path, "variance")["codecs"][1]["configuration"]["shuffle"] == "shuffle"
    want = np.ascontiguousarray(warps["variance"].values[2, :16, :16])
    got = chunk(path, "variance", 2, 0, 0).read_bytes()
    assert got == numcodecs.blosc.compress(want, b"lz4", 1, numcodecs.blosc.SHUFFLE)
    ds = coaddx.open_warps(path)
    assert ds["mask"].dtype == np.int32
    for v in LAYERS:
        np.testing.assert_array_equal(ds[v].values, warps[v].values)
        np.testing.assert_array_equal(zarr.open_array(str(path / "direct" / v))[:], warps[v])
    assert check_store(path, deep=True).ok
    # stacking gives the same coadd from either layout, bit for bit
    new = tmp_path / "new.zarr"
    coaddx.write_warps(warps, new, chunk=16)
    a = coaddx.assemble(coaddx.open_warps(path)).compute()
    b = coaddx.assemble(coaddx.open_warps(new)).compute()
    for v in ("image", "variance", "mask", "n_image"):
        np.testing.assert_array_equal(a[v].values, b[v].values)


@pytest.mark.parametrize("compressed", [True, False])
def test_widening_reader_equals_zarr_for_every_region(tmp_path, compressed):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 1 << 16, size=(3, 37, 29), dtype=np.uint16)
    data[1, :16, :8] = 0  # a fill chunk, not written
    arr = zarr.create_array(
        str(tmp_path / "m.zarr"),
        shape=data.shape,
        chunks=(1, 16, 8),
        dtype="u2",
        fill_value=0,
        compressors=[numcodecs_blosc_codec()] if compressed else None,
    )
    arr[:] = data
    reader = region_reader(tmp_path / "m.zarr", dtype=np.int32)
    assert reader is not None and reader.dtype == np.int32 and reader.stored == np.uint16
    assert region_reader(tmp_path / "m.zarr", dtype=np.int8) is None  # never narrows
    for key in [
        (slice(None),) * 3,
        (0, slice(0, 16), slice(0, 8)),  # whole chunks, decoded then widened in place
        (slice(0, 3), slice(0, 32), slice(0, 16)),
        (slice(1, 3), slice(5, 37), slice(3, 29)),
        (2, slice(17, 18), slice(0, 29)),
    ]:
        got = reader[key]
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, data[key].astype(np.int32))


def test_a_compressed_chunk_of_the_wrong_decoded_size_is_corrupt(tmp_path, warps):
    path = tmp_path / "p.zarr"
    coaddx.write_warps(warps, path, chunk=16)
    f = chunk(path, "mask", 1, 1, 1)
    f.write_bytes(numcodecs.blosc.compress(np.zeros(100, np.uint16), b"lz4", 1, 0))
    reader = region_reader(path / "direct" / "mask", dtype=np.int32)  # no manifest check
    with pytest.raises(StoreError, match="corrupt chunk"):
        reader[1, 16:32, 16:32]


def crc32c_bitwise(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), one bit at a time."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def test_chunk_crc_is_crc32c_by_known_vectors_and_a_bitwise_reference():
    assert google_crc32c.implementation == "c"  # the independent reference, in C
    assert crc32c.hardware_based  # the production path: the SSE4.2 / ARMv8 instruction
    vectors = {  # RFC 3720 B.4 and the classic check value
        b"123456789": 0xE3069283,
        bytes(32): 0x8A9136AA,
        b"\xff" * 32: 0x62A8AB43,
        bytes(range(32)): 0x46DD794E,
        bytes(range(31, -1, -1)): 0x113FDB5C,
    }
    for data, crc in vectors.items():
        assert chunk_crc(data) == crc == crc32c_bitwise(data)
    rng = np.random.default_rng(2)
    for n in (0, 1, 7, 64, 1000, 4099):
        data = rng.bytes(n)
        assert chunk_crc(data) == crc32c_bitwise(data)
        assert chunk_crc(data) != (zlib.crc32(data) if n else 1)  # not the zlib CRC-32
    big = rng.bytes((1 << 20) + 3)  # above crc32c's GIL-release threshold (its threaded path)
    assert chunk_crc(big) == google_crc32c.value(big)
    assert chunk_crc(np.frombuffer(big, np.uint8)) == google_crc32c.value(big)
    a = rng.normal(size=(3, 5, 7)).astype(np.float32)
    assert chunk_crc(a) == crc32c_bitwise(a.tobytes())
    assert chunk_crc(a[:, ::2]) == crc32c_bitwise(np.ascontiguousarray(a[:, ::2]).tobytes())


def test_record_and_input_checksums_are_crc32c(tmp_path):
    """The visit record's plane checksums and the input files' checksums are CRC-32C (they were
    zlib's CRC-32, several times slower): checked against the bitwise reference, a file read in
    several blocks included."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(33, 17)).astype(np.float32)
    assert checksum(a) == f"{crc32c_bitwise(a.tobytes()):08x}"
    assert checksum(a[:, ::3]) == f"{crc32c_bitwise(np.ascontiguousarray(a[:, ::3]).tobytes()):08x}"
    assert checksum(a) != f"{zlib.crc32(a.tobytes()):08x}"
    f = tmp_path / "input.fits"
    data = rng.bytes((1 << 22) + 4099)  # two blocks of file_crc32c's reads
    f.write_bytes(data)
    assert file_crc32c(f) == f"{google_crc32c.value(data):08x}"
    f.write_bytes(data[:1000])
    assert file_crc32c(f) == f"{crc32c_bitwise(data[:1000]):08x}"
