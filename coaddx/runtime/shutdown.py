"""Stopping a run quickly: cancelled work waited for, clusters closed with short timeouts.

Used when a run is interrupted (Ctrl-C, SIGTERM) or fails: nothing the run started may go on
writing after its temporary outputs are removed, and closing must not wait ~30 s on workers
that the interrupt already killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil

__all__ = [
    "cancel_and_wait",
    "close_quickly",
    "in_process",
    "kill_workers",
    "sigint_ignored",
    "wait_idle",
    "worker_pids",
]


def worker_pids(cluster: Any) -> list[int]:
    """Process ids of the worker processes a cluster's nannies run in this process (a process
    ``LocalCluster``); empty for in-process workers and batch jobs."""
    pids = []
    for worker in dict(getattr(cluster, "workers", None) or {}).values():
        with contextlib.suppress(Exception):
            pid = getattr(worker, "pid", None)
            if isinstance(pid, int) and pid != os.getpid():
                pids.append(pid)
    return pids


def kill_workers(cluster: Any, timeout: float = 3.0) -> int:
    """Stop the worker processes of ``cluster`` (:func:`worker_pids`) now; how many.

    Each worker is told to exit without waiting for the tasks it runs (they are abandoned, its
    threads are daemons), so that it still exits normally and releases its semaphores; its
    nanny is closed at the same time, so that it does not start a new one. A process still
    alive after ``timeout`` seconds gets SIGKILL. Closing the cluster right after takes
    milliseconds instead of waiting for the running tasks."""

    pids = worker_pids(cluster)
    if not pids:
        return 0
    nannies = [w for w in dict(cluster.workers).values() if getattr(w, "pid", None) in pids]

    async def stop() -> None:
        steps = []
        for nanny in nannies:
            process = getattr(nanny, "process", None)
            if process is not None:  # first: the stop message without waiting for tasks
                steps.append(
                    asyncio.ensure_future(
                        process.kill(timeout=timeout / 2, executor_wait=False, reason="stop")
                    )
                )
            steps.append(asyncio.ensure_future(nanny.close(timeout=timeout / 2, reason="stop")))
        await asyncio.gather(*steps, return_exceptions=True)

    with contextlib.suppress(Exception):
        cluster.sync(stop, callback_timeout=timeout)
    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.kill()
            alive.append(proc)
    psutil.wait_procs(alive, timeout=timeout)
    return len(pids)


def _in_process_workers(client: Any) -> list[Any]:
    workers = dict(getattr(getattr(client, "cluster", None), "workers", None) or {}).values()
    return [w for w in workers if hasattr(getattr(w, "state", None), "executing_count")]


def in_process(cluster: Any) -> bool:
    """Whether every worker of ``cluster`` runs in this process (a threaded LocalCluster)."""
    workers = dict(getattr(cluster, "workers", None) or {}).values()
    return all(hasattr(getattr(w, "state", None), "executing_count") for w in workers)


def wait_idle(client: Any, timeout: float = 5.0) -> bool:
    """Wait until the in-process workers of ``client``'s cluster (a threaded LocalCluster) run
    no task, at most ``timeout`` seconds; whether they are idle. Worker threads cannot be
    stopped, so files they write must not be removed before this."""
    deadline = time.monotonic() + timeout
    workers = _in_process_workers(client)
    while any(w.state.executing_count for w in workers):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def cancel_and_wait(client: Any, futures: Any, timeout: float = 5.0) -> None:
    """Cancel ``futures`` and wait for the in-process workers to finish the tasks already
    running (:func:`wait_idle`); what a failed or interrupted computation does by default."""
    with contextlib.suppress(Exception):
        client.cancel(futures, force=True)
    wait_idle(client, timeout)


def close_quickly(client: Any, cluster: Any = None, *, timeout: float = 3.0) -> None:
    """Close ``client`` and then ``cluster`` (either may be ``None``) after killing the
    cluster's worker processes (:func:`kill_workers`), each step waiting at most ``timeout``
    seconds. Errors while closing are ignored; batch jobs are cancelled as by
    ``cluster.close()``.

    For an interrupted run: closing normally waits for the tasks running, and for workers a
    Ctrl-C killed (it reaches every process of the terminal's process group) ~30 s.
    """
    if cluster is not None:
        kill_workers(cluster, timeout)
    if client is not None:
        with contextlib.suppress(Exception):
            client.close(timeout=timeout)
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close(timeout=timeout)
        credentials = getattr(cluster, "coaddx_credentials", None)
        if callable(credentials):
            credentials()


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the block (in the main thread), so that processes started in it,
    such as a ``LocalCluster``'s workers, inherit that: a Ctrl-C, which the terminal sends to
    every process of its group, then reaches only the driver, which stops them cleanly instead
    of each printing a ``KeyboardInterrupt`` traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)
