"""Image differencing (LSST ip_diffim ImagePsfMatch / SnapPsfMatch, algorithms.md 5-6)."""

from coaddx.diffim.config import PsfMatchConfig, snap_config
from coaddx.diffim.subtract import Subtraction, snap_subtract, subtract

__all__ = ["PsfMatchConfig", "Subtraction", "snap_config", "snap_subtract", "subtract"]
