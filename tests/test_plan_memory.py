"""The memory planner against measured peaks: one stacking task, one warping task, a worker."""

from __future__ import annotations

import tracemalloc

import dask
import dask.array as da
import numpy as np
import pytest

import coaddx
from coaddx.errors import ConfigError
from coaddx.plan import (
    WORKER_SAFE_FRACTION,
    plan_stack,
    task_budget,
    task_bytes,
    warp_task_bytes,
    worker_bytes,
)
from coaddx.testing import random_warps as make_warps

N_VISITS, S = 24, 128


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "w.zarr"
    coaddx.write_warps(make_warps(N_VISITS, (2 * S, 2 * S), seed=5), path, chunk=S)
    return path


def _traced_peak(array: da.Array) -> int:
    """Peak bytes numpy allocated while computing ``array`` (once warm) on one thread."""
    array.compute(scheduler="sync")  # compile the kernels first
    tracemalloc.start()
    try:
        array.compute(scheduler="sync")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _first_block(warps, statistic="meanclip", **kwargs) -> da.Array:
    config = coaddx.AssembleConfig(statistic=statistic, interp=None, subregion_size=S)
    coadd = coaddx.assemble(warps, config, **kwargs)
    return coadd["image"].data.blocks[0, 0]


@pytest.mark.parametrize("statistic", ["mean", "meanclip", "median"])
def test_task_bytes_bounds_a_stacking_task_read_from_the_store(store, statistic):
    peak = _traced_peak(_first_block(coaddx.open_warps(store), statistic))
    planned = task_bytes(N_VISITS, S, S)
    block = 12 * N_VISITS * S * S  # image f4 + variance f4 + mask i4
    print(
        f"{statistic}: measured {peak / 2**20:.2f} MiB, planned {planned / 2**20:.2f} MiB, "
        f"input block {block / 2**20:.2f} MiB"
    )
    assert block <= peak <= planned
    assert peak >= 0.45 * planned  # the plan is not wasteful either


@pytest.mark.parametrize("how", ["rechunk", "alt_masks"])
def test_task_bytes_bounds_tasks_with_extra_copies(store, how):
    if how == "rechunk":  # storage chunks smaller than the subregion: pieces + concatenation
        warps = coaddx.open_warps(store, chunks={"visit": 1, "y": S // 2, "x": S // 2})
        block = _first_block(warps)
    else:
        alt = np.zeros((N_VISITS, 2 * S, 2 * S), np.int32)
        alt[:, ::7, ::5] = 1 << 9
        block = _first_block(
            coaddx.open_warps(store), alt_masks=da.from_array(alt, chunks=(N_VISITS, S, S))
        )
    peak = _traced_peak(block)
    print(
        f"{how}: measured {peak / 2**20:.2f} MiB, planned "
        f"{task_bytes(N_VISITS, S, S) / 2**20:.2f} MiB"
    )
    assert 12 * N_VISITS * S * S < peak <= task_bytes(N_VISITS, S, S)


def test_warp_task_bytes_bounds_a_warping_task(tmp_path):
    from coaddx.io.zarr.warp_store import read_patch
    from coaddx.model.masks import mask_planes
    from coaddx.warp.config import ModelPsfMatchConfig, WarpConfig
    from coaddx.warp.inputs import warp_inputs
    from coaddx.warp.make_warps import open_warp_store
    from coaddx.warp.visit import warp_visit

    sim = coaddx.simulate(
        tmp_path / "sim",
        n_visits=1,
        shape=(384, 384),
        seed=3,
        calexps=True,
        artifacts=False,
        n_stars=30,
        n_galaxies=5,
    )
    patch = read_patch(sim.warps)
    items = warp_inputs(sim.calexps)
    store = open_warp_store(
        tmp_path / "w.zarr", patch, mask_planes(), "direct", ModelPsfMatchConfig()
    )
    slots = store.reserve([items[0].visit, 1])
    warp_visit(items, patch, WarpConfig(), str(store.path), {"direct": slots[items[0].visit]})
    tracemalloc.start()
    try:
        result = warp_visit(items, patch, WarpConfig(), str(store.path), {"direct": slots[1]})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "records" in result, result.get("error")
    planned = warp_task_bytes(patch.shape, [i.shape for i in items])
    print(
        f"warp of {len(items)} detector(s) onto {patch.shape}: measured "
        f"{peak / 2**20:.2f} MiB, planned {planned / 2**20:.2f} MiB"
    )
    assert 12 * patch.shape[0] * patch.shape[1] < peak <= planned
    assert peak >= 0.4 * planned


def test_task_budget_keeps_a_worker_under_the_safe_fraction():
    limit, shape = 1 << 30, (2048, 2048)
    budget = task_budget(limit, threads=2, shape=shape, n_workers=2)
    plan = plan_stack(200, shape, budget_bytes=budget, storage_chunk=512)
    planned = worker_bytes(plan, threads=2, n_workers=2, baseline=320 * 2**20)
    assert plan.task_bytes <= budget
    assert planned <= WORKER_SAFE_FRACTION * limit
    assert task_budget(4 * limit, threads=2, shape=shape, n_workers=2) > 4 * budget
    with pytest.raises(ConfigError, match="leaves nothing for stacking"):
        task_budget(300 * 2**20, threads=1, shape=shape)


def test_worker_peak_stays_within_the_plan(tmp_path):
    """A process worker with a memory limit stacks a store 4x its per-task budget x threads:
    the measured peak RSS stays within worker_bytes and nothing is spilled."""
    from distributed import Client, LocalCluster

    from coaddx.runtime.cluster import WorkerMemory, worker_resources

    n, shape, budget = 32, (768, 768), 24 * 2**20
    coaddx.write_warps(make_warps(n, shape, seed=8), tmp_path / "w.zarr", chunk=128)
    limit = 1536 * 2**20
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            memory_limit=limit,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        warm = coaddx.assemble(make_warps(4, (64, 64)))  # load the kernels into the worker
        dask.compute(warm["image"].data)
        threads, mem_limit = next(iter(worker_resources(client).values()))
        assert budget <= task_budget(mem_limit, threads=threads, shape=shape)
        with dask.config.set({"coaddx.memory-per-task": budget}):
            coadd = coaddx.assemble(coaddx.open_warps(tmp_path / "w.zarr"))
        plan = plan_stack(n, shape, budget_bytes=budget, storage_chunk=128)
        with WorkerMemory(client) as workers:
            dask.compute(*(coadd[v].data for v in ("image", "variance", "mask", "n_image")))
    (peak,) = workers.peaks.values()
    planned = worker_bytes(plan, threads=threads, baseline=peak.baseline)
    print(
        f"worker: baseline {peak.baseline / 2**20:.0f} MiB, peak {peak.peak / 2**20:.0f} MiB, "
        f"planned {planned / 2**20:.0f} MiB ({plan.n_tasks} tasks of "
        f"{plan.task_bytes / 2**20:.1f} MiB, store {12 * n * shape[0] * shape[1] / 2**20:.0f} MiB)"
    )
    assert plan.n_tasks >= 16
    assert peak.added > plan.task_bytes // 4  # the sampler saw the work
    assert peak.peak <= planned
    assert peak.spilled == 0 and mem_limit == limit


def test_worker_memory_samples_each_in_process_worker():
    """Workers of an in-process cluster share one module: each gets its own sampler (two
    workers once overwrote one key and the second stop raised KeyError)."""
    from distributed import Client, LocalCluster

    from coaddx.runtime.cluster import _SAMPLERS, WorkerMemory

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        with WorkerMemory(client) as workers:
            assert len([k for k in _SAMPLERS if k.startswith(workers.key)]) == 2
            dask.compute(dask.delayed(sum)(range(1000)))
    assert len(workers.peaks) == 2
    assert all(p.peak >= p.baseline > 0 for p in workers.peaks.values())
    assert not any(k.startswith(workers.key) for k in _SAMPLERS)
