"""The ``coaddx`` command line: simulate, assemble, demo. Argument parsing only; the science
lives in the library."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np

from . import __version__
from .errors import CoaddxError

__all__ = ["main"]


def _add_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="use an existing dask scheduler (tcp://host:8786) instead of a LocalCluster")
    g.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default: 1 "
                   "threaded worker; see coaddx.local-cluster)")
    g.add_argument("--threads", type=int, default=None, help="threads per LocalCluster worker "
                   "(default: one per core)")
    g.add_argument("--processes", action="store_true", help="LocalCluster with process workers")
    g.add_argument("--memory-per-task", metavar="BYTES",
                   help="memory budget of one stacking task, e.g. 512MiB (coaddx.memory-per-task)")
    g.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coaddx", description="Deep astronomical coadds with the LSST algorithms on dask.")
    parser.add_argument("--version", action="version", version=f"coaddx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("simulate", help="simulate a multi-visit data set with ground truth",
                       description="Write a simulated patch: warp store, calexp FITS files and truth.")
    p.add_argument("out", type=Path, help="output directory")
    _add_sim_args(p)

    p = sub.add_parser("warp", help="warp calexps onto a patch grid (MakeDirectWarp)",
                       description="Warp every exposure that overlaps the patch into the warp "
                       "store, one parallel task per visit (Lanczos-3, flux conserving, nJy).")
    p.add_argument("store", type=Path, help="warp store to create or extend (patch .zarr)")
    p.add_argument("exposures", type=Path, nargs="+", help="calexp FITS files (coaddx, LSST or "
                   "DECam CP layouts)")
    p.add_argument("--grid-from", type=Path, metavar="STORE_OR_FITS",
                   help="output grid: an existing warp store, or a FITS file whose header has "
                   "the WCS and NAXIS1/2 (like a SWarp header); default: STORE's own grid")
    p.add_argument("--kernel", choices=("lanczos3", "lanczos4", "bilinear", "nearest"),
                   default="lanczos3")
    p.add_argument("--interp-length", type=int, default=10)
    p.add_argument("--border", type=int, default=256)
    p.add_argument("--no-reuse", action="store_true",
                   help="fail on visits already in the store instead of skipping them")
    _add_runtime(p)

    p = sub.add_parser("diff", help="PSF-match and subtract two exposures (ImagePsfMatch)",
                       description="Fit an Alard-Lupton (or delta-function) PSF-matching kernel on "
                       "stars of SCIENCE, convolve TEMPLATE with it and write SCIENCE - matched "
                       "template as a calexp FITS file (the template is warped first if needed).")
    p.add_argument("template", type=Path)
    p.add_argument("science", type=Path)
    p.add_argument("out", type=Path, help="difference image (coaddx calexp FITS)")
    p.add_argument("--basis", choices=("alard-lupton", "delta-function"), default="alard-lupton")
    p.add_argument("--spatial-order", type=int, default=2)
    p.add_argument("--snap", action="store_true", help="SnapPsfMatch preset (two snaps of a visit)")
    p.add_argument("--fit-background", action="store_true")
    p.add_argument("--convolve-science", action="store_true",
                   help="convolve the science image instead of the template")

    p = sub.add_parser("assemble", help="stack a warp store into a coadd (AssembleCoadd)",
                       description="Stack the warps of a patch store into a coadd Zarr store.")
    p.add_argument("warps", type=Path, help="warp store (patch .zarr)")
    p.add_argument("out", type=Path, help="output coadd store (.zarr)")
    _add_assemble_args(p)
    _add_runtime(p)

    p = sub.add_parser("demo", help="simulate, stack and show a coadd end to end",
                       description="Simulate a data set, stack it (3-sigma MEANCLIP), write the "
                       "coadd, a quick-look PNG beside the plain per-visit mean, and a summary.")
    p.add_argument("out", type=Path, nargs="?", default=Path("coaddx-demo"),
                   help="output directory (default: ./coaddx-demo)")
    _add_sim_args(p, visits=16, size=1024)
    _add_runtime(p)
    return parser


def _add_sim_args(p: argparse.ArgumentParser, visits: int = 16, size: int = 1024) -> None:
    p.add_argument("--visits", type=int, default=visits, help=f"number of visits (default {visits})")
    p.add_argument("--size", type=int, default=size, help=f"patch side in pixels (default {size})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--psf", choices=("moffat", "gaussian"), default="moffat")
    p.add_argument("--no-calexps", action="store_true", help="do not write calexp FITS files")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _add_assemble_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--statistic", choices=("meanclip", "mean", "median"), default="meanclip")
    p.add_argument("--sigma-clip", type=float, default=3.0)
    p.add_argument("--clip-iter", type=int, default=2)
    p.add_argument("--bad-mask-planes", default="NO_DATA,BAD,SAT,EDGE",
                   help="comma-separated planes that reject an input pixel")
    p.add_argument("--no-interp", action="store_true", help="do not interpolate over NO_DATA")
    p.add_argument("--subregion-size", type=int, default=None,
                   help="fixed subregion side (default: planned from the memory budget)")
    p.add_argument("--warp-type", choices=("direct", "psf_matched"), default="direct")
    p.add_argument("--overwrite", action="store_true", help="replace an existing coadd store")


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    from .cluster import connect, local

    if args.scheduler:
        client = connect(args.scheduler)
    else:
        client = local(args.workers, args.threads, processes=True if args.processes else None)
    print(f"dask dashboard: {client.dashboard_link}")
    try:
        yield client
    finally:
        client.close()
        cluster = getattr(client, "cluster", None)
        if cluster is not None and not args.scheduler:
            cluster.close()


def _config(args: argparse.Namespace):
    from .config import AssembleConfig

    return AssembleConfig(
        statistic=args.statistic, sigma_clip=args.sigma_clip, clip_iter=args.clip_iter,
        bad_mask_planes=tuple(p for p in args.bad_mask_planes.split(",") if p),
        interp=None if args.no_interp else AssembleConfig().interp,
        subregion_size=args.subregion_size)


def _write_coadd(client: Any, coadd: Any, out: Path, *, overwrite: bool, progress: bool) -> None:
    from .cluster import compute_with_progress
    from .io.zarr import write_coadd

    if out.exists() and not overwrite:
        raise CoaddxError(f"{out} exists; pass --overwrite to replace it")
    write_coadd(coadd, out, overwrite=overwrite,
                compute=lambda delayed: compute_with_progress(client, delayed, show=progress))


def _summary(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate

    t0 = time.perf_counter()
    sim = simulate(args.out, n_visits=args.visits, shape=(args.size, args.size), seed=args.seed,
                   psf=args.psf, calexps=not args.no_calexps, overwrite=args.overwrite)
    print(f"simulated {args.visits} visits of {args.size} x {args.size} in "
          f"{time.perf_counter() - t0:.1f} s -> {sim.out}")
    return 0


def _cmd_assemble(args: argparse.Namespace) -> int:
    from .assemble import assemble
    from .diagnostics import PeakMemory, format_bytes
    from .io.zarr import open_warps

    config = _config(args)
    with _client(args) as client, PeakMemory() as mem:
        warps = open_warps(args.warps, args.warp_type)
        coadd = assemble(warps, config)
        t0 = time.perf_counter()
        _write_coadd(client, coadd, args.out, overwrite=args.overwrite,
                     progress=not args.no_progress)
        dt = time.perf_counter() - t0
    n, ny, nx = (warps.sizes[d] for d in ("visit", "y", "x"))
    print(_summary([
        ("inputs", f"{n} visits x {ny} x {nx} ({args.warps})"),
        ("statistic", f"{config.statistic} (sigma {config.sigma_clip}, {config.clip_iter} iterations)"),
        ("plan", f"{coadd.attrs['plan']['subregion']} subregions, "
                 f"{format_bytes(coadd.attrs['plan']['task_bytes'])} planned per task"),
        ("time", f"{dt:.2f} s ({n * ny * nx / dt / 1e6:.0f} Mpix-visits/s)"),
        ("peak memory", f"{format_bytes(mem.peak)} (+{format_bytes(mem.added)} during the run)"),
        ("coadd", str(args.out)),
    ]))
    return 0


def _grid(args: argparse.Namespace):
    from astropy.io import fits
    from astropy.wcs import WCS

    from .errors import InputError
    from .skymap import Patch
    from .warp import patch_from_store

    source = args.grid_from or args.store
    if source.suffix.lower() in (".fits", ".fit", ".fts", ".head", ".hdr") and source.is_file():
        header = (fits.Header.fromtextfile(source) if source.suffix in (".head", ".hdr")
                  else fits.getheader(source))
        if "NAXIS1" not in header or "NAXIS2" not in header:
            raise InputError(f"{source}: the grid header needs NAXIS1 and NAXIS2")
        return Patch.from_wcs(WCS(header), (int(header["NAXIS2"]), int(header["NAXIS1"])))
    return patch_from_store(source)


def _cmd_warp(args: argparse.Namespace) -> int:
    from .cluster import compute_with_progress
    from .diagnostics import PeakMemory, format_bytes
    from .warp import WarpConfig, make_warps

    config = WarpConfig(kernel=args.kernel, interp_length=args.interp_length, border=args.border)
    patch = _grid(args)
    with _client(args) as client, PeakMemory() as mem:
        t0 = time.perf_counter()
        result = make_warps(args.exposures, patch, args.store, config=config,
                            reuse=not args.no_reuse,
                            compute=lambda *tasks: compute_with_progress(
                                client, list(tasks), show=not args.no_progress))
        dt = time.perf_counter() - t0
    ny, nx = patch.shape
    rows = [("warped", f"{len(result.written)} visits onto {ny} x {nx} in {dt:.1f} s"),
            ("reused", f"{len(result.reused)} visits already in the store"),
            ("not overlapping", f"{len(result.not_overlapping)} exposures"),
            ("peak memory", format_bytes(mem.peak)), ("store", str(args.store))]
    for visit, why in result.failed.items():
        rows.append((f"FAILED visit {visit}", why))
    print(_summary(rows))
    return 1 if result.failed else 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from .diffim import subtract
    from .io.fits import read_exposure, write_exposure
    from .psfmatch import PsfMatchConfig, snap_config

    config = snap_config(args.basis) if args.snap else PsfMatchConfig(
        basis=args.basis, spatial_kernel_order=args.spatial_order)
    config = config.replace(fit_for_background=args.fit_background,
                            convolve_template=not args.convolve_science)
    t0 = time.perf_counter()
    result = subtract(read_exposure(args.template), read_exposure(args.science), config)
    write_exposure(result.difference, args.out)
    ny, nx = result.difference.shape
    z = result.difference.image / np.sqrt(result.difference.variance)
    z = z[np.isfinite(z)]
    print(_summary([
        ("kernel", f"{config.basis}, {result.kernel.size} px, spatial order "
                   f"{config.spatial_kernel_order}, sum {result.kernel.kernel_sum(nx / 2, ny / 2):.4f}"),
        ("candidates", f"{len(result.candidates)} offered, {result.info.n_used} used"),
        ("difference", f"{ny} x {nx}, robust sigma of D/sqrt(var) "
                       f"{1.4826 * np.median(np.abs(z - np.median(z))):.3f}"),
        ("time", f"{time.perf_counter() - t0:.1f} s"), ("written", str(args.out))]))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


COMMANDS = {"simulate": _cmd_simulate, "warp": _cmd_warp, "assemble": _cmd_assemble,
            "diff": _cmd_diff, "demo": _cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .runtime import tune_malloc

    tune_malloc()
    if getattr(args, "memory_per_task", None):
        dask.config.set({"coaddx.memory-per-task": args.memory_per_task})
    try:
        return COMMANDS[args.command](args)
    except CoaddxError as exc:
        print(f"coaddx {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
