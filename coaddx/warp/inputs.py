"""The inputs of MakeWarp: which visit and detector each exposure is, from its headers."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from astropy.io import fits
from astropy.wcs import WCS

from coaddx.errors import InputError
from coaddx.io.fits.exposure import read_exposure, read_exposure_geometry
from coaddx.model.exposure import Exposure

__all__ = ["WarpInput", "file_crc32", "header_ids", "warp_inputs"]


@dataclass(frozen=True)
class WarpInput:
    """One exposure to warp: a path (read in the task) or an in-memory Exposure."""

    source: Path | Exposure
    visit: int
    detector: int
    wcs: WCS = field(repr=False)
    shape: tuple[int, int]

    @property
    def name(self) -> str:
        return str(self.source) if isinstance(self.source, Path) else self.source.where

    def read(self) -> Exposure:
        """The exposure (read from its file, or the one given)."""
        return self.source if isinstance(self.source, Exposure) else read_exposure(self.source)


def header_ids(path: Path) -> tuple[int, int]:
    """Visit and detector ids from the primary header (coaddx/LSST: VISIT, DETECTOR; DECam CP:
    EXPNUM, CCDNUM)."""
    try:
        header = fits.getheader(path, 0)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable FITS file ({exc})") from exc
    visit = header.get("VISIT", header.get("EXPNUM"))
    if visit is None:
        try:
            visit = fits.getheader(path, 1).get("EXPNUM")
        except (OSError, ValueError, IndexError):
            visit = None
    if visit is None:
        raise InputError(f"{path}: no VISIT or EXPNUM keyword to tell which visit it belongs to")
    detector = header.get("DETECTOR", header.get("CCDNUM", 0))
    return int(visit), int(detector)


def warp_inputs(exposures: Iterable[str | os.PathLike[str] | Exposure]) -> list[WarpInput]:
    """One :class:`WarpInput` per exposure, from headers only (paths must exist)."""
    out = []
    for item in exposures:
        if isinstance(item, Exposure):
            out.append(WarpInput(item, int(item.visit), int(item.detector), item.wcs, item.shape))
            continue
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path}: no such exposure file")
        wcs, shape = read_exposure_geometry(path)
        visit, detector = header_ids(path)
        out.append(WarpInput(path, visit, detector, wcs, shape))
    if not out:
        raise InputError("make_warps: no exposures given")
    return out


def file_crc32(path: Path) -> str:
    """CRC-32 of a file's bytes, as 8 hex digits (the ``inputs`` of a visit record)."""
    crc = 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return f"{crc & 0xFFFFFFFF:08x}"
