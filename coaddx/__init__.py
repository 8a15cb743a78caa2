"""coaddx: deep astronomical coadds with the LSST algorithms on dask, xarray and Zarr."""

from __future__ import annotations

__version__ = "0.1.0"

from . import runtime as _runtime  # noqa: F401  (registers the coaddx dask config defaults)
from .assemble import assemble
from .compare_warp import CompareWarpConfig, assemble_compare_warp
from .config import AssembleConfig, InterpConfig, from_lsst_config
from .diffim import Subtraction, snap_subtract, subtract
from .errors import (
    CoaddxError,
    ConfigError,
    InputError,
    MaskPlaneError,
    SchemaError,
    StoreError,
)
from .exposure import Exposure
from .io.export import export_fits
from .io.fits import read_exposure, write_exposure
from .io.zarr import (
    IncompleteStoreWarning,
    WarpStore,
    check_store,
    open_coadd,
    open_warps,
    write_coadd,
    write_warps,
)
from .masks import mask_planes
from .psfmatch import ModelPsfMatchConfig, PsfMatchConfig, snap_config
from .simulate import Simulation, simulate
from .skymap import Box, Patch, Tract
from .warp import WarpConfig, WarpResult, make_warps

__all__ = [
    "AssembleConfig",
    "Box",
    "CoaddxError",
    "CompareWarpConfig",
    "ConfigError",
    "Exposure",
    "IncompleteStoreWarning",
    "InputError",
    "InterpConfig",
    "MaskPlaneError",
    "ModelPsfMatchConfig",
    "Patch",
    "PsfMatchConfig",
    "SchemaError",
    "Simulation",
    "StoreError",
    "Subtraction",
    "Tract",
    "WarpConfig",
    "WarpResult",
    "WarpStore",
    "__version__",
    "assemble",
    "assemble_compare_warp",
    "check_store",
    "export_fits",
    "from_lsst_config",
    "make_warps",
    "mask_planes",
    "open_coadd",
    "open_warps",
    "read_exposure",
    "simulate",
    "snap_config",
    "snap_subtract",
    "subtract",
    "write_coadd",
    "write_exposure",
    "write_warps",
]
