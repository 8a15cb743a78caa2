"""Helpers that the tests and benchmarks share (and downstream users may use): random warp
Datasets, laziness checks, brute-force references. Never imported by the library itself."""

from coaddx.testing.lazy import raise_if_dask_computes
from coaddx.testing.warps import random_warps

__all__ = ["raise_if_dask_computes", "random_warps"]
