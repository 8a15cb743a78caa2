"""MakeWarp's per-visit tasks: one dask task per visit, computed together.

Each task runs a whole visit in its own thread or process (read, warp, composite, write its
own store slots), so the tasks share nothing and no task computes a graph of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask

__all__ = ["run_visit_tasks", "visit_tasks"]


def visit_tasks(task: Callable[..., Any], arguments: Sequence[Sequence[Any]]) -> list[Any]:
    """One delayed, impure call ``task(*args)`` per entry of ``arguments``."""
    return [dask.delayed(task, pure=False)(*args) for args in arguments]


def run_visit_tasks(
    task: Callable[..., Any],
    arguments: Sequence[Sequence[Any]],
    compute: Callable[..., Any] | None = None,
) -> list[Any]:
    """The results of ``task(*args)`` for every entry of ``arguments``, computed as parallel
    dask tasks by ``compute(*tasks)`` (default :func:`dask.compute`)."""
    tasks = visit_tasks(task, arguments)
    return list((compute or dask.compute)(*tasks)) if tasks else []
