"""The coaddx exception hierarchy.

Every error coaddx raises on bad input derives from :class:`CoaddxError`, so callers can catch
one type. Messages name the file, visit, variable or config field at fault and what is wrong.
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "CoaddxError",
    "ConfigError",
    "InputError",
    "InputWarning",
    "MaskPlaneError",
    "SchemaError",
    "StoreError",
]


class CoaddxError(Exception):
    """Base class of every error raised by coaddx."""


class ConfigError(CoaddxError, ValueError):
    """A configuration value is out of range or inconsistent (names the field)."""


class InputError(CoaddxError, ValueError):
    """Input data are unusable: missing planes, bad shapes, NaN variance, unreadable files."""


class SchemaError(InputError):
    """A Dataset or store does not have the coaddx warp/coadd schema."""


class MaskPlaneError(InputError, KeyError):
    """A mask plane name is unknown, or two mask-plane dictionaries disagree."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class StoreError(CoaddxError, OSError):
    """A Zarr store is missing, empty, corrupt, partially written or of the wrong kind."""


class CalibrationError(CoaddxError, RuntimeError):
    """An exposure could not be calibrated: too few matches, a fit whose scatter exceeds its
    limit, no photometric stars (names the exposure and the figure)."""


class InputWarning(UserWarning):
    """Input data or a config are usable but suspect: a plane to remove that the data lack, a
    pixel scale far from the patch's (names the file, plane or field; the step goes on)."""
