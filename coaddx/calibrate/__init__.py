"""CalibrateTask: detection, measurement, astrometric and photometric calibration (algorithms.md
7; issue 13, in progress): ``config`` (:class:`CalibrateConfig`), ``sources`` (detection and
measurement with sep), ``astrometry`` (offset search, matching, TAN-SIP fit) and ``calibrate``
(:func:`calibrate` of one exposure). getZeroPoint is :func:`coaddx.kernels.photocal.zero_point`,
the reference catalogues :func:`coaddx.read_reference_catalog`.
"""

from coaddx.calibrate.calibrate import Calibration, Photometry, calibrate
from coaddx.calibrate.config import CalibrateConfig

__all__ = ["CalibrateConfig", "Calibration", "Photometry", "calibrate"]
