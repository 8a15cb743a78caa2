"""Verified warp stores: per-chunk CRC-32C manifests checked as chunks are read, metadata
checked against the commit log, ``check_store`` / ``coaddx check``, repairs by
``make_warps(reuse=True)``, symlinks, crashed creates and the store-chunk setting."""

import errno
import hashlib
import json
import os
import shutil

import dask
import google_crc32c
import numpy as np
import pytest
import zarr

import coaddx
from coaddx.cli.main import main
from coaddx.io.zarr import chunks as chunk_io
from coaddx.io.zarr.manifest import MANIFESTS
from coaddx.io.zarr.warp_store import WarpStore, check_store
from coaddx.model.skymap import Patch, shift_wcs
from coaddx.sim.simulate import simulate
from coaddx.testing import random_warps
from coaddx.warp.make_warps import make_warps

LAYERS = ("image", "variance", "mask")


def tree_digest(path):
    """SHA-256 of every file (name and bytes) under ``path``: 'the store is unchanged'."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def read_all(path, warp_type="direct"):
    ds = coaddx.open_warps(path, warp_type, chunks="storage")
    return {v: ds[v].values for v in LAYERS}


@pytest.fixture
def store(tmp_path):
    """Three 40 x 40 visits in 16 x 16 chunks (3 x 3 per plane); visit 100's lower-right
    chunk is all fill (NaN image and variance, mask 0), so it is not written."""
    ds = random_warps(3, (40, 40), seed=1)
    for v in ("image", "variance"):
        ds[v][0, 32:, 32:] = np.nan
    ds["mask"][0, 32:, 32:] = 0
    path = tmp_path / "p.zarr"
    coaddx.write_warps(ds, path, chunk=16)
    return path, ds


def chunk(path, name, slot, j, i, warp_type="direct"):
    return path / warp_type / name / "c" / str(slot) / str(j) / str(i)


def test_every_chunk_crc_is_in_the_visit_manifest_and_fill_chunks_are_marked(store):
    path, ds = store
    for slot, visit in enumerate(ds["visit"].values):
        meta = json.loads((path / "direct" / MANIFESTS / str(visit) / "zarr.json").read_text())
        body = meta["attributes"]["manifest"]
        assert body["visit"] == visit and body["slot"] == slot and body["algorithm"] == "crc32c"
        for name in LAYERS:
            crc = body["arrays"][name]["crc"]
            assert len(crc) == 3 and all(len(row) == 3 for row in crc)
            for j in range(3):
                for i in range(3):
                    f = chunk(path, name, slot, j, i)
                    if crc[j][i] is None:
                        assert not f.exists()
                    else:
                        assert crc[j][i] == google_crc32c.value(f.read_bytes())
    fill = json.loads((path / "direct" / MANIFESTS / "100" / "zarr.json").read_text())
    assert fill["attributes"]["manifest"]["arrays"]["image"]["crc"][2][2] is None
    assert "chunks" not in coaddx.open_warps(path).data_vars  # CRCs are not record fields
    assert not any("chunks" in r for r in zarr.open_group(str(path / "direct")).attrs["visits"])
    assert check_store(path, deep=True).ok


def _random_bytes(f):
    f.write_bytes(np.random.default_rng(5).bytes(f.stat().st_size))


def _scale_100_pixels(f):
    a = np.frombuffer(f.read_bytes(), dtype=np.float32).copy()
    a[:100] *= 50
    f.write_bytes(a.tobytes())


def _flip_one_bit(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 4
    f.write_bytes(bytes(data))


def _to_directory(f):
    f.unlink()
    f.mkdir()


CHUNK_DAMAGE = [
    ("image", _random_bytes, "fails its checksum", True),
    ("image", _scale_100_pixels, "fails its checksum", True),
    ("variance", _flip_one_bit, "fails its checksum", True),
    ("mask", _flip_one_bit, "fails its checksum", True),
    ("image", lambda f: f.unlink(), "missing", False),
    ("variance", lambda f: f.unlink(), "missing", False),
    ("mask", lambda f: f.unlink(), "missing", False),
    ("image", _to_directory, "is a directory", False),
]


@pytest.mark.parametrize("name, damage, match, deep_only", CHUNK_DAMAGE)
def test_a_damaged_chunk_raises_naming_store_array_visit_and_chunk(
    store, name, damage, match, deep_only
):
    path, ds = store
    damage(chunk(path, name, 1, 1, 2))
    before = tree_digest(path)
    back = coaddx.open_warps(path, chunks="storage")  # lazy: opening reads no chunk
    np.testing.assert_array_equal(back[name][:, :16, :16].values, ds[name].values[:, :16, :16])
    with pytest.raises(coaddx.StoreError, match=match) as err:
        _ = back[name].values
    for part in (str(path), repr(name), "visit 101", "chunk (1, 2)"):
        assert part in str(err.value)
    shallow, deep = check_store(path), check_store(path, deep=True)
    assert shallow.ok == deep_only and not deep.ok
    assert deep.damaged_visits == (101,) and deep.damaged[0].chunk == (1, 2)
    assert deep.damaged[0].array == name and match in deep.damaged[0].problem
    assert tree_digest(path) == before  # reading and checking change nothing


def test_a_chunk_where_the_visit_wrote_none_is_refused(store):
    path, _ = store
    src = chunk(path, "image", 1, 2, 2)
    shutil.copy(src, chunk(path, "image", 0, 2, 2))  # visit 100 wrote no chunk there
    with pytest.raises(coaddx.StoreError, match="exists where the visit wrote none"):
        _ = coaddx.open_warps(path)["image"].values
    assert check_store(path).damaged_visits == (100,)


def _edit_json(path, edit):
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _every_array(path, edit):
    for name in LAYERS:
        _edit_json(path / "direct" / name / "zarr.json", edit)


def _attrs(path, edit):
    _edit_json(path / "direct" / "zarr.json", lambda m: edit(m["attributes"]))


def _chunk_shape(path):
    _every_array(path, lambda m: m["chunk_grid"]["configuration"].update(chunk_shape=[1, 8, 8]))


def _swap_planes(path):
    def swap(a):
        planes = a["mask_planes"]
        planes["BAD"], planes["SAT"] = planes["SAT"], planes["BAD"]

    _attrs(path, swap)


def _ghost_visit(path):
    _attrs(path, lambda a: a["visits"].append({**a["visits"][-1], "visit": 999}))


def _weights(path):
    def edit(a):
        stats = a["visits"][1]["weight_stats"]
        for k in stats:
            stats[k] = -1.0

    _attrs(path, edit)


def _ghost_in_old_store(path):  # no manifests at all: the arrays have no slot for it
    shutil.rmtree(path / "direct" / MANIFESTS)
    _ghost_visit(path)


METADATA_DAMAGE = [
    ("chunk_shape", _chunk_shape, "chunks", None),
    (
        "shape",
        lambda p: _edit_json(
            p / "direct" / "image" / "zarr.json", lambda m: m["shape"].__setitem__(2, 39)
        ),
        "image",
        None,
    ),
    (
        "dtype",
        lambda p: _edit_json(
            p / "direct" / "image" / "zarr.json", lambda m: m.update(data_type="float64")
        ),
        "float64",
        None,
    ),
    ("mask planes swapped", _swap_planes, "mask_planes", None),
    ("a visit never written", _ghost_visit, "never written", 999),
    ("a visit never written, old store", _ghost_in_old_store, "never written", 999),
    ("weight statistics -1", _weights, "cannot be negative", 101),
    (
        "pending garbage",
        lambda p: _attrs(p, lambda a: a.update(pending="garbage")),
        "pending",
        None,
    ),
    ("visits garbage", lambda p: _attrs(p, lambda a: a.update(visits={"a": 1})), "visits", None),
    (
        "group zarr.json",
        lambda p: (p / "direct" / "zarr.json").write_text("{not json"),
        "direct",
        None,
    ),
]


@pytest.mark.parametrize(
    "case, damage, match, visit", METADATA_DAMAGE, ids=[c[0] for c in METADATA_DAMAGE]
)
def test_metadata_that_disagrees_with_the_commit_log_is_refused_at_open(
    store, case, damage, match, visit
):
    path, _ = store
    damage(path)
    before = tree_digest(path)
    with pytest.raises(coaddx.StoreError, match=match) as err:
        coaddx.open_warps(path)
    assert str(path) in str(err.value)
    if visit is not None:
        assert f"visit {visit}" in str(err.value)
    report = check_store(path, deep=True)
    assert not report.ok and any(match in str(d) for d in report.damaged)
    if visit is not None:
        assert visit in report.damaged_visits
    assert tree_digest(path) == before


def test_an_edited_record_is_caught_by_its_manifest(store):
    path, _ = store
    _attrs(path, lambda a: a["visits"][2].update(psf_fwhm=9.0))
    with pytest.raises(coaddx.StoreError, match="visit 102: its commit record"):
        coaddx.open_warps(path)


def test_moved_slots_keep_their_checksums(tmp_path):
    ds = random_warps(3, (40, 40), seed=2)
    path = tmp_path / "p.zarr"
    coaddx.write_warps(ds.isel(visit=[0]), path, chunk=16)
    ws = WarpStore(path)
    visits = [int(v) for v in ds["visit"].values[1:]]
    slots = ws.reserve(visits)
    planes = [ds[v].values[2] for v in LAYERS]
    record = {"visit": visits[1], **ws.write_slot(slots[visits[1]], *planes)}
    ws.commit_in_order([record], slots)  # visits[0] failed: visits[1] moves down a slot
    assert check_store(path, deep=True).ok
    got = read_all(path)
    for v in LAYERS:
        np.testing.assert_array_equal(got[v], ds[v].values[[0, 2]])


def test_the_chunk_writer_refuses_negative_variance(store):
    path, ds = store
    ws = WarpStore(path)
    slot = ws.reserve([7])[7]
    variance = ds["variance"].values[0].copy()
    variance[5, 6] = -1.0
    image = np.nan_to_num(ds["image"].values[0])
    for write in (
        lambda: ws.write_slot_box(slot, 0, 0, image, variance, ds["mask"].values[0]),
        lambda: ws.write_slot(slot, image, variance, ds["mask"].values[0]),
    ):
        with pytest.raises(coaddx.InputError, match="negative variance"):
            write()
        assert not (path / "direct" / "image" / "c" / str(slot)).exists()
    assert check_store(path).incomplete == (7,)
    with pytest.warns(coaddx.IncompleteStoreWarning, match=r"\[7\]"):
        got = read_all(path)
    for v in LAYERS:
        np.testing.assert_array_equal(got[v], ds[v].values)


def test_stores_without_manifests_read_as_before(store):
    """A store written before chunk checksums: it reads, checks shallowly, says so, and a
    visit appended now is checked from its slot on."""
    path, ds = store
    shutil.rmtree(path / "direct" / MANIFESTS)
    got = read_all(path)
    for v in LAYERS:
        np.testing.assert_array_equal(got[v], ds[v].values)
    report = check_store(path, deep=True)
    assert report.ok and report.notes == (
        "no chunk checksums (written by an older coaddx): metadata checked, chunks not",
    )
    more = random_warps(1, (40, 40), seed=8).assign_coords(visit=[200])
    coaddx.write_warps(more, path)
    assert check_store(path, deep=True).ok
    chunk(path, "image", 3, 0, 0).unlink()
    assert check_store(path).damaged_visits == (200,)
    chunk(path, "image", 0, 0, 0).unlink()  # an old visit: unchecked, reads as fill
    assert np.isnan(coaddx.open_warps(path)["image"][0, :16, :16].values).all()


def test_cli_check_exit_codes(store, capsys):
    path, _ = store
    assert main(["check", str(path), "--deep"]) == 0
    assert "ok" in capsys.readouterr().out
    chunk(path, "variance", 2, 0, 1).unlink()
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED visit 102, array 'variance', chunk (0, 1)" in out and "missing" in out
    assert main(["check", str(path.parent / "nothing.zarr")]) == 2
    err = capsys.readouterr().err
    assert "nothing.zarr" in err and "Traceback" not in err


# -- symlinks ----------------------------------------------------------------------------


def test_a_chunk_folder_linked_outside_is_never_cleared_or_written(store, tmp_path):
    path, _ = store
    outside = tmp_path / "outside"
    (outside / "3" / "0").mkdir(parents=True)
    (outside / "3" / "0" / "0").write_bytes(b"precious")
    (outside / "keep.txt").write_text("mine")
    c = path / "direct" / "image" / "c"
    for slot in range(3):
        shutil.move(c / str(slot), outside / str(slot))
    shutil.rmtree(c)
    c.symlink_to(outside, target_is_directory=True)
    before = tree_digest(outside)
    more = random_warps(1, (40, 40), seed=8).assign_coords(visit=[200])
    with pytest.raises(coaddx.StoreError, match="leads outside the store") as err:
        coaddx.write_warps(more, path)
    assert "image/c" in str(err.value) and str(outside) in str(err.value)
    assert tree_digest(outside) == before
    with pytest.raises(coaddx.StoreError, match="outside the store"):
        _ = coaddx.open_warps(path)["image"].values


def test_a_chunk_file_linked_to_a_private_file_is_refused(store, tmp_path):
    path, _ = store
    secret = tmp_path / "secret.bin"
    f = chunk(path, "image", 0, 0, 0)
    secret.write_bytes(f.read_bytes())  # same size and even the same bytes
    f.unlink()
    f.symlink_to(secret)
    with pytest.raises(coaddx.StoreError, match="leads outside the store") as err:
        _ = coaddx.open_warps(path)["image"].values
    assert "secret.bin" in str(err.value)
    assert "outside the store" in str(check_store(path).damaged[0])
    # a store reached through a link of its own is fine
    f.unlink()
    shutil.copy(secret, f)
    link = tmp_path / "link.zarr"
    link.symlink_to(path, target_is_directory=True)
    assert check_store(link, deep=True).ok and read_all(link)["image"].shape == (3, 40, 40)


# -- make_warps ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate(
        tmp_path_factory.mktemp("integrity") / "sim",
        n_visits=3,
        shape=(160, 160),
        seed=31,
        calexps=True,
        n_stars=40,
        n_galaxies=4,
        artifacts=False,
    )


@pytest.fixture(scope="module")
def good(sim, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "w.zarr"
    with dask.config.set({"coaddx.store-chunk": 64}):
        result = make_warps(sim.calexps, sim.patch, path, warp_types=("direct", "psf_matched"))
    assert not result.failed
    return path


def assert_same_store(a, b):
    for t in ("direct", "psf_matched"):
        x, y = coaddx.open_warps(a, t), coaddx.open_warps(b, t)
        for v in x.data_vars:
            np.testing.assert_array_equal(x[v].values, y[v].values, err_msg=f"{t} {v}")
        np.testing.assert_array_equal(x["visit"].values, y["visit"].values)
        assert check_store(b, t, deep=True).ok


def test_store_chunk_setting_takes_effect_in_make_warps(good, sim, tmp_path, monkeypatch):
    assert check_store(good).chunk == (64, 64) and check_store(good, "psf_matched").chunk == (
        64,
        64,
    )
    monkeypatch.setenv("DASK_COADDX__STORE_CHUNK", "48")  # the environment, as documented
    dask.config.refresh()
    try:
        make_warps(sim.calexps[:1], sim.patch, tmp_path / "env.zarr")
    finally:
        monkeypatch.delenv("DASK_COADDX__STORE_CHUNK")
        dask.config.refresh()
    assert check_store(tmp_path / "env.zarr").chunk == (48, 48)


@pytest.mark.parametrize(
    "damage, deep",
    [
        (lambda p: chunk(p, "image", 1, 0, 1).unlink(), False),
        (lambda p: chunk(p, "mask", 2, 1, 1).unlink(), False),
        (lambda p: _random_bytes(chunk(p, "image", 0, 1, 1)), True),
        (lambda p: _flip_one_bit(chunk(p, "variance", 1, 1, 1, "psf_matched")), True),
        (_weights, False),
    ],
)
def test_make_warps_with_reuse_rewrites_damaged_visits(sim, good, tmp_path, damage, deep):
    path = tmp_path / "w.zarr"
    shutil.copytree(good, path)
    damage(path)
    assert not all(check_store(path, t, deep=True).ok for t in ("direct", "psf_matched"))
    with dask.config.set({"coaddx.store-chunk": 64}):
        result = make_warps(
            sim.calexps, sim.patch, path, warp_types=("direct", "psf_matched"), deep_check=deep
        )
    assert len(result.repaired) == 1 and not result.failed
    assert_same_store(good, path)


def test_damage_outside_this_run_or_to_the_group_is_an_error(sim, good, tmp_path):
    path = tmp_path / "w.zarr"
    shutil.copytree(good, path)
    chunk(path, "image", 0, 0, 0).unlink()
    first = coaddx.open_warps(good)["visit"].values[0]
    others = [p for p in sim.calexps if f"_{first}_" not in p.name]
    with pytest.raises(coaddx.StoreError, match=f"visit\\(s\\) \\[{first}\\] are damaged"):
        make_warps(others, sim.patch, path)
    shutil.rmtree(path)
    shutil.copytree(good, path)
    _swap_planes(path)
    before = tree_digest(path)
    with pytest.raises(coaddx.StoreError, match=r"mask_planes .* repair or delete"):
        make_warps(sim.calexps, sim.patch, path)
    assert tree_digest(path) == before


@pytest.mark.parametrize("grid", ["wcs", "box"])
def test_make_warps_refuses_a_store_on_another_grid(sim, good, tmp_path, grid):
    path = tmp_path / "w.zarr"
    shutil.copytree(good, path)
    before = tree_digest(path)
    p = sim.patch
    if grid == "wcs":  # same shape and tract box, the tract WCS 50 px off
        other = Patch(p.outer_bbox, p.inner_bbox, shift_wcs(p.tract_wcs, 50, 0), p.tract_id)
        match = r"another WCS.* 50 px"
    else:  # the same sky, but tract pixels (x, y) of another box
        other = Patch.from_wcs(p.wcs, p.shape)
        match = "tract pixel box"
    assert other.shape == p.shape
    with pytest.raises(coaddx.StoreError, match=match) as err:
        make_warps(sim.calexps, other, path)
    assert str(path) in str(err.value)
    assert tree_digest(path) == before


@pytest.mark.parametrize("step", ["attributes", "arrays"])
def test_a_crash_inside_create_is_recovered_by_the_next_make_warps(
    sim, good, tmp_path, monkeypatch, step
):
    path = tmp_path / "w.zarr"
    if step == "attributes":
        monkeypatch.setattr(zarr.core.attributes.Attributes, "update", lambda self, *a, **k: 1 / 0)
    else:
        real, calls = zarr.Group.create_array, []

        def create_array(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise ZeroDivisionError
            return real(self, *args, **kwargs)

        monkeypatch.setattr(zarr.Group, "create_array", create_array)
    with pytest.raises(ZeroDivisionError):
        make_warps(sim.calexps, sim.patch, path)
    monkeypatch.undo()
    with pytest.raises(coaddx.StoreError, match="interrupted while being created"):
        WarpStore(path)
    with pytest.raises(coaddx.StoreError, match="rerun make_warps"):
        coaddx.open_warps(path)
    with dask.config.set({"coaddx.store-chunk": 64}):
        result = make_warps(sim.calexps, sim.patch, path, warp_types=("direct", "psf_matched"))
    assert len(result.written) == 3
    assert_same_store(good, path)


def test_the_crc_check_can_be_switched_off_but_not_for_deep_checks(store):
    """coaddx.verify-chunks=False skips the CRC of each read (for speed), not the checks of
    missing chunks, and never the deep check."""
    path, ds = store
    _flip_one_bit(chunk(path, "variance", 1, 1, 2))
    with dask.config.set({"coaddx.verify-chunks": False}):
        back = coaddx.open_warps(path, chunks="storage")
        assert back["variance"].values.shape == ds["variance"].shape  # read without a check
        assert not check_store(path, deep=True).ok
    with pytest.raises(coaddx.StoreError, match="fails its checksum"):
        _ = coaddx.open_warps(path, chunks="storage")["variance"].values


def test_a_full_disk_while_warping_fails_the_visits_clearly_and_leaves_no_temporary(
    sim, tmp_path, monkeypatch
):
    real = chunk_io.os.replace

    def full(src, dst):
        if str(src).endswith(".tmp") and "/c/" in str(src):  # chunk files only
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(chunk_io.os, "replace", full)
    store = tmp_path / "warps.zarr"
    with dask.config.set(scheduler="sync"):
        result = make_warps(sim.calexps, sim.patch, store)
    assert not result.written and len(result.failed) == len(sim.visits)
    assert all(
        "the disk is full" in msg and "StoreError" not in msg for msg in result.failed.values()
    )
    assert not list(store.rglob("*.tmp"))
    with pytest.raises(coaddx.StoreError, match="holds no visits"):
        coaddx.open_warps(store)


def test_a_full_disk_while_creating_the_store_is_a_store_error(sim, tmp_path, monkeypatch):
    real = chunk_io.os.replace

    def full(src, dst):
        if "warps.zarr/" in str(dst):  # the store's own files (os is one module: filter)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(chunk_io.os, "replace", full)
    store = tmp_path / "warps.zarr"
    with pytest.raises(coaddx.StoreError, match="cannot create the warp store"):
        make_warps(sim.calexps, sim.patch, store)
    monkeypatch.setattr(chunk_io.os, "replace", real)
    with dask.config.set(scheduler="sync"):  # the next run, with space, recreates it
        assert len(make_warps(sim.calexps, sim.patch, store).written) == len(sim.visits)
