"""The execution flags every computing command shares, and the dask client they start.

``--cluster local`` (default) starts a ``LocalCluster`` (or connects to ``--scheduler``);
``--cluster slurm`` / ``pbs`` submits worker jobs through dask-jobqueue
(:func:`coaddx.runtime.cluster.connect`).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xarray as xr

from coaddx.errors import CoaddxError
from coaddx.io.zarr.coadd_store import write_coadd
from coaddx.plan import task_budget
from coaddx.runtime.cluster import (
    JOBQUEUE_KINDS,
    ClusterConnection,
    compute_with_progress,
    connect,
    local,
    performance_report,
    worker_resources,
)
from coaddx.runtime.diagnostics import format_bytes
from coaddx.settings import memory_per_task

__all__ = [
    "add_runtime_flags",
    "fitted_budget",
    "open_client",
    "start_client",
    "write_coadd_with_progress",
]


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """The ``execution`` flags: where the dask workers run, memory, progress and reports."""
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
        choices=("local", *JOBQUEUE_KINDS),
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


def start_client(args: argparse.Namespace) -> Any:
    """The client the execution flags ask for (a ``ClusterConnection`` for batch jobs, once
    its first worker runs)."""
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
def open_client(args: argparse.Namespace) -> Iterator[Any]:
    """:func:`start_client` for the block, under ``--report``; closes what it started."""
    client = start_client(args)
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


def write_coadd_with_progress(
    client: Any, coadd: xr.Dataset, out: Path, *, overwrite: bool, progress: bool
) -> None:
    """Compute and write ``coadd`` to ``out`` on ``client``, with a progress bar."""
    if out.exists() and not overwrite:
        raise CoaddxError(f"{out} exists; pass --overwrite to replace it")
    write_coadd(
        coadd,
        out,
        overwrite=overwrite,
        compute=lambda delayed: compute_with_progress(client, delayed, show=progress),
    )


def fitted_budget(client: Any, shape: tuple[int, int], args: argparse.Namespace) -> int:
    """``coaddx.memory-per-task``, lowered when the workers' memory limits cannot hold it
    (an explicit ``--memory-per-task`` is kept as given)."""
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
