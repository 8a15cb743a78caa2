"""MakeWarp's per-visit tasks: one dask task per visit, computed together.

Each task runs a whole visit in its own thread or process (read, warp, composite, write its
own store slots), so the tasks share nothing and no task computes a graph of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask

__all__ = ["run_visit_tasks", "visit_tasks"]


def visit_tasks(
    task: Callable[..., Any], arguments: Sequence[Sequence[Any]], shared: Sequence[Any] = ()
) -> list[Any]:
    """One delayed, impure call ``task(*args, *shared)`` per entry of ``arguments``. Each
    object of ``shared`` is one node of the graph that every call depends on (held once in
    the graph and moved to each worker once, not copied into every task)."""
    common = [
        dask.delayed(obj, traverse=False, name=f"coaddx-shared-{i}-{dask.base.tokenize(obj)}")
        for i, obj in enumerate(shared)
    ]
    return [dask.delayed(task, pure=False)(*args, *common) for args in arguments]


def run_visit_tasks(
    task: Callable[..., Any],
    arguments: Sequence[Sequence[Any]],
    compute: Callable[..., Any] | None = None,
    *,
    shared: Sequence[Any] = (),
) -> list[Any]:
    """The results of ``task(*args, *shared)`` for every entry of ``arguments``, computed as
    parallel dask tasks by ``compute(*tasks)`` (default :func:`dask.compute`); see
    :func:`visit_tasks` for ``shared``."""
    tasks = visit_tasks(task, arguments, shared)
    return list((compute or dask.compute)(*tasks)) if tasks else []
