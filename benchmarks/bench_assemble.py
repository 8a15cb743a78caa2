"""Benchmark AssembleCoadd stacking against numpy, bottleneck and astropy in the same run.

    python benchmarks/bench_assemble.py [--visits 64] [--size 2048] [--out bench-out]

coaddx reads the cube from a Zarr warp store (simulated once and reused) and stacks it with
mean, meanclip and median on the default threaded scheduler; the references run on the cube in
memory: (a) a numpy masked weighted mean and ``bottleneck.nanmedian``, (b)
``astropy.stats.sigma_clip`` + mean. The references are timed on a slab of rows (their
throughput per pixel-visit does not depend on the slab size, and the full cube would not fit
astropy's working copies in memory); every figure is a rate in Mpix-visits/s, with the ratio
to each reference and the peak memory beside the planner's budget.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import warnings
from pathlib import Path

import dask
import numpy as np

import coaddx
from coaddx.coadd.config import AssembleConfig
from coaddx.coadd.weights import weight_statistic
from coaddx.runtime.diagnostics import PeakMemory, format_bytes
from coaddx.runtime.malloc import tune_malloc


def _store(out: Path, visits: int, size: int) -> Path:
    path = out / f"sim-{visits}x{size}"
    if not (path / "warps.zarr").exists():
        print(f"simulating {visits} visits of {size} x {size} into {path} (once) ...", flush=True)
        t0 = time.perf_counter()
        coaddx.simulate(
            path, n_visits=visits, shape=(size, size), seed=42, calexps=False, overwrite=True
        )
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return path / "warps.zarr"


def _timed(fn, repeat):
    """Best wall time of ``repeat`` runs (the machine is shared and noisy) and the largest
    memory any run added."""
    best, peak = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        best = min(best, dt)
        peak = mem if peak is None or mem.added > peak.added else peak
    return best, peak, None


def _touch(block):
    return np.zeros((1,) * block.ndim, dtype=np.int8)


def _read_once(warps):
    """Read every plane of the cube once through the same reader the stack uses."""
    arrays = [
        warps[v].data.map_blocks(_touch, dtype=np.int8, chunks=(1, 1, 1))
        for v in ("image", "variance", "mask")
    ]
    return dask.compute(*arrays)


def _coaddx(warps, statistic):
    coadd = coaddx.assemble(warps, AssembleConfig(statistic=statistic, interp=None))
    return dask.compute(
        coadd["image"].data, coadd["variance"].data, coadd["mask"].data, coadd["n_image"].data
    )


def _ref_numpy_mean(image, variance, mask, weights, bad):
    good = np.isfinite(image) & ((mask & bad) == 0)
    w = np.where(good, weights[:, None, None], 0.0)
    x = np.where(good, image, 0.0)
    sw = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * x).sum(axis=0) / sw, (w * w * np.where(good, variance, 0)).sum(axis=0) / sw**2


def _ref_bottleneck_median(image, mask, bad):
    import bottleneck as bn

    x = np.where((mask & bad) == 0, image, np.nan)
    return bn.nanmedian(x, axis=0)


def _ref_astropy_clip(image, mask, bad):
    from astropy.stats import sigma_clip

    x = np.ma.masked_array(image, mask=((mask & bad) != 0) | ~np.isfinite(image))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = sigma_clip(x, sigma=3.0, maxiters=2, axis=0, cenfunc="median", stdfunc="std")
    return clipped.mean(axis=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=64)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--slab", type=int, default=256, help="rows of the cube the references use")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best is shown)")
    parser.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="leave glibc malloc at its defaults (see coaddx.runtime.malloc.tune_malloc)",
    )
    args = parser.parse_args(argv)
    if not args.no_malloc_tuning:
        print(f"glibc malloc tuned: {tune_malloc()}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = _store(args.out, args.visits, args.size)
    warps = coaddx.open_warps(path)
    n, ny, nx = (warps.sizes[d] for d in ("visit", "y", "x"))
    work = n * ny * nx / 1e6
    threads = os.cpu_count() or 1
    plan = coaddx.assemble(warps).attrs["plan"]
    checked = (path / "direct" / "chunk_manifests").is_dir()
    print(f"chunk checksums in the store: {'yes' if checked else 'no (an older store)'}")
    print(
        f"cube: {n} visits x {ny} x {nx} = {work:.0f} Mpix-visits "
        f"({format_bytes(n * ny * nx * 12)}), store {path}"
    )
    print(
        f"plan: subregions {plan['subregion']}, {format_bytes(plan['task_bytes'])} per task, "
        f"budget {format_bytes(plan['budget_bytes'])} per task x {threads} threads\n"
    )

    rows = []
    for stat in ("mean", "meanclip", "median"):  # load the compiled kernels
        _coaddx(warps.isel(x=slice(0, 64), y=slice(0, 64)), stat)
    _read_once(warps)  # warm the page cache: every figure below is a warm read
    dt, mem, _ = _timed(lambda: _read_once(warps), args.repeat)
    rows.append(("read cube once (coaddx store)", dt, work, mem))
    for stat in ("mean", "meanclip", "median"):
        dt, mem, _ = _timed(lambda stat=stat: _coaddx(warps, stat), args.repeat)
        rows.append((f"coaddx {stat}", dt, work, mem))
    # The cost of the chunk checksums (CRC-32C of every chunk as it is read): the same read
    # and meanclip with the check off (coaddx.verify-chunks; a store written before the
    # manifests is never checked, so this compares equal work only on a fresh store).
    with dask.config.set({"coaddx.verify-chunks": False}):
        dt, mem, _ = _timed(lambda: _read_once(warps), args.repeat)
        rows.append(("read cube once, CRC off", dt, work, mem))
        dt, mem, _ = _timed(lambda: _coaddx(warps, "meanclip"), args.repeat)
        rows.append(("coaddx meanclip, CRC off", dt, work, mem))

    slab = warps.isel(y=slice(0, args.slab)).compute()
    image, variance, mask = (slab[v].values for v in ("image", "variance", "mask"))
    bad = sum(1 << coaddx.mask_planes()[p] for p in ("NO_DATA", "BAD", "SAT", "EDGE"))
    key = weight_statistic(AssembleConfig()).key
    weights = 1.0 / slab["variance_meanclip"].sel(weight_key=key).values
    swork = image.size / 1e6
    for name, fn in (
        (
            "numpy masked weighted mean",
            lambda: _ref_numpy_mean(image, variance, mask, weights, bad),
        ),
        ("bottleneck.nanmedian (1 core)", lambda: _ref_bottleneck_median(image, mask, bad)),
        ("astropy sigma_clip + mean", lambda: _ref_astropy_clip(image, mask, bad)),
    ):
        dt, mem, _ = _timed(fn, args.repeat)
        rows.append((name, dt, swork, mem))

    rate = {name: w / dt for name, dt, w, _ in rows}
    print(f"{'what':34s} {'seconds':>8s} {'Mpix-vis/s':>11s} {'peak +RSS':>10s}")
    for name, dt, w, mem in rows:
        print(f"{name:34s} {dt:8.2f} {w / dt:11.0f} {format_bytes(mem.added):>10s}")
    read = rate["read cube once (coaddx store)"]
    print("\nratios (rates; > 1 means coaddx is faster):")
    checks = [
        (
            "meanclip / astropy sigma_clip+mean",
            rate["coaddx meanclip"] / rate["astropy sigma_clip + mean"],
            8.0,
        ),
        (
            "median / bottleneck.nanmedian",
            rate["coaddx median"] / rate["bottleneck.nanmedian (1 core)"],
            3.0,
        ),
        (
            "mean / numpy masked weighted mean",
            rate["coaddx mean"] / rate["numpy masked weighted mean"],
            None,
        ),
        ("mean time / read-once time", read / rate["coaddx mean"], None),
        (
            "CRC cost: read time, on / off",
            rate["read cube once, CRC off"] / read,
            None,
        ),
        (
            "CRC cost: meanclip time, on / off",
            rate["coaddx meanclip, CRC off"] / rate["coaddx meanclip"],
            None,
        ),
    ]
    for name, value, target in checks:
        goal = f"(target >= {target:g})" if target else ""
        print(f"  {name:38s} {value:6.2f} {goal}")
    print(f"  {'mean time / read time target':38s} {'<= 1.5':>6s}")
    planned = plan["task_bytes"] * threads
    peak = max(m.added for name, _, _, m in rows if name.startswith("coaddx"))
    print(
        f"\npeak memory added by a coaddx stack: {format_bytes(peak)}; planned "
        f"{threads} tasks x {format_bytes(plan['task_bytes'])} = {format_bytes(planned)} "
        f"(budget {format_bytes(plan['budget_bytes'] * threads)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
