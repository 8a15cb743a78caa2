"""``coaddx assemble --method dcr``: DcrAssembleCoadd of a warp store's direct warps."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from coaddx.cli.client import open_client, write_coadd_with_progress
from coaddx.cli.summary import memory_rows, summary
from coaddx.coadd.assemble import assemble
from coaddx.dcr.assemble import assemble_dcr
from coaddx.dcr.config import DcrConfig
from coaddx.errors import ConfigError
from coaddx.io.zarr.coadd_store import open_coadd
from coaddx.runtime.cluster import WorkerMemory
from coaddx.runtime.diagnostics import PeakMemory, Stages, format_bytes
from coaddx.warp.store import open_warps

__all__ = ["add_dcr_flags", "run_dcr"]


def add_dcr_flags(p: argparse.ArgumentParser) -> None:
    """The options of ``--method dcr``."""
    g = p.add_argument_group("DcrAssembleCoadd (--method dcr)")
    g.add_argument(
        "--effective-wavelength",
        type=float,
        metavar="NM",
        help="effective wavelength of the band, nm (required with --method dcr)",
    )
    g.add_argument(
        "--bandwidth",
        type=float,
        metavar="NM",
        help="bandwidth of the band, nm (required with --method dcr)",
    )
    g.add_argument("--subfilters", type=int, default=3, metavar="N", help="sub-filters (3)")
    g.add_argument(
        "--template",
        type=Path,
        metavar="COADD",
        help="coadd store to start from (default: a MEANCLIP coadd of the same warps)",
    )


def _config(args: argparse.Namespace, subregion_size: Any) -> DcrConfig:
    missing = [
        flag
        for flag, value in (
            ("--effective-wavelength", args.effective_wavelength),
            ("--bandwidth", args.bandwidth),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(f"--method dcr needs {' and '.join(missing)} (nm)")
    extra: dict[str, Any] = {}
    if subregion_size is not None:
        extra["subregion_size"] = subregion_size
    return DcrConfig(
        effective_wavelength=args.effective_wavelength,
        bandwidth=args.bandwidth,
        n_subfilters=args.subfilters,
        **extra,
    )


def _printer(quiet: bool):
    start = [time.perf_counter()]

    def progress(iteration: int, metric: float, gain: float) -> None:
        now = time.perf_counter()
        if not quiet:
            what = "initial model" if iteration == 0 else f"iteration {iteration}"
            extra = "" if iteration == 0 else f", gain {gain:.3f}"
            print(
                f"DCR {what}: metric {metric:.5f}{extra} ({now - start[0]:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        start[0] = now

    return progress


def run_dcr(args: argparse.Namespace, *, subregion_size: Any = None) -> int:
    """DcrAssembleCoadd of ``args.warps`` (direct warps) into ``args.out``."""
    config = _config(args, subregion_size)
    stages = Stages()
    with open_client(args) as client, PeakMemory() as mem:
        with stages("open + template"):
            warps = open_warps(args.warps, "direct")
            if args.template is not None:
                template = open_coadd(args.template)
            else:
                template = assemble(warps).persist()
        with WorkerMemory(client) as workers:
            with stages("DCR iterations"):
                dcr = assemble_dcr(
                    warps, template, config, progress=_printer(bool(args.no_progress))
                )
            with stages("write"):
                write_coadd_with_progress(
                    client, dcr, args.out, overwrite=args.overwrite, progress=not args.no_progress
                )
        plan = dcr.attrs["plan"]
        memory = memory_rows(
            workers,
            client,
            lambda t, k, b: b + plan["held_bytes"] // max(k, 1) + t * plan["task_bytes"],
        )
    n, ny, nx = (warps.sizes[d] for d in ("visit", "y", "x"))
    updates = max(int(dcr.attrs["n_iterations"]), 1)
    per_update = stages.times["DCR iterations"] / (updates + 1)
    low, high = dcr["wavelength_low"].values, dcr["wavelength_high"].values
    rows = [
        ("inputs", f"{n} visits x {ny} x {nx} ({args.warps})"),
        ("template", str(args.template) if args.template else "MEANCLIP coadd of the warps"),
        (
            "sub-filters",
            ", ".join(f"{a:.1f}-{b:.1f} nm" for a, b in zip(low, high, strict=True)),
        ),
        (
            "iterations",
            (
                f"{dcr.attrs['n_iterations']} updates ({dcr.attrs['stop']}), metric "
                f"{dcr.attrs['convergence'][0]:.5f} -> {dcr.attrs['convergence'][-1]:.5f}"
            ),
        ),
        (
            "plan",
            (
                f"{plan['n_tiles']} tiles of {plan['tile']} (buffer {plan['buffer']} px, halo "
                f"{plan['halo']} px), {format_bytes(plan['task_bytes'])} per task, "
                f"{format_bytes(plan['held_bytes'])} held"
            ),
        ),
        *[(f"time: {k}", f"{v:.2f} s") for k, v in stages.times.items()],
        ("throughput", f"{n * ny * nx / per_update / 1e6:.3g} Mpix-visits/s per pass"),
        *memory,
        ("client memory", f"{format_bytes(mem.peak)} (+{format_bytes(mem.added)})"),
        ("coadd", str(args.out)),
    ]
    print(summary(rows))
    return 0
