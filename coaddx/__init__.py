"""coaddx: deep astronomical coadds with the LSST algorithms on dask, xarray and Zarr.

The public API, re-exports only. Where each LSST task lives:

==============================  ===========================================================
LSST task                       coaddx
==============================  ===========================================================
MakeDirectWarp / MakeWarp       ``coaddx.warp`` (``make_warps``)
MakePsfMatchedWarp              ``coaddx.warp.psf_matched`` (ModelPsfMatch)
AssembleCoadd                   ``coaddx.coadd.assemble`` (``assemble``)
CompareWarpAssembleCoadd        ``coaddx.coadd.compare_warp`` (``assemble_compare_warp``)
ImagePsfMatch / SnapPsfMatch    ``coaddx.diffim`` (``subtract``, ``snap_subtract``)
DcrAssembleCoadd                ``coaddx.dcr`` (``assemble_dcr``, ``dcr_template``)
CalibrateTask                   ``coaddx.calibrate`` (``calibrate``, ``calibrate_exposures``)
==============================  ===========================================================
"""

from __future__ import annotations

from coaddx._version import __version__
from coaddx.calibrate.calibrate import Calibration, calibrate
from coaddx.calibrate.config import CalibrateConfig
from coaddx.calibrate.exposures import CalibrateResult, calibrate_exposures
from coaddx.coadd.assemble import assemble
from coaddx.coadd.compare_warp.assemble import assemble_compare_warp
from coaddx.coadd.compare_warp.config import CompareWarpConfig
from coaddx.coadd.config import AssembleConfig, InterpConfig
from coaddx.coadd.export import export_fits
from coaddx.coadd.property_maps import property_maps
from coaddx.coadd.psf import CoaddPsf, coadd_psf, coadd_psf_fwhm
from coaddx.dcr.assemble import assemble_dcr, dcr_template
from coaddx.dcr.config import DcrConfig
from coaddx.diffim.config import PsfMatchConfig, snap_config
from coaddx.diffim.subtract import Subtraction, snap_subtract, subtract
from coaddx.errors import (
    CalibrationError,
    CoaddxError,
    ConfigError,
    InputError,
    InputWarning,
    MaskPlaneError,
    SchemaError,
    StoreError,
)
from coaddx.io.catalog import read_reference_catalog
from coaddx.io.fits.exposure import read_exposure, write_exposure
from coaddx.io.inputs import coadd_inputs
from coaddx.io.property_maps import write_property_maps
from coaddx.io.zarr.coadd_store import open_coadd, write_coadd
from coaddx.io.zarr.warp_store import IncompleteStoreWarning, WarpStore, check_store
from coaddx.lsst import from_lsst_config
from coaddx.model.catalog import ReferenceCatalog
from coaddx.model.exposure import Exposure
from coaddx.model.masks import mask_planes
from coaddx.model.refraction import LSST_SITE, Observatory, Weather, dcr_shifts
from coaddx.model.skymap import Box, Patch, Tract
from coaddx.sim.simulate import Simulation, simulate
from coaddx.warp.config import ModelPsfMatchConfig, WarpConfig
from coaddx.warp.make_warps import WarpResult, make_warps
from coaddx.warp.store import open_warps, write_warps

__all__ = [
    "LSST_SITE",
    "AssembleConfig",
    "Box",
    "CalibrateConfig",
    "CalibrateResult",
    "Calibration",
    "CalibrationError",
    "CoaddPsf",
    "CoaddxError",
    "CompareWarpConfig",
    "ConfigError",
    "DcrConfig",
    "Exposure",
    "IncompleteStoreWarning",
    "InputError",
    "InputWarning",
    "InterpConfig",
    "MaskPlaneError",
    "ModelPsfMatchConfig",
    "Observatory",
    "Patch",
    "PsfMatchConfig",
    "ReferenceCatalog",
    "SchemaError",
    "Simulation",
    "StoreError",
    "Subtraction",
    "Tract",
    "WarpConfig",
    "WarpResult",
    "WarpStore",
    "Weather",
    "__version__",
    "assemble",
    "assemble_compare_warp",
    "assemble_dcr",
    "calibrate",
    "calibrate_exposures",
    "check_store",
    "coadd_inputs",
    "coadd_psf",
    "coadd_psf_fwhm",
    "dcr_shifts",
    "dcr_template",
    "export_fits",
    "from_lsst_config",
    "make_warps",
    "mask_planes",
    "open_coadd",
    "open_warps",
    "property_maps",
    "read_exposure",
    "read_reference_catalog",
    "simulate",
    "snap_config",
    "snap_subtract",
    "subtract",
    "write_coadd",
    "write_exposure",
    "write_property_maps",
    "write_warps",
]
