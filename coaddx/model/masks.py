"""The mask-plane registry: LSST plane names and bits, looked up by name.

Every array with a mask carries its name -> bit dictionary (Zarr attribute ``mask_planes``,
FITS ``MP_<PLANE>`` keywords). Code asks for planes by name and never hard-codes a bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from coaddx.errors import MaskPlaneError

__all__ = [
    "DEFAULT_MASK_PLANES",
    "bitmask",
    "check_mask_planes",
    "mask_planes",
    "mask_planes_from_header",
    "mask_planes_to_header",
    "merge_mask_planes",
]

#: LSST default planes (afw), then the coadd planes in the fixed order of design.md.
DEFAULT_MASK_PLANES: Mapping[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "CLIPPED": 9,
    "SENSOR_EDGE": 10,
    "INEXACT_PSF": 11,
    "REJECTED": 12,
    "BRIGHT_OBJECT": 13,
    "STREAK": 14,
    "NOT_DEBLENDED": 15,
}

_MAX_BITS = 31  # int32 masks; bit 31 is the sign bit and is never handed out


def mask_planes() -> dict[str, int]:
    """Return the default mask-plane dictionary (name -> bit), a fresh copy.

    Examples
    --------
    >>> mask_planes()["NO_DATA"]
    8
    """
    return dict(DEFAULT_MASK_PLANES)


def check_mask_planes(planes: Mapping[str, int], *, where: str = "mask_planes") -> dict[str, int]:
    """Validate a name -> bit mapping (unique bits in 0..30, string names) and return a copy."""
    if not isinstance(planes, Mapping) or not planes:
        raise MaskPlaneError(f"{where}: expected a non-empty name -> bit mapping, got {planes!r}")
    out: dict[str, int] = {}
    seen: dict[int, str] = {}
    for name, bit in planes.items():
        if not isinstance(name, str) or not name:
            raise MaskPlaneError(f"{where}: plane name {name!r} is not a non-empty string")
        try:
            ibit = int(bit)
        except (TypeError, ValueError):
            raise MaskPlaneError(
                f"{where}: bit of plane {name!r} is {bit!r}, not an integer"
            ) from None
        if not 0 <= ibit < _MAX_BITS:
            raise MaskPlaneError(f"{where}: bit {ibit} of plane {name!r} is outside 0..30")
        if ibit in seen:
            raise MaskPlaneError(f"{where}: planes {seen[ibit]!r} and {name!r} share bit {ibit}")
        seen[ibit] = name
        out[name] = ibit
    return out


def bitmask(planes: Mapping[str, int], names: Iterable[str], *, strict: bool = True) -> int:
    """OR the bits of the named planes.

    Parameters
    ----------
    planes : mapping of str to int
        The mask-plane dictionary of the data.
    names : iterable of str
        Plane names. A single string is taken as one name.
    strict : bool
        If True an unknown name raises :class:`MaskPlaneError`; if False it is skipped (LSST's
        ``getPlaneBitMask`` of the planes "that exist", as in ``getBadPixelMask``).
    """
    if isinstance(names, str):
        names = (names,)
    value = 0
    for name in names:
        if name in planes:
            value |= 1 << int(planes[name])
        elif strict:
            known = ", ".join(sorted(planes))
            raise MaskPlaneError(f"unknown mask plane {name!r}; known planes: {known}")
    return value


def merge_mask_planes(base: Mapping[str, int], extra: Iterable[str]) -> dict[str, int]:
    """Return ``base`` plus any planes of ``extra`` it lacks, using the default bit when free,
    otherwise the lowest free bit (afw ``addMaskPlane``)."""
    out = dict(base)
    used = set(out.values())
    for name in extra:
        if name in out:
            continue
        bit = DEFAULT_MASK_PLANES.get(name)
        if bit is None or bit in used:
            free = [b for b in range(_MAX_BITS) if b not in used]
            if not free:
                raise MaskPlaneError(f"no free mask bit left for plane {name!r}")
            bit = free[0]
        out[name] = bit
        used.add(bit)
    return out


def mask_planes_to_header(planes: Mapping[str, int]) -> dict[str, int]:
    """FITS keywords ``MP_<NAME> = bit`` (LSST convention)."""
    return {f"MP_{name}": int(bit) for name, bit in planes.items()}


def mask_planes_from_header(header: Mapping[str, object]) -> dict[str, int]:
    """Read ``MP_<NAME>`` keywords of a FITS header into a name -> bit mapping."""
    planes = {str(k)[3:]: int(v) for k, v in header.items() if str(k).startswith("MP_")}  # type: ignore[call-overload]
    return check_mask_planes(planes, where="FITS MP_* keywords") if planes else {}
