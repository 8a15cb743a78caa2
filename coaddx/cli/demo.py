"""``coaddx demo``: simulate a patch, stack it, write the coadd, a quick-look PNG and a summary."""

from __future__ import annotations

import argparse
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from coaddx.cli.client import add_runtime_flags, open_client, write_coadd_with_progress
from coaddx.cli.precompile import Background
from coaddx.cli.quicklook import quicklook_png
from coaddx.cli.simulate import add_sim_flags
from coaddx.cli.summary import summary
from coaddx.coadd.assemble import assemble
from coaddx.coadd.config import AssembleConfig
from coaddx.coadd.psf import PSF_VARIABLES, coadd_psf_fwhm
from coaddx.io.zarr.coadd_store import open_coadd
from coaddx.kernels import compile_seconds, precompiled
from coaddx.runtime.cluster import compute_with_progress
from coaddx.runtime.diagnostics import PeakMemory, Stages, format_bytes
from coaddx.sim.simulate import simulate
from coaddx.warp.make_warps import make_warps
from coaddx.warp.store import open_warps

__all__ = ["add_parser", "epoch_rows", "psf_fwhm_map", "psf_rows", "run", "throughput_rows"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="simulate, stack and show a coadd end to end",
        description="Simulate a data set, stack it (3-sigma MEANCLIP), write the "
        "coadd, a quick-look PNG beside the plain per-visit mean, and a summary.",
    )
    p.add_argument(
        "out",
        type=Path,
        nargs="?",
        default=Path("coaddx-demo"),
        help="output directory (default: ./coaddx-demo)",
    )
    sim_flags = add_sim_flags(p)
    add_runtime_flags(p)
    p.add_argument(
        "--background-compile",
        action="store_true",
        help="on a first run (cold kernel cache) compile the later steps' kernels in a "
        "background process while the simulator runs (off by default: on 2 busy cores it "
        "made the first run slower; `coaddx precompile` once after install is the fast path)",
    )
    p.set_defaults(sim_flags=sim_flags)
    return p


def throughput_rows(
    pix_visits: int, stage_seconds: float, compiling: float, unseen: bool = False
) -> list[tuple[str, str]]:
    """The stacking throughput row: Mpix-visits per second of the stage *without* the seconds
    it spent compiling kernels (or waiting for the background compile). ``unseen``: the kernel
    cache was cold and the workers are other processes, whose compile time is not measured
    here, so no throughput is claimed."""
    work = stage_seconds - compiling
    rows = []
    if unseen:
        rows.append(("throughput", "not measured: first run, workers compiled kernels (run again)"))
    elif work < 0.2 * stage_seconds or work <= 0:
        rows.append(("throughput", "not measured: the stage was mostly compiling (run again)"))
    else:
        rows.append(
            (
                "throughput",
                f"{pix_visits / work / 1e6:.0f} Mpix-visits/s (meanclip, incl. read+write, "
                "excl. compiling)",
            )
        )
    return rows


def psf_fwhm_map(coadd: Any) -> Any:
    """:func:`coaddx.coadd_psf_fwhm` of a coadd with PSF products (None without them)."""
    if not all(name in coadd for name in PSF_VARIABLES):
        return None
    return coadd_psf_fwhm(coadd)


def psf_rows(fwhm: Any) -> list[tuple[str, str]]:
    """The summary row of the CoaddPsf FWHM map (its range over the patch)."""
    if fwhm is None:
        return []
    values = np.asarray(fwhm.values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return [("CoaddPsf FWHM", "no input covers the map's box centres")]
    return [
        (
            "CoaddPsf FWHM",
            f"{np.median(values):.2f} px median, {values.min():.2f}..{values.max():.2f} px over "
            f"the patch ({fwhm.sizes['y']} x {fwhm.sizes['x']} map)",
        )
    ]


def epoch_rows(coadd: Any) -> list[tuple[str, str]]:
    """The summary row of the epoch planes (first / last / weight-mean MJD of the inputs used
    at each pixel, the visit bitmap) when the coadd has them."""
    if "mean_mjd" not in coadd:
        return []
    first, last = (float(np.nanmin(coadd["first_mjd"])), float(np.nanmax(coadd["last_mjd"])))
    mean = coadd["mean_mjd"].values
    lo, hi = float(np.nanmin(mean)), float(np.nanmax(mean))
    used = int(np.asarray(coadd["contributed"]).sum()) if "contributed" in coadd else "?"
    return [
        (
            "epoch planes",
            f"inputs MJD {first:.2f}..{last:.2f}; weight-mean epoch {lo:.2f}..{hi:.2f} "
            f"over the patch; {used} visits contributed (bitmap in input_bitmap)",
        )
    ]


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    background = None
    cold = not precompiled()
    in_process = not (args.scheduler or args.processes)
    if cold and in_process and args.background_compile:
        # a cold cache: compile the warp and stack kernels beside the simulator
        background = Background(out / "precompile.log")
    try:
        return _demo(args, out, background, unseen=cold and not in_process)
    finally:
        if background is not None:
            background.close()


def _demo(args: argparse.Namespace, out: Path, background: Background | None, unseen: bool) -> int:
    progress = not args.no_progress
    stages = Stages()
    compiling: dict[str, float] = {}
    waits: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name: str, kernels: str | None = None) -> Iterator[None]:
        with stages(name):
            if background is not None and kernels is not None:
                waits[name] = background.wait_for(kernels)
            c0 = compile_seconds()
            yield
            compiling[name] = compile_seconds() - c0

    with PeakMemory() as mem:
        with stage("simulate"):
            sim = simulate(out / "sim", **{**args.sim_flags.values(args), "overwrite": True})
        with open_client(args) as client:
            store = sim.warps
            if sim.calexps:  # start from the calexps: warp them onto the patch
                store = out / "warps.zarr"
                if store.exists():
                    shutil.rmtree(store)
                with stage("warp (Lanczos-3)", "warp"):
                    make_warps(
                        sim.calexps,
                        sim.patch,
                        store,
                        compute=lambda *t: compute_with_progress(client, list(t), show=progress),
                    )
            warps = open_warps(store)
            with stage("assemble (meanclip)", "assemble"):
                coadd = assemble(warps, AssembleConfig(epoch_planes=True))
                write_coadd_with_progress(
                    client, coadd, out / "coadd.zarr", overwrite=True, progress=progress
                )
            with stage("per-visit mean"):
                plain = assemble(warps, AssembleConfig(statistic="mean", interp=None))
                mean_image = plain["image"].compute().values
        written = open_coadd(out / "coadd.zarr")
        n, ny, nx = (warps.sizes[d] for d in ("visit", "y", "x"))
        maps = {}
        if "mean_mjd" in written:
            maps["weight-mean epoch (MJD)"] = written["mean_mjd"].values
        fwhm = psf_fwhm_map(written)
        if fwhm is not None:
            maps[f"CoaddPsf FWHM (px, {fwhm.attrs['bin_size']} px boxes)"] = fwhm.values
        with stage("quick-look"):
            png = quicklook_png(
                out / "quicklook.png",
                {
                    "coadd (3-sigma MEANCLIP, LSST AssembleCoadd)": written["image"].values,
                    "plain weighted mean of the visits": mean_image,
                },
                title=f"coaddx demo: {n} simulated visits, {ny} x {nx}",
                maps=maps,
            )
    key = "assemble (meanclip)"
    clipped = int(((written["mask"].values >> written.attrs["mask_planes"]["CLIPPED"]) & 1).sum())
    rows = [("inputs", f"{n} visits x {ny} x {nx} pixels ({n * ny * nx / 1e6:.0f} Mpix-visits)")]
    rows += [(f"time: {k}", f"{v:.2f} s") for k, v in stages.times.items()]
    total_compile = sum(compiling.values()) + sum(waits.values())
    if total_compile > 0.05:
        rows.append(
            (
                "of which compiling",
                f"{total_compile:.2f} s (numba; `coaddx precompile` fills the cache beforehand)"
                + (", also compiled in the background" if background else ""),
            )
        )
    rows += throughput_rows(
        n * ny * nx, stages.times[key], compiling.get(key, 0.0) + waits.get(key, 0.0), unseen
    )
    rows += [
        ("peak memory", f"{format_bytes(mem.peak)} resident (+{format_bytes(mem.added)})"),
        (
            "plan",
            f"subregions {written.attrs['plan']['subregion']}, "
            f"{format_bytes(written.attrs['plan']['task_bytes'])} planned per task",
        ),
        ("clipped pixels", f"{clipped} coadd pixels had an input clipped"),
        *epoch_rows(written),
        *psf_rows(fwhm),
        ("calexps", f"{len(sim.calexps)} files in {sim.out / 'calexp'}"),
        ("warps", str(store)),
        ("coadd", str(out / "coadd.zarr")),
        ("quick-look", str(png)),
    ]
    print("\ncoaddx demo summary\n" + summary(rows))
    return 0
