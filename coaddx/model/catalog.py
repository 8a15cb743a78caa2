"""A reference catalogue (positions, magnitudes, proper motions) as the calibration uses it.

Plain numpy arrays in degrees, magnitudes and mas/yr; :meth:`ReferenceCatalog.at_epoch` moves
the stars by their proper motions to an observation epoch (linear in the tangent plane, as
LSST's reference loaders do for the small motions of a few decades), and
:meth:`ReferenceCatalog.select` keeps the rows of a mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from coaddx.errors import InputError

__all__ = ["MJD_J2000", "ReferenceCatalog"]

#: MJD of the J2000.0 epoch; epochs are Julian years (Gaia DR3: 2016.0).
MJD_J2000 = 51544.5
_DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class ReferenceCatalog:
    """``ra``, ``dec`` (degrees), ``mag`` and ``mag_err`` (None without errors), proper
    motions ``pm_ra`` (mu_alpha* = mu_alpha cos dec) and ``pm_dec`` in mas/yr (None without),
    the catalogue ``epoch`` (Julian year) and its ``source`` (for messages)."""

    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray | None = None
    pm_ra: np.ndarray | None = None
    pm_dec: np.ndarray | None = None
    epoch: float | None = None
    source: str = "reference catalogue"

    def __post_init__(self) -> None:
        n = np.asarray(self.ra).shape
        for name in ("ra", "dec", "mag", "mag_err", "pm_ra", "pm_dec"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value, np.float64)
            if arr.ndim != 1 or arr.shape != n:
                raise InputError(f"{self.source}: column {name} has shape {arr.shape}, not {n}")
            object.__setattr__(self, name, arr)
        if (self.pm_ra is None) != (self.pm_dec is None):
            raise InputError(f"{self.source}: give both proper-motion columns or neither")
        if self.pm_ra is not None and self.epoch is None:
            raise InputError(f"{self.source}: proper motions need the catalogue epoch")
        bad = ~np.isfinite(self.dec) | (np.abs(self.dec) > 90)
        if np.any(bad):
            raise InputError(
                f"{self.source}: {int(bad.sum())} declinations are not finite degrees in "
                "[-90, 90] (a column in radians or of the wrong kind?)"
            )

    def __len__(self) -> int:
        return int(self.ra.size)

    def at_epoch(self, mjd: float) -> ReferenceCatalog:
        """The catalogue at the epoch of MJD ``mjd`` (unchanged without proper motions or when
        ``mjd`` is not finite)."""
        if self.pm_ra is None or self.pm_dec is None or not math.isfinite(mjd):
            return self
        assert self.epoch is not None
        years = (mjd - MJD_J2000) / _DAYS_PER_YEAR + 2000.0 - self.epoch
        pm_ra = np.nan_to_num(self.pm_ra)
        pm_dec = np.nan_to_num(self.pm_dec)
        dec = self.dec + pm_dec * years / 3.6e6
        ra = self.ra + pm_ra * years / 3.6e6 / np.cos(np.radians(self.dec))
        return replace(
            self, ra=np.mod(ra, 360.0), dec=dec, epoch=2000.0 + (mjd - MJD_J2000) / _DAYS_PER_YEAR
        )

    def select(self, keep: np.ndarray) -> ReferenceCatalog:
        """The rows where ``keep`` is True."""

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[keep]

        return replace(
            self,
            ra=self.ra[keep],
            dec=self.dec[keep],
            mag=self.mag[keep],
            mag_err=cut(self.mag_err),
            pm_ra=cut(self.pm_ra),
            pm_dec=cut(self.pm_dec),
        )
