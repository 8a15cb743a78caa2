"""``coaddx demo``: simulate a patch, stack it, write the coadd, a quick-look PNG and a summary."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .diagnostics import PeakMemory, Stages, format_bytes

__all__ = ["run_demo"]


def run_demo(args: argparse.Namespace) -> int:
    from .assemble import assemble
    from .cli import _client, _summary, _write_coadd
    from .cluster import compute_with_progress
    from .config import AssembleConfig
    from .io.zarr import open_coadd, open_warps
    from .quicklook import quicklook_png
    from .simulate import simulate
    from .warp import make_warps

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    with PeakMemory() as mem:
        with stages("simulate"):
            sim = simulate(
                out / "sim",
                n_visits=args.visits,
                shape=(args.size, args.size),
                seed=args.seed,
                psf=args.psf,
                calexps=not args.no_calexps,
                overwrite=True,
            )
        with _client(args) as client:
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
                        compute=lambda *t: compute_with_progress(
                            client, list(t), show=not args.no_progress
                        ),
                    )
            warps = open_warps(store)
            coadd = assemble(warps)
            with stages("assemble (meanclip)"):
                _write_coadd(
                    client, coadd, out / "coadd.zarr", overwrite=True, progress=not args.no_progress
                )
            with stages("per-visit mean"):
                plain = assemble(warps, AssembleConfig(statistic="mean", interp=None))
                mean_image = plain["image"].compute().values
        written = open_coadd(out / "coadd.zarr")
        with stages("quick-look"):
            png = quicklook_png(
                out / "quicklook.png",
                {
                    "coadd (3-sigma MEANCLIP, LSST AssembleCoadd)": written["image"].values,
                    "plain weighted mean of the visits": mean_image,
                },
                title=f"coaddx demo: {args.visits} simulated visits, {args.size} x {args.size}",
            )
    n, ny, nx = (warps.sizes[d] for d in ("visit", "y", "x"))
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
    print("\ncoaddx demo summary\n" + _summary(rows))
    return 0
