"""The inputs of MakeWarp: which visit, detector and band each exposure is, from its headers,
and the checks on a set of inputs that no single file can fail (:func:`warp_inputs`,
:func:`check_selection`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c
from astropy.io import fits
from astropy.wcs import WCS

from coaddx.errors import InputError, InputWarning
from coaddx.io.fits.decam import CP_KIND, cp_siblings
from coaddx.io.fits.exposure import read_exposure, read_exposure_geometry
from coaddx.io.fits.util import check_wcs_values, header_card, header_int
from coaddx.model.exposure import Exposure
from coaddx.model.geometry import pixel_scale
from coaddx.model.skymap import Patch
from coaddx.warp.config import WarpConfig

__all__ = [
    "MAX_SCALE_RATIO",
    "WarpInput",
    "check_selection",
    "file_crc32c",
    "header_fields",
    "header_ids",
    "warp_inputs",
]

#: An exposure whose pixel scale differs from the patch's by more than this factor (either way)
#: is warped with an :class:`~coaddx.errors.InputWarning` naming it: flux conservation scales
#: its warped variance by the pixel-area ratio squared, and so its weight (1000x: 1e12).
MAX_SCALE_RATIO = 2.0


@dataclass(frozen=True)
class WarpInput:
    """One exposure to warp: a path (read in the task) or an in-memory Exposure."""

    source: Path | Exposure
    visit: int
    detector: int
    wcs: WCS = field(repr=False)
    shape: tuple[int, int]
    band: str = ""

    @property
    def name(self) -> str:
        return str(self.source) if isinstance(self.source, Path) else self.source.where

    def read(self) -> Exposure:
        """The exposure (read from its file, or the one given)."""
        return self.source if isinstance(self.source, Exposure) else read_exposure(self.source)


def _headers(path: Path) -> tuple[fits.Header, ...]:
    """The primary header and, when there is one, HDU 1's (the image of every layout)."""
    try:
        with fits.open(path, memmap=False, mode="readonly") as hdul:
            return tuple(h.header.copy() for h in hdul[:2])
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable FITS file ({exc})") from exc


def _first(heads: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[str, Any]:
    for key in keys:
        value = header_card(key, *heads)
        if value is not None:
            return key, value
    return "", None


def header_fields(path: Path) -> tuple[int, int, str]:
    """Visit, detector and band from the headers, as the readers take them: coaddx / LSST
    ``VISIT`` (``EXPID``, ``EXPNUM``) and ``DETECTOR`` (``CCDNUM``, ``DET-ID``) from the primary
    header, then the image header; DECam CP ``EXPNUM`` and ``CCDNUM`` (of the ``*_ooi_*`` image
    beside any of the three files); ``BAND``, else the first word of ``FILTER``.

    A visit or detector that is not an integer (``'abc'``, ``1000.7``) is an InputError naming
    the file and the keyword; a missing visit too (a missing detector is 0).
    """
    decam = bool(CP_KIND.search(path.name))
    source = cp_siblings(path)["image"] if decam else path
    primary, *rest = _headers(source)
    heads = (primary, *rest)
    visit_keys = ("EXPNUM",) if decam else ("VISIT", "EXPID", "EXPNUM")
    key, visit = _first(heads, visit_keys)
    if visit is None:
        raise InputError(
            f"{source}: no {' or '.join(visit_keys)} keyword to tell which visit it belongs to"
        )
    detector_keys = ("CCDNUM",) if decam else ("DETECTOR", "CCDNUM", "DET-ID")
    det_key, detector = _first((*rest, primary) if decam else heads, detector_keys)
    band = (
        header_card("BAND", *heads) or str(header_card("FILTER", *heads, default="")).split(" ")[0]
    )
    return (
        header_int(visit, source, key),
        0 if detector is None else header_int(detector, source, det_key),
        str(band).strip(),
    )


def header_ids(path: Path) -> tuple[int, int]:
    """Visit and detector ids from the headers (:func:`header_fields`)."""
    visit, detector, _ = header_fields(path)
    return visit, detector


def _identity(item: WarpInput) -> tuple[Any, ...]:
    """What makes two inputs the same exposure: the same file (through any link; for a DECam
    CP exposure, any of its three files) or the same object."""
    if isinstance(item.source, Exposure):
        return ("object", id(item.source))
    path = cp_siblings(item.source)["image"] if CP_KIND.search(item.source.name) else item.source
    st = os.stat(path)
    return ("file", st.st_dev, st.st_ino)


def _check_duplicates(items: Sequence[WarpInput]) -> None:
    """The same input twice, or two inputs claiming one (visit, detector): an InputError
    naming both (one would silently overwrite the other in the visit's composite)."""
    seen: dict[tuple[Any, ...], WarpInput] = {}
    ids: dict[tuple[int, int], WarpInput] = {}
    for item in items:
        key = _identity(item)
        if key in seen:
            raise InputError(
                f"{item.name}: given twice (also as {seen[key].name}); pass each exposure once"
            )
        seen[key] = item
        pair = (item.visit, item.detector)
        if pair in ids:
            raise InputError(
                f"{ids[pair].name} and {item.name} are both visit {item.visit} detector "
                f"{item.detector}; one would overwrite the other (remove one, or fix its "
                "VISIT / DETECTOR keywords)"
            )
        ids[pair] = item


def warp_inputs(exposures: Iterable[str | os.PathLike[str] | Exposure]) -> list[WarpInput]:
    """One :class:`WarpInput` per exposure, from headers only (paths must exist).

    Raises
    ------
    InputError
        A missing file, a header that does not say which visit it is (or not as an integer),
        a WCS with non-finite values ("unreadable WCS"), the same file (or Exposure) given
        twice, or two inputs with the same (visit, detector): each names the file(s).
    """
    out = []
    for item in exposures:
        if isinstance(item, Exposure):
            check_wcs_values(item.wcs, item.where, "exposure's wcs")
            out.append(
                WarpInput(
                    item, int(item.visit), int(item.detector), item.wcs, item.shape, item.band
                )
            )
            continue
        path = Path(item)
        if not path.exists():
            raise InputError(f"{path}: no such exposure file")
        wcs, shape = read_exposure_geometry(path)
        visit, detector, band = header_fields(path)
        out.append(WarpInput(path, visit, detector, wcs, shape, band))
    if not out:
        raise InputError("make_warps: no exposures given")
    _check_duplicates(out)
    return out


def _check_bands(selected: Sequence[WarpInput], allow_mixed: bool) -> None:
    by_visit: dict[int, dict[str, str]] = {}
    for i in selected:
        if i.band:
            by_visit.setdefault(i.visit, {}).setdefault(i.band, i.name)
    for visit, bands in by_visit.items():
        if len(bands) > 1:
            named = ", ".join(f"{b!r} ({name})" for b, name in bands.items())
            raise InputError(f"visit {visit}: its detectors carry different bands: {named}")
    first: dict[str, str] = {}
    for bands in by_visit.values():
        for band, name in bands.items():
            first.setdefault(band, name)
    if len(first) > 1 and not allow_mixed:
        named = ", ".join(f"{b!r} (e.g. {name})" for b, name in sorted(first.items()))
        raise InputError(
            f"the visits are of different bands: {named}; warp one band per store, or pass "
            "WarpConfig(allow_mixed_bands=True)"
        )


def _check_scales(selected: Sequence[WarpInput], patch: Patch) -> None:
    target = pixel_scale(patch.wcs)
    for i in selected:
        try:
            scale = pixel_scale(i.wcs)
        except ValueError as exc:
            raise InputError(f"{i.name}: unreadable WCS: {exc}") from exc
        ratio = scale / target
        if not 1.0 / MAX_SCALE_RATIO <= ratio <= MAX_SCALE_RATIO:
            warnings.warn(
                f"{i.name}: pixel scale {scale:.4g} arcsec differs from the patch's "
                f"{target:.4g} arcsec by a factor {ratio:.3g}; its warped variance scales by "
                f"{ratio**-4:.3g}, and so its weight in a coadd (is its WCS in the right units?)",
                InputWarning,
                stacklevel=4,  # the caller of make_warps
            )


def check_selection(selected: Sequence[WarpInput], patch: Patch, config: WarpConfig) -> None:
    """Checks on the exposures selected for a patch, before anything is warped.

    * The detectors of one visit must carry one band; visits of different bands are refused
      unless ``config.allow_mixed_bands`` (exposures without a band are not compared): an
      :class:`~coaddx.errors.InputError` naming the bands and a file of each.
    * An exposure whose pixel scale differs from the patch's by more than
      :data:`MAX_SCALE_RATIO` either way is warped, with an
      :class:`~coaddx.errors.InputWarning` naming the file (binned or coarser data are legal,
      but a CD matrix in the wrong units is the usual cause).
    """
    _check_bands(selected, config.allow_mixed_bands)
    _check_scales(selected, patch)


def file_crc32c(path: Path) -> str:
    """CRC-32C (Castagnoli; the crc32c package's hardware path) of a file's bytes, as 8 hex digits
    (the ``inputs`` of a visit record)."""
    crc = 0
    block = bytearray(1 << 20)  # read into one buffer that stays in cache (a fresh 4 MiB
    view = memoryview(block)  # bytes object per read cost 40 % more on the project VM)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(block):
            crc = crc32c.crc32c(view[:n], crc)
    return f"{crc & 0xFFFFFFFF:08x}"
