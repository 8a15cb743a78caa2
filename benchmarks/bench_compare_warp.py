"""Benchmark CompareWarp end to end: template, detection, filtering and the final coadd.

    python benchmarks/bench_compare_warp.py [--visits 32] [--size 2048] [--out bench-out]

Input (made once under ``--out`` and reused): a simulated patch (``coaddx.simulate``, direct
warps, Moffat PSFs, artifacts) and its PSF-matched warps, derived from the direct warps with
the engine's ModelPsfMatch (``coaddx.warp.psf_match_warp``: the kernel that takes each visit's
PSF to the 7.7 px double-Gaussian model), written as the store's ``psf_matched`` group.

Two runs on the default threaded scheduler, both writing the coadd store:

* by stage: each stage's arrays are persisted before the next is built (template + its bright
  footprints; ScaleVariance; per-visit difference detection; footprint labelling, epoch count
  and filtering; final MEAN stack + write), giving seconds per stage;
* end to end: the one lazy graph a user writes with ``write_coadd`` (what ``coaddx assemble
  --method compare-warp`` runs).

Throughput is pixel-visits of the direct cube per second (visits x rows x columns); peak
memory is the resident memory of the process (``coaddx.diagnostics.PeakMemory``).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import time
from pathlib import Path

import dask
import numpy as np

import coaddx
from coaddx.coadd.compare_warp.assemble import compare_warp_coadd
from coaddx.coadd.compare_warp.stages import compare_warp_stages
from coaddx.io.zarr.warp_store import WarpStore
from coaddx.runtime.diagnostics import PeakMemory, Stages, format_bytes
from coaddx.runtime.malloc import tune_malloc
from coaddx.sim.simulate import psf_image
from coaddx.warp.psf_matched import psf_match_warp
from coaddx.warp.weights import visit_weight_stats


def _psf_matched(store: Path) -> None:
    """Write the psf_matched group: every direct visit ModelPsfMatch-ed to the 7.7 px model."""
    direct = coaddx.open_warps(store, chunks="storage")
    planes = direct.attrs["mask_planes"]
    ny, nx = direct.sizes["y"], direct.sizes["x"]
    attrs = {k: direct.attrs[k] for k in ("tract", "patch", "bbox") if k in direct.attrs}
    ws = WarpStore.create(
        store,
        warp_type="psf_matched",
        shape=(ny, nx),
        mask_planes=planes,
        wcs=direct.attrs.get("wcs"),
        x=direct["x"].values,
        y=direct["y"].values,
        attrs={**attrs, "model_psf_fwhm": 7.7},
        chunk=int(direct["image"].data.chunksize[1]),
        overwrite=True,
    )
    for i, visit in enumerate(direct["visit"].values):
        one = direct.isel(visit=i)
        img, var, msk = psf_match_warp(
            one["image"].values,
            one["variance"].values,
            one["mask"].values,
            psf_image(float(one["psf_fwhm"]), "moffat"),
            planes,
            region=1024,
        )
        stats = visit_weight_stats(np.asarray(var, np.float32), msk.astype(np.int32), planes)
        ws.append_visit(
            int(visit), img, var, msk, {"psf_fwhm": float(one["psf_fwhm"])}, weight_stats=stats
        )
        print(f"  psf-matched visit {i + 1}/{direct.sizes['visit']}", flush=True)
    ws.close({"operation": "bench_compare_warp: psf_match_warp of the direct warps"})


def _store(out: Path, visits: int, size: int) -> Path:
    path = out / f"cw-{visits}x{size}"
    store = path / "warps.zarr"
    if not (store / "direct" / "zarr.json").exists():
        print(f"simulating {visits} visits of {size} x {size} into {path} (once) ...", flush=True)
        t0 = time.perf_counter()
        coaddx.simulate(
            path, n_visits=visits, shape=(size, size), seed=42, calexps=False, overwrite=True
        )
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    if (
        not (store / "psf_matched" / "zarr.json").exists()
        or coaddx.check_store(store, "psf_matched").n_committed != visits
    ):
        print("PSF-matching the direct warps (ModelPsfMatch, once) ...", flush=True)
        t0 = time.perf_counter()
        _psf_matched(store)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return store


def _by_stage(store: Path, dest: Path) -> tuple[Stages, PeakMemory, coaddx.CompareWarpConfig]:
    stages = Stages()

    def persist(name, arrays):
        with stages(name):
            return dask.persist(*arrays)

    gc.collect()
    with PeakMemory() as mem:
        direct = coaddx.open_warps(store)
        matched = coaddx.open_warps(store, "psf_matched")
        coadd = compare_warp_coadd(compare_warp_stages(direct, matched, stage=persist))
        with stages("final coadd + write"):
            coaddx.write_coadd(coadd, dest, overwrite=True)
    return stages, mem, coadd


def _end_to_end(store: Path, dest: Path) -> tuple[float, PeakMemory]:
    gc.collect()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        coadd = coaddx.assemble_compare_warp(
            coaddx.open_warps(store), coaddx.open_warps(store, "psf_matched")
        )
        coaddx.write_coadd(coadd, dest, overwrite=True)
        dt = time.perf_counter() - t0
    return dt, mem


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=32)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    print(f"glibc malloc tuned: {tune_malloc()}")
    args.out.mkdir(parents=True, exist_ok=True)
    store = _store(args.out, args.visits, args.size)
    work = args.visits * args.size * args.size / 1e6
    dest = args.out / f"cw-{args.visits}x{args.size}" / "coadd.zarr"
    threads = os.cpu_count() or 1
    print(
        f"\nCompareWarp, {args.visits} visits x {args.size} x {args.size} "
        f"({work:.0f} Mpix-visits), threaded scheduler, {threads} cores"
    )
    stages, mem, coadd = _by_stage(store, dest)
    print(f"\n{'stage':<24} {'seconds':>8} {'Mpix-visits/s':>14}")
    for name, seconds in stages.times.items():
        print(f"{name:<24} {seconds:8.1f} {work / seconds:14.1f}")
    print(f"{'total (by stage)':<24} {stages.total:8.1f} {work / stages.total:14.1f}")
    print(
        f"peak memory (by stage): {format_bytes(mem.peak)} "
        f"(+{format_bytes(mem.added)} during the run); plan "
        f"{coadd.attrs['plan']['subregion']} subregions"
    )
    dt, mem2 = _end_to_end(store, dest)
    print(f"{'end to end (one graph)':<24} {dt:8.1f} {work / dt:14.1f}")
    print(
        f"peak memory (end to end): {format_bytes(mem2.peak)} "
        f"(+{format_bytes(mem2.added)} during the run)"
    )
    out = coaddx.open_coadd(dest)
    clipped = out["artifact_mask"].data.mean().compute()
    print(
        f"\nclipped: {float(clipped):.3%} of pixel-visits; epoch count max "
        f"{int(out['epoch_count'].max())}; ScaleVariance factors "
        f"{np.round(out['variance_scale'].values.min(), 2)}-"
        f"{np.round(out['variance_scale'].values.max(), 2)}"
    )
    shutil.rmtree(dest, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
