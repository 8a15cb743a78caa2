"""Outputs are written whole or not at all, and nothing is left behind (issue 14).

``write_coadd`` and ``export_fits`` under crashes between the steps of the swap, stale
temporary folders of earlier crashes, bad inputs, full and read-only disks and Ctrl-C.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from astropy.io import fits
from astropy.wcs import WCS

import coaddx
from coaddx.errors import InputError, StoreError
from coaddx.io.zarr import coadd_store

SHAPE, CHUNK = (48, 64), 16


def coadd_of(seed: int) -> xr.Dataset:
    """A small coadd Dataset of 3 x 4 chunks per plane, with values that differ per seed."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1, SHAPE).astype(np.float32)
    variance = rng.uniform(1, 2, SHAPE).astype(np.float32)
    mask = rng.integers(0, 4, SHAPE).astype(np.int32)
    planes = {
        "image": da.from_array(image, chunks=CHUNK),
        "variance": da.from_array(variance, chunks=CHUNK),
        "mask": da.from_array(mask, chunks=CHUNK),
    }
    return xr.Dataset(
        {k: (("y", "x"), v) for k, v in planes.items()},
        coords={"y": np.arange(SHAPE[0]) + 100, "x": np.arange(SHAPE[1]) + 200},
        attrs={"statistic": "mean", "seed": seed},
    )


def digest(path: Path) -> str:
    """A checksum of every file below ``path`` (names and bytes)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def assert_holds(path: Path, seed: int) -> None:
    """``path`` is a readable coadd store holding ``coadd_of(seed)``."""
    back, want = coaddx.open_coadd(path), coadd_of(seed)
    for name in ("image", "variance", "mask"):
        np.testing.assert_array_equal(back[name].values, want[name].values)
    assert back.attrs["seed"] == seed


def is_chunk(key: str) -> bool:
    """A chunk of a dask-backed plane (written by the compute, not by the set-up)."""
    return key.split("/")[0] in ("image", "variance", "mask") and "/c/" in key


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def old(tmp_path):
    """A coadd store ``c.zarr`` holding ``coadd_of(1)``, and its checksum."""
    path = coaddx.write_coadd(coadd_of(1), tmp_path / "c.zarr")
    return path, digest(path)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temp_names_of_a_write(tmp_path: Path) -> list[str]:
    """The hidden names a write beside ``tmp_path / 'probe.zarr'`` uses, seen mid-write."""
    seen: list[str] = []

    def spy(delayed):
        seen.extend(p.name for p in tmp_path.iterdir() if p.name.startswith(".probe.zarr."))
        return dask.compute(delayed)

    coaddx.write_coadd(coadd_of(0), tmp_path / "probe.zarr", compute=spy)
    shutil.rmtree(tmp_path / "probe.zarr")
    return seen


# --- 1. the swap -------------------------------------------------------------------------------


def test_write_coadd_overwrite_has_no_moment_without_a_coadd(old, tmp_path, monkeypatch):
    """After every file-system step of an overwrite, a complete coadd is at the path."""
    path, _ = old
    states: list[tuple[str, bool]] = []

    def spying(name, fn):
        def spy(*args, **kwargs):
            out = fn(*args, **kwargs)
            if any(Path(a).parent == tmp_path for a in args[:2]):
                states.append((name, (path / "zarr.json").is_file()))
            return out

        return spy

    monkeypatch.setattr(os, "rename", spying("rename", os.rename))
    monkeypatch.setattr(os, "replace", spying("replace", os.replace))
    monkeypatch.setattr(
        coadd_store, "exchange_paths", spying("exchange", coadd_store.exchange_paths)
    )
    coaddx.write_coadd(coadd_of(2), path, overwrite=True)
    assert states and all(ok for _, ok in states), states
    assert_holds(path, 2)
    assert names(tmp_path) == ["c.zarr"]


@pytest.mark.parametrize("crash", [OSError(errno.EIO, "I/O error"), KeyboardInterrupt()])
def test_write_coadd_fallback_swap_puts_the_old_coadd_back(old, tmp_path, monkeypatch, crash):
    """Where no atomic exchange exists, the swap is two renames; a failure at the second puts
    the old coadd back, identical."""
    path, before = old
    monkeypatch.setattr(coadd_store, "exchange_paths", lambda a, b: False)
    real = os.rename

    def rename(src, dst):
        if ".tmp-" in Path(src).name:  # the second step: the new coadd into place
            raise crash
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(type(crash)) as info:
        coaddx.write_coadd(coadd_of(2), path, overwrite=True)
    if isinstance(crash, OSError):
        assert info.type is StoreError and str(path) in str(info.value)
    assert digest(path) == before
    assert_holds(path, 1)
    assert names(tmp_path) == ["c.zarr"]
    monkeypatch.setattr(os, "rename", real)
    coaddx.write_coadd(coadd_of(3), path, overwrite=True)  # and the fallback swap works
    assert_holds(path, 3)
    assert names(tmp_path) == ["c.zarr"]


def test_write_coadd_killed_between_the_renames_is_restored_next_time(old, tmp_path, monkeypatch):
    """A process killed between the two renames leaves no coadd at the path and the old one
    under ``.old-*``: the next write restores it (a warning names it) before anything else."""
    path, before = old
    monkeypatch.setattr(coadd_store, "exchange_paths", lambda a, b: False)
    real = os.rename

    def killed(src, dst):  # the second rename and the restore both "never happen"
        if ".tmp-" in Path(src).name or ".old-" in Path(src).name:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        coaddx.write_coadd(coadd_of(2), path, overwrite=True)
    monkeypatch.setattr(os, "rename", real)
    (backup,) = [n for n in names(tmp_path) if n.startswith(".c.zarr.old-")]
    assert not path.exists()
    with pytest.raises(StoreError, match=backup):  # the reader is told where the coadd is
        coaddx.open_coadd(path)
    with pytest.warns(RuntimeWarning, match=f"restored .*{backup}"):
        with pytest.raises(StoreError, match="exists"):  # restored, so it now exists
            coaddx.write_coadd(coadd_of(2), path)
    assert digest(path) == before
    assert names(tmp_path) == ["c.zarr"]


def test_write_coadd_crash_after_the_swap_leaves_the_new_coadd(old, tmp_path, monkeypatch):
    """Killed while removing the old coadd: the new one is in place; the leftover is removed
    (with a warning naming it) by the next write."""
    path, _ = old
    real = shutil.rmtree

    def rmtree(target, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        coaddx.write_coadd(coadd_of(2), path, overwrite=True)
    monkeypatch.setattr(shutil, "rmtree", real)
    assert_holds(path, 2)
    (leftover,) = [n for n in names(tmp_path) if n != "c.zarr"]
    with pytest.warns(RuntimeWarning, match=f"removed .*{leftover}"):
        coaddx.write_coadd(coadd_of(3), path, overwrite=True)
    assert_holds(path, 3)
    assert names(tmp_path) == ["c.zarr"]


def test_write_coadd_cleans_up_stale_folders_of_earlier_crashes(old, tmp_path):
    """Leftovers of dead writers are removed; those of a live writer (or another host's, which
    cannot be checked) are left alone."""
    path, before = old
    (probe,) = temp_names_of_a_write(tmp_path)
    tag = probe.rpartition(".tmp-")[2]
    host, pid, _ = tag.split("-")
    assert pid == str(os.getpid())
    stale = [
        ".c.zarr.tmp-0badc0de",  # an older coaddx's name: no owner recorded
        f".c.zarr.tmp-{host}-{dead_pid()}-12345678",
        f".c.zarr.old-{host}-{dead_pid()}-9abcdef0",
    ]
    kept = [f".c.zarr.tmp-{host}-1-aaaaaaaa", ".c.zarr.tmp-otherhost-42-bbbbbbbb"]
    for name in stale + kept:
        shutil.copytree(path, tmp_path / name)
    with pytest.warns(RuntimeWarning) as record:
        coaddx.write_coadd(coadd_of(2), path, overwrite=True)
    text = "\n".join(str(w.message) for w in record)
    for name in stale:
        assert f"removed {tmp_path / name}" in text
    assert "otherhost" in text and "left alone" in text
    assert names(tmp_path) == sorted(["c.zarr", *kept])
    assert_holds(path, 2)
    assert before != digest(path)


def test_write_coadd_refuses_to_replace_what_is_not_a_coadd(tmp_path):
    """overwrite=True replaces a coadd store or an empty folder, never other data."""
    warps = tmp_path / "w.zarr"
    zarr.open_group(str(warps), mode="w", zarr_format=3).attrs["coaddx"] = {"kind": "warps"}
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("keep me")
    afile = tmp_path / "f.zarr"
    afile.write_text("a file")
    for target in (warps, data, afile):
        before = digest(tmp_path)
        with pytest.raises(StoreError, match=f"{target}.*not a coadd store"):
            coaddx.write_coadd(coadd_of(1), target, overwrite=True)
        assert digest(tmp_path) == before
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    coaddx.write_coadd(coadd_of(1), empty, overwrite=True)
    assert_holds(empty, 1)


# --- 2. not a Dataset --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (np.zeros((4, 4)), "ndarray"),
        (xr.DataArray(np.zeros((4, 4)), dims=("y", "x")), "DataArray"),
        ({"image": np.zeros((4, 4))}, "dict"),
        (None, "NoneType"),
    ],
)
def test_write_coadd_of_a_non_dataset(tmp_path, value, name):
    with pytest.raises(InputError, match=f"xarray.Dataset.*{name}"):
        coaddx.write_coadd(value, tmp_path / "c.zarr")
    assert names(tmp_path) == []


# --- 3. full and read-only disks ---------------------------------------------------------------


def failing_writes(monkeypatch, err: int, after: int) -> list[str]:
    """Make the zarr writer raise ``OSError(err)`` for every chunk after the first ``after``."""
    written: list[str] = []
    real_set, real_sync = zarr.storage.LocalStore.set, zarr.storage.LocalStore.set_sync

    def check(store, key):
        if is_chunk(key):
            if len(written) >= after:
                raise OSError(err, os.strerror(err), str(store.root / key))
            written.append(key)

    async def set_(self, key, value):
        check(self, key)
        return await real_set(self, key, value)

    def set_sync(self, key, value):
        check(self, key)
        return real_sync(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)
    monkeypatch.setattr(zarr.storage.LocalStore, "set_sync", set_sync)
    return written


@pytest.mark.parametrize(
    ("err", "words"),
    [(errno.ENOSPC, "disk is full"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only")],
)
def test_write_coadd_on_a_full_disk(old, tmp_path, monkeypatch, err, words):
    path, before = old
    written = failing_writes(monkeypatch, err, after=3)
    with pytest.raises(StoreError, match=f"{path}.*{words}.*unchanged"):
        coaddx.write_coadd(coadd_of(2), path, overwrite=True)
    assert len(written) == 3  # it failed mid-write
    assert digest(path) == before
    assert names(tmp_path) == ["c.zarr"]


def test_write_coadd_new_store_on_a_full_disk(tmp_path, monkeypatch):
    failing_writes(monkeypatch, errno.ENOSPC, after=0)
    with pytest.raises(StoreError, match=f"{tmp_path / 'n.zarr'}.*disk is full.*nothing"):
        coaddx.write_coadd(coadd_of(2), tmp_path / "n.zarr")
    assert names(tmp_path) == []


def test_write_coadd_cannot_create_the_folder(tmp_path, monkeypatch):
    real = os.mkdir

    def mkdir(p, *args, **kwargs):
        if Path(p).parent == tmp_path:
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real(p, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    target = tmp_path / "sub" / "c.zarr"
    with pytest.raises(StoreError, match=f"{target}.*permission denied"):
        coaddx.write_coadd(coadd_of(1), target)
    assert names(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_write_coadd_into_a_read_only_folder(old, tmp_path):
    path, before = old
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(StoreError, match=f"{path}.*permission denied.*unchanged"):
            coaddx.write_coadd(coadd_of(2), path, overwrite=True)
    finally:
        tmp_path.chmod(0o755)
    assert digest(path) == before
    assert names(tmp_path) == ["c.zarr"]


# --- 5. interrupted writes ---------------------------------------------------------------------


def interrupting_source(n_ok: int) -> xr.Dataset:
    """``coadd_of(2)`` whose image raises KeyboardInterrupt once ``n_ok`` chunks are made."""
    made = []

    def block(x):
        if len(made) >= n_ok:
            raise KeyboardInterrupt
        made.append(1)
        return x

    ds = coadd_of(2)
    ds["image"] = ds["image"].copy(data=ds["image"].data.map_blocks(block, dtype=np.float32))
    return ds


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_write_coadd_interrupted_in_a_task(old, tmp_path, scheduler):
    path, before = old
    with dask.config.set(scheduler=scheduler), pytest.raises(KeyboardInterrupt):
        coaddx.write_coadd(interrupting_source(4), path, overwrite=True)
    time.sleep(0.5)  # any stray worker thread would write by now
    assert digest(path) == before
    assert names(tmp_path) == ["c.zarr"]


def test_write_coadd_ctrl_c_while_threads_write(old, tmp_path, monkeypatch):
    """Ctrl-C reaches the main thread while worker threads are in the middle of slow chunk
    writes: the cleanup waits for them, so no ``.tmp-*`` is recreated behind it."""
    path, before = old
    real_set, real_sync = zarr.storage.LocalStore.set, zarr.storage.LocalStore.set_sync
    done: list[str] = []

    def after_write(key):
        if is_chunk(key):
            done.append(key)
            if len(done) == 1:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    async def set_(self, key, value):
        if is_chunk(key):
            await asyncio.sleep(0.4)
        out = await real_set(self, key, value)
        after_write(key)
        return out

    def set_sync(self, key, value):
        if is_chunk(key):
            time.sleep(0.4)
        out = real_sync(self, key, value)
        after_write(key)
        return out

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)
    monkeypatch.setattr(zarr.storage.LocalStore, "set_sync", set_sync)
    # Python's Ctrl-C handler, even when the tests were started with SIGINT ignored (as a
    # shell does for background jobs, where Python then keeps SIG_IGN)
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_write(path)
    finally:
        signal.signal(signal.SIGINT, saved)
    time.sleep(2.0)  # writes still in flight would have finished by now
    assert len(done) < 36  # interrupted before the end
    assert digest(path) == before
    assert names(tmp_path) == ["c.zarr"]


def _ctrl_c_write(path):
    with dask.config.set(scheduler="threads", num_workers=4), pytest.raises(KeyboardInterrupt):
        coaddx.write_coadd(coadd_of(2), path, overwrite=True)


# --- 4. export_fits ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A coadd store with a WCS, in 3 x 4 chunks (chunks narrower than a row)."""
    ds = coadd_of(5)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval, wcs.wcs.crpix = [10.0, -5.0], [300.0, 200.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    ds.attrs["wcs"] = wcs.to_header(relax=True).tostring(sep="\n")
    ds.attrs["mask_planes"] = {"BAD": 0, "SAT": 1}
    ds["n_image"] = ds["mask"] + 1
    return coaddx.write_coadd(ds, tmp_path_factory.mktemp("fits") / "c.zarr")


def test_export_fits_writes_the_data_astropy_writes(store, tmp_path):
    """Every HDU's data area (with its padding) is byte for byte what astropy writes for the
    same headers and the store's planes: writing region by region changes nothing."""
    out = coaddx.export_fits(store, tmp_path / "c.fits")
    ds = coaddx.open_coadd(store)
    with fits.open(out) as hdul:
        headers = [h.header.copy() for h in hdul]
    hdus = [fits.PrimaryHDU(header=headers[0])] + [
        fits.ImageHDU(ds[v].values.astype(dtype), header=h)
        for v, h, dtype in zip(
            ("image", "mask", "variance", "n_image"),
            headers[1:],
            (">f4", ">i4", ">f4", ">i4"),
            strict=True,
        )
    ]
    fits.HDUList(hdus).writeto(tmp_path / "ref.fits")
    got, want = out.read_bytes(), (tmp_path / "ref.fits").read_bytes()
    assert len(got) == len(want)
    with fits.open(out) as a, fits.open(tmp_path / "ref.fits") as b:
        for i in range(1, 5):
            assert list(a[i].header.items()) == list(b[i].header.items())
            start = a.fileinfo(i)["datLoc"]
            assert start == b.fileinfo(i)["datLoc"]
            end = start + -(-SHAPE[0] * SHAPE[1] * 4 // 2880) * 2880
            assert got[start:end] == want[start:end]


def test_export_fits_uses_no_memory_map(store, tmp_path, monkeypatch):
    """A memory map of the output turns a full disk into SIGBUS; none is made."""

    def refused(*args, **kwargs):
        raise AssertionError("np.memmap used")

    monkeypatch.setattr(np, "memmap", refused)
    out = coaddx.export_fits(store, tmp_path / "c.fits")
    np.testing.assert_array_equal(fits.getdata(out, "IMAGE"), coaddx.open_coadd(store)["image"])


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_export_fits_on_a_full_disk_mid_write(store, tmp_path, monkeypatch, err):
    out = tmp_path / "c.fits"
    out.write_bytes(b"the previous export")
    real = os.pwrite
    calls = []

    def pwrite(fd, data, offset):
        calls.append(offset)
        if len(calls) > 5:
            raise OSError(err, os.strerror(err))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(StoreError, match=f"{out}.*(disk is full|quota).*unchanged"):
        coaddx.export_fits(store, out, overwrite=True)
    assert len(calls) > 5
    assert out.read_bytes() == b"the previous export"
    assert names(tmp_path) == ["c.fits"]


def test_export_fits_full_disk_found_before_any_pixel(store, tmp_path, monkeypatch):
    """The file's blocks are reserved first, so a full disk is known before any chunk task."""

    def fallocate(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def pwrite(fd, data, offset):
        raise AssertionError("a chunk was written")

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(StoreError, match=f"{tmp_path / 'c.fits'}.*disk is full.*nothing"):
        coaddx.export_fits(store, tmp_path / "c.fits")
    assert names(tmp_path) == []


def test_export_fits_where_fallocate_is_unsupported(store, tmp_path, monkeypatch):
    def fallocate(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    out = coaddx.export_fits(store, tmp_path / "c.fits")
    np.testing.assert_array_equal(fits.getdata(out, "MASK"), coaddx.open_coadd(store)["mask"])


def test_export_fits_to_an_unwritable_folder(store, tmp_path, monkeypatch):
    real = os.open

    def refusing(p, flags, *args, **kwargs):
        if Path(p).parent == tmp_path and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(p))
        return real(p, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    with pytest.raises(StoreError, match=f"{tmp_path / 'c.fits'}.*permission denied"):
        coaddx.export_fits(store, tmp_path / "c.fits")
    assert names(tmp_path) == []


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_export_fits_interrupted(store, tmp_path, monkeypatch, scheduler):
    out = tmp_path / "c.fits"
    out.write_bytes(b"the previous export")
    real = os.pwrite
    calls = []

    def pwrite(fd, data, offset):
        calls.append(offset)
        if len(calls) == 20:
            raise KeyboardInterrupt
        time.sleep(0.005)
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with dask.config.set(scheduler=scheduler), pytest.raises(KeyboardInterrupt):
        coaddx.export_fits(store, out, overwrite=True)
    time.sleep(0.5)
    assert out.read_bytes() == b"the previous export"
    assert names(tmp_path) == ["c.fits"]
