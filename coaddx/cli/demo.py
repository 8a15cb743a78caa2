"""``coaddx demo``: simulate a patch, stack it, write the coadd, a quick-look PNG and a summary."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from coaddx.cli.client import add_runtime_flags, open_client, write_coadd_with_progress
from coaddx.cli.quicklook import quicklook_png
from coaddx.cli.simulate import add_sim_flags
from coaddx.cli.summary import summary
from coaddx.coadd.assemble import assemble
from coaddx.coadd.config import AssembleConfig
from coaddx.io.zarr.coadd_store import open_coadd
from coaddx.runtime.cluster import compute_with_progress
from coaddx.runtime.diagnostics import PeakMemory, Stages, format_bytes
from coaddx.sim.simulate import simulate
from coaddx.warp.make_warps import make_warps
from coaddx.warp.store import open_warps

__all__ = ["add_parser", "run"]


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
    p.set_defaults(sim_flags=sim_flags)
    return p


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    stages = Stages()
    with PeakMemory() as mem:
        with stages("simulate"):
            sim = simulate(out / "sim", **{**args.sim_flags.values(args), "overwrite": True})
        with open_client(args) as client:
            store = sim.warps
            if sim.calexps:  # start from the calexps: warp them onto the patch
                store = out / "warps.zarr"
                if store.exists():
                    shutil.rmtree(store)
                with stages("warp (Lanczos-3)"):
                    make_warps(
                        sim.calexps,
                        sim.patch,
                        store,
                        compute=lambda *t: compute_with_progress(client, list(t), show=progress),
                    )
            warps = open_warps(store)
            coadd = assemble(warps)
            with stages("assemble (meanclip)"):
                write_coadd_with_progress(
                    client, coadd, out / "coadd.zarr", overwrite=True, progress=progress
                )
            with stages("per-visit mean"):
                plain = assemble(warps, AssembleConfig(statistic="mean", interp=None))
                mean_image = plain["image"].compute().values
        written = open_coadd(out / "coadd.zarr")
        n, ny, nx = (warps.sizes[d] for d in ("visit", "y", "x"))
        with stages("quick-look"):
            png = quicklook_png(
                out / "quicklook.png",
                {
                    "coadd (3-sigma MEANCLIP, LSST AssembleCoadd)": written["image"].values,
                    "plain weighted mean of the visits": mean_image,
                },
                title=f"coaddx demo: {n} simulated visits, {ny} x {nx}",
            )
    stack_time = stages.times["assemble (meanclip)"]
    clipped = int(((written["mask"].values >> written.attrs["mask_planes"]["CLIPPED"]) & 1).sum())
    rows = [("inputs", f"{n} visits x {ny} x {nx} pixels ({n * ny * nx / 1e6:.0f} Mpix-visits)")]
    rows += [(f"time: {k}", f"{v:.2f} s") for k, v in stages.times.items()]
    rows += [
        (
            "throughput",
            f"{n * ny * nx / stack_time / 1e6:.0f} Mpix-visits/s (meanclip, incl. read+write)",
        ),
        ("peak memory", f"{format_bytes(mem.peak)} resident (+{format_bytes(mem.added)})"),
        (
            "plan",
            f"subregions {written.attrs['plan']['subregion']}, "
            f"{format_bytes(written.attrs['plan']['task_bytes'])} planned per task",
        ),
        ("clipped pixels", f"{clipped} coadd pixels had an input clipped"),
        ("calexps", f"{len(sim.calexps)} files in {sim.out / 'calexp'}"),
        ("warps", str(store)),
        ("coadd", str(out / "coadd.zarr")),
        ("quick-look", str(png)),
    ]
    print("\ncoaddx demo summary\n" + summary(rows))
    return 0
