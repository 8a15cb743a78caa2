"""``coaddx assemble``: stack a warp store into a coadd (AssembleCoadd, CompareWarp,
DcrAssembleCoadd)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import dask
import xarray as xr

from coaddx.cli.assemble_dcr import add_dcr_flags, run_dcr
from coaddx.cli.client import (
    add_runtime_flags,
    fitted_budget,
    open_client,
    write_coadd_with_progress,
)
from coaddx.cli.options import ConfigFlags, add_config_flags
from coaddx.cli.summary import memory_rows, summary
from coaddx.coadd.assemble import assemble
from coaddx.coadd.compare_warp.assemble import assemble_compare_warp
from coaddx.coadd.compare_warp.config import CompareWarpConfig
from coaddx.coadd.config import AssembleConfig
from coaddx.io.zarr.layout import WARP_TYPES
from coaddx.plan import StackPlan, worker_bytes
from coaddx.runtime.cluster import WorkerMemory
from coaddx.runtime.diagnostics import PeakMemory, Stages, format_bytes
from coaddx.warp.store import open_warps

__all__ = ["add_parser", "run"]

_ASSEMBLE_FIELDS = [
    "statistic",
    "sigma_clip",
    "clip_iter",
    "bad_mask_planes",
    "interp",
    "subregion_size",
    "epoch_planes",
]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "assemble",
        help="stack a warp store into a coadd (AssembleCoadd)",
        description="Stack the warps of a patch store into a coadd Zarr store.",
    )
    p.add_argument("warps", type=Path, help="warp store (patch .zarr)")
    p.add_argument("out", type=Path, help="output coadd store (.zarr)")
    config = add_config_flags(
        p,
        AssembleConfig,
        _ASSEMBLE_FIELDS,
        helps={
            "statistic": "stacking statistic",
            "sigma_clip": "clipping threshold in sigma",
            "clip_iter": "clipping iterations",
            "bad_mask_planes": "planes that reject an input pixel",
            "interp": "do not interpolate over NO_DATA",
            "subregion_size": "fixed subregion side (default: planned from the memory budget)",
            "epoch_planes": "also write the epoch planes: first / last / weight-mean MJD, "
            "weight-mean PSF FWHM and the contributing-visit bitmap (default: off)",
        },
    )
    warp_type = add_config_flags(
        p,
        open_warps,
        ["warp_type"],
        choices={"warp_type": WARP_TYPES},
        helps={"warp_type": "warps to stack"},
    )
    p.add_argument(
        "--method",
        choices=("assemble", "compare-warp", "dcr"),
        default="assemble",
        help="assemble: AssembleCoadd of --warp-type warps; compare-warp: CompareWarp "
        "artifact rejection with LSST's defaults, reading the direct and psf_matched "
        "groups (only --subregion-size, --no-interp and --epoch-planes apply; writes "
        "epoch_count and artifact_mask too); dcr: DcrAssembleCoadd of the direct warps (needs "
        "--effective-wavelength and --bandwidth; --subregion-size sets its tiles)",
    )
    add_dcr_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing coadd store")
    add_runtime_flags(p)
    p.set_defaults(assemble_config=config, assemble_warp_type=warp_type)
    return p


def _compare_warp_config(given: dict[str, Any]) -> CompareWarpConfig:
    """LSST's CompareWarp defaults with the given ``subregion_size`` and ``interp=None``."""
    config = CompareWarpConfig(**{k: v for k, v in given.items() if k == "subregion_size"})
    if "interp" in given and given["interp"] is None:
        config = config.replace(assemble=config.assemble.replace(interp=None))
    if given.get("epoch_planes"):
        config = config.replace(assemble=config.assemble.replace(epoch_planes=True))
    return config


def _coadd(
    args: argparse.Namespace, flags: ConfigFlags, open_kwargs: dict[str, Any]
) -> tuple[xr.Dataset, xr.Dataset]:
    """(the warps stacked, the lazy coadd) of ``--method``."""
    if args.method == "compare-warp":
        config = _compare_warp_config(flags.values(args))
        warps = open_warps(args.warps, "direct")
        return warps, assemble_compare_warp(warps, open_warps(args.warps, "psf_matched"), config)
    warps = open_warps(args.warps, **open_kwargs)
    return warps, assemble(warps, flags.build(args))


def _plan(coadd: xr.Dataset, ny: int, nx: int) -> StackPlan:
    p = coadd.attrs["plan"]
    sy, sx = p["subregion"]
    n_tasks = math.ceil(ny / sy) * math.ceil(nx / sx)
    return StackPlan((sy, sx), p["task_bytes"], p["budget_bytes"], n_tasks, (ny, nx))


def run(args: argparse.Namespace) -> int:
    flags: ConfigFlags = args.assemble_config
    if args.method == "dcr":
        return run_dcr(args, subregion_size=flags.values(args).get("subregion_size"))
    config = flags.build(args)
    open_kwargs = args.assemble_warp_type.values(args)
    stages = Stages()
    with open_client(args) as client, PeakMemory() as mem:
        with stages("open + plan"):
            sizes = open_warps(args.warps, **open_kwargs).sizes
            budget = fitted_budget(client, (sizes["y"], sizes["x"]), args)
            with dask.config.set({"coaddx.memory-per-task": budget}):
                warps, coadd = _coadd(args, flags, open_kwargs)
        with stages("stack + write"), WorkerMemory(client) as workers:
            write_coadd_with_progress(
                client, coadd, args.out, overwrite=args.overwrite, progress=not args.no_progress
            )
        n, ny, nx = (warps.sizes[d] for d in ("visit", "y", "x"))
        plan = _plan(coadd, ny, nx)
        memory = memory_rows(
            workers, client, lambda t, k, b: worker_bytes(plan, threads=t, n_workers=k, baseline=b)
        )
    dt = stages.times["stack + write"]
    p = coadd.attrs["plan"]
    statistic = (
        "compare-warp: MEAN with CLIPPED artifacts rejected"
        if args.method == "compare-warp"
        else f"{config.statistic} (sigma {config.sigma_clip}, {config.clip_iter} iterations)"
    )
    rows = [
        ("inputs", f"{n} visits x {ny} x {nx} ({args.warps})"),
        ("statistic", statistic),
        (
            "plan",
            (
                f"{p['subregion']} subregions, {format_bytes(p['task_bytes'])} planned per "
                f"task (budget {format_bytes(p['budget_bytes'])})"
            ),
        ),
        *[(f"time: {k}", f"{v:.2f} s") for k, v in stages.times.items()],
        ("throughput", f"{n * ny * nx / dt / 1e6:.3g} Mpix-visits/s (stack + write)"),
        *memory,
        ("client memory", f"{format_bytes(mem.peak)} (+{format_bytes(mem.added)})"),
        ("coadd", str(args.out)),
    ]
    print(summary(rows))
    return 0
