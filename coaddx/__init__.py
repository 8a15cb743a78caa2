"""coaddx: deep astronomical coadds with the LSST algorithms on dask, xarray and Zarr."""

from __future__ import annotations

__version__ = "0.1.0"

from . import runtime as _runtime  # noqa: F401  (registers the coaddx dask config defaults)
from .assemble import assemble
from .compare_warp import CompareWarpConfig, assemble_compare_warp
from .config import AssembleConfig, InterpConfig, from_lsst_config
from .errors import (
    CoaddxError,
    ConfigError,
    InputError,
    MaskPlaneError,
    SchemaError,
    StoreError,
)
from .diffim import Subtraction, snap_subtract, subtract
from .exposure import Exposure
from .io.fits import read_exposure, write_exposure
from .io.export import export_fits
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
    "CompareWarpConfig",
    "Exposure",
    "WarpConfig",
    "WarpResult",
    "Box",
    "CoaddxError",
    "ConfigError",
    "IncompleteStoreWarning",
    "InputError",
    "InterpConfig",
    "ModelPsfMatchConfig",
    "PsfMatchConfig",
    "Subtraction",
    "MaskPlaneError",
    "Patch",
    "SchemaError",
    "Simulation",
    "StoreError",
    "Tract",
    "WarpStore",
    "__version__",
    "assemble",
    "assemble_compare_warp",
    "check_store",
    "export_fits",
    "make_warps",
    "read_exposure",
    "write_exposure",
    "from_lsst_config",
    "mask_planes",
    "open_coadd",
    "open_warps",
    "simulate",
    "snap_config",
    "snap_subtract",
    "subtract",
    "write_coadd",
    "write_warps",
]

