"""Helpers that the tests and benchmarks share (and downstream users may use): random warp
Datasets, laziness checks, brute-force references. Never imported by the library itself."""

from coaddx.testing.dcr import DcrScene, dcr_scene
from coaddx.testing.lazy import raise_if_dask_computes
from coaddx.testing.warps import random_warps

__all__ = ["DcrScene", "dcr_scene", "raise_if_dask_computes", "random_warps"]
