"""Laziness checks (xarray's ``raise_if_dask_computes``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask

__all__ = ["raise_if_dask_computes"]


@contextmanager
def raise_if_dask_computes(what: str = "computed while building the graph") -> Iterator[None]:
    """Inside the block, any dask compute raises ``AssertionError(what)``."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(what)

    with dask.config.set(scheduler=refuse):
        yield
