"""CalibrateTask: detection, measurement, astrometric and photometric calibration (algorithms.md
7): ``config`` (:class:`CalibrateConfig`), ``sources`` (detection and measurement with sep:
centroids, aperture and PSF fluxes, flags), ``astrometry`` (offset search, matching, the
rejection loop), ``wcs_fit`` (the TAN-SIP least squares), ``calibrate`` (:func:`calibrate` of
one exposure) and ``exposures`` (:func:`calibrate_exposures`: many, one dask task each).
getZeroPoint is :func:`coaddx.kernels.photocal.zero_point`, the reference catalogues
:func:`coaddx.read_reference_catalog`.

``coaddx.calibrate`` is the function (as ``coaddx.assemble``); import the modules by their
full names (``from coaddx.calibrate import astrometry``).
"""

from coaddx.calibrate.calibrate import Calibration, Photometry, calibrate
from coaddx.calibrate.config import CalibrateConfig
from coaddx.calibrate.exposures import CalibrateResult, calibrate_exposures

__all__ = [
    "CalibrateConfig",
    "CalibrateResult",
    "Calibration",
    "Photometry",
    "calibrate",
    "calibrate_exposures",
]
