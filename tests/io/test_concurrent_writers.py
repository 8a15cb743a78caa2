"""Concurrent writers of one warp store (issue 14): two and four processes appending disjoint
visits at the same time lose nothing; each visit holds its own pixels. Before the store lock,
three trials lost two and three visits and once committed a visit holding another's pixels."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
import warnings

import numpy as np
import pytest

import coaddx
from coaddx.errors import StoreError
from coaddx.io.zarr.lock import lock_path, store_lock
from coaddx.testing import random_warps


def _visit_warps(visit: int):
    """One visit whose pixels encode the visit id (so a visit in another's slot shows)."""
    ds = random_warps(n_visits=1, shape=(96, 80), seed=visit)
    ds = ds.assign_coords(visit=[visit])
    ds["image"] = ds["image"] + np.float32(visit)
    return ds


def _append(path: str, visits: list[int], start) -> None:
    start.wait()
    for v in visits:
        coaddx.write_warps(_visit_warps(v), path)


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_appends_lose_no_visit(tmp_path, writers):
    path = str(tmp_path / "warps.zarr")
    coaddx.write_warps(_visit_warps(1), path)  # the store exists; every writer appends
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(writers)
    plan = [[100 * (w + 1) + k for k in range(3)] for w in range(writers)]
    procs = [ctx.Process(target=_append, args=(path, visits, start)) for visits in plan]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    warps = coaddx.open_warps(path)
    want = sorted([1] + [v for visits in plan for v in visits])
    assert sorted(int(v) for v in warps["visit"].values) == want
    for v in want:
        np.testing.assert_array_equal(
            warps["image"].sel(visit=v).values, _visit_warps(v)["image"].isel(visit=0).values
        )
    assert coaddx.check_store(path, deep=True).ok
    assert not lock_path(path).exists()


def test_a_held_lock_is_waited_for_then_reported(tmp_path, monkeypatch):
    path = tmp_path / "warps.zarr"
    lock = lock_path(path)
    lock.mkdir()
    (lock / "owner.json").write_text(
        json.dumps({"host": "elsewhere", "pid": 1, "time": time.time(), "what": "make_warps"})
    )
    with pytest.raises(StoreError, match=r"being written by pid 1 on elsewhere.*remove"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with store_lock(path, timeout=0.3):
                pass
    assert any("waiting for it" in str(w.message) for w in seen)
    assert lock.exists()  # another host's lock is never broken


def test_the_lock_of_a_dead_writer_on_this_host_is_broken(tmp_path):
    path = tmp_path / "warps.zarr"
    lock = lock_path(path)
    lock.mkdir()
    dead = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    owner = {"host": socket.gethostname(), "pid": dead.pid, "time": time.time(), "what": "x"}
    (lock / "owner.json").write_text(json.dumps(owner))
    with pytest.warns(RuntimeWarning, match="no longer running"):
        coaddx.write_warps(_visit_warps(7), path)
    assert [int(v) for v in coaddx.open_warps(path)["visit"].values] == [7]
    assert not lock.exists()


def test_the_lock_is_reentrant_and_released(tmp_path):
    path = tmp_path / "warps.zarr"
    with store_lock(path) as lock:
        with store_lock(path):
            assert lock.is_dir()
        owner = json.loads((lock / "owner.json").read_text())
        assert owner["pid"] == os.getpid()
        assert lock.is_dir()
    assert not lock.exists()
