"""The execution flags every computing command shares, and the dask client they start.

``--cluster local`` (default) starts a ``LocalCluster`` (or connects to ``--scheduler``);
``--cluster slurm`` / ``pbs`` submits worker jobs through dask-jobqueue
(:func:`coaddx.runtime.cluster.connect`), whose scheduler speaks TLS with per-run credentials.
Dashboards listen on 127.0.0.1 unless ``--dashboard-address`` says otherwise; the command
prints how to reach one through an SSH tunnel. A run that fails or is interrupted closes its
cluster with short timeouts and removes the temporary store it was writing.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
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
    close_quickly,
    compute_with_progress,
    connect,
    dashboard_address,
    dashboard_link,
    dashboard_tunnel,
    local,
    performance_report,
    worker_resources,
)
from coaddx.runtime.diagnostics import format_bytes
from coaddx.runtime.shutdown import (
    cancel_and_wait,
    in_process,
    kill_workers,
    sigint_ignored,
    wait_idle,
)
from coaddx.settings import memory_per_task

__all__ = [
    "add_runtime_flags",
    "check_runtime_flags",
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
        "--dashboard-address",
        metavar="HOST:PORT",
        help="where the dask dashboard listens (default 127.0.0.1:8787, this host only; "
        "':8787' is every interface; coaddx.dashboard-address)",
    )
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


def check_runtime_flags(args: argparse.Namespace) -> None:
    """Refuse execution flags that cannot work (``--workers 0``, ``--threads -2``, a malformed
    ``--dashboard-address``) with a :class:`CoaddxError` naming the flag."""
    for flag in ("workers", "threads", "jobs"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise CoaddxError(f"--{flag} must be >= 1, got {value}")
    if getattr(args, "dashboard_address", None) is not None:
        dashboard_address(args.dashboard_address)


def _print_dashboard(client: Any) -> None:
    link = dashboard_link(client) or getattr(client, "dashboard_link", None)
    if link:
        print(f"dask dashboard: {link}")
    tunnel = dashboard_tunnel(client)
    if tunnel:
        print(tunnel)


def start_client(args: argparse.Namespace) -> Any:
    """The client the execution flags ask for (a ``ClusterConnection`` for batch jobs, once
    its first worker runs)."""
    check_runtime_flags(args)
    kind = getattr(args, "cluster", "local")
    address = getattr(args, "dashboard_address", None)
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
        extra = {} if address is None else {"dashboard_address": address}
        conn = connect(
            kind,
            jobs=args.jobs,
            adapt=args.adapt,
            config=args.jobqueue_config,
            job_script=args.job_script,
            **extra,
        )
        try:
            tunnel = dashboard_tunnel(conn)
            if tunnel:
                print(tunnel)
            print("waiting for the first worker job to start ...", flush=True)
            conn.wait_for_workers(1)
        except BaseException:
            conn.close(timeout=3)
            raise
        return conn
    if args.scheduler:
        if address is not None:
            raise CoaddxError("--dashboard-address applies to the clusters coaddx starts")
        client = connect(args.scheduler)
        print(f"dask dashboard: {client.dashboard_link}")
        return client
    with sigint_ignored():  # the workers leave Ctrl-C to this process
        client = local(
            args.workers,
            args.threads,
            processes=True if args.processes else None,
            dashboard_address=address,
            # dask's warnings (tasks cancelled by a Ctrl-C, ...) are noise beside the summary
            silence_logs=logging.ERROR,
        )
    _print_dashboard(client)
    return client


def _close(client: Any, args: argparse.Namespace, *, quickly: bool) -> None:
    """Close the client and the cluster the flags started (never a ``--scheduler``'s)."""
    ours = getattr(client, "cluster", None) if not args.scheduler else None
    if isinstance(client, ClusterConnection):
        client.close(timeout=3 if quickly else None)
    elif quickly:
        close_quickly(client, ours)
    else:
        client.close()
        if ours is not None:
            ours.close()


@contextlib.contextmanager
def open_client(args: argparse.Namespace) -> Iterator[Any]:
    """:func:`start_client` for the block, under ``--report``; closes what it started (at
    once, with short timeouts, when the block is interrupted)."""
    client = start_client(args)
    try:
        with performance_report(getattr(args, "report", None)):
            yield client
        if getattr(args, "report", None):
            print(f"performance report: {args.report}")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (coaddx.cli.main.Interrupted)
        _close(client, args, quickly=True)
        raise
    except BaseException:
        _close(client, args, quickly=False)
        raise
    _close(client, args, quickly=False)


def _temporaries(out: Path) -> set[Path]:
    """The hidden temporary stores :func:`write_coadd` makes beside ``out``."""
    return set(out.parent.glob(f".{out.name}.tmp-*")) if out.parent.is_dir() else set()


def _halt(client: Any, futures: Any) -> None:
    """Stop a failed or interrupted computation: kill the worker processes of a cluster this
    process started (they would finish their tasks first, or print tracebacks), else cancel
    its tasks and wait for the in-process workers."""
    cluster = getattr(client, "cluster", None)
    if cluster is not None and kill_workers(cluster):
        return
    cancel_and_wait(client, futures)


def write_coadd_with_progress(
    client: Any, coadd: xr.Dataset, out: Path, *, overwrite: bool, progress: bool
) -> None:
    """Compute and write ``coadd`` to ``out`` on ``client``, with a progress bar.

    If the write fails or is interrupted, the workers are stopped first (:func:`_halt`: none
    may go on writing), then the temporary store of this write is removed.
    """
    if out.exists() and not overwrite:
        raise CoaddxError(f"{out} exists; pass --overwrite to replace it")
    before = _temporaries(out)
    try:
        write_coadd(
            coadd,
            out,
            overwrite=overwrite,
            compute=lambda delayed: compute_with_progress(
                client, delayed, show=progress, on_failure=lambda f: _halt(client, f)
            ),
        )
    except BaseException:
        cluster = getattr(client, "cluster", None)
        if cluster is not None and not (in_process(cluster) and wait_idle(client)):
            kill_workers(cluster)
        for path in _temporaries(out) - before:
            shutil.rmtree(path, ignore_errors=True)
        raise


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
