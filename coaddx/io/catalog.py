"""Reading reference catalogues (FITS, ECSV, Parquet tables) for the calibration, and writing
source catalogues (:func:`write_source_table`, FITS, atomically).

Gaia-like column names by default (``ra``, ``dec`` in degrees, ``phot_g_mean_mag``), any names
by argument. Columns with units (TUNIT, ECSV or Parquet metadata) are converted: angles to
degrees, proper motions to mas/yr; magnitudes must be magnitudes (``mag``) or unitless. A
column without a unit, as in Gaia's own chunks, is taken to be in degrees, magnitudes and
mas/yr. The epoch is the argument, else a ``ref_epoch`` column (its first value) or an
``EPOCH`` / ``REFEPOCH`` keyword of the table.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.table import Table

from coaddx.errors import InputError
from coaddx.model.catalog import ReferenceCatalog

__all__ = ["read_reference_catalog", "write_source_table"]

_FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fz": "fits",
    ".gz": "fits",
    ".ecsv": "ascii.ecsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def _format(path: Path) -> str:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"{path}: cannot tell the catalogue format from the suffix {path.suffix!r} "
            f"(FITS, ECSV or Parquet: {sorted(_FORMATS)})"
        )
    return fmt


def _column(table: Table, name: str, unit: u.Unit, path: Path, what: str) -> np.ndarray:
    if name not in table.colnames:
        raise InputError(
            f"{path}: no column {name!r} for the {what} (columns: {', '.join(table.colnames)})"
        )
    col = table[name]
    values = np.ma.filled(np.ma.asarray(col, dtype=np.float64), np.nan)
    given = getattr(col, "unit", None)
    if given is None or str(given) in ("", "None"):
        return np.asarray(values, np.float64)
    try:
        return np.asarray((values * u.Unit(given)).to_value(unit), np.float64)
    except (u.UnitConversionError, ValueError, TypeError) as exc:
        raise InputError(
            f"{path}: column {name!r} ({what}) is in {given}, which is not convertible to {unit}"
        ) from exc


def _epoch(table: Table, given: float | None) -> float | None:
    if given is not None:
        return float(given)
    if "ref_epoch" in table.colnames and len(table):
        return float(np.ma.filled(np.ma.asarray(table["ref_epoch"], dtype=float), np.nan)[0])
    for key in ("EPOCH", "REFEPOCH", "epoch", "ref_epoch"):
        if key in table.meta:
            return float(table.meta[key])
    return None


def read_reference_catalog(
    path: str | os.PathLike[str],
    *,
    ra: str = "ra",
    dec: str = "dec",
    mag: str = "phot_g_mean_mag",
    mag_err: str | None = None,
    pm_ra: str | None = None,
    pm_dec: str | None = None,
    epoch: float | None = None,
) -> ReferenceCatalog:
    """A :class:`~coaddx.model.catalog.ReferenceCatalog` from a FITS, ECSV or Parquet table.

    ``ra``, ``dec`` (degrees or any angle unit), ``mag`` (magnitudes) and optionally
    ``mag_err``, ``pm_ra`` (mu_alpha cos dec) and ``pm_dec`` (mas/yr) name the columns;
    ``epoch`` (Julian year) is the epoch of the positions. ``InputError`` for a missing file or
    column, a unit that does not convert, or proper motions without an epoch.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no reference catalogue at {path}")
    try:
        table = Table.read(path, format=_format(path))
    except InputError:
        raise
    except Exception as exc:  # astropy / pyarrow errors at the boundary
        raise InputError(f"{path}: cannot read the reference catalogue: {exc}") from exc
    kw: dict[str, Any] = {
        "ra": _column(table, ra, u.deg, path, "right ascension"),
        "dec": _column(table, dec, u.deg, path, "declination"),
        "mag": _column(table, mag, u.mag, path, "magnitude"),
    }
    if mag_err is not None:
        kw["mag_err"] = _column(table, mag_err, u.mag, path, "magnitude error")
    pm = u.mas / u.yr
    if pm_ra is not None:
        kw["pm_ra"] = _column(table, pm_ra, pm, path, "proper motion in RA")
    if pm_dec is not None:
        kw["pm_dec"] = _column(table, pm_dec, pm, path, "proper motion in Dec")
    return ReferenceCatalog(**kw, epoch=_epoch(table, epoch), source=str(path))


def write_source_table(table: Table, path: str | os.PathLike[str]) -> Path:
    """Write a source catalogue as a FITS table, atomically: under a temporary name in the
    same folder, renamed into place (an interrupted write leaves no partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        table.write(tmp, format="fits")
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the source catalogue: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
