"""Scaling of a meanclip assemble with workers and per-worker memory budgets.

    python benchmarks/bench_scaling.py [--visits 320] [--size 2048] [--chunk 128] [--out bench-out]

The same AssembleCoadd (3-sigma MEANCLIP, interpolation over NO_DATA, written to a Zarr coadd
store) runs on a ``LocalCluster`` of 1 and 2 single-threaded worker processes whose memory limit
is 1 GiB and 4 GiB each. The per-task budget comes from the worker limit
(:func:`coaddx.plan.task_budget`: the planned worker stays under 60 % of its limit, below
dask's spill threshold). The store (synthesised once into ``bench-out/``: noisy images with a
static sky, outliers and masks; noisy variance planes) is several times larger than the
workers' total memory; it is read once before the runs so that all start from a warm page
cache. For each run the table gives the time, the throughput, the speed-up
from 1 to 2 workers, and the measured peak RSS of each worker beside the plan and the limit;
the script fails if a worker's peak exceeds its limit, a key was spilled to disk, a worker was
lost, or the coadds of the runs differ.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import numpy as np

import coaddx
from coaddx.io.zarr.warp_store import WarpStore
from coaddx.plan import plan_stack, task_budget, worker_bytes
from coaddx.runtime.cluster import WorkerMemory, local, worker_resources
from coaddx.runtime.diagnostics import format_bytes
from coaddx.warp.weights import visit_weight_stats

GIB = 2**30


def _sky(size: int, rng: np.random.Generator) -> np.ndarray:
    """A static sky: a few thousand Gaussian stars on a flat background (nJy)."""
    sky = np.zeros((size, size), np.float32)
    n = size * size // 2000
    ys, xs = rng.integers(8, size - 8, n), rng.integers(8, size - 8, n)
    flux = rng.lognormal(6.0, 1.2, n).astype(np.float32)
    yy, xx = np.mgrid[-6:7, -6:7]
    psf = np.exp(-(yy**2 + xx**2) / (2 * 1.8**2)).astype(np.float32)
    psf /= psf.sum()
    for y, x, f in zip(ys, xs, flux, strict=True):
        sky[y - 6 : y + 7, x - 6 : x + 7] += f * psf
    return sky


def _visit(index: int, sky: np.ndarray, planes: dict[str, int], seed: int):
    rng = np.random.default_rng([seed, index])
    size = sky.shape[0]
    sigma = np.float32(rng.uniform(8.0, 14.0))
    image = sky + sigma * rng.standard_normal(sky.shape, dtype=np.float32)
    hits = rng.integers(0, size * size, size * size // 2000)  # cosmic rays and junk
    image.flat[hits] += rng.uniform(200, 5000, hits.size).astype(np.float32)
    variance = sigma**2 * (1 + 0.05 * rng.standard_normal(sky.shape, dtype=np.float32))
    variance = np.abs(variance) + np.abs(sky) * np.float32(0.01)
    mask = np.zeros(sky.shape, np.int32)
    mask.flat[rng.integers(0, size * size, size * size // 5000)] |= 1 << planes["BAD"]
    mask.flat[hits] |= 1 << planes["CR"]
    edge = int(rng.integers(0, 24))  # a dithered edge without data
    mask[:, :edge] = 1 << planes["NO_DATA"]
    image[:, :edge] = np.nan
    variance[:, :edge] = np.nan
    return image, variance, mask


def make_store(path: Path, visits: int, size: int, chunk: int, seed: int = 1) -> Path:
    """Synthesise the warp store (once): visits written in parallel into reserved slots."""
    if (path / "direct" / "zarr.json").exists() and len(WarpStore(path).visits) == visits:
        return path
    print(f"writing {visits} visits of {size} x {size} (chunks {chunk}) to {path} ...", flush=True)
    t0 = time.perf_counter()
    planes = coaddx.mask_planes()
    wcs = coaddx.Patch.from_wcs(_tan_wcs(size), (size, size)).wcs_header()
    store = WarpStore.create(
        path, shape=(size, size), mask_planes=planes, wcs=wcs, chunk=chunk, overwrite=True
    )
    sky = _sky(size, np.random.default_rng(seed))
    ids = list(range(1000, 1000 + visits))
    slots = store.reserve(ids)

    def write(visit: int) -> dict:
        image, variance, mask = _visit(visit, sky, planes, seed)
        stats = visit_weight_stats(variance, mask, planes)
        pixels = store.write_slot(slots[visit], image, variance, mask, weight_stats=stats)
        return {"visit": visit, "band": "r", "psf_fwhm": 4.2, **pixels}

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        records = list(pool.map(write, ids))
    store.commit(records)
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def _tan_wcs(size: int):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [size / 2 + 1, size / 2 + 1]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _warm_page_cache(path: Path) -> None:
    """Read every file of the store once, so that every run starts from the same (warm) page
    cache instead of the first one paying for the disk."""
    t0, n = time.perf_counter(), 0
    for f in path.rglob("*"):
        if f.is_file():
            with f.open("rb", buffering=0) as fh:
                while block := fh.read(1 << 22):
                    n += len(block)
    dt = time.perf_counter() - t0
    print(
        f"read the store once to warm the page cache: {format_bytes(n)} in {dt:.1f} s "
        f"({n / dt / 1e9:.1f} GB/s)",
        flush=True,
    )


def _warm_up() -> None:
    from coaddx.kernels.stack.block import stack_block

    cube = np.ones((3, 8, 8), np.float32)
    stack_block(
        cube, cube, np.zeros(cube.shape, np.int32), np.ones(3), statistic="meanclip", bad_mask=1
    )


def run(store: Path, out: Path, workers: int, limit: int) -> dict:
    """One assemble on ``workers`` single-threaded worker processes of ``limit`` bytes each."""
    with local(workers, 1, processes=True, memory_limit=limit, dashboard=False) as client:
        client.run(_warm_up)
        (threads, mem_limit), *_ = worker_resources(client).values()
        n, ny, nx = (
            coaddx.open_warps(store, chunks="storage").sizes[d] for d in ("visit", "y", "x")
        )
        budget = task_budget(mem_limit, threads=threads, shape=(ny, nx), n_workers=workers)
        with dask.config.set({"coaddx.memory-per-task": budget}):
            coadd = coaddx.assemble(coaddx.open_warps(store))
        plan = plan_stack(
            n,
            (ny, nx),
            budget_bytes=budget,
            storage_chunk=coaddx.open_warps(store, chunks="storage")["image"].data.chunksize[1],
        )
        before = set(worker_resources(client))
        t0 = time.perf_counter()
        with WorkerMemory(client) as mem:
            coaddx.write_coadd(coadd, out, overwrite=True)
        seconds = time.perf_counter() - t0
        lost = before - set(worker_resources(client))
        client.cluster.close()
    image = coaddx.open_coadd(out)["image"].values
    return {
        "workers": workers,
        "limit": limit,
        "seconds": seconds,
        "plan": plan,
        "mem": mem,
        "lost": lost,
        "mpv": n * ny * nx / 1e6,
        "digest": hashlib.sha1(np.ascontiguousarray(image).view(np.uint8)).hexdigest()[:12],
        "planned": worker_bytes(
            plan,
            threads=threads,
            n_workers=workers,
            baseline=max(p.baseline for p in mem.peaks.values()),
        ),
    }


def report(rows: list[dict]) -> list[str]:
    """Print the table; return the failed checks."""
    print(
        f"\n{'workers':>7} {'limit':>9} {'subregion':>10} {'tasks':>5} {'per task':>9} "
        f"{'seconds':>8} {'Mpix-vis/s':>10} {'speed-up':>8} {'peak/worker':>11} "
        f"{'planned':>9} {'spilled':>7}"
    )
    failed = []
    for r in rows:
        base = next(b for b in rows if b["limit"] == r["limit"] and b["workers"] == 1)
        plan, mem = r["plan"], r["mem"]
        peak = mem.max_peak
        print(
            f"{r['workers']:>7} {format_bytes(r['limit']):>9} {plan.subregion[0]:>10} "
            f"{plan.n_tasks:>5} {format_bytes(plan.task_bytes):>9} {r['seconds']:>8.1f} "
            f"{r['mpv'] / r['seconds']:>10.0f} {base['seconds'] / r['seconds']:>8.2f} "
            f"{format_bytes(peak):>11} {format_bytes(r['planned']):>9} {mem.spilled:>7}"
        )
        if peak > r["limit"]:
            failed.append(
                f"{r['workers']} worker(s), {format_bytes(r['limit'])}: peak "
                f"{format_bytes(peak)} exceeds the limit"
            )
        if mem.spilled or r["lost"] or len(mem.peaks) != r["workers"]:
            failed.append(
                f"{r['workers']} worker(s), {format_bytes(r['limit'])}: spilled "
                f"{mem.spilled} keys, lost workers {sorted(r['lost'])}"
            )
    if len({r["digest"] for r in rows}) != 1:
        failed.append(f"the coadds differ between runs: {[r['digest'] for r in rows]}")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=320)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=128, help="storage chunk of the store")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--limits", type=float, nargs="+", default=[1, 4], help="memory limit per worker, GiB"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    if 1 not in args.workers:
        parser.error("--workers must include 1 (the speed-up baseline)")
    store = make_store(
        args.out / f"scaling-{args.visits}x{args.size}-c{args.chunk}.zarr",
        args.visits,
        args.size,
        args.chunk,
    )
    n = args.visits * args.size**2
    print(
        f"store {store}: {args.visits} visits x {args.size} x {args.size}, "
        f"{format_bytes(12 * n)} of pixels ({format_bytes(_du(store))} on disk)"
    )
    _warm_page_cache(store)
    rows = []
    for limit in args.limits:
        for workers in args.workers:
            r = run(store, args.out / "scaling-coadd.zarr", workers, int(limit * GIB))
            total = workers * r["limit"]
            print(
                f"  {workers} worker(s) x {format_bytes(r['limit'])}: {r['seconds']:.1f} s; "
                f"store / total worker memory = {12 * n / total:.1f}",
                flush=True,
            )
            rows.append(r)
    failed = report(rows)
    for message in failed:
        print("FAILED:", message)
    if not failed:
        print(
            "\nevery worker stayed within its memory limit, nothing was spilled, no worker "
            "was lost, and all runs wrote the same coadd"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
