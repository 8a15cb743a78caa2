"""The ``coaddx`` command line: simulate, assemble, demo. Argument parsing only; the science
lives in the library."""

from __future__ import annotations

import argparse
import contextlib
import math
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
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="use an existing dask scheduler (tcp://host:8786) instead of a LocalCluster",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="LocalCluster workers (default: 1 threaded worker; see coaddx.local-cluster)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per LocalCluster worker (default: one per core)",
    )
    g.add_argument("--processes", action="store_true", help="LocalCluster with process workers")
    g.add_argument(
        "--memory-per-task",
        metavar="BYTES",
        help="memory budget of one stacking task, e.g. 512MiB (coaddx.memory-per-task)",
    )
    g.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    g.add_argument(
        "--cluster",
        choices=("local", "slurm", "pbs"),
        default="local",
        help="where the dask workers run: a LocalCluster (default) or batch jobs "
        "submitted through dask-jobqueue",
    )
    g.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="batch jobs to start with --cluster slurm/pbs (default 1)",
    )
    g.add_argument(
        "--adapt",
        action="store_true",
        help="with --cluster slurm/pbs: adapt between 0 and --jobs jobs",
    )
    g.add_argument(
        "--jobqueue-config",
        type=Path,
        metavar="YAML",
        help="dask-jobqueue settings (cluster/jobqueue.yaml format); default: the "
        "user's dask config",
    )
    g.add_argument(
        "--job-script",
        action="store_true",
        help="print the batch script of a worker job before submitting it",
    )
    g.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write a dask performance report (HTML) of the computation",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coaddx", description="Deep astronomical coadds with the LSST algorithms on dask."
    )
    parser.add_argument("--version", action="version", version=f"coaddx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "simulate",
        help="simulate a multi-visit data set with ground truth",
        description="Write a simulated patch: warp store, calexp FITS files and truth.",
    )
    p.add_argument("out", type=Path, help="output directory")
    _add_sim_args(p)
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")

    p = sub.add_parser(
        "warp",
        help="warp calexps onto a patch grid (MakeDirectWarp)",
        description="Warp every exposure that overlaps the patch into the warp "
        "store, one parallel task per visit (Lanczos-3, flux conserving, nJy).",
    )
    p.add_argument("store", type=Path, help="warp store to create or extend (patch .zarr)")
    p.add_argument(
        "exposures",
        type=Path,
        nargs="+",
        help="calexp FITS files (coaddx, LSST or DECam CP layouts)",
    )
    p.add_argument(
        "--grid-from",
        type=Path,
        metavar="STORE_OR_FITS",
        help="output grid: an existing warp store, or a FITS file whose header has "
        "the WCS and NAXIS1/2 (like a SWarp header); default: STORE's own grid",
    )
    p.add_argument(
        "--kernel", choices=("lanczos3", "lanczos4", "bilinear", "nearest"), default="lanczos3"
    )
    p.add_argument("--interp-length", type=int, default=10)
    p.add_argument("--border", type=int, default=256)
    p.add_argument(
        "--no-reuse",
        action="store_true",
        help="fail on visits already in the store instead of skipping them",
    )
    _add_runtime(p)

    p = sub.add_parser(
        "diff",
        help="PSF-match and subtract two exposures (ImagePsfMatch)",
        description="Fit an Alard-Lupton (or delta-function) PSF-matching kernel on "
        "stars of SCIENCE, convolve TEMPLATE with it and write SCIENCE - matched "
        "template as a calexp FITS file (the template is warped first if needed).",
    )
    p.add_argument("template", type=Path)
    p.add_argument("science", type=Path)
    p.add_argument("out", type=Path, help="difference image (coaddx calexp FITS)")
    p.add_argument("--basis", choices=("alard-lupton", "delta-function"), default="alard-lupton")
    p.add_argument("--spatial-order", type=int, default=2)
    p.add_argument("--snap", action="store_true", help="SnapPsfMatch preset (two snaps of a visit)")
    p.add_argument("--fit-background", action="store_true")
    p.add_argument(
        "--convolve-science",
        action="store_true",
        help="convolve the science image instead of the template",
    )

    p = sub.add_parser(
        "assemble",
        help="stack a warp store into a coadd (AssembleCoadd)",
        description="Stack the warps of a patch store into a coadd Zarr store.",
    )
    p.add_argument("warps", type=Path, help="warp store (patch .zarr)")
    p.add_argument("out", type=Path, help="output coadd store (.zarr)")
    _add_assemble_args(p)
    _add_runtime(p)

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
    _add_sim_args(p, visits=16, size=1024)
    _add_runtime(p)

    p = sub.add_parser(
        "export-fits",
        help="write a coadd store as LSST-style FITS",
        description="Write the IMAGE, MASK (MP_* keywords) and VARIANCE HDUs "
        "(and N_IMAGE) of a coadd store with its WCS, chunk by chunk from the "
        "workers into a temporary file renamed into place.",
    )
    p.add_argument("coadd", type=Path, help="coadd store (.zarr)")
    p.add_argument("out", type=Path, help="FITS file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FITS file")
    _add_runtime(p)
    return parser


def _add_sim_args(p: argparse.ArgumentParser, visits: int = 16, size: int = 1024) -> None:
    p.add_argument(
        "--visits", type=int, default=visits, help=f"number of visits (default {visits})"
    )
    p.add_argument("--size", type=int, default=size, help=f"patch side in pixels (default {size})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--psf", choices=("moffat", "gaussian"), default="moffat")
    p.add_argument("--no-calexps", action="store_true", help="do not write calexp FITS files")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _add_assemble_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--statistic", choices=("meanclip", "mean", "median"), default="meanclip")
    p.add_argument("--sigma-clip", type=float, default=3.0)
    p.add_argument("--clip-iter", type=int, default=2)
    p.add_argument(
        "--bad-mask-planes",
        default="NO_DATA,BAD,SAT,EDGE",
        help="comma-separated planes that reject an input pixel",
    )
    p.add_argument("--no-interp", action="store_true", help="do not interpolate over NO_DATA")
    p.add_argument(
        "--subregion-size",
        type=int,
        default=None,
        help="fixed subregion side (default: planned from the memory budget)",
    )
    p.add_argument("--warp-type", choices=("direct", "psf_matched"), default="direct")
    p.add_argument(
        "--method",
        choices=("assemble", "compare-warp"),
        default="assemble",
        help="assemble: AssembleCoadd of --warp-type warps; compare-warp: CompareWarp "
        "artifact rejection with LSST's defaults, reading the direct and psf_matched "
        "groups (only --subregion-size and --no-interp apply; writes epoch_count and "
        "artifact_mask too)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing coadd store")


def _start_client(args: argparse.Namespace) -> Any:
    from .cluster import connect, local

    kind = getattr(args, "cluster", "local")
    if kind == "local" and (
        args.jobs is not None or args.adapt or args.jobqueue_config or args.job_script
    ):
        raise CoaddxError(
            "--jobs, --adapt, --jobqueue-config and --job-script need "
            "--cluster slurm or --cluster pbs"
        )
    if kind != "local":
        if args.scheduler:
            raise CoaddxError("--scheduler and --cluster slurm/pbs exclude each other")
        conn = connect(
            kind,
            jobs=args.jobs,
            adapt=args.adapt,
            config=args.jobqueue_config,
            job_script=args.job_script,
        )
        print("waiting for the first worker job to start ...", flush=True)
        conn.wait_for_workers(1)
        return conn
    if args.scheduler:
        client = connect(args.scheduler)
    else:
        client = local(args.workers, args.threads, processes=True if args.processes else None)
    print(f"dask dashboard: {client.dashboard_link}")
    return client


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    from .cluster import ClusterConnection, performance_report

    client = _start_client(args)
    try:
        with performance_report(getattr(args, "report", None)):
            yield client
        if getattr(args, "report", None):
            print(f"performance report: {args.report}")
    finally:
        client.close()
        cluster = getattr(client, "cluster", None)
        if cluster is not None and not args.scheduler and not isinstance(client, ClusterConnection):
            cluster.close()


def _config(args: argparse.Namespace):
    from .config import AssembleConfig

    return AssembleConfig(
        statistic=args.statistic,
        sigma_clip=args.sigma_clip,
        clip_iter=args.clip_iter,
        bad_mask_planes=tuple(p for p in args.bad_mask_planes.split(",") if p),
        interp=None if args.no_interp else AssembleConfig().interp,
        subregion_size=args.subregion_size,
    )


def _write_coadd(client: Any, coadd: Any, out: Path, *, overwrite: bool, progress: bool) -> None:
    from .cluster import compute_with_progress
    from .io.zarr import write_coadd

    if out.exists() and not overwrite:
        raise CoaddxError(f"{out} exists; pass --overwrite to replace it")
    write_coadd(
        coadd,
        out,
        overwrite=overwrite,
        compute=lambda delayed: compute_with_progress(client, delayed, show=progress),
    )


def _summary(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _bar(label: str, unit: str, width: int = 40):
    """A text progress bar callback ``(done, total)`` on stderr."""

    def show(done: int, total: int) -> None:
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(
            f"\r{label} [{'#' * filled}{' ' * (width - filled)}] {done}/{total} {unit}",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    return show


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate

    t0 = time.perf_counter()
    sim = simulate(
        args.out,
        n_visits=args.visits,
        shape=(args.size, args.size),
        seed=args.seed,
        psf=args.psf,
        calexps=not args.no_calexps,
        overwrite=args.overwrite,
        progress=None if args.no_progress else _bar("simulate", "visits"),
    )
    print(
        f"simulated {args.visits} visits of {args.size} x {args.size} in "
        f"{time.perf_counter() - t0:.1f} s -> {sim.out}"
    )
    return 0


def _fitted_budget(client: Any, shape: tuple[int, int], args: argparse.Namespace) -> int:
    """``coaddx.memory-per-task``, lowered when the workers' memory limits cannot hold it
    (an explicit ``--memory-per-task`` is kept as given)."""
    from .cluster import worker_resources
    from .diagnostics import format_bytes
    from .plan import task_budget
    from .runtime import memory_per_task

    budget = memory_per_task()
    workers = [w for w in worker_resources(client).values() if w[1] > 0]
    if args.memory_per_task or not workers:
        return budget
    threads, limit = min(workers, key=lambda w: w[1] / max(w[0], 1))
    fitted = task_budget(limit, threads=threads, shape=shape, n_workers=len(workers))
    if fitted < budget:
        print(
            f"memory per task: {format_bytes(fitted)} (lowered from {format_bytes(budget)} "
            f"to fit workers of {format_bytes(limit)} with {threads} thread(s))"
        )
        return fitted
    return budget


def _memory_rows(workers: Any, client: Any, planned_fn: Any) -> list[tuple[str, str]]:
    """Summary rows: the measured peak RSS of each worker beside its plan, and spills."""
    from .cluster import worker_resources
    from .diagnostics import format_bytes
    from .plan import KERNEL_LOAD_BYTES

    threads = worker_resources(client)
    rows = []
    for i, (addr, peak) in enumerate(sorted(workers.peaks.items())):
        planned = planned_fn(threads.get(addr, (1, 0))[0], len(workers.peaks), peak.baseline)
        label = f"peak memory, worker {i}" if len(workers.peaks) > 1 else "peak memory"
        rows.append(
            (
                label,
                (
                    f"{format_bytes(peak.peak)} (+{format_bytes(peak.added)} during "
                    f"the run); planned {format_bytes(planned + KERNEL_LOAD_BYTES)} "
                    f"per worker, incl. {format_bytes(KERNEL_LOAD_BYTES)} for loading "
                    "compiled kernels"
                ),
            )
        )
    rows.append(("spilled to disk", f"{workers.spilled} keys"))
    return rows


def _compare_warp(warps_path: Path, args: argparse.Namespace) -> tuple[Any, Any]:
    from .compare_warp import CompareWarpConfig, assemble_compare_warp
    from .io.zarr import open_warps

    config = CompareWarpConfig(subregion_size=args.subregion_size)
    if args.no_interp:
        config = config.replace(assemble=config.assemble.replace(interp=None))
    warps = open_warps(warps_path, "direct")
    return warps, assemble_compare_warp(warps, open_warps(warps_path, "psf_matched"), config)


def _cmd_assemble(args: argparse.Namespace) -> int:
    from .assemble import assemble
    from .cluster import WorkerMemory
    from .diagnostics import PeakMemory, Stages, format_bytes
    from .io.zarr import open_warps
    from .plan import StackPlan, worker_bytes

    config = _config(args)
    stages = Stages()
    with _client(args) as client, PeakMemory() as mem:
        with stages("open + plan"):
            sizes = open_warps(args.warps, args.warp_type).sizes
            budget = _fitted_budget(client, (sizes["y"], sizes["x"]), args)
            with dask.config.set({"coaddx.memory-per-task": budget}):
                if args.method == "compare-warp":
                    warps, coadd = _compare_warp(args.warps, args)
                else:
                    warps = open_warps(args.warps, args.warp_type)
                    coadd = assemble(warps, config)
        with stages("stack + write"), WorkerMemory(client) as workers:
            _write_coadd(
                client, coadd, args.out, overwrite=args.overwrite, progress=not args.no_progress
            )
        n, ny, nx = (warps.sizes[d] for d in ("visit", "y", "x"))
        p = coadd.attrs["plan"]
        sy, sx = p["subregion"]
        plan = StackPlan(
            (sy, sx),
            p["task_bytes"],
            p["budget_bytes"],
            math.ceil(ny / sy) * math.ceil(nx / sx),
            (ny, nx),
        )
        memory = _memory_rows(
            workers, client, lambda t, k, b: worker_bytes(plan, threads=t, n_workers=k, baseline=b)
        )
    dt = stages.times["stack + write"]
    rows = [
        ("inputs", f"{n} visits x {ny} x {nx} ({args.warps})"),
        (
            "statistic",
            "compare-warp: MEAN with CLIPPED artifacts rejected"
            if args.method == "compare-warp"
            else f"{config.statistic} (sigma {config.sigma_clip}, {config.clip_iter} iterations)",
        ),
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
    print(_summary(rows))
    return 0


def _grid(args: argparse.Namespace):
    from astropy.io import fits
    from astropy.wcs import WCS

    from .errors import InputError
    from .skymap import Patch
    from .warp import patch_from_store

    source = args.grid_from or args.store
    if source.suffix.lower() in (".fits", ".fit", ".fts", ".head", ".hdr") and source.is_file():
        header = (
            fits.Header.fromtextfile(source)
            if source.suffix in (".head", ".hdr")
            else fits.getheader(source)
        )
        if "NAXIS1" not in header or "NAXIS2" not in header:
            raise InputError(f"{source}: the grid header needs NAXIS1 and NAXIS2")
        return Patch.from_wcs(WCS(header), (int(header["NAXIS2"]), int(header["NAXIS1"])))
    return patch_from_store(source)


def _warp_plan(exposures: Sequence[Path], patch: Any) -> tuple[int, int]:
    """(planned bytes of the largest visit task, detector pixels) from the headers."""
    from .plan import warp_task_bytes
    from .warp import _inputs

    by_visit: dict[int, list[tuple[int, int]]] = {}
    for item in _inputs(exposures):
        by_visit.setdefault(item.visit, []).append(item.shape)
    planned = max(warp_task_bytes(patch.shape, shapes) for shapes in by_visit.values())
    pixels = sum(ny * nx for shapes in by_visit.values() for ny, nx in shapes)
    return planned, pixels


def _cmd_warp(args: argparse.Namespace) -> int:
    from .cluster import WorkerMemory, compute_with_progress
    from .diagnostics import PeakMemory, Stages, format_bytes
    from .warp import WarpConfig, make_warps

    config = WarpConfig(kernel=args.kernel, interp_length=args.interp_length, border=args.border)
    patch = _grid(args)
    stages = Stages()
    with _client(args) as client, PeakMemory() as mem:
        with stages("read headers + plan"):
            per_task, det_pixels = _warp_plan(args.exposures, patch)
        with stages("warp + write"), WorkerMemory(client) as workers:
            result = make_warps(
                args.exposures,
                patch,
                args.store,
                config=config,
                reuse=not args.no_reuse,
                compute=lambda *tasks: compute_with_progress(
                    client, list(tasks), show=not args.no_progress
                ),
            )
        memory = _memory_rows(workers, client, lambda t, k, b: b + t * per_task)
    dt = stages.times["warp + write"]
    ny, nx = patch.shape
    rows = [
        ("warped", f"{len(result.written)} visits onto {ny} x {nx} in {dt:.1f} s"),
        ("reused", f"{len(result.reused)} visits already in the store"),
        ("not overlapping", f"{len(result.not_overlapping)} exposures"),
        *[(f"time: {k}", f"{v:.2f} s") for k, v in stages.times.items()],
        (
            "throughput",
            (
                f"{det_pixels / 1e6 / dt:.3g} input Mpix/s "
                f"({format_bytes(per_task)} planned per visit task)"
            ),
        ),
        *memory,
        ("client memory", f"{format_bytes(mem.peak)} (+{format_bytes(mem.added)})"),
        ("store", str(args.store)),
    ]
    for visit, why in result.failed.items():
        rows.append((f"FAILED visit {visit}", why))
    print(_summary(rows))
    return 1 if result.failed else 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from .diffim import subtract
    from .io.fits import read_exposure, write_exposure
    from .psfmatch import PsfMatchConfig, snap_config

    config = (
        snap_config(args.basis)
        if args.snap
        else PsfMatchConfig(basis=args.basis, spatial_kernel_order=args.spatial_order)
    )
    config = config.replace(
        fit_for_background=args.fit_background, convolve_template=not args.convolve_science
    )
    t0 = time.perf_counter()
    result = subtract(read_exposure(args.template), read_exposure(args.science), config)
    write_exposure(result.difference, args.out)
    ny, nx = result.difference.shape
    z = result.difference.image / np.sqrt(result.difference.variance)
    z = z[np.isfinite(z)]
    ksum = result.kernel.kernel_sum(nx / 2, ny / 2)
    print(
        _summary(
            [
                (
                    "kernel",
                    f"{config.basis}, {result.kernel.size} px, spatial order "
                    f"{config.spatial_kernel_order}, sum {ksum:.4f}",
                ),
                ("candidates", f"{len(result.candidates)} offered, {result.info.n_used} used"),
                (
                    "difference",
                    f"{ny} x {nx}, robust sigma of D/sqrt(var) "
                    f"{1.4826 * np.median(np.abs(z - np.median(z))):.3f}",
                ),
                ("time", f"{time.perf_counter() - t0:.1f} s"),
                ("written", str(args.out)),
            ]
        )
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _cmd_export_fits(args: argparse.Namespace) -> int:
    from .cluster import compute_with_progress
    from .diagnostics import format_bytes
    from .io.export import export_fits

    if args.out.exists() and not args.overwrite:
        raise CoaddxError(f"{args.out} exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    with _client(args) as client:
        export_fits(
            args.coadd,
            args.out,
            overwrite=args.overwrite,
            compute=lambda d: compute_with_progress(client, d, show=not args.no_progress),
        )
    dt = time.perf_counter() - t0
    print(
        _summary(
            [
                ("written", f"{args.out} ({format_bytes(args.out.stat().st_size)})"),
                ("time", f"{dt:.2f} s"),
            ]
        )
    )
    return 0


COMMANDS = {
    "simulate": _cmd_simulate,
    "warp": _cmd_warp,
    "assemble": _cmd_assemble,
    "diff": _cmd_diff,
    "demo": _cmd_demo,
    "export-fits": _cmd_export_fits,
}


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
