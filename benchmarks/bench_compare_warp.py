"""Benchmark CompareWarp end to end: template, detection, filtering and the final coadd.

    python benchmarks/bench_compare_warp.py [--visits 8 16 32 64] [--size 1024] [--repeat 2]
        [--by-stage] [--out bench-out]

Input (made once under ``--out`` and reused): a simulated patch (``coaddx.simulate``, direct
warps, Moffat PSFs, artifacts) and its PSF-matched warps, derived from the direct warps with
the engine's ModelPsfMatch (``coaddx.warp.psf_match_warp``: the kernel that takes each visit's
PSF to the 7.7 px double-Gaussian model), written as the store's ``psf_matched`` group.

For each visit count, in a process of its own (so that its peak memory is its own), on the
default threaded scheduler, every run writing the coadd store:

* the peer: a plain MEANCLIP coadd (``coaddx.assemble``) of the same direct warps;
* end to end: the one lazy graph a user writes with ``write_coadd`` (what ``coaddx assemble
  --method compare-warp`` runs), with its task count;
* with ``--by-stage``: each stage's arrays are persisted before the next is built (template
  + its bright footprints; ScaleVariance; per-visit difference detection; footprint
  labelling, epoch count and filtering; final MEAN stack + write), giving seconds per stage.

The table gives the best time of ``--repeat`` runs of each, CompareWarp's time as a multiple
of the peer's (the target: <= 4x) and the peak resident memory of the process
(``coaddx.diagnostics.PeakMemory``), which should not grow with the number of visits.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np

import coaddx
from coaddx.coadd.compare_warp.assemble import compare_warp_coadd
from coaddx.coadd.compare_warp.stages import compare_warp_stages
from coaddx.coadd.config import AssembleConfig
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


def _by_stage(store: Path, dest: Path) -> tuple[Stages, PeakMemory, Any]:
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


def _plain(store: Path, dest: Path) -> tuple[float, PeakMemory]:
    """The peer: a plain MEANCLIP coadd (AssembleCoadd's defaults) of the same direct warps."""
    gc.collect()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        coadd = coaddx.assemble(coaddx.open_warps(store), AssembleConfig(statistic="meanclip"))
        coaddx.write_coadd(coadd, dest, overwrite=True)
        dt = time.perf_counter() - t0
    return dt, mem


def _tasks(coadd: Any) -> int:
    """Tasks of the optimised graph that computes every plane of ``coadd``."""
    arrays = [coadd[v].data for v in coadd.data_vars if dask.is_dask_collection(coadd[v])]
    return len(dask.base.collections_to_expr(arrays, optimize_graph=True).__dask_graph__())


def _end_to_end(store: Path, dest: Path) -> tuple[float, PeakMemory, int]:
    gc.collect()
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        coadd = coaddx.assemble_compare_warp(
            coaddx.open_warps(store), coaddx.open_warps(store, "psf_matched")
        )
        tasks = _tasks(coadd)
        coaddx.write_coadd(coadd, dest, overwrite=True)
        dt = time.perf_counter() - t0
    return dt, mem, tasks


def _one(args: argparse.Namespace, visits: int) -> dict[str, float]:
    """Both runs for one visit count (best of ``--repeat``); the figures as a dict."""
    store = _store(args.out, visits, args.size)
    dest = args.out / f"cw-{visits}x{args.size}" / "coadd.zarr"
    work = visits * args.size * args.size / 1e6
    if args.by_stage:
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
    # warm both (numba caches, imports), then best of --repeat, interleaved
    _plain(store, dest)
    plain, peer_peak, cw, cw_peak, tasks = [], 0, [], 0, 0
    for _ in range(args.repeat):
        dt, mem = _plain(store, dest)
        plain.append(dt)
        peer_peak = max(peer_peak, mem.peak)
        dt, mem, tasks = _end_to_end(store, dest)
        cw.append(dt)
        cw_peak = max(cw_peak, mem.peak)
    out = coaddx.open_coadd(dest)
    clipped = float(out["artifact_mask"].data.mean().compute())
    shutil.rmtree(dest, ignore_errors=True)
    return {
        "visits": visits,
        "plain_s": min(plain),
        "cw_s": min(cw),
        "plain_peak": peer_peak,
        "cw_peak": cw_peak,
        "tasks": tasks,
        "clipped": clipped,
    }


def _table(rows: list[dict[str, float]], size: int) -> None:
    print(
        f"\nCompareWarp end to end vs a plain MEANCLIP coadd of the same direct warps, "
        f"{size} x {size}, threaded scheduler, {os.cpu_count() or 1} cores (best of runs)"
    )
    print(
        f"{'visits':>6} {'MEANCLIP s':>10} {'CompareWarp s':>13} {'ratio':>6} "
        f"{'tasks':>6} {'peak MiB (MEANCLIP)':>19} {'peak MiB (CompareWarp)':>22} {'clipped':>8}"
    )
    for r in rows:
        print(
            f"{int(r['visits']):>6} {r['plain_s']:10.2f} {r['cw_s']:13.2f} "
            f"{r['cw_s'] / r['plain_s']:5.1f}x {int(r['tasks']):>6} "
            f"{r['plain_peak'] / 2**20:19.0f} {r['cw_peak'] / 2**20:22.0f} {r['clipped']:8.3%}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each (best is kept)")
    parser.add_argument("--by-stage", action="store_true", help="also time stage by stage")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:  # one visit count in this process: its peak memory is its own
        tune_malloc()
        print("RESULT " + json.dumps(_one(args, args.visits[0])), flush=True)
        return 0
    print(f"glibc malloc tuned: {tune_malloc()}")
    for visits in args.visits:  # simulated inputs first (once), outside the timed runs
        _store(args.out, visits, args.size)
    rows = []
    for visits in args.visits:
        cmd = [sys.executable, __file__, "--one", "--visits", str(visits), "--size"]
        cmd += [str(args.size), "--repeat", str(args.repeat), "--out", str(args.out)]
        cmd += ["--by-stage"] if args.by_stage else []
        print(f"\n{visits} visits ...", flush=True)
        run = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        for line in run.stdout.splitlines():
            if line.startswith("RESULT "):
                rows.append(json.loads(line[len("RESULT ") :]))
            else:
                print(line)
        _table(rows, args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
