"""Cluster helpers: with :mod:`coaddx.runtime.security` the only modules that import
``distributed`` (and ``dask_jobqueue``).

``local()`` starts the default ``LocalCluster``. By measurement on the project machine the
threaded worker (one process, one thread per core) is 2-4x faster than separate processes for
these I/O-bound reductions, because chunks never cross process boundaries; the dashboard is
served either way. ``connect(address)`` joins an existing scheduler; ``connect("slurm")`` or
``connect("pbs")`` submits dask workers as batch jobs through dask-jobqueue and returns a
:class:`ClusterConnection` that cancels them when closed.

What listens where (``cluster/README.md``, "What is exposed"): a local cluster's scheduler,
workers and dashboard bind to 127.0.0.1 unless asked otherwise (:func:`dashboard_address`); a
batch cluster's scheduler must be reachable from the compute nodes, so it speaks TLS with
per-run credentials (:func:`batch_security`) and its dashboard binds to 127.0.0.1 too.

:class:`WorkerMemory` samples the resident memory of every worker process during a
computation, so commands can report the measured peak per worker beside the planned one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, Self

import dask
import yaml
from distributed.diagnostics.plugin import WorkerPlugin

from coaddx.errors import ConfigError, InputError
from coaddx.runtime.malloc import tune_malloc
from coaddx.runtime.security import (
    DEFAULT_DASHBOARD_ADDRESS,
    batch_security,
    dashboard_address,
    dashboard_link,
    dashboard_tunnel,
    write_worker_credentials,
)
from coaddx.runtime.shutdown import cancel_and_wait, close_quickly

__all__ = [
    "DEFAULT_DASHBOARD_ADDRESS",
    "JOBQUEUE_KINDS",
    "ClusterConnection",
    "WorkerMemory",
    "WorkerPeak",
    "batch_security",
    "cancel_and_wait",
    "close_quickly",
    "compute_with_progress",
    "connect",
    "dashboard_address",
    "dashboard_link",
    "dashboard_tunnel",
    "jobqueue_cluster",
    "jobqueue_config",
    "local",
    "performance_report",
    "worker_resources",
    "write_worker_credentials",
]

#: Batch systems ``connect`` can start workers on, with their dask-jobqueue class names.
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


#: :func:`dashboard_address` under a name the ``dashboard_address`` arguments do not hide.
_resolve_dashboard = dashboard_address


def _positive(name: str, value: int | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, Integral) or value < 1
    ):
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")


def local(
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    *,
    processes: bool | None = None,
    dashboard: bool = True,
    dashboard_address: str | int | None = None,
    **kwargs: Any,
):
    """Start a ``distributed.LocalCluster`` sized to the machine and return its ``Client``.

    With ``processes=None`` the ``coaddx.local-cluster`` config decides ("threads": one
    worker with a thread per core; "processes": one single-threaded worker per core).
    The scheduler, the workers and the dashboard listen on 127.0.0.1 only; the dashboard's
    address is ``dashboard_address`` or :func:`dashboard_address`'s default (``":8787"``
    exposes it on every interface). ``dashboard=False`` starts none.
    """
    from distributed import Client, LocalCluster

    _positive("n_workers", n_workers)
    _positive("threads_per_worker", threads_per_worker)
    address = _resolve_dashboard(dashboard_address) if dashboard else None
    cores = os.cpu_count() or 1
    if processes is None:
        mode = dask.config.get("coaddx.local-cluster")
        if mode not in ("threads", "processes"):
            raise ConfigError(
                f"coaddx.local-cluster must be 'threads' or 'processes', got {mode!r}"
            )
        processes = mode == "processes"
    if processes:
        n_workers = n_workers or cores
        threads_per_worker = threads_per_worker or 1
    else:
        n_workers = n_workers or 1
        threads_per_worker = threads_per_worker or cores
        # an in-process worker's HTTP server (metrics, health) otherwise binds every interface
        kwargs.setdefault("worker_dashboard_address", "127.0.0.1:0")
    if address is None:
        # without a dashboard the scheduler still serves /health and /metrics: here only
        kwargs["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0"} | dict(
            kwargs.get("scheduler_kwargs") or {}
        )
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=processes,
        dashboard_address=address,
        **kwargs,
    )
    return _with_malloc_tuning(Client(cluster))


class MallocTuning(WorkerPlugin):
    """Worker plugin: :func:`coaddx.runtime.tune_malloc` in every worker process.

    Worker processes (process LocalClusters, dask-jobqueue jobs, remote schedulers) do not
    inherit the client's ``mallopt`` settings; without them each stacking task page-faults its
    fresh buffers (a 1 GiB single-process worker ran 24 % slower). The result is kept as the
    worker attribute ``coaddx_malloc_tuned``. Obeys ``coaddx.malloc-tuning`` of the worker.
    """

    name = "coaddx-malloc-tuning"
    idempotent = True

    def setup(self, worker: Any) -> None:
        worker.coaddx_malloc_tuned = tune_malloc()


def _with_malloc_tuning(client: Any) -> Any:
    """Register :class:`MallocTuning` on the client's workers (present and future)."""
    client.register_plugin(MallocTuning(), name=MallocTuning.name)
    return client


class ClusterConnection:
    """A ``distributed.Client`` together with the cluster it started.

    Attribute access falls through to the client (``conn.compute``, ``conn.gather``, ...).
    :meth:`close` closes the client, then the cluster, which cancels its batch jobs; the object
    is a context manager that does this on exit.
    """

    def __init__(self, client: Any, cluster: Any) -> None:
        self.client = client
        self.cluster = cluster

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["client"], name)

    @property
    def dashboard_link(self) -> str:
        return dashboard_link(self.client) or str(self.client.dashboard_link)

    def job_script(self) -> str:
        """The batch script each worker job runs."""
        return str(self.cluster.job_script())

    def close(self, timeout: float | None = None) -> None:
        """Close the client, then the cluster (cancelling its jobs); with ``timeout``
        (seconds) each waits at most that long (:func:`close_quickly`)."""
        if timeout is not None:
            close_quickly(self.client, self.cluster, timeout=timeout)
            return
        try:
            self.client.close()
        finally:
            try:
                self.cluster.close()
            finally:
                credentials = getattr(self.cluster, "coaddx_credentials", None)
                if callable(credentials):
                    credentials()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ClusterConnection {type(self.cluster).__name__} {self.dashboard_link}>"


def jobqueue_config(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """The ``jobqueue.<kind>`` section of a dask-config YAML file as keyword arguments of the
    dask-jobqueue cluster class (``local-directory`` -> ``local_directory``; null values are
    left out, so dask-jobqueue's defaults apply). Environment variables in the values are left
    for the job's shell to expand on the compute node."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the jobqueue config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    section = loaded.get("jobqueue") if isinstance(loaded, Mapping) else None
    if not isinstance(section, Mapping) or not isinstance(section.get(kind), Mapping):
        raise ConfigError(f"{path} has no 'jobqueue: {kind}:' section (dask config format)")
    renamed = {"name": "job_name"}  # the config's job name is the class's job_name
    return {
        renamed.get(str(key), str(key).replace("-", "_")): value
        for key, value in section[kind].items()
        if value is not None
    }


def _jobqueue_class(kind: str) -> type:
    if kind not in JOBQUEUE_KINDS:
        raise ConfigError(f"cluster kind must be one of {sorted(JOBQUEUE_KINDS)}, got {kind!r}")
    try:
        import dask_jobqueue
    except ImportError as exc:  # pragma: no cover - a dependency of coaddx
        raise ConfigError(
            "starting workers on a batch system needs dask-jobqueue (pip install dask-jobqueue)"
        ) from exc
    return getattr(dask_jobqueue, JOBQUEUE_KINDS[kind])


def jobqueue_cluster(
    kind: str,
    *,
    config: str | os.PathLike[str] | None = None,
    dashboard_address: str | int | None = None,
    **kwargs: Any,
) -> Any:
    """Build (without scaling) a dask-jobqueue ``SLURMCluster`` or ``PBSCluster``.

    Settings come from, in increasing priority: dask-jobqueue's defaults, the user's dask
    config (``~/.config/dask/jobqueue.yaml``), the YAML file ``config`` (for example
    ``cluster/jobqueue.yaml``) and ``kwargs`` (``cores=``, ``memory=``, ``queue=``, ...).

    The scheduler speaks TLS (``protocol="tls://"``) with :func:`batch_security` credentials
    (``security=`` here or in the config, else per-run ones, whose worker copy is written
    with mode 0600 to a private folder under ``shared-temp-directory``, default the current
    directory, which the compute nodes must see, and removed when the cluster is closed).
    Its dashboard listens on ``dashboard_address``, else the config's
    ``scheduler-options: dashboard_address``, else :func:`dashboard_address` (127.0.0.1).
    """
    cls = _jobqueue_class(kind)
    options = {**(jobqueue_config(config, kind) if config is not None else {}), **kwargs}
    for key in ("cores", "memory"):
        if options.get(key) is None and dask.config.get(f"jobqueue.{kind}.{key}", None) is None:
            raise ConfigError(
                f"no worker {key} for {kind}: pass {key}=..., a jobqueue config file "
                f"(--jobqueue-config cluster/jobqueue.yaml) or copy it to ~/.config/dask/"
            )
    protocol = str(options.get("protocol") or "tls://")
    if protocol.rstrip(":/") != "tls":
        raise ConfigError(f"batch clusters speak TLS (protocol tls://), got protocol {protocol!r}")
    options["protocol"] = "tls://"
    scheduler = dict(
        options.get("scheduler_options")
        or dask.config.get(f"jobqueue.{kind}.scheduler-options", None)
        or {}
    )
    if dashboard_address is not None or "dashboard_address" not in scheduler:
        scheduler["dashboard_address"] = _resolve_dashboard(dashboard_address)
    options["scheduler_options"] = scheduler
    shared = options.pop("shared_temp_directory", None) or dask.config.get(
        f"jobqueue.{kind}.shared-temp-directory", None
    )
    security = batch_security(
        options.pop("security", None) or dask.config.get(f"jobqueue.{kind}.security", None)
    )
    security, folder = write_worker_credentials(security, shared or os.getcwd())
    try:
        cluster = cls(security=security, **options)
    except (ValueError, TypeError) as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise ConfigError(f"cannot configure the {kind} cluster: {exc}") from exc
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if folder is not None:
        # removed when the cluster closes, else when it is collected or Python exits
        remove = weakref.finalize(cluster, shutil.rmtree, folder, True)
        cluster.coaddx_credentials = remove
        cluster.close = _then(cluster.close, remove)
    return cluster


def _then(close: Callable[..., Any], after: Callable[[], Any]) -> Callable[..., Any]:
    def closing(*args: Any, **kwargs: Any) -> Any:
        try:
            return close(*args, **kwargs)
        finally:
            after()

    return closing


def connect(
    target: str,
    jobs: int | None = None,
    adapt: bool = False,
    *,
    config: str | os.PathLike[str] | None = None,
    job_script: bool = False,
    timeout: str = "10s",
    security: Any = None,
    **kwargs: Any,
) -> Any:
    """Connect to a running scheduler, or start dask workers as Slurm / PBS jobs.

    Parameters
    ----------
    target : str
        ``"slurm"`` or ``"pbs"`` to submit workers through dask-jobqueue, otherwise the
        address of a running scheduler (``tcp://host:8786``).
    jobs : int, optional
        Batch jobs to start (default 1); with ``adapt`` the most the cluster may grow to.
    adapt : bool
        Let the cluster adapt between 0 and ``jobs`` jobs to the work queued.
    config : path-like, optional
        A dask-config YAML with a ``jobqueue:`` section (``cluster/jobqueue.yaml``).
    job_script : bool
        Print the batch script of one worker job before submitting.
    security : distributed.Security or mapping, optional
        TLS credentials: for an address, those of its scheduler (``tls://`` addresses); for a
        batch system, instead of per-run ones (:func:`batch_security`).
    **kwargs
        Passed to the dask-jobqueue cluster class (``cores``, ``memory``, ``queue``, ...).

    Returns
    -------
    distributed.Client or ClusterConnection
        A ``Client`` for an address; for a batch system a :class:`ClusterConnection`, whose
        ``close()`` (or leaving its ``with`` block) cancels the jobs. The dashboard link is
        printed.
    """
    if target not in JOBQUEUE_KINDS:
        if jobs is not None or adapt or kwargs or config is not None:
            raise ConfigError(
                f"jobs, adapt and jobqueue settings apply to "
                f"{sorted(JOBQUEUE_KINDS)}, not to a scheduler address ({target})"
            )
        return _connect_address(target, timeout, security)
    if jobs is not None and jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    from distributed import Client

    if security is not None:
        kwargs["security"] = security
    cluster = jobqueue_cluster(target, config=config, **kwargs)
    try:
        if job_script:
            print(cluster.job_script())
        if adapt:
            cluster.adapt(minimum_jobs=0, maximum_jobs=jobs or 1)
        else:
            cluster.scale(jobs=jobs or 1)
        client = _with_malloc_tuning(Client(cluster))
    except BaseException:
        close_quickly(None, cluster)
        raise
    conn = ClusterConnection(client, cluster)
    print(f"dask dashboard: {conn.dashboard_link}")
    return conn


def _connect_address(address: str, timeout: str, security: Any = None):
    from distributed import Client

    if security is not None and not hasattr(security, "get_connection_args"):
        security = batch_security(security)
    try:
        return _with_malloc_tuning(Client(address, timeout=timeout, security=security))
    except OSError as exc:
        raise ConfigError(f"cannot reach the dask scheduler at {address}: {exc}") from exc


def compute_with_progress(
    client: Any,
    obj: Any,
    *,
    show: bool = True,
    on_failure: Callable[[Any], None] | None = None,
) -> Any:
    """Compute ``obj`` (a dask collection, delayed, or a list of them) with a progress bar.

    On a ``client`` the bar is distributed's ``progress``; with ``client=None`` the work runs
    on the local dask scheduler under ``dask.diagnostics.ProgressBar``. When the computation
    fails or is interrupted (Ctrl-C), ``on_failure(futures)`` runs before the exception goes
    on; by default :func:`cancel_and_wait`: the tasks are cancelled and the in-process workers
    waited for, so that nothing of the computation runs on after it returns.
    """
    if client is None:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar() if show else contextlib.nullcontext()
        with bar:
            if isinstance(obj, list | tuple):
                return list(dask.compute(*obj))
            return dask.compute(obj)[0]
    from distributed import progress

    futures = client.compute(obj)
    try:
        if show:
            progress(futures)
            print()
            # the scheduler's side of the bar only notices the bar closed at its next update
            # (every 100 ms); closing the cluster before that logs a spurious CancelledError
            time.sleep(0.25)
        if isinstance(futures, list | tuple):
            return client.gather(list(futures))
        return futures.result()
    except BaseException:
        # interrupted or failed: nothing of this computation may run on after we return
        (on_failure or (lambda f: cancel_and_wait(client, f)))(futures)
        raise


@contextlib.contextmanager
def performance_report(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """``distributed.performance_report`` writing ``path`` (HTML), or nothing if ``path`` is
    None. Needs a running client."""
    if path is None:
        yield
        return
    from distributed import performance_report as report

    path = Path(path)
    try:  # refuse an unwritable path before the run, not after it
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with open(path, "a"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise InputError(f"--report {path}: cannot write the report there ({exc})") from exc
    with report(filename=str(path)):
        yield


def worker_resources(client: Any) -> dict[str, tuple[int, int]]:
    """``{address: (threads, memory limit in bytes)}`` of the workers connected now."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return {addr: (int(w["nthreads"]), int(w.get("memory_limit") or 0)) for addr, w in info.items()}


# -- peak memory of worker processes --------------------------------------------------------

_SAMPLERS: dict[str, Any] = {}


class _Sampler(threading.Thread):
    def __init__(self, interval: float) -> None:
        import psutil

        super().__init__(daemon=True, name="coaddx-memory-sampler")
        self._proc = psutil.Process(os.getpid())
        self.baseline = self.peak = self._proc.memory_info().rss
        self.interval = interval
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self.stop.wait(self.interval)


def _sampler_key(key: str, dask_worker: Any) -> str:
    # one sampler per worker: workers of an in-process cluster share this module
    return f"{key}-{getattr(dask_worker, 'address', '')}"


def _start_sampler(key: str, interval: float, dask_worker: Any = None) -> int:
    sampler = _Sampler(interval)
    _SAMPLERS[_sampler_key(key, dask_worker)] = sampler
    sampler.start()
    return os.getpid()


def _stop_sampler(key: str, dask_worker: Any = None) -> tuple[int, int, int]:
    sampler = _SAMPLERS.pop(_sampler_key(key, dask_worker))
    sampler.stop.set()
    sampler.join()
    sampler.peak = max(sampler.peak, sampler._proc.memory_info().rss)
    data = getattr(dask_worker, "data", None)
    spilled = int(getattr(data, "cumulative_metrics", {}).get(("disk-write", "count"), 0))
    return sampler.baseline, sampler.peak, spilled


@dataclass(frozen=True)
class WorkerPeak:
    """Resident memory of one worker process: at the start, at its peak, and how many keys
    the worker spilled to disk over its life."""

    baseline: int
    peak: int
    spilled: int

    @property
    def added(self) -> int:
        return max(0, self.peak - self.baseline)


class WorkerMemory:
    """Context manager sampling the RSS of every worker process of ``client`` (a thread in
    each worker, every ``interval`` seconds). After the block, ``peaks`` maps worker address
    to :class:`WorkerPeak`. Workers that join during the block are not sampled; a block that
    fails or is interrupted leaves ``peaks`` empty (its workers may be gone)."""

    def __init__(self, client: Any, interval: float = 0.02) -> None:
        self.client = client
        self.interval = interval
        self.key = f"coaddx-{uuid.uuid4().hex}"
        self.peaks: dict[str, WorkerPeak] = {}
        self._workers: list[str] = []

    def __enter__(self) -> Self:
        started = self.client.run(_start_sampler, self.key, self.interval)
        self._workers = sorted(started)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            # failed or interrupted: the workers may be gone, and asking them would hang
            return
        got = self.client.run(_stop_sampler, self.key, workers=self._workers, on_error="return")
        self.peaks = {
            addr: WorkerPeak(*value)
            for addr, value in got.items()
            if not isinstance(value, BaseException)
        }

    @property
    def max_peak(self) -> int:
        return max((p.peak for p in self.peaks.values()), default=0)

    @property
    def spilled(self) -> int:
        return sum(p.spilled for p in self.peaks.values())
