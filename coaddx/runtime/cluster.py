"""Cluster helpers: the only module that imports ``distributed`` (and ``dask_jobqueue``).

``local()`` starts the default ``LocalCluster``. By measurement on the project machine the
threaded worker (one process, one thread per core) is 2-4x faster than separate processes for
these I/O-bound reductions, because chunks never cross process boundaries; the dashboard is
served either way. ``connect(address)`` joins an existing scheduler; ``connect("slurm")`` or
``connect("pbs")`` submits dask workers as batch jobs through dask-jobqueue and returns a
:class:`ClusterConnection` that cancels them when closed.

:class:`WorkerMemory` samples the resident memory of every worker process during a
computation, so commands can report the measured peak per worker beside the planned one.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import dask
import yaml
from distributed.diagnostics.plugin import WorkerPlugin

from coaddx.errors import ConfigError
from coaddx.runtime.malloc import tune_malloc

__all__ = [
    "JOBQUEUE_KINDS",
    "ClusterConnection",
    "WorkerMemory",
    "WorkerPeak",
    "compute_with_progress",
    "connect",
    "jobqueue_cluster",
    "jobqueue_config",
    "local",
    "performance_report",
    "worker_resources",
]

#: Batch systems ``connect`` can start workers on, with their dask-jobqueue class names.
JOBQUEUE_KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster"}


def local(
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    *,
    processes: bool | None = None,
    dashboard: bool = True,
    **kwargs: Any,
):
    """Start a ``distributed.LocalCluster`` sized to the machine and return its ``Client``.

    With ``processes=None`` the ``coaddx.local-cluster`` config decides ("threads": one
    worker with a thread per core; "processes": one single-threaded worker per core).
    """
    from distributed import Client, LocalCluster

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
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=processes,
        dashboard_address=":8787" if dashboard else None,
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
        return str(self.client.dashboard_link)

    def job_script(self) -> str:
        """The batch script each worker job runs."""
        return str(self.cluster.job_script())

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.cluster.close()

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
    kind: str, *, config: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Any:
    """Build (without scaling) a dask-jobqueue ``SLURMCluster`` or ``PBSCluster``.

    Settings come from, in increasing priority: dask-jobqueue's defaults, the user's dask
    config (``~/.config/dask/jobqueue.yaml``), the YAML file ``config`` (for example
    ``cluster/jobqueue.yaml``) and ``kwargs`` (``cores=``, ``memory=``, ``queue=``, ...).
    """
    cls = _jobqueue_class(kind)
    options = {**(jobqueue_config(config, kind) if config is not None else {}), **kwargs}
    for key in ("cores", "memory"):
        if options.get(key) is None and dask.config.get(f"jobqueue.{kind}.{key}", None) is None:
            raise ConfigError(
                f"no worker {key} for {kind}: pass {key}=..., a jobqueue config file "
                f"(--jobqueue-config cluster/jobqueue.yaml) or copy it to ~/.config/dask/"
            )
    try:
        return cls(**options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot configure the {kind} cluster: {exc}") from exc


def connect(
    target: str,
    jobs: int | None = None,
    adapt: bool = False,
    *,
    config: str | os.PathLike[str] | None = None,
    job_script: bool = False,
    timeout: str = "10s",
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
        return _connect_address(target, timeout)
    if jobs is not None and jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    from distributed import Client

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
        cluster.close()
        raise
    conn = ClusterConnection(client, cluster)
    print(f"dask dashboard: {conn.dashboard_link}")
    return conn


def _connect_address(address: str, timeout: str):
    from distributed import Client

    try:
        return _with_malloc_tuning(Client(address, timeout=timeout))
    except OSError as exc:
        raise ConfigError(f"cannot reach the dask scheduler at {address}: {exc}") from exc


def compute_with_progress(client: Any, obj: Any, *, show: bool = True) -> Any:
    """Compute ``obj`` (a dask collection, delayed, or a list of them) with a progress bar.

    On a ``client`` the bar is distributed's ``progress``; with ``client=None`` the work runs
    on the local dask scheduler under ``dask.diagnostics.ProgressBar``.
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
    if show:
        progress(futures)
        print()
        # the scheduler's side of the bar only notices the bar closed at its next update
        # (every 100 ms); closing the cluster before that logs a spurious CancelledError
        time.sleep(0.25)
    if isinstance(futures, list | tuple):
        return client.gather(list(futures))
    return futures.result()


@contextlib.contextmanager
def performance_report(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """``distributed.performance_report`` writing ``path`` (HTML), or nothing if ``path`` is
    None. Needs a running client."""
    if path is None:
        yield
        return
    from distributed import performance_report as report

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    to :class:`WorkerPeak`. Workers that join during the block are not sampled."""

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
